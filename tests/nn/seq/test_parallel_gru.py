import pytest
import torch

from graphseq.nn.seq import ParallelGRU


def _gru_cell_loop(cell, x, h0=None):
    h = x.new_zeros(x.shape[0], cell.hidden_size) if h0 is None else h0
    out = []
    for t in range(x.shape[1]):
        h = cell(x[:, t], h)
        out.append(h)
    return torch.stack(out, 1)


def _packed(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])


def test_repr_attributes_and_bad_arguments():
    layer = ParallelGRU(3, 8, recurrence="full")
    assert repr(layer) == "ParallelGRU(3, 8, recurrence='full', mode='parallel')"
    assert repr(ParallelGRU(4, 5)) == "ParallelGRU(4, 5, recurrence='diagonal', mode='parallel')"
    assert layer.weight_hh.shape == (24, 8) and ParallelGRU(3, 8).weight_hh.shape == (24,)
    with pytest.raises(ValueError, match="ParallelGRU: recurrence"):
        ParallelGRU(3, 8, recurrence="dense")
    with pytest.raises(ValueError, match="ParallelGRU: mode"):
        ParallelGRU(3, 8, mode="fast")
    with pytest.raises(ValueError, match="ParallelGRU: hidden_channels"):
        ParallelGRU(3, 0)
    with pytest.raises(ValueError, match="ParallelGRU: tol"):
        ParallelGRU(3, 4, tol=-1.0)
    for bad in (float("inf"), float("nan")):  # inf: the solve stopped before its first scan
        with pytest.raises(ValueError, match="ParallelGRU: tol must be a positive finite"):
            ParallelGRU(3, 4, tol=bad)
    with pytest.raises(TypeError, match="ParallelGRU: max_iter"):
        ParallelGRU(3, 4, max_iter=2.5)


def test_reset_parameters_redoes_init():
    layer = ParallelGRU(3, 4, recurrence="full")
    for p in layer.parameters():
        torch.nn.init.constant_(p, 3.0)
    layer.reset_parameters()
    assert all(p.abs().max() <= 0.5 for p in layer.parameters())


def test_full_equals_sequential_gru_cell_loop():
    """The issue's bar: same weights as torch.nn.GRUCell, outputs equal to <= 1e-5."""
    cell = torch.nn.GRUCell(5, 24)
    layer = ParallelGRU(5, 24, recurrence="full")
    layer.load_state_dict(cell.state_dict())
    x = torch.randn(3, 257, 5)
    h0 = torch.randn(3, 24) * 0.5
    y, h_last = layer(x, h0, return_state=True)
    y_ref = _gru_cell_loop(cell, x, h0)
    assert (y - y_ref).abs().max() <= 1e-5
    assert (h_last - y_ref[:, -1]).abs().max() <= 1e-5
    assert 1 <= layer.last_num_iters <= x.shape[1]


@pytest.mark.parametrize("recurrence", ["full", "diagonal"])
def test_gradients_equal_sequential_loop(recurrence):
    layer = ParallelGRU(4, 16, recurrence=recurrence)
    x = torch.randn(2, 120, 4, requires_grad=True)
    h0 = torch.randn(2, 16, requires_grad=True)
    w = torch.randn(2, 120, 16)
    wl = torch.randn(2, 16)
    inputs = [x, h0, *layer.parameters()]

    def loss(mode):
        y, h = layer(x, h0, return_state=True, mode=mode)
        return (y * w).sum() + (h * wl).sum()  # upstream grads for outputs and final state

    g = torch.autograd.grad(loss("parallel"), inputs)
    g_ref = torch.autograd.grad(loss("sequential"), inputs)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5 * max(1.0, b.abs().max().item()), rtol=1e-4)
    if recurrence == "full":  # and the sequential mode is nn.GRUCell itself
        cell = torch.nn.GRUCell(4, 16)
        cell.load_state_dict(layer.state_dict())
        y = _gru_cell_loop(cell, x, h0)
        g_cell = torch.autograd.grad(
            (y * w).sum() + (y[:, -1] * wl).sum(), [x, h0, *cell.parameters()]
        )
        for a, b in zip(g, g_cell):
            torch.testing.assert_close(a, b, atol=1e-5 * max(1.0, b.abs().max().item()), rtol=1e-4)


@pytest.mark.parametrize("recurrence", ["full", "diagonal"])
def test_float64_exact_and_gradcheck(recurrence):
    layer = ParallelGRU(3, 4, recurrence=recurrence).double()
    x = torch.randn(2, 30, 3, dtype=torch.double)
    torch.testing.assert_close(layer(x), layer(x, mode="sequential"), atol=1e-11, rtol=0)
    xs = torch.randn(2, 6, 3, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(2, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h: layer(x, h), (xs, h0))


def test_diagonal_newton_converges_in_few_iterations():
    layer = ParallelGRU(8, 32)
    layer(torch.randn(2, 1000, 8))
    assert layer.last_num_iters <= 6


@pytest.mark.parametrize("recurrence", ["full", "diagonal"])
@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_packed_equals_dense_one_sequence_at_a_time(recurrence, mode):
    layer = ParallelGRU(3, 8, recurrence=recurrence, mode=mode)
    lengths = [6, 0, 40, 1, 19]
    cu = _packed(lengths)
    x = torch.randn(1, sum(lengths), 3, requires_grad=True)
    h0 = torch.randn(len(lengths), 8, requires_grad=True)
    y, h_last = layer(x, h0, cu_seqlens=cu, return_state=True)
    w = torch.randn_like(y)
    gx, gh0 = torch.autograd.grad((y * w).sum(), [x, h0])
    for n in range(len(lengths)):
        s, e = int(cu[n]), int(cu[n + 1])
        xn = x[:, s:e].detach().requires_grad_(True)
        hn = h0[n : n + 1].detach().requires_grad_(True)
        y_n, last_n = layer(xn, hn, return_state=True)
        torch.testing.assert_close(y[:, s:e], y_n, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h_last[n : n + 1], last_n, atol=1e-5, rtol=1e-5)
        if e > s:
            gxn, ghn = torch.autograd.grad((y_n * w[:, s:e]).sum(), [xn, hn])
            torch.testing.assert_close(gx[:, s:e], gxn, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(gh0[n : n + 1], ghn, atol=1e-5, rtol=1e-4)
        else:
            assert gh0[n].abs().max() == 0


def test_step_streaming_equals_parallel():
    layer = ParallelGRU(4, 8, recurrence="full")
    x = torch.randn(2, 30, 4)
    y = layer(x)
    _, state = layer(x[:, :11], return_state=True)
    for t in range(11, 30):
        y_t, state = layer.step(x[:, t], state)
        torch.testing.assert_close(y_t, y[:, t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("recurrence", ["full", "diagonal"])
def test_a_large_initial_state_converges(recurrence):
    """An absolute tolerance of 1e-6 is below float32 rounding once |h| > 8; the solve must
    still converge (and match the sequential mode) for a carried state of size ~100."""
    torch.manual_seed(0)
    layer = ParallelGRU(4, 16, recurrence=recurrence)
    x = torch.randn(2, 64, 4)
    h0 = 100 * torch.randn(2, 16)
    y = layer(x, h0)
    ys = layer(x, h0, mode="sequential")
    assert layer.last_num_iters < layer.max_iter
    torch.testing.assert_close(y, ys, atol=1e-4 * h0.abs().max().item(), rtol=1e-5)


def test_no_convergence_raises():
    layer = ParallelGRU(4, 8, recurrence="full", max_iter=2)
    with pytest.raises(RuntimeError, match="ParallelGRU: the parallel solve did not converge"):
        layer(torch.randn(2, 50, 4) * 3)


def test_a_diverging_solve_says_so_and_how_many_iterations_ran():
    """A non-finite residual stops the Newton iteration at once; the error says it diverged
    (more iterations cannot help) and counts the iterations that ran, not max_iter."""
    torch.manual_seed(0)
    layer = ParallelGRU(8, 8, max_iter=100)
    with torch.no_grad():
        layer.weight_hh.mul_(10 * 8**0.5)
    x = torch.randn(2, 300, 8)
    with pytest.raises(RuntimeError, match=r"diverged: .* after 1 Newton iteration\(s\).*"
                       r"mode='sequential'"):  # fmt: skip
        layer(x)
    assert torch.isfinite(layer(x, mode="sequential")).all()


def test_nan_input():
    layer = ParallelGRU(2, 4)
    x = torch.randn(1, 10, 2)
    x[0, 4] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        layer(x)
    y = layer(x, mode="sequential")
    assert torch.isfinite(y[0, :4]).all() and torch.isnan(y[0, 4:]).all()


def test_empty_inputs():
    layer = ParallelGRU(2, 4)
    y, h = layer(torch.randn(3, 0, 2), return_state=True)
    assert y.shape == (3, 0, 4) and h.shape == (3, 4)
    y, h = layer(torch.randn(1, 0, 2), cu_seqlens=torch.tensor([0, 0, 0]), return_state=True)
    assert y.shape == (1, 0, 4) and h.shape == (2, 4)
    assert layer(torch.randn(0, 5, 2)).shape == (0, 5, 4)


@pytest.mark.parametrize("recurrence", ["full", "diagonal"])
@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_packed_under_autocast_after_a_lower_precision_layer(recurrence, mode):
    """Under autocast the input may be a previous layer's bfloat16 output; packed batches
    work like dense ones and outputs and states stay in x's dtype in both modes."""
    torch.manual_seed(0)
    proj, layer = torch.nn.Linear(4, 4), ParallelGRU(4, 4, recurrence=recurrence, mode=mode)
    cu = _packed([3, 0, 5])
    x = torch.randn(1, 8, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = proj(x)
        y, last = layer(h, cu_seqlens=cu, return_state=True)
        y_dense, last_dense = layer(h[:, 3:], return_state=True)
    assert h.dtype == y.dtype == last.dtype == y_dense.dtype == torch.bfloat16
    torch.testing.assert_close(y[:, 3:], y_dense, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(last[2:], last_dense, atol=2e-2, rtol=2e-2)
    assert torch.equal(last[1], torch.zeros(4, dtype=torch.bfloat16))


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
@pytest.mark.parametrize("cu", [None, torch.tensor([0, 0, 0])])
def test_empty_time_axis_is_part_of_the_graph(mode, cu):
    layer = ParallelGRU(2, 4, mode=mode)
    x = torch.randn(1, 0, 2, requires_grad=True)
    y = layer(x, cu_seqlens=cu)
    assert y.shape == (1, 0, 4) and y.requires_grad
    y.sum().backward()  # an empty batch in a training loop must not crash
    assert x.grad is not None and x.grad.shape == x.shape


def test_bad_inputs():
    layer = ParallelGRU(2, 4)
    with pytest.raises(ValueError, match=r"ParallelGRU: state must have shape \(1, 4\)"):
        layer(torch.randn(1, 3, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="ParallelGRU: mode"):
        layer(torch.randn(1, 3, 2), mode="scan")
    with pytest.raises(ValueError, match="in_channels = 2"):
        layer(torch.randn(1, 3, 3))


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_returned_state_does_not_alias_the_output(mode):
    """The final state was a view of the output (forward) or the output itself (step), so an
    in-place residual on the output rewrote the carried state and the next chunk went wrong."""
    torch.manual_seed(0)
    layer = ParallelGRU(4, 4, mode=mode).double()
    x = torch.randn(2, 10, 4, dtype=torch.float64)
    with torch.no_grad():
        ref = layer(x) + x
        y1, s = layer(x[:, :6], return_state=True)
        y1 += x[:, :6]
        y2 = layer(x[:, 6:], state=s)
        y2 += x[:, 6:]
        torch.testing.assert_close(torch.cat([y1, y2], 1), ref)
        _, s0 = layer(x[:, :0], state=s, return_state=True)
        assert s0 is not s
        state, ys = layer.init_state(2), []
        for t in range(10):
            y, state = layer.step(x[:, t], state)
            y += x[:, t]
            ys.append(y)
        torch.testing.assert_close(torch.stack(ys, 1), ref)
