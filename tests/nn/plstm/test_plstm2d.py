"""PLSTM2D: single corners and the four-corner sum against float64 loops, modes, gradients."""

from functools import partial

import pytest
import torch

import graphseq.nn.plstm.plstm2d as plstm2d
from graphseq.kernels.dag_attention import native_available
from graphseq.nn.plstm import PLSTM2D
from graphseq.nn.plstm.plstm2d import CORNERS, grid_dag_layout
from graphseq.testing import assert_close, requires_triton

NATIVE = ["native"] if native_available() else []
needs_native = pytest.mark.skipif(not native_available(), reason="no C compiler")


pytestmark = pytest.mark.usefixtures("one_thread")


def corner_loop(q, k, v, g):
    """One corner (origin top-left) of the 2D pLSTM, cell by cell, written independently of
    the kernel: states C_r, C_d per cell, gates g[name] [B, X, Y, H] (t_dl may be None)."""
    B, X, Y, H, K = q.shape
    zero = q.new_zeros(B, H, K, v.shape[-1])
    Cr, Cd = {}, {}
    h = q.new_zeros(B, X, Y, H, v.shape[-1])
    for x in range(X):
        for y in range(Y):
            A = Cr.get((x - 1, y), zero)
            Bs = Cd.get((x, y - 1), zero)

            def G(n, x=x, y=y):
                t = g[n]
                return 0.0 if t is None else t[:, x, y, :, None, None]

            R = G("m_l") * A + G("m_u") * Bs
            h[:, x, y] = torch.einsum("bhk,bhkv->bhv", q[:, x, y], R)
            kv = k[:, x, y, :, :, None] * v[:, x, y, :, None, :]
            Cr[(x, y)] = G("t_rl") * A + G("t_ru") * Bs + G("s_r") * kv
            Cd[(x, y)] = G("t_dl") * A + G("t_du") * Bs + G("s_d") * kv
    return h


def layer_loop(layer, x, corners=range(4)):
    """PLSTM2D's un-normalised output from the loop: flip, scan, flip back, sum, + direct."""
    H, C = layer.heads, layer.head_channels
    q, k, v = layer.qkv(x).unflatten(-1, (3, H, C)).unbind(-3)
    q = q / C**0.5
    gates = layer.corner_gates(x)
    total = 0.0
    for o in corners:
        dims = CORNERS[o]

        def f(t, dims=dims):
            return t.flip(dims) if (t is not None and dims) else t

        g = {n: None if t is None else f(t[..., o, :]) for n, t in gates.items()}
        total = total + f(corner_loop(f(q), f(k), f(v), g))
    return total + (layer.direct(x) * (q * k).sum(-1))[..., None] * v


@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("shape", [(5, 7), (1, 9), (4, 1), (3, 3), (6, 2)])
def test_four_corner_sum_matches_loop(mode, shape):
    torch.manual_seed(0)
    layer = PLSTM2D(8, heads=2, mode=mode, gate_weight_std=0.5).double()
    x = torch.randn(2, *shape, 8, dtype=torch.float64)
    expect = layer_loop(layer, x)
    for backend in ("torch", "reference"):
        assert_close(layer.recurrence(x, backend=backend), expect)
    for method in ("dense", "wavefront", "tiled", *NATIVE):
        assert_close(layer.recurrence(x, method=method), expect, msg=method)
        assert_close(layer(x, method=method), layer(x), msg=method)
    y = layer(x)
    assert y.shape == (2, *shape, 8)
    assert_close(y, layer.out_proj(layer.norm(layer_loop(layer, x)).flatten(-2)))


@pytest.mark.parametrize("mode", ["P", "D"])
def test_single_corner_matches_loop(mode):
    """Silence three corners (mark gates -> 0) and compare what is left with one loop."""
    torch.manual_seed(1)
    layer = PLSTM2D(8, heads=2, mode=mode, gate_weight_std=0.5).double()
    marks = [layer.mark] if mode == "P" else [layer.mark_l, layer.mark_u]
    x = torch.randn(1, 5, 7, 8, dtype=torch.float64)
    for keep in range(4):
        layer.reset_parameters()
        with torch.no_grad():
            for m in marks:
                m.linear.weight.normal_(0, 0.5)
                for o in range(4):
                    if o != keep:  # mark = sigmoid(-1e4) = 0 exactly: corner o is silent
                        m.linear.bias.view(4, 2)[o] = -1e4
                        m.linear.weight.view(4, 2, -1)[o] = 0.0
        assert_close(layer.recurrence(x), layer_loop(layer, x, corners=[keep]))


def test_p_mode_is_the_released_code_form():
    torch.manual_seed(2)
    layer = PLSTM2D(8, heads=2, mode="P", gate_weight_std=0.3).double()
    x = torch.randn(3, 4, 5, 8, dtype=torch.float64)
    g = layer.corner_gates(x)
    # each incoming state's transitions sum to exactly 1 (criticality), sources too
    assert_close(g["t_rl"] + g["t_dl"], torch.ones_like(g["t_rl"]))
    assert_close(g["t_ru"] + g["t_du"], torch.ones_like(g["t_ru"]))
    assert_close(g["s_r"] + g["s_d"], torch.ones_like(g["s_r"]))
    assert torch.equal(g["m_l"], g["m_u"]) and torch.equal(g["t_rl"], g["t_ru"])
    # the angle's bias starts at linspace(-2, 2) over heads, the same for every corner
    fresh = PLSTM2D(8, heads=4, mode="P")
    b = fresh.angle.linear.bias.view(4, 4)
    assert_close(b, torch.linspace(-2, 2, 4).expand(4, 4), dtype=torch.float64)


def test_p_mode_bound_holds_for_a_negative_transition():
    """|T| out of every incoming state sums to <= 1 however far the inputs push t below 0,
    so the un-normalised output stays bounded on a large grid."""
    torch.manual_seed(5)
    layer = PLSTM2D(8, heads=2, mode="P", gate_weight_std=0.5).double()
    for scale in (1.0, 1e3):
        g = layer.corner_gates(scale * torch.randn(1, 6, 6, 8, dtype=torch.float64))
        assert (g["t_rl"].abs() + g["t_dl"].abs()).max() <= 1 + 1e-12
        assert (g["t_ru"].abs() + g["t_du"].abs()).max() <= 1 + 1e-12
    with torch.no_grad():
        layer.transition.linear.bias.fill_(-1.0)  # t = tanh(-5): reachable by training
        layer.angle.linear.bias.fill_(2.0)
    h = layer.recurrence(torch.randn(1, 24, 24, 8, dtype=torch.float64))
    assert h.abs().max() < 1e3


def test_d_mode_has_no_cross_transition_to_down():
    layer = PLSTM2D(8, heads=2, mode="D")
    g = layer.corner_gates(torch.randn(1, 3, 3, 8))
    assert g["t_dl"] is None
    assert {n for n, t in g.items() if t is not None} == {
        "t_rl", "t_ru", "t_du", "s_r", "s_d", "m_l", "m_u"
    }  # fmt: skip


@pytest.mark.parametrize("mode", ["P", "D"])
def test_every_corner_contributes(mode):
    """The output at each grid corner depends on the input at the opposite corner, which is
    only reachable through the orientation whose origin is there (a layer using 2 of the 4
    corners, as the released non-fused layer does, fails this)."""
    torch.manual_seed(3)
    layer = PLSTM2D(8, heads=2, mode=mode, gate_weight_std=0.3).double()
    x = torch.randn(1, 4, 5, 8, dtype=torch.float64, requires_grad=True)
    h = layer.recurrence(x)
    X, Y = 3, 4
    for (x0, y0), (x1, y1) in [((0, 0), (X, Y)), ((X, 0), (0, Y)), ((0, Y), (X, 0)),
                               ((X, Y), (0, 0))]:  # fmt: skip
        (grad,) = torch.autograd.grad(h[0, x1, y1].sum(), x, retain_graph=True)
        assert grad[0, x0, y0].abs().sum() > 1e-8, (mode, (x0, y0), (x1, y1))


@pytest.mark.parametrize("method", ["dense", "wavefront", *NATIVE])
def test_layer_gradcheck(method):
    torch.manual_seed(4)
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    for mode in ("D", "P"):
        layer = PLSTM2D(4, heads=2, mode=mode, gate_weight_std=0.5).double()
        assert torch.autograd.gradcheck(partial(layer, method=method), (x,))


def test_dense_gradients_match_the_linear_paths():
    """Parameter and input gradients of the dense path equal those of the grid scan."""
    torch.manual_seed(6)
    layer = PLSTM2D(8, heads=2, mode="P", gate_weight_std=0.5).double()
    x = torch.randn(2, 5, 4, 8, dtype=torch.float64, requires_grad=True)
    leaves = [x, *layer.parameters()]
    grads = []
    for method in ("wavefront", "dense", *NATIVE):
        y = layer(x, method=method)
        w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        grads.append(torch.autograd.grad((y * w).sum(), leaves))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert_close(a, b)


def test_large_heads_use_the_tiled_path_and_agree():
    torch.manual_seed(5)
    layer = PLSTM2D(64, heads=2, mode="P", gate_weight_std=0.2).double()  # K V = 1024
    x = torch.randn(1, 7, 8, 64, dtype=torch.float64)
    expect = layer.recurrence(x, backend="reference")
    assert_close(layer.recurrence(x, method="tiled"), expect)
    assert_close(layer.recurrence(x), expect)  # dense (56 cells)


def test_reset_parameters_and_repr():
    layer = PLSTM2D(16, heads=4, mode="D")
    assert repr(layer) == "PLSTM2D(16, heads=4, mode='D')"
    x = torch.randn(1, 3, 3, 16)
    y = layer(x)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5)
    assert not torch.allclose(layer(x), y)
    layer.reset_parameters()
    g = layer.corner_gates(x)
    assert_close(g["s_r"], torch.full_like(g["s_r"], torch.sigmoid(torch.tensor(-4.0)).item()))


def test_bad_input():
    with pytest.raises(ValueError, match="mode"):
        PLSTM2D(8, mode="Q")
    with pytest.raises(ValueError, match="heads"):
        PLSTM2D(8, heads=3)
    layer = PLSTM2D(8, heads=2)
    with pytest.raises(ValueError, match="x must have shape"):
        layer(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="x must have shape"):
        layer(torch.randn(2, 3, 3, 7))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(2, 3, 3, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="parameters"):
        layer(torch.randn(2, 3, 3, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="method must be one of"):
        layer(torch.randn(2, 3, 3, 8), method="fused")
    for method in (None, "dense", "wavefront", *NATIVE):
        assert layer(torch.randn(0, 3, 3, 8), method=method).shape == (0, 3, 3, 8)
        assert layer(torch.randn(2, 0, 3, 8), method=method).shape == (2, 0, 3, 8)


# --- the compiled path: the four corners as DAGs through dag_attention ------------------------


@needs_native
@pytest.mark.parametrize("mode", ["P", "D"])
def test_native_is_the_default_on_cpu_and_agrees(mode, monkeypatch):
    """Small CPU grids run the compiled kernel by default; switched off (NATIVE_GRID, or no
    kernel) they run the dense path, with the same result; larger ones the grid scans."""
    torch.manual_seed(7)
    layer = PLSTM2D(12, heads=3, mode=mode, gate_weight_std=0.5).double()
    x = torch.randn(3, 6, 5, 12, dtype=torch.float64)
    expect = layer.recurrence(x, backend="reference")
    calls = []
    native, dense = PLSTM2D._native, PLSTM2D._dense
    monkeypatch.setattr(PLSTM2D, "_native", lambda *a: calls.append("native") or native(*a))
    monkeypatch.setattr(PLSTM2D, "_dense", lambda *a: calls.append("dense") or dense(*a))
    assert_close(layer.recurrence(x), expect)
    monkeypatch.setattr(plstm2d, "NATIVE_GRID", False)
    assert_close(layer.recurrence(x), expect)
    monkeypatch.setattr(plstm2d, "NATIVE_GRID", True)
    monkeypatch.setattr(plstm2d, "native_available", lambda: False)
    assert_close(layer.recurrence(x), expect)
    assert calls == ["native", "dense", "dense"]
    with pytest.raises(ValueError, match="method='native' needs"):
        layer.recurrence(x, method="native")
    monkeypatch.setattr(plstm2d, "DENSE_MAX_CELLS", 20)  # 30 cells: the linear-cost scans
    assert_close(layer.recurrence(x), expect)
    assert calls == ["native", "dense", "dense"]


@needs_native
def test_native_grid_layout():
    """Four DAGs per image, every grid edge once, the transitions of every inner cell."""
    B, X, Y = 2, 4, 3
    for with_t_dl, per_cell in ((True, 4), (False, 3)):
        plan, source, mark, trans = grid_dag_layout(B, X, Y, with_t_dl)
        edges = 2 * X * Y - X - Y  # one grid's edges, each corner's orientation
        assert plan.num_graphs == 4 * B and plan.num_nodes == 4 * B * X * Y
        assert plan.num_edges == 4 * B * edges == source.numel() == mark.numel()
        # a transition per (incoming, outgoing) edge pair of every cell, seen from the
        # top-left corner (the others are its mirror images): r in from x - 1, out to x + 1
        pairs = 0
        for x in range(X):
            for y in range(Y):
                r_in, r_out, d_in, d_out = x > 0, x < X - 1, y > 0, y < Y - 1
                pairs += r_in * r_out + d_in * r_out + d_in * d_out + with_t_dl * r_in * d_out
        assert plan.num_lg == 4 * B * pairs == trans.numel()
        # gate rows are distinct where they must be: a source per edge, a mark per edge
        assert source.unique().numel() == source.numel()
        assert mark.unique().numel() == mark.numel()
        assert int(trans.max()) < per_cell * B * X * Y * 4


@needs_native
def test_native_threads_half_dtypes_and_odd_grids():
    torch.manual_seed(8)
    layer = PLSTM2D(10, heads=2, mode="P", gate_weight_std=0.5)
    x = torch.randn(5, 7, 3, 10)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = layer(x, method="native")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(layer(x, method="native"), two)  # graphs never share an output row
    assert_close(layer(x, method="native"), layer(x, method="dense"))
    for dtype in (torch.bfloat16, torch.float16):
        low = PLSTM2D(10, heads=2, mode="D", gate_weight_std=0.5)
        y32 = low(x, method="native")
        low = low.to(dtype)
        y = low(x.to(dtype), method="native")
        assert y.dtype == dtype
        torch.testing.assert_close(y.float(), y32, atol=0.1, rtol=0.1)


@needs_native
def test_native_layout_made_in_inference_mode_serves_training():
    """A first call under inference_mode (an evaluation before training) caches the grid
    layout; a later training call of the same shape must still differentiate."""
    grid_dag_layout.cache_clear()
    layer = PLSTM2D(8, heads=2, mode="D", gate_weight_std=0.5)
    x = torch.randn(2, 4, 5, 8)
    with torch.inference_mode():
        y_eval = layer(x)
    y = layer(x)
    y.square().sum().backward()
    assert layer.qkv.weight.grad is not None
    assert_close(y.detach(), y_eval)


@needs_native
def test_native_backward_is_once_differentiable_dense_is_not():
    """Double backward (a gradient penalty) needs the dense path, as documented. The native
    path refuses it as soon as the gradient's graph is requested: a second derivative with
    respect to the weights alone used to drop the kernel's share silently (233 against 2320
    on this input)."""
    torch.manual_seed(9)
    layer = PLSTM2D(8, heads=2, gate_weight_std=0.5).double()
    x = torch.randn(1, 3, 3, 8, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="differentiate"):
        torch.autograd.grad(layer(x, method="native").pow(2).sum(), x, create_graph=True)
    (g,) = torch.autograd.grad(layer(x, method="dense").sum(), x, create_graph=True)
    g.square().sum().backward()
    assert layer.qkv.weight.grad is not None


def test_stacked_layers_run_under_autocast_and_check_dtype_outside_it():
    first, second = PLSTM2D(8, heads=2, mode="P"), PLSTM2D(8, heads=2, mode="D")
    x = torch.randn(2, 5, 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = first(x)
        assert h.dtype == torch.bfloat16  # the second layer gets it with float32 parameters
        out = second(h)
    assert torch.isfinite(out.float()).all()
    with pytest.raises(ValueError, match="parameters are"):
        second(h)  # outside autocast a dtype mismatch is named


@requires_triton
@pytest.mark.parametrize("mode", ["P", "D"])
def test_triton_backend_matches_the_loop(mode):
    """backend='triton': the four corners in one Triton grid scan, equal to the loop, values
    and every parameter's gradient."""
    torch.manual_seed(5)
    layer = PLSTM2D(8, heads=2, mode=mode).double()
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    grads = {}
    for backend in ("reference", "triton"):
        y = layer(x, backend=backend)
        grads[backend] = (y, *torch.autograd.grad((y * y.detach()).sum(), [x, *layer.parameters()]))
    for got, want in zip(grads["triton"], grads["reference"]):
        assert_close(got, want)


@pytest.mark.parametrize("method", ["native", "dense", "wavefront", "tiled"])
def test_triton_backend_with_a_method_raises_in_the_layers_name(method):
    """backend='triton' names the Triton grid scan and method= a PyTorch or native path: asking
    for both is refused (it used to run 'native' or 'dense' silently, Triton or not)."""
    layer = PLSTM2D(8, heads=2)
    with pytest.raises(ValueError, match=f"PLSTM2D: method='{method}'.*backend='triton'"):
        layer(torch.randn(1, 3, 4, 8), backend="triton", method=method)


def test_grid_scan_readme_names_the_layers_own_threshold():
    """kernels/grid_scan_2d/README.md says up to how many cells PLSTM2D bypasses the op (so
    that GRAPHSEQ_BACKEND=triton does not reach it): that must be the layer's threshold."""
    import re
    from pathlib import Path

    from graphseq.nn.plstm import plstm2d

    readme = Path(__file__).parents[3] / "kernels" / "grid_scan_2d" / "README.md"
    text = " ".join(readme.read_text().split())
    pattern = r"keeps its own choice for grids of at most (?:`DENSE_MAX_CELLS` = )?(\d+)"
    said = re.search(pattern, text)
    assert said is not None
    assert int(said.group(1)) == plstm2d.DENSE_MAX_CELLS


def test_pmode_angle_is_the_documented_sigmoid():
    # alpha = sigmoid(b + W x / (2 D)) per corner and head, S_r = alpha s, S_d = 1 - alpha s
    D, H = 8, 2
    layer = PLSTM2D(D, heads=H, mode="P", gate_weight_std=0.5)
    x = torch.randn(1, 3, 4, D)
    g = layer.corner_gates(x)
    w, b = layer.angle.linear.weight, layer.angle.linear.bias
    alpha = torch.sigmoid(b.view(4, H) + (x @ w.T).unflatten(-1, (4, H)) / (2 * D))
    torch.testing.assert_close(g["s_r"], alpha * layer.source(x))
    torch.testing.assert_close(g["s_d"], 1 - alpha * layer.source(x))
    t = layer.transition(x).clamp(min=0.0)
    torch.testing.assert_close(g["t_rl"], alpha * t)
    torch.testing.assert_close(g["t_dl"], 1 - alpha * t)


def test_d_mode_gates_read_their_own_modules():
    """D-mode: every gate comes from its own HeadGate (without Triton, the only test that
    looks at each D-mode parameter's gradient is skipped)."""
    torch.manual_seed(0)
    layer = PLSTM2D(8, heads=2, mode="D", gate_weight_std=0.5).double()
    x = torch.randn(1, 3, 4, 8, dtype=torch.float64)
    g = layer.corner_gates(x)
    for name, module in [("t_rl", layer.transition_rl), ("t_ru", layer.transition_ru),
                         ("t_du", layer.transition_du), ("s_r", layer.source_r),
                         ("s_d", layer.source_d), ("m_l", layer.mark_l),
                         ("m_u", layer.mark_u)]:  # fmt: skip
        assert torch.equal(g[name], module(x)), name
    layer(x).sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
