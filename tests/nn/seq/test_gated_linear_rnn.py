import pytest
import torch

from graphseq.nn.seq import GatedLinearRNN


def _loop(layer, x, h0=None):
    """Plain recurrence over time from the layer's own projections (the ground truth)."""
    B, T, _ = x.shape
    h = layer.init_state(B) if h0 is None else h0
    ys = []
    for t in range(T):
        a, v, g = layer._project(x[:, t])
        h = a.unsqueeze(-1) * h + v
        ys.append(layer.out_proj(h.flatten(-2) * torch.nn.functional.silu(g)))
    return torch.stack(ys, 1), h


def test_repr_and_attributes():
    layer = GatedLinearRNN(16, heads=4, eigenvalue_range=(0, 1))
    assert repr(layer) == "GatedLinearRNN(16, heads=4, eigenvalue_range=(0.0, 1.0))"
    assert repr(GatedLinearRNN(8)) == "GatedLinearRNN(8, heads=1, eigenvalue_range=(-1.0, 1.0))"
    assert (layer.channels, layer.heads, layer.head_channels) == (16, 4, 4)
    assert layer.in_channels == layer.out_channels == 16


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"channels": 0}, ValueError, "GatedLinearRNN: channels"),
        ({"channels": 8.0}, TypeError, "GatedLinearRNN: channels"),
        ({"channels": 8, "heads": 3}, ValueError, "heads"),
        ({"channels": 8, "eigenvalue_range": (-2, 1)}, ValueError, "eigenvalue_range"),
        ({"channels": 8, "eigenvalue_range": (1, 0)}, ValueError, "eigenvalue_range"),
        ({"channels": 8, "eigenvalue_range": "neg"}, TypeError, "eigenvalue_range"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        GatedLinearRNN(**kwargs)


def test_reset_parameters_redoes_init():
    layer = GatedLinearRNN(8, heads=2)
    for p in layer.parameters():
        torch.nn.init.constant_(p, 3.0)
    layer.reset_parameters()
    assert all(not torch.all(p == 3.0) for p in layer.parameters())


@pytest.mark.parametrize("rng", [(-1.0, 1.0), (0.0, 1.0), (-0.5, 0.25)])
def test_gates_stay_in_range(rng):
    layer = GatedLinearRNN(8, heads=8, eigenvalue_range=rng)
    a, _, _ = layer._project(10 * torch.randn(4, 100, 8))
    assert a.min() >= rng[0] and a.max() <= rng[1]
    if rng[0] < 0:
        assert (a < 0).any()  # negative eigenvalues are actually used


@pytest.mark.parametrize("heads", [1, 3])
def test_forward_equals_loop_float64(heads):
    layer = GatedLinearRNN(12, heads=heads).double()
    x = torch.randn(2, 63, 12, dtype=torch.double)
    h0 = torch.randn(2, heads, 12 // heads, dtype=torch.double)
    y, h_last = layer(x, state=h0, return_state=True)
    y_ref, h_ref = _loop(layer, x, h0)
    torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(h_last, h_ref, atol=1e-12, rtol=1e-10)


def test_step_after_prefix_equals_parallel():
    layer = GatedLinearRNN(8, heads=2)
    x = torch.randn(3, 40, 8)
    y = layer(x)
    _, state = layer(x[:, :17], return_state=True)
    for t in range(17, 40):
        y_t, state = layer.step(x[:, t], state)
        torch.testing.assert_close(y_t, y[:, t], atol=1e-5, rtol=1e-5)


def test_chunked_forward_with_state_equals_whole():
    layer = GatedLinearRNN(8, heads=4)
    x = torch.randn(2, 50, 8)
    y, h = layer(x, return_state=True)
    y1, s = layer(x[:, :21], return_state=True)
    y2, h2 = layer(x[:, 21:], state=s, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h2, h, atol=1e-5, rtol=1e-5)


def test_packed_equals_dense_one_sequence_at_a_time():
    layer = GatedLinearRNN(6, heads=2)
    lengths = [5, 0, 31, 1, 17]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    x = torch.randn(1, sum(lengths), 6)
    h0 = torch.randn(len(lengths), 2, 3)
    y, h_last = layer(x, state=h0, cu_seqlens=cu, return_state=True)
    for n in range(len(lengths)):
        s, e = int(cu[n]), int(cu[n + 1])
        y_n, h_n = layer(x[:, s:e], state=h0[n : n + 1], return_state=True)
        torch.testing.assert_close(y[:, s:e], y_n, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h_last[n : n + 1], h_n, atol=1e-5, rtol=1e-5)


def test_nan_stays_in_its_sequence():
    layer = GatedLinearRNN(4)
    x = torch.randn(1, 20, 4)
    x[0, 3] = float("nan")
    y = layer(x, cu_seqlens=torch.tensor([0, 10, 20]))
    assert torch.isnan(y[0, 3:10]).all() and torch.isfinite(y[0, :3]).all()
    assert torch.isfinite(y[0, 10:]).all()


def test_gradcheck_float64():
    layer = GatedLinearRNN(4, heads=2).double()
    x = torch.randn(2, 7, 4, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(2, 2, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h0: layer(x, state=h0), (x, h0))


def test_empty_inputs():
    layer = GatedLinearRNN(4)
    assert layer(torch.randn(2, 0, 4)).shape == (2, 0, 4)
    assert layer(torch.randn(0, 5, 4)).shape == (0, 5, 4)
    y, h = layer(torch.randn(1, 0, 4), cu_seqlens=torch.tensor([0, 0]), return_state=True)
    assert y.shape == (1, 0, 4) and torch.equal(h, torch.zeros(1, 1, 4))


def test_bad_inputs():
    layer = GatedLinearRNN(4, heads=2)
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        layer([[1.0]])
    with pytest.raises(TypeError, match="x must be a floating-point"):
        layer(torch.ones(1, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"GatedLinearRNN: x must have shape \[B, T, in_ch"):
        layer(torch.randn(1, 3, 5))
    with pytest.raises(ValueError, match="dtype"):
        layer(torch.randn(1, 3, 4, dtype=torch.double))
    with pytest.raises(ValueError, match="batch size 1"):
        layer(torch.randn(2, 3, 4), cu_seqlens=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="cu_seqlens must start at 0 and end"):
        layer(torch.randn(1, 3, 4), cu_seqlens=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="cu_seqlens must be non-decreasing"):
        layer(torch.randn(1, 3, 4), cu_seqlens=torch.tensor([0, 3, 2, 3]))
    with pytest.raises(TypeError, match="cu_seqlens must be an int32 or int64"):
        layer(torch.randn(1, 3, 4), cu_seqlens=torch.tensor([0.0, 3.0]))
    with pytest.raises(ValueError, match=r"state must have shape \(2, 2, 2\)"):
        layer(torch.randn(2, 3, 4), state=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"x must have shape \[B, in_channels\]"):
        layer.step(torch.randn(2, 3, 4))


@pytest.mark.parametrize("rng", [(-1.0, 1.0), (0.0, 1.0)])
def test_gate_is_the_documented_scaled_sigmoid(rng):
    """a_t = lo + (hi - lo) sigmoid(W_a x + b_a), W_a and b_a the last `heads` rows of
    in_proj (after the value and output-gate rows)."""
    torch.manual_seed(0)
    layer = GatedLinearRNN(8, heads=2, eigenvalue_range=rng).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    a, _, _ = layer._project(x)
    z = torch.nn.functional.linear(x, layer.in_proj.weight[16:], layer.in_proj.bias[16:])
    torch.testing.assert_close(a, rng[0] + (rng[1] - rng[0]) * torch.sigmoid(z))
