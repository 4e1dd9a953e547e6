"""Tests of graphseq.kernels.chunked_matrix_scan: every fast path against the loop reference."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graphseq.kernels import chunked_matrix_scan
from graphseq.testing import DEVICE, FAST_BACKENDS, assert_close, requires_triton

F64 = torch.float64


def make_inputs(
    B=2,
    T=20,
    H=2,
    K=5,
    V=7,
    *,
    dtype=F64,
    zero_frac=0.05,
    seed=0,
    device=DEVICE,
):
    """Random inputs with mixed-sign gates, some exactly zero (log_f = -inf)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    f = torch.rand(B, T, H, generator=gen, dtype=F64) * 2 - 1
    f[torch.rand(B, T, H, generator=gen) < zero_frac] = 0.0
    out = dict(
        q=randn(B, T, H, K),
        k=randn(B, T, H, K) / math.sqrt(K),
        v=randn(B, T, H, V),
        log_f=f.abs().log(),
        i=randn(B, T, H),
        f_sign=f.sign(),
        m=randn(B, T, H),
        d=randn(B, T, H),
        h0=randn(B, H, K, V),
    )
    return {name: x.to(device=device, dtype=dtype) for name, x in out.items()}


def call(inp, *, exclusive=False, backend, **kw):
    """Call the op with the tensors of ``inp`` (dropping m/d unless ``exclusive``)."""
    args = dict(inp)
    if not exclusive:
        args.pop("m", None)
        args.pop("d", None)
    args.update(kw)
    q, k, v, log_f = (args.pop(n) for n in ("q", "k", "v", "log_f"))
    return chunked_matrix_scan(q, k, v, log_f, backend=backend, **args)


def to64(inp):
    return {n: x.to(F64) for n, x in inp.items()}


# --------------------------------------------------------------------------------------------
# forward against the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
@pytest.mark.parametrize("T", [1, 63, 130])
@pytest.mark.parametrize("chunk_size", [64, 16])
def test_matches_reference_float64(backend, exclusive, T, chunk_size):
    inp = make_inputs(B=2, T=T, H=2, K=5, V=7, seed=T)
    y_ref, h_ref = call(inp, exclusive=exclusive, backend="reference")
    y, h = call(inp, exclusive=exclusive, backend=backend, chunk_size=chunk_size)
    assert y.dtype == F64 and h.dtype == F64
    assert y.shape == (2, T, 2, 7) and h.shape == (2, 2, 5, 7)
    assert_close(y, y_ref)
    assert_close(h, h_ref)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
def test_matches_reference_float32(backend, exclusive):
    inp = make_inputs(B=2, T=75, H=2, K=8, V=6, dtype=torch.float32, seed=1)
    y_ref, h_ref = call(to64(inp), exclusive=exclusive, backend="reference")
    y, h = call(inp, exclusive=exclusive, backend=backend, chunk_size=32)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    assert_close(y, y_ref)
    assert_close(h, h_ref)


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 2),
    T=st.integers(0, 40),
    H=st.integers(1, 2),
    K=st.integers(1, 6),
    V=st.integers(1, 6),
    chunk_size=st.integers(1, 20),
    exclusive=st.booleans(),
    zero_frac=st.sampled_from([0.0, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_torch_path_property(B, T, H, K, V, chunk_size, exclusive, zero_frac, seed):
    """Any shape, chunk size and gate pattern: the torch path equals the loop."""
    inp = make_inputs(B=B, T=T, H=H, K=K, V=V, zero_frac=zero_frac, seed=seed)
    y_ref, h_ref = call(inp, exclusive=exclusive, backend="reference")
    y, h = call(inp, exclusive=exclusive, backend="torch", chunk_size=chunk_size)
    assert_close(y, y_ref)
    assert_close(h, h_ref)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("chunk_size", [1, 5, 20, 128])
def test_any_chunk_size(backend, chunk_size):
    """Chunk sizes that are not powers of two, 1, and larger than T."""
    inp = make_inputs(B=1, T=23, H=1, K=4, V=3, seed=2)
    y_ref, h_ref = call(inp, exclusive=True, backend="reference")
    y, h = call(inp, exclusive=True, backend=backend, chunk_size=chunk_size)
    assert_close(y, y_ref)
    assert_close(h, h_ref)


@pytest.mark.parametrize("backend", [None, *FAST_BACKENDS])
def test_no_optional_gates(backend):
    """i=None means 1, f_sign=None means positive, h0=None means zeros; backend=None works."""
    inp = make_inputs(B=2, T=30, H=2, K=4, V=4, seed=3)
    q, k, v = inp["q"], inp["k"], inp["v"]
    log_f = torch.rand(2, 30, 2, dtype=F64, device=DEVICE).log()
    y_ref, h_ref = chunked_matrix_scan(q, k, v, log_f, backend="reference")
    y, h = chunked_matrix_scan(q, k, v, log_f, chunk_size=16, backend=backend)
    assert_close(y, y_ref)
    assert_close(h, h_ref)
    ones = torch.ones_like(log_f)
    y1, h1 = chunked_matrix_scan(
        q, k, v, log_f, ones, f_sign=ones, h0=torch.zeros_like(h), chunk_size=16, backend=backend
    )
    assert_close(y1, y_ref)
    assert_close(h1, h_ref)


# --------------------------------------------------------------------------------------------
# gates: negative, exactly zero, the exclusive form
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_negative_gates(backend):
    """f = -1 exactly flips the state every step; random negative gates match the loop."""
    inp = make_inputs(B=1, T=37, H=2, K=3, V=4, zero_frac=0.0, seed=4)
    inp["log_f"] = torch.zeros_like(inp["log_f"])
    inp["f_sign"] = -torch.ones_like(inp["f_sign"])
    y_ref, h_ref = call(inp, backend="reference")
    y, h = call(inp, backend=backend, chunk_size=16)
    assert_close(y, y_ref)
    assert_close(h, h_ref)
    # the sign matters: with positive gates the answer is different
    y_pos, _ = call(inp, backend=backend, chunk_size=16, f_sign=None)
    assert not torch.allclose(y_pos, y)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
def test_zero_gates_reset_exactly(backend, exclusive):
    """log_f = -inf: no NaN, and everything after the reset forgets the past exactly."""
    T, r = 40, 23
    inp = make_inputs(B=1, T=T, H=2, K=4, V=3, zero_frac=0.0, seed=5)
    log_f = inp["log_f"].clone()
    log_f[:, 0] = float("-inf")  # zero gate on the very first step (kills h0)
    log_f[:, 8:24] = float("-inf")  # a whole run of zero gates, over a chunk boundary
    inp["log_f"] = log_f
    y, h = call(inp, exclusive=exclusive, backend=backend, chunk_size=8)
    assert not torch.isnan(y).any() and not torch.isnan(h).any()
    y_ref, h_ref = call(inp, exclusive=exclusive, backend="reference")
    assert_close(y, y_ref)
    assert_close(h, h_ref)
    # the suffix from the reset step onwards, started from garbage, gives the same outputs
    # (exclusive: from the step after it, since y_r still reads the state before the reset)
    s = r + 1 if exclusive else r
    suffix = {n: (x[:, s:] if n != "h0" else x) for n, x in inp.items()}
    if not exclusive:
        suffix["h0"] = torch.full_like(inp["h0"], 1e3)
    else:
        # the state entering step r + 1 is i_r k_r v_r^T only
        kv = inp["k"][:, r, :, :, None] * inp["v"][:, r, :, None, :]
        suffix["h0"] = inp["i"][:, r, :, None, None] * kv
    y_s, h_s = call(suffix, exclusive=exclusive, backend=backend, chunk_size=8)
    assert_close(y_s, y[:, s:])
    assert_close(h_s, h)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_exclusive_with_m_f_d_i_equals_inclusive(backend):
    inp = make_inputs(B=1, T=50, H=2, K=4, V=5, seed=6)
    f = torch.where(inp["f_sign"] < 0, -inp["log_f"].exp(), inp["log_f"].exp())
    y_inc, h_inc = call(inp, backend=backend, chunk_size=16)
    y_exc, h_exc = call(inp, exclusive=True, backend=backend, chunk_size=16, m=f, d=inp["i"])
    assert_close(y_exc, y_inc)
    assert_close(h_exc, h_inc)


# --------------------------------------------------------------------------------------------
# states, packed sequences, empty input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_non_contiguous_inputs(backend):
    inp = make_inputs(B=2, T=21, H=2, K=4, V=3, seed=19)
    # the same values, laid out [B, H, T, ...] underneath
    strided = {
        n: (x.transpose(1, 2).contiguous().transpose(1, 2) if x.dim() >= 3 and n != "h0" else x)
        for n, x in inp.items()
    }
    assert not strided["q"].is_contiguous()
    y_ref, h_ref = call(inp, exclusive=True, backend="reference")
    y, h = call(strided, exclusive=True, backend=backend, chunk_size=8)
    assert_close(y, y_ref)
    assert_close(h, h_ref)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_streaming_with_h0(backend):
    """Two calls chained through h0 / h_last equal one call over the whole sequence."""
    inp = make_inputs(B=1, T=45, H=2, K=4, V=6, seed=7)
    y, h = call(inp, exclusive=True, backend=backend, chunk_size=16)
    first = {n: (x[:, :19] if n != "h0" else x) for n, x in inp.items()}
    second = {n: (x[:, 19:] if n != "h0" else x) for n, x in inp.items()}
    y1, h1 = call(first, exclusive=True, backend=backend, chunk_size=16)
    second["h0"] = h1
    y2, h2 = call(second, exclusive=True, backend=backend, chunk_size=16)
    assert_close(torch.cat([y1, y2], dim=1), y)
    assert_close(h2, h)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
def test_varlen_matches_dense_per_sequence(backend, exclusive):
    lengths = [3, 0, 1, 40, 17]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=DEVICE)
    T, N = sum(lengths), len(lengths)
    inp = make_inputs(B=1, T=T, H=2, K=4, V=3, seed=8)
    inp["h0"] = make_inputs(B=N, T=1, H=2, K=4, V=3, seed=9)["h0"]
    y, h = call(inp, exclusive=exclusive, backend=backend, cu_seqlens=cu, chunk_size=16)
    assert y.shape == (1, T, 2, 3) and h.shape == (N, 2, 4, 3)
    for n in range(N):
        lo, hi = int(cu[n]), int(cu[n + 1])
        one = {name: (x[:, lo:hi] if name != "h0" else x[n : n + 1]) for name, x in inp.items()}
        y_n, h_n = call(one, exclusive=exclusive, backend=backend, chunk_size=16)
        assert_close(y[:, lo:hi], y_n, msg=f"sequence {n}")
        assert_close(h[n : n + 1], h_n, msg=f"sequence {n}")
    assert_close(h[1], inp["h0"][1])  # the empty sequence keeps its h0
    y_ref, h_ref = call(inp, exclusive=exclusive, backend="reference", cu_seqlens=cu)
    assert_close(y, y_ref)
    assert_close(h, h_ref)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_nan_stays_in_its_sequence(backend):
    """NaN in one packed sequence (or batch row) never reaches another one."""
    cu = torch.tensor([0, 10, 10, 30, 45], device=DEVICE)
    inp = make_inputs(B=1, T=45, H=2, K=3, V=3, seed=16)
    inp["h0"] = make_inputs(B=4, T=1, H=2, K=3, V=3, seed=17)["h0"]
    clean_y, clean_h = call(inp, exclusive=True, backend=backend, cu_seqlens=cu, chunk_size=8)
    inp["k"][0, 15, 1, 0] = float("nan")
    y, h = call(inp, exclusive=True, backend=backend, cu_seqlens=cu, chunk_size=8)
    assert torch.isnan(y[:, 15:30]).any() and torch.isnan(h[2]).any()
    for lo, hi in ((0, 10), (30, 45)):
        assert_close(y[:, lo:hi], clean_y[:, lo:hi])
    for n in (0, 1, 3):
        assert_close(h[n], clean_h[n])
    dense = make_inputs(B=2, T=20, H=2, K=3, V=3, seed=18)
    dense["v"][0, 3, 0, 0] = float("nan")
    y, h = call(dense, backend=backend, chunk_size=8)
    assert torch.isfinite(y[1]).all() and torch.isfinite(h[1]).all()


@pytest.mark.parametrize("backend", ["reference", *FAST_BACKENDS])
def test_empty(backend):
    inp = make_inputs(B=2, T=0, H=2, K=4, V=3)
    y, h = call(inp, backend=backend)
    assert y.shape == (2, 0, 2, 3)
    assert_close(h, inp["h0"])
    inp.pop("h0")
    y, h = call(inp, backend=backend)
    assert h.shape == (2, 2, 4, 3) and not h.any()
    # packed: every sequence empty, and no sequence at all
    one = make_inputs(B=1, T=0, H=2, K=4, V=3)
    one.pop("h0")
    cu = torch.zeros(3, dtype=torch.long, device=DEVICE)
    y, h = call(one, backend=backend, cu_seqlens=cu)
    assert y.shape == (1, 0, 2, 3) and h.shape == (2, 2, 4, 3) and not h.any()
    y, h = call(one, backend=backend, cu_seqlens=cu[:1])
    assert h.shape == (0, 2, 4, 3)


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------

GRAD_NAMES = ("q", "k", "v", "log_f", "i", "h0", "m", "d")


def _grads(inp, exclusive, backend, seed=0, **kw):
    leaves = {n: x.clone().requires_grad_(n in GRAD_NAMES) for n, x in inp.items()}
    y, h = call(leaves, exclusive=exclusive, backend=backend, **kw)
    gen = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=gen, dtype=F64).to(y)
    gh = torch.randn(h.shape, generator=gen, dtype=F64).to(h)
    names = [n for n in GRAD_NAMES if exclusive or n not in ("m", "d")]
    grads = torch.autograd.grad((y, h), [leaves[n] for n in names], (gy, gh))
    return dict(zip(names, grads))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
def test_gradients_match_reference(backend, exclusive):
    inp = make_inputs(B=2, T=37, H=2, K=4, V=3, zero_frac=0.1, seed=10)
    ref = _grads(inp, exclusive, "reference")
    got = _grads(inp, exclusive, backend, chunk_size=16)
    for name, g in got.items():
        assert not torch.isnan(g).any(), name
        assert_close(g, ref[name], msg=f"grad of {name}")


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gradients_varlen(backend):
    cu = torch.tensor([0, 5, 5, 6, 30], device=DEVICE)
    inp = make_inputs(B=1, T=30, H=2, K=3, V=4, seed=11)
    inp["h0"] = make_inputs(B=4, T=1, H=2, K=3, V=4, seed=12)["h0"]
    ref = _grads(inp, True, "reference", cu_seqlens=cu)
    got = _grads(inp, True, backend, cu_seqlens=cu, chunk_size=8)
    for name, g in got.items():
        assert_close(g, ref[name], msg=f"grad of {name}")


@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
def test_gradcheck_torch_path(exclusive):
    inp = make_inputs(B=1, T=7, H=1, K=2, V=3, zero_frac=0.0, seed=13)
    names = [n for n in GRAD_NAMES if exclusive or n not in ("m", "d")]
    f_sign = inp["f_sign"]

    def fn(*xs):
        args = dict(zip(names, xs))
        return call(args, exclusive=exclusive, backend="torch", f_sign=f_sign, chunk_size=3)

    xs = tuple(inp[n].clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(fn, xs)


# --------------------------------------------------------------------------------------------
# low precision
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(backend, dtype):
    inp = make_inputs(B=1, T=40, H=2, K=4, V=4, dtype=dtype, seed=14)
    inp["h0"] = inp["h0"].float()  # the state dtype of half inputs
    y_ref, h_ref = call(to64(inp), exclusive=True, backend="reference")
    y, h = call(inp, exclusive=True, backend=backend, chunk_size=16)
    assert y.dtype == dtype and h.dtype == torch.float32
    assert_close(y, y_ref)
    assert_close(h, h_ref, dtype=dtype)
    # h0 may also come in the input dtype
    inp["h0"] = inp["h0"].to(dtype)
    call(inp, exclusive=True, backend=backend, chunk_size=16)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------

BAD = [
    (dict(q=torch.zeros(2, 4, 2, 3, 1)), "q"),
    (dict(q=[1.0]), "q"),
    (dict(q=torch.zeros(2, 4, 2, 3, dtype=torch.long)), "q"),
    (dict(k=torch.zeros(2, 4, 2, 5)), "k"),
    (dict(k=torch.zeros(2, 4, 2, 3, dtype=F64)), "k"),
    (dict(k=torch.zeros(2, 4, 2, 3, device="meta")), "k"),
    (dict(v=torch.zeros(2, 5, 2, 3)), "v"),
    (dict(v=torch.zeros(2, 4, 2)), "v"),
    (dict(log_f=torch.zeros(2, 4, 3)), "log_f"),
    (dict(log_f=None), "log_f"),  # required, unlike the other gates
    (dict(i=torch.zeros(2, 4)), "i"),
    (dict(f_sign=torch.zeros(2, 4, 2, dtype=F64)), "f_sign"),
    (dict(m=torch.zeros(2, 4, 2)), "d"),
    (dict(d=torch.zeros(2, 4, 2)), "m"),
    (dict(h0=torch.zeros(2, 2, 3, 4)), "h0"),
    (dict(h0=torch.zeros(2, 2, 3, 3, dtype=F64)), "h0"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(chunk_size=2.0), "chunk_size"),
    (dict(cu_seqlens=torch.tensor([0, 4])), "cu_seqlens"),  # B = 2
    (dict(backend="cuda"), "backend"),
]


@pytest.mark.parametrize("bad, name", BAD, ids=[f"{n}-{j}" for j, (_, n) in enumerate(BAD)])
def test_bad_input(bad, name):
    args = dict(
        q=torch.zeros(2, 4, 2, 3),
        k=torch.zeros(2, 4, 2, 3),
        v=torch.zeros(2, 4, 2, 3),
        log_f=torch.zeros(2, 4, 2),
    )
    args.update(bad)
    q, k, v, log_f = (args.pop(n) for n in ("q", "k", "v", "log_f"))
    with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b"):
        chunked_matrix_scan(q, k, v, log_f, **args)


@pytest.mark.parametrize(
    "cu, match",
    [
        (torch.tensor([0, 2]), "cu_seqlens"),  # does not end at T
        (torch.tensor([1, 4]), "cu_seqlens"),  # does not start at 0
        (torch.tensor([0, 3, 2, 4]), "cu_seqlens"),  # decreasing
        (torch.tensor([0.0, 4.0]), "cu_seqlens"),  # not integer
        (torch.tensor([[0, 4]]), "cu_seqlens"),  # not 1-D
    ],
)
def test_bad_cu_seqlens(cu, match):
    q = torch.zeros(1, 4, 2, 3)
    with pytest.raises((ValueError, TypeError), match=match):
        chunked_matrix_scan(q, q, q, torch.zeros(1, 4, 2), cu_seqlens=cu)


def test_bad_h0_with_cu_seqlens():
    """With cu_seqlens, h0 has one state per sequence."""
    q = torch.zeros(1, 4, 2, 3)
    cu = torch.tensor([0, 1, 4])
    with pytest.raises(ValueError, match="h0"):
        chunked_matrix_scan(
            q, q, q, torch.zeros(1, 4, 2), cu_seqlens=cu, h0=torch.zeros(1, 2, 3, 3)
        )


@requires_triton
def test_triton_large_tiles_and_chunks():
    """The Triton path handles K, V larger than one tile and more than 64 rows per chunk."""
    inp = make_inputs(B=1, T=70, H=1, K=70, V=20, seed=15)
    y_ref, h_ref = call(inp, exclusive=True, backend="reference")
    y, h = call(inp, exclusive=True, backend="triton", chunk_size=128)
    assert_close(y, y_ref)
    assert_close(h, h_ref)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_gradient_of_h0_through_an_empty_sequence(backend, packed):
    """T = 0 (or only empty packed sequences): y has no graph and dh0 = dh_last."""
    inp = make_inputs(B=1 if packed else 2, T=0, H=2, K=3, V=4, seed=3)
    h0 = torch.randn(2, 2, 3, 4, dtype=F64, device=DEVICE, requires_grad=True)
    kw = dict(h0=h0)
    if packed:
        kw["cu_seqlens"] = torch.tensor([0, 0, 0], device=DEVICE)
    y, h = call({n: x for n, x in inp.items() if n != "h0"}, backend=backend, **kw)
    assert y.shape[1] == 0
    w = torch.randn_like(h)
    (h * w).sum().backward()
    assert_close(h0.grad, w)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gradient_of_the_readout_gates_only(backend):
    """With the exclusive readout only m and d need a gradient; h_last does not depend on
    them, and the gradients equal the reference's."""
    inp = make_inputs(B=2, T=9, H=2, K=3, V=4, seed=8)
    grads = []
    for b in ("reference", backend):
        m = inp["m"].clone().requires_grad_(True)
        d = inp["d"].clone().requires_grad_(True)
        y, _ = call({**inp, "m": m, "d": d}, exclusive=True, backend=b, chunk_size=4)
        (y * torch.linspace(-1, 1, y.numel(), dtype=F64, device=DEVICE).view_as(y)).sum().backward()
        grads.append((m.grad, d.grad))
    assert_close(grads[1][0], grads[0][0])
    assert_close(grads[1][1], grads[0][1])


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_reset_after_an_overflowing_gate_product(backend):
    # |f| > 1 for 390 steps with no input (the state is exactly 0), then an exact reset: the
    # product of the gates over the chunks overflows, the loop's state does not
    T, dtype = 400, torch.float32
    q = torch.ones(1, T, 1, 2, dtype=dtype, device=DEVICE)
    k = torch.zeros(1, T, 1, 2, dtype=dtype, device=DEVICE)
    k[:, 390:] = 1.0
    v = torch.ones(1, T, 1, 2, dtype=dtype, device=DEVICE)
    log_f = torch.full((1, T, 1), 3.0, dtype=dtype, device=DEVICE)
    log_f[:, 390] = float("-inf")
    y, h = chunked_matrix_scan(q, k, v, log_f, chunk_size=8, backend=backend)
    y_ref, h_ref = chunked_matrix_scan(q, k, v, log_f, backend="reference")
    assert torch.isfinite(y_ref).all() and torch.isfinite(h_ref).all()
    assert_close(y, y_ref, dtype=dtype, msg="y")
    assert_close(h, h_ref, dtype=dtype, msg="h_last")


def test_double_backward_is_refused_on_the_torch_path_and_documented():
    """The torch path's inter-chunk scan is linear_scan's first-order autograd.Function: a
    second derivative through k raises there (the docs said only the Triton path did)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 10, 1, 2, generator=g, dtype=F64, requires_grad=True)
               for _ in range(3))  # fmt: skip
    log_f = -torch.rand(1, 10, 1, generator=g, dtype=F64)
    y, _ = chunked_matrix_scan(q, k, v, log_f, chunk_size=4, backend="reference")
    (gk,) = torch.autograd.grad(y.square().sum(), k, create_graph=True)
    torch.autograd.grad(gk.sum(), q)  # the reference records a graph
    y, _ = chunked_matrix_scan(q, k, v, log_f, chunk_size=4, backend="torch")
    with pytest.raises(RuntimeError, match="once_differentiable"):
        torch.autograd.grad(y.square().sum(), k, create_graph=True)
    doc = " ".join(chunked_matrix_scan.__doc__.split())
    assert "first-order gradients only" in doc and "double backward" in doc
