"""pLSTM on 2D grids (images, patch grids): four corner orientations, P-mode and D-mode."""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from graphseq.kernels.dag_attention import DagAttentionPlan, dag_attention, native_available
from graphseq.kernels.grid_scan_2d import METHODS as SCAN_METHODS
from graphseq.kernels.grid_scan_2d import grid_scan_2d
from graphseq.kernels.grid_scan_2d.dense import diagonal_order, gating_rows

from ..seq.base import (
    FLOAT_DTYPES,
    check_choice,
    check_matches_parameters,
    check_positive_int,
    check_real,
)
from .gates import (
    DIRECT_BIAS,
    MARK_BIAS,
    SOURCE_BIAS,
    TRANSITION_BIAS,
    TRANSITION_FACTOR,
    HeadGate,
    MultiHeadRMSNorm,
    small_init_,
)

__all__ = ["CORNERS", "DENSE_MAX_CELLS", "METHODS", "NATIVE_GRID", "PLSTM2D"]

#: The four corner orientations: the grid dims flipped before the scan (and after it).
CORNERS: tuple[tuple[int, ...], ...] = ((), (1,), (2,), (1, 2))

#: Grids of at most this many cells (24 x 24) use the dense path by default (two ``N x N``
#: gating matrices holding the four corners, then masked linear attention); larger grids use
#: the linear-cost grid scans. On a 2-core CPU (README of ``grid_scan_2d``) the dense path is
#: faster up to at least 32 x 32 cells and slower at 48 x 48; the cap is lower because its
#: memory grows as ``B H N^2``.
DENSE_MAX_CELLS = 576

#: Whether small grids on CPU run the compiled ``dag_attention`` kernel (the four corners as
#: four DAGs per image, :func:`grid_dag_layout`) instead of the dense PyTorch path when it can
#: be built; ``GRAPHSEQ_NATIVE=0`` also switches it off. Same results, about twice as fast on
#: a 12 x 12 grid (BENCHMARKS.md).
NATIVE_GRID = True

#: The exact computations of :meth:`PLSTM2D.recurrence`, forced with ``method=``: the grid
#: scan's paths, ``"dense"`` and ``"native"`` (the compiled kernel, CPU only).
METHODS = (*SCAN_METHODS, "native")


def _flip(t: Tensor | None, dims: tuple[int, ...]) -> Tensor | None:
    if t is None or not dims:
        return t
    return t.flip(dims)


#: the transitions of a cell, in the order of the stacked gates: (incoming kind, outgoing
#: kind) with kind 0 the state along x ("r") and 1 the state along y ("d")
_TRANSITIONS = (("t_rl", 0, 0), ("t_ru", 1, 0), ("t_du", 1, 1), ("t_dl", 0, 1))


@functools.lru_cache(maxsize=8)
def grid_dag_layout(
    B: int, X: int, Y: int, with_t_dl: bool, device: str = "cpu"
) -> tuple[DagAttentionPlan, Tensor, Tensor, Tensor]:
    """The four corner orientations of ``B`` grids of ``X x Y`` cells as ``4 B`` DAGs for
    :func:`~graphseq.kernels.dag_attention.dag_attention` (cached for the last few shapes).

    Graph ``4 b + o`` is image ``b`` seen from corner ``o`` of :data:`CORNERS`; its nodes are
    the image's cells in row-major order (node ``(4 b + o) X Y + x Y + y``), its edges go
    from every cell to its neighbour one step away from the corner along x (an "r" edge) and
    along y (a "d" edge), and its line-graph edges are the transitions of
    :func:`~graphseq.kernels.grid_scan_2d.grid_scan_2d` at the cell between them (``t_dl``
    left out when ``with_t_dl`` is false: D-mode). States that would leave the grid have no
    edge (they reach no output).

    Built outside any ``torch.inference_mode()`` (cached tensors made inside it could not be
    saved for a later training call's backward).

    Returns:
        ``(plan, source_index, mark_index, transition_index)``: the plan, and for every DAG
        edge and line-graph edge the row it reads of the gates stacked as
        ``torch.stack([s_r, s_d])``, ``torch.stack([m_l, m_u])`` and
        ``torch.stack([t_rl, t_ru, t_du(, t_dl)])`` (each ``[B, X, Y, 4, H]``) flattened to
        ``[-1, H]``: a source is read at the edge's first cell, a mark at its last, a
        transition at the cell it passes.
    """
    with torch.inference_mode(False):
        return _grid_dag_layout(B, X, Y, with_t_dl, device)


def _grid_dag_layout(B, X, Y, with_t_dl, device):
    n_c, N = len(CORNERS), X * Y
    cell = torch.arange(N).view(X, Y)
    xs, ys = cell // Y, cell % Y
    transitions = _TRANSITIONS if with_t_dl else _TRANSITIONS[:3]
    parts = []  # per corner: local edges, their gate rows and the line graph, for image 0
    for dims in CORNERS:
        step = (-1 if 1 in dims else 1, -1 if 2 in dims else 1)
        # the anti-diagonal of a cell counted from the corner: a topological level
        diag = (X - 1 - xs if 1 in dims else xs) + (Y - 1 - ys if 2 in dims else ys)
        src, dst, kind = [], [], []
        for k, (pos, size, sign, stride) in enumerate(((xs, X, step[0], Y), (ys, Y, step[1], 1))):
            ok = (pos + sign >= 0) & (pos + sign < size)  # the neighbour is on the grid
            src.append(cell[ok])
            dst.append(cell[ok] + sign * stride)
            kind.append(torch.full((int(ok.sum()),), k))
        src, dst, kind = torch.cat(src), torch.cat(dst), torch.cat(kind)
        into = torch.full((2, N), -1)  # the edge of each kind entering / leaving every cell
        out = torch.full((2, N), -1)
        ids = torch.arange(src.numel())
        into[kind, dst] = ids
        out[kind, src] = ids
        lg_src, lg_dst, lg_row = [], [], []
        for t, (_, k_in, k_out) in enumerate(transitions):
            c = torch.nonzero((into[k_in] >= 0) & (out[k_out] >= 0)).flatten()
            lg_src.append(into[k_in, c])
            lg_dst.append(out[k_out, c])
            lg_row.append(t * B * N + c)  # row of the stacked gate, image 0, before x 4 + o
        parts.append((src, dst, kind, diag.flatten()[src],
                      torch.cat(lg_src), torch.cat(lg_dst), torch.cat(lg_row)))  # fmt: skip

    E = [p[0].numel() for p in parts]
    e_start = torch.tensor([0, *E]).cumsum(0)[:-1].tolist()
    # one image's four graphs, then the same shifted for every image
    edge_index = torch.cat(
        [torch.stack([p[0], p[1]]) + o * N for o, p in enumerate(parts)], 1
    )  # [2, E4]
    lg = torch.cat([torch.stack([p[4], p[5]]) + e_start[o] for o, p in enumerate(parts)], 1)
    level = torch.cat([p[3] for p in parts])
    source = torch.cat([(p[2] * B * N + p[0]) * n_c + o for o, p in enumerate(parts)])
    mark = torch.cat([(p[2] * B * N + p[1]) * n_c + o for o, p in enumerate(parts)])
    trans = torch.cat([p[6] * n_c + o for o, p in enumerate(parts)])
    E4 = edge_index.shape[1]
    b = torch.arange(B)
    edge_index = (edge_index[:, None, :] + (b * n_c * N)[:, None]).reshape(2, -1)
    lg = (lg[:, None, :] + (b * E4)[:, None]).reshape(2, -1)
    image_rows = (b * N * n_c)[:, None]  # an image's first gate row
    source = (source[None] + image_rows).flatten()
    mark = (mark[None] + image_rows).flatten()
    trans = (trans[None] + image_rows).flatten()
    batch = torch.arange(B * n_c).repeat_interleave(N)
    plan = DagAttentionPlan.from_graph(
        edge_index, lg, B * n_c * N, batch, level=level.repeat(B)
    )  # fmt: skip
    return plan.to(device), source.to(device), mark.to(device), trans.to(device)


class PLSTM2D(torch.nn.Module):
    r"""pLSTM on a 2D grid, from `"pLSTM: parallelizable Linear Source Transition Mark
    networks" <https://arxiv.org/abs/2506.11997>`_ (Pöppel et al., 2025).

    For each of the four corner orientations :math:`o` (origin at each corner of the grid,
    propagating towards the opposite one) the grid is a DAG whose edge states follow
    :func:`~graphseq.kernels.grid_scan_2d.grid_scan_2d` with that corner's own gates
    :math:`S^o, T^o, M^o`; queries, keys, values and the direct gate :math:`D` are shared. The
    four outputs are flipped back and **summed** (all four corners contribute), the direct term
    is added once, and a per-head RMS norm and output projection follow:

    .. math::
        h(x,y) = K^{-1/2}\Big(\sum_{o=1}^{4} \big[M^o_l\, q^\top C^o_r + M^o_u\, q^\top C^o_d
        \big] + D\,(q \cdot k)\, v\Big), \qquad
        y = W_o\, \mathrm{RMSNorm}_{\text{head}}(h)

    **P-mode** (propagation) uses the parametrisation of the released pLSTM code, the one that
    produced the paper's vision results (it differs from the paper's Eq. 10): an angle
    :math:`\alpha = \sigma(b_\alpha + \tfrac{1}{2 D} W_\alpha x)` per corner and head (bias
    initialised to ``linspace(-2, 2)`` over heads), a source :math:`s`, a transition
    :math:`t = \tanh(5\,\cdot)` and a mark :math:`m`, combined as

    .. math::
        S_r = \alpha s,\; S_d = 1 - \alpha s,\; T_{rl} = T_{ru} = \alpha t,\;
        T_{dl} = T_{du} = 1 - \alpha t,\; M_l = M_u = m,

    so every incoming state's transitions sum to exactly 1 (critical propagation along a line
    of slope set by :math:`\alpha t`). The ``tanh`` transition can go negative, and then
    :math:`|T_{rl}| + |T_{dl}| = 1 + 2 |\alpha t|` (up to 3): path sums grow like binomial
    coefficients (about :math:`10^{15}` across a 24 x 24 grid). Unlike the released code,
    :math:`t` is therefore clamped at 0, which keeps :math:`0 \le \alpha t \le 1` and the
    P-mode bound (Eq. 9: the absolute transitions out of each incoming state sum to at most 1)
    for every input, and changes nothing where :math:`t \ge 0` (at initialisation
    :math:`t \approx \tanh 5`).

    **D-mode** (distribution) uses independent :math:`S_r, S_d, M_l, M_u` (sigmoid) and three
    ``tanh`` transitions :math:`T_{rl}, T_{du}, T_{ru}` with :math:`T_{dl} = 0` (the released
    code's chirality "L"): the line graph becomes a multitree, so :math:`|T| \le 1` bounds
    every path.

    Exact computations, for any grid size (no padding). On small grids (at most
    :data:`DENSE_MAX_CELLS` cells; the default ``method=None`` picks them) the output is
    masked linear attention :math:`h = (G \odot q k^\top) v` per head, :math:`G` the sum of
    the four corners' scalar path-sum gating matrices (``N = X Y`` cells, :math:`D` on the
    diagonal): on CPU the compiled
    :func:`~graphseq.kernels.dag_attention.dag_attention` kernel runs every image's four
    corners as four DAGs (``"native"``: products over each corner's (ancestor, cell) pairs
    only, hand-written backward, OpenMP over images and corners; :data:`NATIVE_GRID`), else
    PyTorch builds :math:`G` one anti-diagonal at a time (``"dense"``); time
    :math:`O(B H N^2 (K + V))`, memory :math:`O(B H N^2)` for ``"dense"`` and
    :math:`O(N^2)` per thread for ``"native"``; the compiled path's backward is
    once-differentiable: asking it for the gradient's graph (``create_graph=True``, e.g. a
    gradient penalty) raises, and double backward needs ``method="dense"`` or
    :data:`NATIVE_GRID` ``= False``. On larger grids
    :func:`~graphseq.kernels.grid_scan_2d.grid_scan_2d` runs the four corners with cost
    linear in the number of cells.

    Args:
        channels (int): input and output size :math:`D`.
        heads (int, optional): number of heads :math:`H`; must divide ``channels``.
            (default: :obj:`4`)
        mode (str, optional): ``"P"`` or ``"D"``. (default: :obj:`"P"`)
        gate_weight_std (float, optional): std of the S/T/M/D/angle weight init (``0``: zero
            weights, the paper's choice on small data). (default: :obj:`0.0`)

    Shapes:
        - **input:** :math:`(B, X, Y, D)`
        - **output:** :math:`(B, X, Y, D)`
    """

    def __init__(
        self,
        channels: int,
        heads: int = 4,
        mode: str = "P",
        gate_weight_std: float = 0.0,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        check_positive_int(cls, "channels", channels)
        check_positive_int(cls, "heads", heads)
        check_choice(cls, "mode", mode, ("P", "D"))
        if channels % heads != 0:
            raise ValueError(f"{cls}: heads ({heads}) must divide channels ({channels})")
        self.channels = channels
        self.heads = heads
        self.head_channels = channels // heads
        self.mode = mode
        self.gate_weight_std = check_real(cls, "gate_weight_std", gate_weight_std, 0.0)

        D, H, std, G = channels, heads, self.gate_weight_std, len(CORNERS)
        self.qkv = torch.nn.Linear(D, 3 * D)
        self.direct = HeadGate(D, H, "sigmoid", DIRECT_BIAS, std)
        if mode == "P":
            self.source = HeadGate(D, H, "sigmoid", SOURCE_BIAS, std, groups=G)
            self.transition = HeadGate(
                D, H, "tanh", TRANSITION_BIAS, std, factor=TRANSITION_FACTOR, groups=G
            )
            self.mark = HeadGate(D, H, "sigmoid", MARK_BIAS, std, groups=G)
            angle_bias = torch.linspace(-2.0, 2.0, H, device="cpu").expand(G, H)
            # alpha = sigmoid(b + W x / (2 D)): the 1 / (2 D) slows the angle's learning
            self.angle = HeadGate(D, H, "identity", angle_bias, std, groups=G)
        else:
            self.source_r = HeadGate(D, H, "sigmoid", SOURCE_BIAS, std, groups=G)
            self.source_d = HeadGate(D, H, "sigmoid", SOURCE_BIAS, std, groups=G)
            self.mark_l = HeadGate(D, H, "sigmoid", MARK_BIAS, std, groups=G)
            self.mark_u = HeadGate(D, H, "sigmoid", MARK_BIAS, std, groups=G)
            for name in ("transition_rl", "transition_du", "transition_ru"):
                gate = HeadGate(
                    D, H, "tanh", TRANSITION_BIAS, std, factor=TRANSITION_FACTOR, groups=G
                )
                setattr(self, name, gate)
        self.norm = MultiHeadRMSNorm(H, self.head_channels)
        self.out_proj = torch.nn.Linear(D, D, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small init for q/k/v, the paper's gate biases, unit norm scale, default out init."""
        small_init_(self.qkv.weight)
        torch.nn.init.zeros_(self.qkv.bias)
        for module in self.children():
            if isinstance(module, (HeadGate, MultiHeadRMSNorm)):
                module.reset_parameters()
        self.out_proj.reset_parameters()

    def __repr__(self) -> str:
        extra = f", gate_weight_std={self.gate_weight_std!r}" if self.gate_weight_std else ""
        return (
            f"{type(self).__name__}({self.channels}, heads={self.heads}, mode={self.mode!r}{extra})"
        )

    # ------------------------------------------------------------------------------------------

    def corner_gates(self, x: Tensor) -> dict[str, Tensor | None]:
        """The grid-scan gates of all four corners, each ``[B, X, Y, 4, H]`` (in the
        unflipped frame; ``t_dl`` is ``None`` in D-mode)."""
        if self.mode == "P":
            scale = 1.0 / (2.0 * self.channels)
            b = self.angle.linear.bias.view(len(CORNERS), self.heads)
            wx = torch.nn.functional.linear(x, self.angle.linear.weight)
            alpha = torch.sigmoid(b + scale * wx.unflatten(-1, b.shape))
            a_s = alpha * self.source(x)
            # t < 0 would break the P-mode bound |T_rl| + |T_dl| <= 1 (released code: no clamp)
            a_t = alpha * self.transition(x).clamp(min=0.0)
            m = self.mark(x)
            not_a_t = 1 - a_t  # one tensor for both: the dense path uses the sharing
            return dict(t_rl=a_t, t_ru=a_t, t_du=not_a_t, t_dl=not_a_t, s_r=a_s, s_d=1 - a_s,
                        m_l=m, m_u=m)  # fmt: skip
        return dict(
            t_rl=self.transition_rl(x),
            t_ru=self.transition_ru(x),
            t_du=self.transition_du(x),
            t_dl=None,
            s_r=self.source_r(x),
            s_d=self.source_d(x),
            m_l=self.mark_l(x),
            m_u=self.mark_u(x),
        )

    def recurrence(
        self, x: Tensor, backend: str | None = None, method: str | None = None
    ) -> Tensor:
        """The un-normalised output ``h`` ``[B, X, Y, H, K]`` (four corners + direct term;
        float32 for float16/bfloat16 ``x``).

        ``backend`` and ``method`` as in :meth:`forward`."""
        cls = type(self).__name__
        if method is not None and method not in METHODS:
            raise ValueError(f"{cls}: method must be one of {METHODS} or None, got {method!r}")
        if method is not None and backend == "triton":
            raise ValueError(
                f"{cls}: method={method!r} selects a PyTorch or compiled CPU path, and "
                "backend='triton' runs the Triton grid scan; pass one of them"
            )
        H, C = self.heads, self.head_channels
        qkv = self.qkv(x).unflatten(-1, (3, H, C))  # [B, X, Y, 3, H, C]
        gates = self.corner_gates(x)
        d = self.direct(x)  # [B, X, Y, H]
        if x.dtype in (torch.float16, torch.bfloat16):
            # every path accumulates in float32 but would hand h back in x's dtype, where it
            # can overflow (|h| > 65504 in float16); keep h in float32 up to the norm
            up: dict[int, Tensor] = {}  # a gate tensor shared by two names stays shared

            def widen(t: Tensor | None) -> Tensor | None:
                if t is None or t.dtype == torch.float32:
                    return t
                if id(t) not in up:
                    up[id(t)] = t.float()
                return up[id(t)]

            qkv, d = widen(qkv), widen(d)
            gates = {name: widen(t) for name, t in gates.items()}
        X, Y = x.shape[1], x.shape[2]
        if method is None and backend in (None, "torch") and X * Y <= DENSE_MAX_CELLS:
            native_ok = NATIVE_GRID and x.device.type == "cpu" and native_available()
            method = "native" if native_ok else "dense"
        if method == "native" and backend != "reference":
            if x.device.type != "cpu" or not native_available():
                raise ValueError(
                    f"{cls}: method='native' needs CPU tensors and the compiled dag_attention "
                    f"kernel (x is on {x.device}; kernel available: {native_available()})"
                )
            return self._native(qkv, gates, d)
        q, k, v = qkv.unbind(-3)  # [B, X, Y, H, C]
        q = q * (1.0 / math.sqrt(C))
        if method == "dense" and backend != "reference":
            return self._dense(q, k, v, gates, d)
        if method == "native":  # with backend="reference": the loop
            method = None

        # all four corners in one scan: corner o is batch block o of the flipped inputs
        def stack(t: Tensor | None, per_corner: bool) -> Tensor | None:
            if t is None:
                return None
            parts = [_flip(t[..., o, :] if per_corner else t, dims) for o, dims in
                     enumerate(CORNERS)]  # fmt: skip
            return torch.cat(parts, 0)

        h, _ = grid_scan_2d(
            stack(q, False),
            stack(k, False),
            stack(v, False),
            *(stack(gates[n], True) for n in ("t_rl", "t_ru", "t_du", "t_dl", "s_r", "s_d")),
            stack(gates["m_l"], True),
            stack(gates["m_u"], True),
            None,
            backend=backend,
            method=method,
        )
        h = sum(_flip(part, dims) for part, dims in zip(h.chunk(len(CORNERS), 0), CORNERS))
        direct = d * (q * k).sum(-1)  # [B, X, Y, H], added once
        return h + direct[..., None] * v

    def _native(self, qkv: Tensor, gates: dict, d: Tensor) -> Tensor:
        """The compiled path: every image's four corners as four DAGs of
        :func:`grid_dag_layout` through :func:`~graphseq.kernels.dag_attention.dag_attention`
        (C, OpenMP over the ``4 B`` graphs, hand-written backward), summed; :math:`D` enters
        through the first corner's graph only. Work ``O(B H N^2 (1 + C))`` like the dense
        path, but only over each corner's (ancestor, cell) pairs and without autograd
        through per-diagonal steps."""
        B, X, Y, _, H, C = qkv.shape
        N, n_c = X * Y, len(CORNERS)
        if B * N == 0:
            return qkv.new_zeros(B, X, Y, H, C)
        with_t_dl = gates["t_dl"] is not None
        plan, source_row, mark_row, trans_row = grid_dag_layout(
            B, X, Y, with_t_dl, str(qkv.device)
        )  # fmt: skip
        names = [name for name, _, _ in _TRANSITIONS[: 4 if with_t_dl else 3]]  # layout's order
        source = torch.stack([gates["s_r"], gates["s_d"]]).reshape(-1, H)[source_row]
        mark = torch.stack([gates["m_l"], gates["m_u"]]).reshape(-1, H)[mark_row]
        transition = torch.stack([gates[n] for n in names]).reshape(-1, H)[trans_row]
        direct = torch.cat([d.reshape(B, 1, N, H), d.new_zeros(B, n_c - 1, N, H)], 1)
        qkv = qkv.reshape(B, 1, N, 3, H, C).expand(B, n_c, N, 3, H, C)
        h = dag_attention(
            qkv.reshape(B * n_c * N, 3, H, C), source, transition, mark,
            direct.reshape(B * n_c * N, H), plan, scale=C**-0.5, backend="native",
        )  # fmt: skip
        return h.view(B, n_c, X, Y, H, C).sum(1).to(qkv.dtype)

    def _dense(self, q: Tensor, k: Tensor, v: Tensor, gates: dict, d: Tensor) -> Tensor:
        """Dense path, ``O(B H N^2 (K + V))`` time and ``O(B H N^2)`` memory (``N = X Y``).

        Each corner's gating matrix comes from
        :func:`~graphseq.kernels.grid_scan_2d.dense.gating_rows` in its own flipped frame with
        cells in anti-diagonal order, where it is strictly block lower triangular. Flipping
        both grid axes reverses that order, so the opposite corner's matrix, reversed along
        both axes, is strictly block *upper* triangular in the same order: corners ``()`` and
        ``(1, 2)`` (and likewise ``(1,)`` and ``(2,)``) fill one ``N x N`` matrix together,
        ``D`` on the first one's diagonal, assembled by concatenation. That leaves two masked
        linear attentions ``(G * q k^T) v`` on ``q, k, v`` permuted into the two orders."""
        B, X, Y, H, C = q.shape
        N, n_c = X * Y, len(CORNERS)
        if N == 0:
            return q.new_zeros(B, X, Y, H, C)
        names = ("t_rl", "t_ru", "t_du", "t_dl", "s_r", "s_d", "m_l", "m_u")
        done: dict[int, Tensor] = {}  # a gate tensor shared by two names stays shared

        def stack(t: Tensor) -> Tensor:
            if id(t) not in done:
                parts = [_flip(t[..., o, :], dims) for o, dims in enumerate(CORNERS)]
                done[id(t)] = torch.cat(parts, 0)
            return done[id(t)]

        stacked = [None if gates[n] is None else stack(gates[n]) for n in names]
        # rows[t][o]: corner o's rows of diagonal t, [B, H, L, O]
        rows = [r.unflatten(0, (n_c, B)).unbind(0) for r in gating_rows(*stacked)]
        acc = rows[0][0].dtype
        cells = torch.arange(N, device=q.device).view(X, Y)
        order = diagonal_order(X, Y, q.device)
        n_d = len(rows)
        h = torch.zeros(B, H, N, C, dtype=acc, device=q.device)
        for first, second in ((0, 3), (1, 2)):  # CORNERS[second] = CORNERS[first] flipped
            # idx[i]: the row-major input cell in slot i of corner `first`'s diagonal order
            dims = [dim - 1 for dim in CORNERS[first]]
            idx = (cells.flip(dims) if dims else cells).flatten()[order]
            dd = d.to(acc).permute(0, 3, 1, 2).reshape(B, H, N)[:, :, idx] if first == 0 else None
            blocks, start = [], 0
            for t in range(n_d):
                lower = rows[t][first]  # [B, H, L, O_t]
                L = lower.shape[-2]
                if dd is None:
                    mid = lower.new_zeros(B, H, L, L)
                else:
                    mid = torch.diag_embed(dd[:, :, start : start + L])
                upper = rows[n_d - 1 - t][second].flip(-2, -1)
                blocks.append(torch.cat([lower, mid, upper], -1))
                start += L
            G = torch.cat(blocks, -2)  # [B, H, N, N]

            qp, kp, vp = (
                t.to(acc).permute(0, 3, 1, 2, 4).reshape(B, H, N, C)[:, :, idx] for t in (q, k, v)
            )  # [B, H, N, C] in this order
            hp = (G * (qp @ kp.transpose(-1, -2))) @ vp
            h = h.index_add(2, idx, hp)
        return h.view(B, H, X, Y, C).permute(0, 2, 3, 1, 4).to(q.dtype)

    def forward(self, x: Tensor, backend: str | None = None, method: str | None = None) -> Tensor:
        """``x`` ``[B, X, Y, D]`` -> ``[B, X, Y, D]``.

        ``backend`` (``"reference"`` loop, ``"torch"``, or ``"triton"``: the grid scan's
        Triton kernel, the four corners in one launch) and ``method`` (``"native"``,
        ``"dense"``, ``"wavefront"``, ``"tiled"`` or ``None``: automatic, ``"native"`` on CPU
        where the kernel can be built and ``"dense"`` elsewhere for grids of at most
        :data:`DENSE_MAX_CELLS` cells; not with ``backend="triton"``) force a path; all paths
        give the same result (and gradients; ``"native"``'s and ``"triton"``'s backward cannot
        itself be differentiated)."""
        cls = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{cls}: x must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{cls}: x must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != 4 or x.shape[-1] != self.channels:
            raise ValueError(
                f"{cls}: x must have shape [B, X, Y, channels] with channels = {self.channels}, "
                f"got {tuple(x.shape)}"
            )
        check_matches_parameters(cls, "x", x, self.qkv.weight)
        h = self.recurrence(x, backend=backend, method=method)
        return self.out_proj(self.norm(h).to(x.dtype).flatten(-2))
