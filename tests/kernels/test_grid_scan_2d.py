"""grid_scan_2d: the fast paths (wavefront, tiled, dense; Triton in the interpreter on CPU)
against the loop reference, gradients, edges, bad input."""

import doctest
import sys
from functools import partial

import pytest
import torch

from graphseq.kernels.grid_scan_2d import chunked, dense, grid_scan_2d, wavefront
from graphseq.nn.plstm.plstm1d import plstm1d_reference
from graphseq.testing import assert_close, requires_triton


@pytest.fixture(autouse=True)
def _one_thread():
    """Many small ops: on a shared, loaded CPU, extra intra-op threads only spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


GATES = ("t_rl", "t_ru", "t_du", "t_dl", "s_r", "s_d", "m_l", "m_u", "d")

#: the exact fast paths behind backend="torch" (the public function picks by K * V and X * Y)
FAST = {
    "wavefront": wavefront.grid_scan_2d,
    "dense": dense.grid_scan_2d,
    "tiled2": partial(chunked.grid_scan_2d, tile=2),
    "tiled3": partial(chunked.grid_scan_2d, tile=3),
    "tiled6": partial(chunked.grid_scan_2d, tile=6),
}


def make(B, X, Y, H, K, V, dtype=torch.float64, zero_frac=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    q, k, v = rnd(B, X, Y, H, K), rnd(B, X, Y, H, K), rnd(B, X, Y, H, V)
    gates = {}
    for name in GATES:
        t = torch.rand(B, X, Y, H, generator=g, dtype=dtype) * 2 - 1  # negative allowed
        t[torch.rand(t.shape, generator=g) < zero_frac] = 0.0  # and exact zeros
        gates[name] = t
    return q, k, v, gates


def run(q, k, v, gates, backend, **kw):
    if backend in FAST:
        return FAST[backend](q, k, v, *(gates[n] for n in GATES), **kw)
    return grid_scan_2d(q, k, v, *(gates[n] for n in GATES), backend=backend, **kw)


@pytest.mark.parametrize("shape", [(5, 7), (7, 5), (1, 9), (9, 1), (1, 1), (4, 4), (3, 8)])
@pytest.mark.parametrize("drop", [(), ("t_dl",), ("t_ru", "d")])
def test_fast_paths_match_reference_float64(shape, drop):
    X, Y = shape
    q, k, v, gates = make(2, X, Y, 3, 4, 5)
    for name in drop:
        gates[name] = None
    h0_left = torch.randn(2, Y, 3, 4, 5, dtype=torch.float64)
    h0_top = torch.randn(2, X, 3, 4, 5, dtype=torch.float64)
    for kw in ({}, {"h0_left": h0_left, "h0_top": h0_top}):
        h_ref, (r_ref, b_ref) = run(q, k, v, gates, "reference", **kw)
        for path in ("torch", *FAST):
            h, (r, b) = run(q, k, v, gates, path, **kw)
            assert h.shape == (2, X, Y, 3, 5) and r.shape == (2, Y, 3, 4, 5)
            assert b.shape == (2, X, 3, 4, 5)
            assert_close(h, h_ref, msg=path)
            assert_close(r, r_ref, msg=path)
            assert_close(b, b_ref, msg=path)


@pytest.mark.parametrize("K", [3, 24])  # below and above the tiled path's threshold
def test_float32_and_half_inputs(K):
    q, k, v, gates = make(2, 6, 5, 2, K, 24)
    h_ref, (r_ref, _) = run(q, k, v, gates, "reference")
    f32 = {n: t.float() for n, t in gates.items()}
    h, (r, _) = run(q.float(), k.float(), v.float(), f32, "torch")
    assert h.dtype == torch.float32 and r.dtype == torch.float32
    assert_close(h, h_ref)
    assert_close(r, r_ref)
    bf = {n: t.bfloat16() for n, t in gates.items()}
    h, (r, _) = run(q.bfloat16(), k.bfloat16(), v.bfloat16(), bf, "torch")
    assert h.dtype == torch.bfloat16 and r.dtype == torch.float32  # state in float32
    h32, _ = run(*(t.bfloat16().float() for t in (q, k, v)),
                 {n: t.bfloat16().float() for n, t in gates.items()}, "reference")  # fmt: skip
    torch.testing.assert_close(h.float(), h32, atol=5e-2, rtol=5e-2)


def test_one_row_is_plstm1d():
    """A 1 x Y grid is a chain along y: C_d with T_du, S_d, M_u; an X x 1 grid uses C_r."""
    q, k, v, gates = make(2, 1, 11, 3, 4, 4)
    h, (_, bottom) = run(q, k, v, gates, "torch")
    g = {n: t[:, 0] for n, t in gates.items()}
    h1, last = plstm1d_reference(q[:, 0], k[:, 0], v[:, 0], g["s_d"], g["t_du"], g["m_u"], g["d"])
    assert_close(h[:, 0], h1)
    assert_close(bottom[:, 0], last)
    q, k, v, gates = make(2, 11, 1, 3, 4, 4, seed=1)
    h, (right, _) = run(q, k, v, gates, "torch")
    g = {n: t[:, :, 0] for n, t in gates.items()}
    h1, last = plstm1d_reference(
        q[:, :, 0], k[:, :, 0], v[:, :, 0], g["s_r"], g["t_rl"], g["m_l"], g["d"]
    )
    assert_close(h[:, :, 0], h1)
    assert_close(right[:, 0], last)


@pytest.mark.parametrize("path", ["wavefront", "tiled2", "dense", "gating_matrix"])
def test_path_sum_form_on_a_small_grid(path):
    """The recurrence unrolled: h(n) = sum_{n'} G[n, n'] (q_n . k_n') v_n' with G a path sum."""
    X, Y = 3, 4
    q, k, v, g = make(1, X, Y, 1, 2, 3, zero_frac=0.0, seed=3)
    g = {n: t[0, :, :, 0] for n, t in g.items()}

    def paths(x0, y0, edge, x1, y1):
        """Sum over paths of the product of transitions carrying the state that leaves
        (x0, y0) along ``edge`` ("r" or "d") into cell (x1, y1), times the mark there."""
        x, y = (x0 + 1, y0) if edge == "r" else (x0, y0 + 1)
        if x > x1 or y > y1:
            return 0.0
        mark = g["m_l"] if edge == "r" else g["m_u"]
        total = mark[x, y] if (x, y) == (x1, y1) else 0.0
        if (x, y) != (x1, y1):
            same, cross = ("t_rl", "t_dl") if edge == "r" else ("t_du", "t_ru")
            total = total + g[same][x, y] * paths(x, y, edge, x1, y1)
            other = "d" if edge == "r" else "r"
            total = total + g[cross][x, y] * paths(x, y, other, x1, y1)
        return total

    h = torch.zeros(X, Y, 3, dtype=torch.float64)
    for x1 in range(X):
        for y1 in range(Y):
            for x0 in range(X):
                for y0 in range(Y):
                    qk = (q[0, x1, y1, 0] * k[0, x0, y0, 0]).sum()
                    if (x0, y0) == (x1, y1):
                        G = g["d"][x1, y1]
                    else:
                        G = g["s_r"][x0, y0] * paths(x0, y0, "r", x1, y1)
                        G = G + g["s_d"][x0, y0] * paths(x0, y0, "d", x1, y1)
                    h[x1, y1] += G * qk * v[0, x0, y0, 0]
    gates = {n: t[None, :, :, None] for n, t in g.items()}
    if path == "gating_matrix":
        out = attention(dense.gating_matrix(*(gates[n] for n in GATES)), q, k, v)
    else:
        out, _ = run(q, k, v, gates, path)
    assert_close(out[0, :, :, 0], h)


def attention(G, q, k, v):
    """``(G * q k^T) v`` per (batch, head) for ``G`` ``[B, H, N, N]`` over row-major cells."""
    B, X, Y, H, _ = q.shape

    def flat(t):
        return t.permute(0, 3, 1, 2, 4).reshape(B, H, X * Y, t.shape[-1])

    h = (G * (flat(q) @ flat(k).transpose(-1, -2))) @ flat(v)
    return h.reshape(B, H, X, Y, v.shape[-1]).permute(0, 2, 3, 1, 4)


@pytest.mark.parametrize("shape", [(5, 7), (7, 5), (1, 9), (9, 1), (1, 1), (3, 8), (0, 4)])
@pytest.mark.parametrize("drop", [(), ("t_dl",), ("t_ru", "d")])
def test_gating_matrix_matches_reference(shape, drop):
    """The dense form h = (G * q k^T) v, G from the coefficient-vector recurrence, equals the
    loop for zero entering states; G is strictly upstream-only apart from D on the diagonal."""
    X, Y = shape
    q, k, v, gates = make(2, X, Y, 3, 4, 5)
    for name in drop:
        gates[name] = None
    G = dense.gating_matrix(*(gates[n] for n in GATES))
    assert G.shape == (2, 3, X * Y, X * Y) and G.dtype == torch.float64
    h_ref, _ = run(q, k, v, gates, "reference")
    assert_close(attention(G, q, k, v), h_ref)
    # cell (x1, y1) can only read (x0, y0) with x0 <= x1 and y0 <= y1
    xs, ys = torch.arange(X).repeat_interleave(Y), torch.arange(Y).repeat(X)
    unreachable = (xs[None, :] > xs[:, None]) | (ys[None, :] > ys[:, None])
    assert torch.all(G[..., unreachable] == 0)
    diag = G.diagonal(dim1=-2, dim2=-1)
    expect = torch.zeros_like(diag) if gates["d"] is None else gates["d"].flatten(1, 2).mT
    assert torch.equal(diag, expect)


def test_gating_matrix_with_shared_gate_pairs():
    """One tensor passed for T_rl and T_ru, T_du and T_dl, M_l and M_u (P-mode) takes the
    summed-state shortcut; the result still equals the loop."""
    q, k, v, gates = make(2, 5, 6, 2, 3, 3, seed=7)
    gates.update(t_ru=gates["t_rl"], t_dl=gates["t_du"], m_u=gates["m_l"])
    h_ref, _ = run(q, k, v, gates, "reference")
    assert_close(attention(dense.gating_matrix(*(gates[n] for n in GATES)), q, k, v), h_ref)
    # only some pairs shared, and a gradient through the shortcut
    gates = make(1, 3, 4, 1, 2, 2, seed=8)[3]
    t = gates["t_rl"].requires_grad_()
    m = gates["m_l"].requires_grad_()

    def f(t, m):
        g = dict(gates, t_rl=t, t_ru=t, m_l=m, m_u=m)
        return dense.gating_matrix(*(g[n] for n in GATES))

    assert torch.autograd.gradcheck(f, (t, m))
    g = dict(gates, t_ru=gates["t_rl"].detach().clone(), m_u=gates["m_l"].detach().clone())
    assert_close(f(t, m), dense.gating_matrix(*(g[n] for n in GATES)))


def test_method_forces_a_path():
    q, k, v, gates = make(1, 4, 5, 2, 3, 3)
    h_ref, (r_ref, b_ref) = run(q, k, v, gates, "reference")
    for method in ("dense", "tiled", "wavefront"):
        h, (r, b) = grid_scan_2d(q, k, v, *(gates[n] for n in GATES), method=method)
        assert_close(h, h_ref, msg=method)
        assert_close(r, r_ref, msg=method)
        assert_close(b, b_ref, msg=method)
    with pytest.raises(ValueError, match="method must be one of"):
        grid_scan_2d(q, k, v, *(gates[n] for n in GATES), method="fused")


@pytest.mark.parametrize("path", ["torch", "wavefront", "tiled3", "dense"])
def test_continuation_across_tiles(path):
    """Passing the edge states on continues the scan exactly, in both directions."""
    q, k, v, gates = make(2, 7, 6, 2, 3, 3)
    h, (right, bottom) = run(q, k, v, gates, path)

    def part(xs, ys):
        return (
            q[:, xs, ys],
            k[:, xs, ys],
            v[:, xs, ys],
            {n: t[:, xs, ys] for n, t in gates.items()},
        )

    a, b = slice(0, 3), slice(3, None)
    h_top_left, (r_tl, b_tl) = run(*part(a, slice(0, 4)), path)
    h_bottom_left, (r_bl, _) = run(*part(a, slice(4, None)), path, h0_top=b_tl)
    h_top_right, (_, b_tr) = run(*part(b, slice(0, 4)), path, h0_left=r_tl)
    h_bottom_right, (r_br, b_br) = run(*part(b, slice(4, None)), path, h0_left=r_bl, h0_top=b_tr)
    left = torch.cat([h_top_left, h_bottom_left], 2)
    rightpart = torch.cat([h_top_right, h_bottom_right], 2)
    assert_close(torch.cat([left, rightpart], 1), h)
    assert_close(r_br, right[:, 4:])
    assert_close(b_br, bottom[:, 3:])


@pytest.mark.parametrize(
    "path,drop,edge",
    [
        ("wavefront", None, "h0_left"),
        ("tiled2", "t_dl", "h0_left"),
        ("dense", "t_ru", "h0_left"),
        # fast mode (a random projection of the Jacobian) keeps the interpreted kernel quick
        pytest.param("triton", "t_dl", "h0_top", marks=requires_triton),
    ],
)
def test_gradcheck(path, drop, edge):
    q, k, v, gates = make(1, 3, 3, 1, 2, 2)
    if drop:
        gates[drop] = None
    names = [n for n in GATES if gates[n] is not None]
    h0 = torch.randn(1, 3, 1, 2, 2, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (q, k, v, h0, *(gates[n] for n in names))]

    def f(q, k, v, h0, *gs):
        full = dict(gates)
        full.update(zip(names, gs))
        h, (r, b) = run(q, k, v, full, path, **{edge: h0})
        return h, r, b

    assert torch.autograd.gradcheck(f, inputs, fast_mode=path == "triton")


def test_gradients_match_reference():
    q, k, v, gates = make(2, 5, 7, 2, 3, 2)
    leaves = [t.requires_grad_() for t in (q, k, v, *gates.values())]
    grads = []
    for backend in ("reference", "wavefront", "tiled3", "dense"):
        h, (r, b) = run(q, k, v, gates, backend)
        w = torch.linspace(-1, 1, h.numel(), dtype=h.dtype).view_as(h)
        loss = (h * w).sum() + r.square().sum() + b.sum()
        grads.append(torch.autograd.grad(loss, leaves))
    for fast in grads[1:]:
        for a, b in zip(grads[0], fast):
            assert_close(b, a)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0, 0)])
def test_empty_grid(shape):
    X, Y = shape
    q, k, v, gates = make(2, X, Y, 2, 3, 4)
    h0_left = torch.randn(2, Y, 2, 3, 4, dtype=torch.float64)
    for backend in ("reference", *FAST):
        h, (r, b) = run(q, k, v, gates, backend, h0_left=h0_left)
        assert h.shape == (2, X, Y, 2, 4)
        assert r.shape == (2, Y, 2, 3, 4) and b.shape == (2, X, 2, 3, 4)
        if X == 0:  # nothing to cross: the left states leave on the right unchanged
            assert torch.equal(r, h0_left)


def test_empty_batch():
    """B = 0 on a grid of any size: empty outputs (the tiled path used to fail to reshape)."""
    q, k, v, gates = make(0, 5, 7, 2, 3, 4)
    for backend in ("reference", *FAST):
        h, (r, b) = run(q, k, v, gates, backend)
        assert h.shape == (0, 5, 7, 2, 4)
        assert r.shape == (0, 7, 2, 3, 4) and b.shape == (0, 5, 2, 3, 4)


@pytest.mark.parametrize("path", list(FAST))
def test_nan_stays_in_its_batch_row(path):
    q, k, v, gates = make(2, 4, 4, 1, 2, 2)
    q[0, 1, 1] = float("nan")
    h, _ = run(q, k, v, gates, path)
    assert torch.isnan(h[0]).any() and not torch.isnan(h[1]).any()


def test_where_a_nan_spreads_on_each_path():
    """The documented spread of a NaN in v at cell (2, 1) of a 4 x 4 grid, head 0: the
    cells downstream of it (reference, wavefront), its 2 x 2 tile and the tiles right of and
    below it (tiled), the whole grid (dense); never the other head."""
    q, k, v, gates = make(1, 4, 4, 2, 2, 2, zero_frac=0.0)
    v[0, 2, 1, 0] = float("nan")
    xs, ys = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    downstream = (xs >= 2) & (ys >= 1)
    tiles = (xs >= 2) & (ys >= 0)  # tile rows 2-3; its own tile is columns 0-1
    want = {
        "reference": downstream,
        "wavefront": downstream,
        "tiled2": tiles,
        "dense": torch.ones(4, 4, dtype=torch.bool),
    }
    for path, cells in want.items():
        h, _ = run(q, k, v, gates, path)
        assert torch.equal(h[0, :, :, 0].isnan().any(-1), cells), path
        assert not h[0, :, :, 1].isnan().any(), path


def test_bad_input():
    q, k, v, gates = make(1, 2, 3, 1, 2, 2)
    with pytest.raises(ValueError, match="q must have shape"):
        run(q[0], k, v, gates, None)
    with pytest.raises(ValueError, match="k must have shape"):
        run(q, k[:, :1], v, gates, None)
    with pytest.raises(ValueError, match="v must have shape"):
        run(q, k, v[:, :1], gates, None)
    bad = dict(gates, m_l=gates["m_l"][:, :1])
    with pytest.raises(ValueError, match="m_l must have shape"):
        run(q, k, v, bad, None)
    with pytest.raises(TypeError, match="s_r must be a tensor"):
        run(q, k, v, dict(gates, s_r=None), None)
    with pytest.raises(ValueError, match="s_d has dtype"):
        run(q, k, v, dict(gates, s_d=gates["s_d"].float()), None)
    with pytest.raises(TypeError, match="q must be a floating-point"):
        run(q.long(), k, v, gates, None)
    with pytest.raises(ValueError, match="h0_top must have shape"):
        run(q, k, v, gates, None, h0_top=torch.zeros(1, 3, 1, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="method='dense' selects a path of backend='torch'"):
        run(q, k, v, gates, "triton", method="dense")
    with pytest.raises(ValueError, match="backend must be one of"):
        run(q, k, v, gates, "cuda")


def test_docstring_example():
    assert grid_scan_2d.__doc__ and "Args:" in grid_scan_2d.__doc__
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(grid_scan_2d, "grid_scan_2d", globs={}):
        runner.run(test)
    assert runner.tries > 0 and runner.failures == 0


@pytest.mark.parametrize("method", ["wavefront", "tiled", "dense"])
def test_env_triton_with_method_runs_the_torch_path(monkeypatch, method):
    """GRAPHSEQ_BACKEND=triton is a preference: method= has no Triton kernel, so the torch path
    runs, even where Triton itself could not (no package here, or no GPU)."""
    from graphseq.kernels import _backend

    q, k, v, gates = make(1, 3, 4, 2, 3, 5)
    want, (wr, wb) = run(q, k, v, gates, "torch", method=method)
    monkeypatch.setenv("GRAPHSEQ_BACKEND", "triton")
    monkeypatch.setattr(_backend, "HAS_TRITON", False)
    got, (r, b) = run(q, k, v, gates, None, method=method)
    for a, e in ((got, want), (r, wr), (b, wb)):
        assert torch.equal(a, e)


@requires_triton
@pytest.mark.parametrize(
    "B,X,Y,H,K,V,drop",
    [
        (2, 3, 4, 2, 3, 5, ()),
        (1, 5, 2, 1, 4, 70, ("t_dl",)),  # two value blocks of 64
        # two value blocks with B, H > 1: the per-block gradient buffers are [NVB, B, ...]
        (2, 2, 3, 2, 3, 70, ("t_ru",)),
        (2, 1, 1, 1, 2, 2, ("t_ru", "d")),
        (1, 4, 3, 2, 5, 3, ("t_rl", "t_du")),
    ],
)
def test_triton_matches_reference_float64(B, X, Y, H, K, V, drop):
    q, k, v, gates = make(B, X, Y, H, K, V)
    for name in drop:
        gates[name] = None
    g = torch.Generator().manual_seed(1)
    h0_left = torch.randn(B, Y, H, K, V, generator=g, dtype=torch.float64)
    h0_top = torch.randn(B, X, H, K, V, generator=g, dtype=torch.float64)
    present = [t for t in gates.values() if t is not None]
    leaves = [t.requires_grad_() for t in (q, k, v, h0_left, h0_top, *present)]
    results = {}
    for backend in ("reference", "triton"):
        h, (r, b) = run(q, k, v, gates, backend, h0_left=h0_left, h0_top=h0_top)
        w = torch.linspace(-1, 1, h.numel(), dtype=h.dtype).view_as(h)
        loss = (h * w).sum() + r.square().sum() + 1.5 * b.sum()
        results[backend] = (h, r, b, *torch.autograd.grad(loss, leaves))
    for got, want in zip(results["triton"], results["reference"]):
        assert_close(got, want)


@requires_triton
def test_triton_unused_outputs():
    """Only h used: the edge states' gradients are absent, not garbage."""
    q, k, v, gates = make(1, 2, 3, 1, 2, 3)
    gates["t_dl"] = None
    h0 = torch.randn(1, 2, 1, 2, 3, dtype=torch.float64)
    present = [gates[n] for n in GATES if gates[n] is not None]
    inputs = [t.requires_grad_() for t in (q, k, v, h0, *present)]
    h, _ = run(q, k, v, gates, "triton", h0_top=h0)
    ref, _ = run(q, k, v, gates, "reference", h0_top=h0)
    got = torch.autograd.grad(h.sum(), inputs)
    want = torch.autograd.grad(ref.sum(), inputs)
    for a, b in zip(got, want):
        assert_close(a, b)


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_low_precision(dtype):
    q, k, v, gates = make(2, 4, 5, 2, 3, 4)
    h0 = torch.randn(2, 5, 2, 3, 4, dtype=torch.float64)
    want, (wr, wb) = run(q, k, v, gates, "reference", h0_left=h0)
    low = {n: g.to(dtype) for n, g in gates.items()}
    h, (r, b) = run(q.to(dtype), k.to(dtype), v.to(dtype), low, "triton", h0_left=h0.float())
    assert h.dtype == dtype and r.dtype == b.dtype == torch.float32
    ref_low, (rr, rb) = run(
        q.to(dtype).double(), k.to(dtype).double(), v.to(dtype).double(),
        {n: g.double() for n, g in low.items()}, "reference", h0_left=h0.float().double(),
    )  # fmt: skip
    assert_close(h, ref_low, dtype=dtype)
    for got, want_ in ((r, rr), (b, rb)):  # the edge states, float32 for both input dtypes
        assert_close(got, want_, dtype=torch.float32 if dtype == torch.float32 else dtype)
    assert want.shape == h.shape and wr.shape == r.shape and wb.shape == b.shape


@requires_triton
def test_triton_empty_and_nan():
    for B, X, Y in ((0, 3, 4), (2, 0, 3), (2, 3, 0)):
        q, k, v, gates = make(B, X, Y, 2, 3, 4)
        h, (r, b) = run(q, k, v, gates, "triton")
        assert h.shape == (B, X, Y, 2, 4)
        assert r.shape == (B, Y, 2, 3, 4) and b.shape == (B, X, 2, 3, 4)
    for K, V in ((0, 4), (3, 0)):  # empty states: zeros, as the loop gives, and their gradients
        q, k, v, gates = make(2, 3, 2, 1, K, V)
        leaves = [t.requires_grad_() for t in (q, k, v, *gates.values())]
        got, want = (run(q, k, v, gates, be) for be in ("triton", "reference"))
        for a, e in zip((got[0], *got[1]), (want[0], *want[1])):
            assert_close(a, e)
        loss = (got[0].sum() + got[1][0].sum(), want[0].sum() + want[1][0].sum())
        for a, e in zip(*(torch.autograd.grad(x, leaves, allow_unused=True) for x in loss)):
            assert (a is None) == (e is None) and (a is None or torch.equal(a, e))
    q, k, v, gates = make(2, 4, 4, 2, 2, 2, zero_frac=0.0)
    v[0, 2, 1, 0] = float("nan")
    h, _ = run(q, k, v, gates, "triton")
    xs, ys = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    assert torch.equal(h[0, :, :, 0].isnan().any(-1), (xs >= 2) & (ys >= 1))  # downstream
    assert not h[0, :, :, 1].isnan().any() and not h[1].isnan().any()


def test_triton_is_not_the_automatic_choice_on_cuda(monkeypatch):
    """Until it is timed against the PyTorch paths on a GPU, the Triton grid scan runs only
    when asked for (backend='triton' or GRAPHSEQ_BACKEND=triton)."""
    from graphseq.kernels import _backend

    monkeypatch.setattr(_backend, "HAS_TRITON", True)
    monkeypatch.delenv("GRAPHSEQ_BACKEND", raising=False)
    cuda = torch.device("cuda")
    assert _backend.resolve_backend(None, cuda, op="grid_scan_2d", triton_default=False) == "torch"
    assert _backend.resolve_backend(None, cuda, op="dag_scan") == "triton"
    # and the op asks for that: what its own resolve_backend call would pick for CUDA tensors
    op = sys.modules["graphseq.kernels.grid_scan_2d"]
    real, picked = op.resolve_backend, []

    def spy(backend, device, **kw):
        picked.append(real(backend, cuda, **kw))
        return real(backend, device, **kw)

    monkeypatch.setattr(op, "resolve_backend", spy)
    q, k, v, gates = make(1, 2, 3, 1, 2, 2)
    run(q, k, v, gates, None)
    assert picked == ["torch"]
