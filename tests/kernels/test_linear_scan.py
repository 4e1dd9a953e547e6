"""linear_scan: every fast path and every gradient against the loop reference."""

import pytest
import torch

from graphseq.kernels import linear_scan
from graphseq.testing import DEVICE, FAST_BACKENDS, assert_close, requires_triton


def _gates(shape, dtype=torch.float64, zero_frac=0.1, neg_frac=0.3):
    """Gates in ±[0.5, 1) with some exact zeros (resets) and negatives."""
    a = torch.rand(shape, dtype=dtype, device=DEVICE) * 0.5 + 0.5
    a = torch.where(torch.rand(shape, device=DEVICE) < neg_frac, -a, a)
    return torch.where(torch.rand(shape, device=DEVICE) < zero_frac, torch.zeros_like(a), a)


def _inputs(B, T, rest, dtype=torch.float64, with_h0=True, n_states=None):
    a = _gates((B, T, *rest), dtype).requires_grad_()
    b = torch.randn(B, T, *rest, dtype=dtype, device=DEVICE, requires_grad=True)
    n = B if n_states is None else n_states
    h0 = torch.randn(n, *rest, dtype=dtype, device=DEVICE, requires_grad=True) if with_h0 else None
    return a, b, h0


def _grads(outputs, inputs, seed=1):
    """Gradients of a random linear function of all outputs (random upstream gradients)."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    loss = sum(
        (
            o * torch.randn(o.shape, generator=gen, device=DEVICE, dtype=torch.float64).to(o.dtype)
        ).sum()
        for o in outputs
    )
    wanted = [x for x in inputs if x is not None]
    return torch.autograd.grad(loss, wanted, allow_unused=True, materialize_grads=True)


def _compare(backend, a, b, h0, reverse, cu_seqlens=None, dtype=None):
    h, h_last = linear_scan(a, b, h0, reverse, cu_seqlens, backend=backend)

    def to64(x):
        return None if x is None else x.detach().double().requires_grad_()

    a64, b64, h064 = to64(a), to64(b), to64(h0)
    h_ref, last_ref = linear_scan(a64, b64, h064, reverse, cu_seqlens, backend="reference")
    assert h.dtype == a.dtype and h.shape == a.shape
    assert_close(h, h_ref, dtype=dtype, msg="h")
    assert_close(h_last, last_ref, dtype=dtype, msg="h_last")
    if h_ref.requires_grad or last_ref.requires_grad:
        got = _grads((h, h_last), (a, b, h0))
        want = _grads((h_ref, last_ref), (a64, b64, h064))
        for name, g, w in zip(("da", "db", "dh0"), got, want):
            assert_close(g, w, dtype=dtype, msg=name)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("T", [1, 2, 5, 63, 1000])
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_reference_float64(backend, T, reverse):
    if backend == "triton" and T == 1000 and reverse:
        pytest.skip("one long interpreted case per direction is enough")
    a, b, h0 = _inputs(2, T, (3,))
    _compare(backend, a, b, h0, reverse)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_reference_float32_multi_dim(backend, reverse):
    a, b, h0 = _inputs(3, 63, (2, 5), dtype=torch.float32)
    _compare(backend, a, b, h0, reverse, dtype=torch.float32)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_without_h0_and_zero_gates_reset(backend):
    a, b, _ = _inputs(2, 40, (4,), with_h0=False)
    _compare(backend, a, b, None, False)
    # an exactly-zero gate makes the state forget everything before it
    a2 = a.detach().clone()
    a2[:, 20] = 0
    h, _ = linear_scan(a2, b.detach(), backend=backend)
    tail, _ = linear_scan(a2[:, 20:], b.detach()[:, 20:], backend=backend)
    torch.testing.assert_close(h[:, 20:], tail, atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_varlen_one_sequence_at_a_time(backend, reverse, with_h0):
    lengths = [5, 0, 1, 63, 17, 0, 2]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=DEVICE)
    total = int(cu[-1])
    a, b, h0 = _inputs(1, total, (3,), with_h0=with_h0, n_states=len(lengths))
    h, h_last = linear_scan(a, b, h0, reverse, cu, backend=backend)
    for n, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        h0_n = None if h0 is None else h0[n : n + 1]
        h_n, last_n = linear_scan(a[:, s:e], b[:, s:e], h0_n, reverse, backend="reference")
        torch.testing.assert_close(h[:, s:e], h_n, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(h_last[n : n + 1], last_n, atol=1e-12, rtol=1e-10)
    _compare(backend, a, b, h0, reverse, cu)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_varlen_nan_stays_in_its_sequence(backend):
    cu = torch.tensor([0, 7, 20], device=DEVICE)
    a, b, _ = _inputs(1, 20, (2,), with_h0=False)
    a, b = a.detach().clone(), b.detach().clone()
    b[0, 3, 0] = float("nan")
    a[0, 10] = 0.0  # a zero gate at the start of the clean sequence must not see 0 * nan
    h, h_last = linear_scan(a, b, cu_seqlens=cu, backend=backend)
    assert torch.isnan(h[0, 3:7, 0]).all() and torch.isfinite(h[0, :3]).all()
    clean, clean_last = linear_scan(a[:, 7:], b[:, 7:], backend="reference")
    torch.testing.assert_close(h[:, 7:], clean)
    torch.testing.assert_close(h_last[1:], clean_last)
    # and a NaN upstream gradient in one sequence leaves the other's gradients finite
    a.requires_grad_()
    b2 = torch.randn_like(b).requires_grad_()
    h, _ = linear_scan(a, b2, cu_seqlens=cu, backend=backend)
    up = torch.ones_like(h)
    up[0, 15] = float("nan")
    da, db = torch.autograd.grad(h, (a, b2), up)
    assert torch.isfinite(da[0, :7]).all() and torch.isfinite(db[0, :7]).all()


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_streaming_in_two_halves(backend):
    a, b, h0 = _inputs(2, 101, (4,))
    a, b, h0 = a.detach(), b.detach(), h0.detach()
    h, h_last = linear_scan(a, b, h0, backend=backend)
    h1, mid = linear_scan(a[:, :40], b[:, :40], h0, backend=backend)
    h2, end = linear_scan(a[:, 40:], b[:, 40:], mid, backend=backend)
    torch.testing.assert_close(torch.cat([h1, h2], 1), h)
    torch.testing.assert_close(end, h_last)


@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
def test_reverse_final_state_is_the_state_at_t0_and_streams_backwards(backend):
    """With reverse=True the final state is the one at t = 0 (the docstring), so streaming runs
    the later half first and passes its final state on as the earlier half's h0; every
    backend, the loop reference included, is held to this independent check."""
    a, b, h0 = (t.detach() for t in _inputs(2, 101, (4,)))
    h, h_last = linear_scan(a, b, h0, reverse=True, backend=backend)
    assert_close(h_last, h[:, 0])
    h2, mid = linear_scan(a[:, 40:], b[:, 40:], h0, reverse=True, backend=backend)
    h1, start = linear_scan(a[:, :40], b[:, :40], mid, reverse=True, backend=backend)
    assert_close(torch.cat([h1, h2], 1), h)
    assert_close(start, h_last)
    cu = torch.tensor([0, 40, 40, 101], device=DEVICE)  # packed, with an empty sequence
    hp, lastp = linear_scan(a[:1], b[:1], h0[:1].expand(3, 4), reverse=True, cu_seqlens=cu,
                            backend=backend)  # fmt: skip
    assert_close(lastp, torch.stack([hp[0, 0], h0[0], hp[0, 40]]))


@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
def test_empty_inputs(backend):
    a = torch.zeros(2, 0, 3, device=DEVICE)
    h0 = torch.randn(2, 3, device=DEVICE)
    h, h_last = linear_scan(a, a, h0, backend=backend)
    assert h.shape == (2, 0, 3)
    torch.testing.assert_close(h_last, h0)
    h, h_last = linear_scan(a, a, backend=backend)
    assert h_last.shape == (2, 3) and not h_last.any()
    # no channels: still differentiable in both inputs
    a = torch.zeros(2, 5, 0, device=DEVICE, requires_grad=True)
    b = torch.zeros(2, 5, 0, device=DEVICE, requires_grad=True)
    h, h_last = linear_scan(a, b, backend=backend)
    assert h.shape == (2, 5, 0) and h_last.shape == (2, 0)
    h.sum().backward()
    assert a.grad.shape == (2, 5, 0) and b.grad.shape == (2, 5, 0)
    # no sequences at all, and only empty sequences
    e = torch.zeros(1, 0, 3, device=DEVICE)
    _, h_last = linear_scan(e, e, cu_seqlens=torch.tensor([0], device=DEVICE), backend=backend)
    assert h_last.shape == (0, 3)
    _, h_last = linear_scan(
        e, e, cu_seqlens=torch.tensor([0, 0, 0], device=DEVICE), backend=backend
    )
    assert h_last.shape == (2, 3) and not h_last.any()


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_float64(backend, reverse):
    a, b, h0 = _inputs(2, 9, (2,))
    cu = torch.tensor([0, 4, 4, 9], device=DEVICE)

    def dense(a, b, h0):
        return linear_scan(a, b, h0, reverse, backend=backend)

    def packed(a, b, h0):
        return linear_scan(a, b, h0, reverse, cu, backend=backend)

    # the interpreter is slow: there, check random directional derivatives (fast_mode)
    fast = backend == "triton" and DEVICE.type == "cpu"
    assert torch.autograd.gradcheck(dense, (a, b, h0), fast_mode=fast)
    a1, b1, h01 = _inputs(1, 9, (2,), n_states=3)
    assert torch.autograd.gradcheck(packed, (a1, b1, h01), fast_mode=fast)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_long_sequence_gates_near_one(backend):
    if backend == "triton" and DEVICE.type == "cpu":
        T = 2048  # the interpreter runs serially; the torch path covers T = 65,536
    else:
        T = 65536
    a = 1.0 - 1e-3 * torch.rand(1, T, 4, device=DEVICE)
    a = torch.where(torch.rand_like(a) < 0.2, -a, a)
    b = torch.randn(1, T, 4, device=DEVICE)
    h, h_last = linear_scan(a, b, backend=backend)
    assert torch.isfinite(h).all() and torch.isfinite(h_last).all()
    h_ref, _ = linear_scan(a.double(), b.double(), backend="reference")
    err = (h.double() - h_ref).abs().max() / h_ref.abs().max()
    assert err < 1e-5, f"relative error {err:.2e}"


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_accumulates_in_float32(backend, dtype):
    a = (torch.rand(2, 300, 8, device=DEVICE) * 0.2 + 0.8).to(dtype)
    b = torch.randn(2, 300, 8, device=DEVICE).to(dtype)
    h0 = torch.randn(2, 8, device=DEVICE)
    h, h_last = linear_scan(a, b, h0, backend=backend)
    assert h.dtype == dtype and h_last.dtype == torch.float32
    h_ref, last_ref = linear_scan(a.float(), b.float(), h0, backend="reference")
    torch.testing.assert_close(h.float(), h_ref, atol=5e-2, rtol=2e-2)
    torch.testing.assert_close(h_last, last_ref, atol=1e-4, rtol=1e-4)


def test_bad_input_names_the_argument():
    a = torch.rand(2, 5, 3)
    with pytest.raises(ValueError, match="b must have shape"):
        linear_scan(a, torch.rand(2, 5, 4))
    with pytest.raises(ValueError, match="b has dtype"):
        linear_scan(a, torch.rand(2, 5, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="a must be a floating-point"):
        linear_scan(torch.ones(2, 5, 3, dtype=torch.long), torch.ones(2, 5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="a must have at least 2"):
        linear_scan(torch.rand(5), torch.rand(5))
    with pytest.raises(ValueError, match="h0 must have shape"):
        linear_scan(a, a, h0=torch.rand(3, 3))
    with pytest.raises(ValueError, match="batch size 1"):
        linear_scan(a, a, cu_seqlens=torch.tensor([0, 5]))
    p = torch.rand(1, 6, 2)
    with pytest.raises(ValueError, match="cu_seqlens must be non-decreasing"):
        linear_scan(p, p, cu_seqlens=torch.tensor([0, 4, 2, 6]))
    with pytest.raises(ValueError, match="cu_seqlens must end at"):
        linear_scan(p, p, cu_seqlens=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        linear_scan(p, p, cu_seqlens=torch.tensor([1, 6]))
    with pytest.raises(TypeError, match="cu_seqlens must be an int32 or int64"):
        linear_scan(p, p, cu_seqlens=torch.tensor([0.0, 6.0]))
    with pytest.raises(ValueError, match="backend must be one of"):
        linear_scan(a, a, backend="cuda")
    with pytest.raises(TypeError, match="reverse must be a bool"):
        linear_scan(a, a, reverse=1)


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    from graphseq.kernels._backend import HAS_TRITON

    if not HAS_TRITON:
        pytest.skip("triton not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        linear_scan(torch.rand(1, 3, 2), torch.rand(1, 3, 2), backend="triton")


@requires_triton
def test_triton_matches_torch_path_float32():
    a, b, h0 = _inputs(3, 333, (5,), dtype=torch.float32, with_h0=True)
    h1, l1 = linear_scan(a, b, h0, backend="triton")
    h2, l2 = linear_scan(a, b, h0, backend="torch")
    torch.testing.assert_close(h1, h2, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(l1, l2, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", (*FAST_BACKENDS, "reference"))
@pytest.mark.parametrize("reverse", [False, True])
def test_a_non_finite_gate_does_not_reach_the_neighbours_gradients(backend, reverse):
    """A NaN / inf gate at a sequence's first step (forward; last step in reverse) multiplies
    only its own sequence's carry; the neighbour's gradients stay finite and exact."""
    cu = torch.tensor([0, 3, 6], device=DEVICE)
    for bad in (float("nan"), float("inf")):
        a = torch.full((1, 6, 1), 0.5, dtype=torch.float64, device=DEVICE)
        a[0, 2 if reverse else 3] = bad  # the step next to the boundary, in the other sequence
        a.requires_grad_()
        b = torch.ones_like(a, requires_grad=True)
        h, _ = linear_scan(a, b, cu_seqlens=cu, reverse=reverse, backend=backend)
        own = slice(3, 6) if reverse else slice(0, 3)  # the sequence without the bad gate
        h[0, own].sum().backward()
        want = [1.0, 1.5, 1.75] if reverse else [1.75, 1.5, 1.0]
        torch.testing.assert_close(
            b.grad[0, own, 0], torch.tensor(want, dtype=torch.float64, device=DEVICE)
        )
        assert torch.isfinite(a.grad[0, own]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy
def test_large_gates_with_a_zero_state_or_a_reset_stay_finite(dtype, reverse, backend):
    # |a| > 1 is allowed: the product of the gates over a span overflows although the loop's
    # state, which is exactly 0 until the first input, stays finite; an exactly-zero gate
    # after such a span is still an exact reset (no 0 * inf = NaN)
    big = 1e5 if dtype == torch.float32 else 1e40
    T = 64
    a = torch.full((2, T, 3), big, dtype=dtype, device=DEVICE)
    a[:, :, 1] = -big
    b = torch.zeros(2, T, 3, dtype=dtype, device=DEVICE)
    end = 0 if reverse else T - 1
    b[0, end] = 1.0
    reset = 20 if reverse else 43
    a[1, reset] = 0.0
    b[1, reset] = 2.0
    a = a.requires_grad_()
    b = b.requires_grad_()
    h, h_last = linear_scan(a, b, reverse=reverse, backend=backend)
    h_ref, last_ref = linear_scan(a, b, reverse=reverse, backend="reference")
    assert torch.isfinite(h_ref[0]).all() and torch.isfinite(h_ref[1, reset]).all()
    assert torch.equal(h[0], h_ref[0]) and torch.equal(h[1, reset], h_ref[1, reset])
    assert torch.equal(h_last[0], last_ref[0])
    # the adjoint scan runs the same products the other way
    g = torch.zeros_like(h)
    g[0, T - 1 - end] = 1.0
    (da,) = torch.autograd.grad(h, a, g)
    (da_ref,) = torch.autograd.grad(h_ref, a, g)
    assert torch.isfinite(da_ref[0]).all()
    assert_close(da[0], da_ref[0], dtype=dtype, msg="da")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_a_non_finite_gate_at_a_sequence_start_propagates_as_in_the_loop(backend, reverse, packed):
    """From a zero state the loop computes nan * 0 (inf * 0) = NaN; the torch path started the
    sequence from b alone and dropped the NaN (every state finite for a packed sequence)."""
    cu = torch.tensor([0, 3, 11], device=DEVICE) if packed else None
    T = 11 if packed else 8
    start = (10 if reverse else 3) if packed else (T - 1 if reverse else 0)
    for bad in (float("nan"), float("inf")):
        a = torch.full((1, T, 2), 0.5, dtype=torch.float64, device=DEVICE)
        a[0, start, 0] = bad
        b = torch.ones_like(a)
        h, last = linear_scan(a, b, reverse=reverse, cu_seqlens=cu, backend=backend)
        h_ref, last_ref = linear_scan(a, b, reverse=reverse, cu_seqlens=cu, backend="reference")
        assert torch.isnan(h_ref[0, start, 0])
        torch.testing.assert_close(h, h_ref, equal_nan=True)
        torch.testing.assert_close(last, last_ref, equal_nan=True)


@pytest.mark.parametrize("backend", ["torch"])  # the Triton kernel multiplies a zero carry too
@pytest.mark.parametrize("reverse", [False, True])
def test_an_infinite_first_gate_with_h0_stays_infinite_when_packed(backend, reverse):
    """Packed with h0: the loop's state is inf * h0 + b = inf, not NaN (the zero carry was added
    on top of the folded h0, inf * 0 = NaN)."""
    cu = torch.tensor([0, 2, 4], device=DEVICE)
    a = torch.full((1, 4, 1), 0.5, dtype=torch.float64, device=DEVICE)
    a[0, 1 if reverse else 0] = float("inf")
    b = torch.ones_like(a)
    h0 = torch.ones(2, 1, dtype=torch.float64, device=DEVICE)
    h, last = linear_scan(a, b, h0, reverse=reverse, cu_seqlens=cu, backend=backend)
    h_ref, last_ref = linear_scan(a, b, h0, reverse=reverse, cu_seqlens=cu, backend="reference")
    assert torch.isinf(h_ref[0, :2]).all()
    torch.testing.assert_close(h, h_ref, equal_nan=True)
    torch.testing.assert_close(last, last_ref, equal_nan=True)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy
def test_the_carried_state_meets_the_gates_one_step_at_a_time(backend, reverse):
    """The state entering a tile (h0, or the previous tile's last state) is multiplied by one
    gate at a time, as in the loop: a product of gates that underflows while the state stays
    in range must not zero it, and an infinite gate must give the loop's inf, not NaN."""

    def run(a, b, h0):
        a, b = (torch.tensor(t, device=DEVICE).view(1, -1, 1) for t in (a, b))
        if reverse:
            a, b = a.flip(1), b.flip(1)
        h0 = torch.tensor([[h0]], device=DEVICE)
        got = linear_scan(a, b, h0, reverse=reverse, backend=backend)
        want = linear_scan(a, b, h0, reverse=reverse, backend="reference")
        return got, want

    # float32 states 1e20 -> 1e-30 -> 1e20: the loop's are all normal numbers, while the
    # product of the first six gates (1e-60) underflows to 0
    (h, last), (h_ref, last_ref) = run([1e-10] * 5 + [1e10] * 5, [0.0] * 10, 1e20)
    assert last_ref.item() > 1e19
    torch.testing.assert_close(h, h_ref, atol=0, rtol=1e-4)
    torch.testing.assert_close(last, last_ref, atol=0, rtol=1e-4)
    # an infinite gate after a finite state: inf in the loop, from h0 and from a zero state
    inf = float("inf")
    for a, b, h0 in (([2.0, inf], [-1.0, 1.0], 1.0), ([0.0, inf], [1.0, 1.0], 0.0),
                     ([2.0, inf], [1.0, 1.0], 0.0)):  # fmt: skip
        (h, last), (h_ref, last_ref) = run(a, b, h0)
        assert torch.isinf(last_ref).all()
        torch.testing.assert_close(h, h_ref, equal_nan=True)
        torch.testing.assert_close(last, last_ref, equal_nan=True)
