"""pLSTM on 2D grids (images, patch grids): four corner orientations, P-mode and D-mode."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from graphseq.kernels.grid_scan_2d import METHODS, grid_scan_2d
from graphseq.kernels.grid_scan_2d.dense import diagonal_order, gating_rows

from ..seq.base import FLOAT_DTYPES, check_choice, check_positive_int
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

__all__ = ["CORNERS", "DENSE_MAX_CELLS", "PLSTM2D"]

#: The four corner orientations: the grid dims flipped before the scan (and after it).
CORNERS: tuple[tuple[int, ...], ...] = ((), (1,), (2,), (1, 2))

#: Grids of at most this many cells (24 x 24) use the dense path by default (two ``N x N``
#: gating matrices holding the four corners, then masked linear attention); larger grids use
#: the linear-cost grid scans. On a 2-core CPU (README of ``grid_scan_2d``) the dense path is
#: faster up to at least 32 x 32 cells and slower at 48 x 48; the cap is lower because its
#: memory grows as ``B H N^2``.
DENSE_MAX_CELLS = 576


def _flip(t: Tensor | None, dims: tuple[int, ...]) -> Tensor | None:
    if t is None or not dims:
        return t
    return t.flip(dims)


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
    of slope set by :math:`\alpha t`) whenever :math:`0 \le \alpha t \le 1`.

    **D-mode** (distribution) uses independent :math:`S_r, S_d, M_l, M_u` (sigmoid) and three
    ``tanh`` transitions :math:`T_{rl}, T_{du}, T_{ru}` with :math:`T_{dl} = 0` (the released
    code's chirality "L"): the line graph becomes a multitree, so :math:`|T| \le 1` bounds
    every path.

    Two exact computations, for any grid size (no padding): on small grids (at most
    :data:`DENSE_MAX_CELLS` cells, the default ``method=None`` picks it) the four corners'
    scalar path-sum gating matrices are summed into one ``N x N`` matrix :math:`G` (``N = X
    Y``, :math:`D` on the diagonal) and :math:`h = (G \odot q k^\top) v` per head, like
    masked linear attention: time :math:`O(B H N^2 (K + V))`, memory :math:`O(B H N^2)`. On
    larger grids :func:`~graphseq.kernels.grid_scan_2d.grid_scan_2d` runs the four corners
    with cost linear in the number of cells.

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
        self.gate_weight_std = float(gate_weight_std)

        D, H, std, G = channels, heads, self.gate_weight_std, len(CORNERS)
        self.qkv = torch.nn.Linear(D, 3 * D)
        self.direct = HeadGate(D, H, "sigmoid", DIRECT_BIAS, std)
        if mode == "P":
            self.source = HeadGate(D, H, "sigmoid", SOURCE_BIAS, std, groups=G)
            self.transition = HeadGate(
                D, H, "tanh", TRANSITION_BIAS, std, factor=TRANSITION_FACTOR, groups=G
            )
            self.mark = HeadGate(D, H, "sigmoid", MARK_BIAS, std, groups=G)
            angle_bias = torch.linspace(-2.0, 2.0, H).expand(G, H)
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
        return f"{type(self).__name__}({self.channels}, heads={self.heads}, mode={self.mode!r})"

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
            a_t = alpha * self.transition(x)
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
        """The un-normalised output ``h`` ``[B, X, Y, H, K]`` (four corners + direct term).

        ``backend`` and ``method`` as in :meth:`forward`."""
        if method is not None and method not in METHODS:
            raise ValueError(
                f"{type(self).__name__}: method must be one of {METHODS} or None, got {method!r}"
            )
        H, C = self.heads, self.head_channels
        q, k, v = self.qkv(x).unflatten(-1, (3, H, C)).unbind(-3)  # [B, X, Y, H, C]
        q = q * (1.0 / math.sqrt(C))
        gates = self.corner_gates(x)
        d = self.direct(x)  # [B, X, Y, H]
        X, Y = x.shape[1], x.shape[2]
        if method is None and backend in (None, "torch"):
            method = "dense" if X * Y <= DENSE_MAX_CELLS else None
        if method == "dense" and backend != "reference":
            return self._dense(q, k, v, gates, d)

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

        ``backend`` (``"reference"`` loop or ``"torch"``) and ``method`` (``"dense"``,
        ``"wavefront"``, ``"tiled"`` or ``None``: automatic, dense for grids of at most
        :data:`DENSE_MAX_CELLS` cells) force a path; all paths give the same result."""
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
        w = self.qkv.weight
        if x.device != w.device or x.dtype != w.dtype:
            raise ValueError(
                f"{cls}: x is {x.dtype} on {x.device} but the layer's parameters are {w.dtype} "
                f"on {w.device}"
            )
        h = self.recurrence(x, backend=backend, method=method)
        return self.out_proj(self.norm(h).flatten(-2))
