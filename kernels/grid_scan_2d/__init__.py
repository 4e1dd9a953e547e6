"""The 2D pLSTM recurrence on a grid (one corner orientation), cost linear in the cells.

See :func:`grid_scan_2d`. The equations, the wavefront schedule and its cost are in this
folder's README.md.
"""

from __future__ import annotations

import torch

from .._backend import resolve_backend
from .._checks import check_float, check_same, check_shape, check_tensor
from . import chunked, dense, reference, wavefront

__all__ = ["METHODS", "grid_scan_2d"]

_OP = "grid_scan_2d"

#: ``K * V`` from which the ``"torch"`` backend uses the tiled path (measured on a 2-core CPU:
#: below it the wavefront's per-cell states are cheaper than the tiles' dense products).
TILED_MIN_STATE = 512
#: Tile side of the tiled path.
TILE = 6
#: Grids of at most this many cells use the dense path (one tile covering the grid) when
#: ``K * V >= TILED_MIN_STATE`` (measured on a 2-core CPU, README.md).
DENSE_MAX_CELLS = 256
#: The exact computations of the ``"torch"`` backend, forced with ``method=``.
METHODS = ("dense", "tiled", "wavefront")


def grid_scan_2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    t_rl: torch.Tensor | None,
    t_ru: torch.Tensor | None,
    t_du: torch.Tensor | None,
    t_dl: torch.Tensor | None,
    s_r: torch.Tensor,
    s_d: torch.Tensor,
    m_l: torch.Tensor,
    m_u: torch.Tensor,
    d: torch.Tensor | None = None,
    *,
    h0_left: torch.Tensor | None = None,
    h0_top: torch.Tensor | None = None,
    backend: str | None = None,
    method: str | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    r"""pLSTM's Source-Transition-Mark recurrence on an ``X x Y`` grid, from the top-left corner.

    Every cell :math:`(x, y)` has two incoming edge states, :math:`C_r(x-1, y)` from the left
    and :math:`C_d(x, y-1)` from above (``K x V`` matrices per head), and two outgoing ones:

    .. math::
        C_r(x,y) &= T_{rl}\, C_r(x-1,y) + T_{ru}\, C_d(x,y-1) + S_r\, k v^\top \\
        C_d(x,y) &= T_{du}\, C_d(x,y-1) + T_{dl}\, C_r(x-1,y) + S_d\, k v^\top \\
        h(x,y)   &= M_l\, q^\top C_r(x-1,y) + M_u\, q^\top C_d(x,y-1) + D\,(q\cdot k)\, v

    with all gates and :math:`q, k, v` taken at :math:`(x, y)`. The states entering the grid
    are ``h0_left`` (:math:`C_r(-1, y)`) and ``h0_top`` (:math:`C_d(x, -1)`), zero by default.
    The other three corner orientations are this op on flipped inputs (see
    :class:`graphseq.nn.plstm.PLSTM2D`). No :math:`K^{-1/2}` factor is applied: scale ``q``.

    Gates may be any real number, including negative and exactly zero; a transition given as
    ``None`` is zero (pLSTM's D-mode has ``t_dl = None``), and ``d = None`` drops the direct
    term. Any grid size works (no padding to powers of two).

    Args:
        q: queries, ``[B, X, Y, H, K]``.
        k: keys, ``[B, X, Y, H, K]``.
        v: values, ``[B, X, Y, H, V]``.
        t_rl: transition :math:`C_r \to C_r` ("→"), ``[B, X, Y, H]`` or ``None``.
        t_ru: transition :math:`C_d \to C_r` ("⤷"), ``[B, X, Y, H]`` or ``None``.
        t_du: transition :math:`C_d \to C_d` ("↓"), ``[B, X, Y, H]`` or ``None``.
        t_dl: transition :math:`C_r \to C_d` ("⤵"), ``[B, X, Y, H]`` or ``None``.
        s_r: source into :math:`C_r`, ``[B, X, Y, H]``.
        s_d: source into :math:`C_d`, ``[B, X, Y, H]``.
        m_l: mark of the state from the left, ``[B, X, Y, H]``.
        m_u: mark of the state from above, ``[B, X, Y, H]``.
        d: direct gate, ``[B, X, Y, H]`` or ``None``.
        h0_left: states entering through the left edge, ``[B, Y, H, K, V]``; default zeros.
        h0_top: states entering through the top edge, ``[B, X, H, K, V]``; default zeros.
        backend: ``"reference"`` (loop over the cells), ``"torch"`` (vectorised; the
            default on every device) or ``"triton"`` (one launch: a program per batch row,
            head and value block sweeps its grid; checked in the interpreter, not yet timed
            on a GPU, so never picked automatically). ``None`` picks ``"torch"``.
        method: for the ``"torch"`` backend, ``"wavefront"``, ``"tiled"`` or ``"dense"``
            forces one of its exact paths (below); ``None`` picks by size. With
            ``backend="triton"`` it raises ``ValueError``.

    Shapes and dtypes:
        All tensors share one floating dtype and device (``h0_*`` may also be float32 for
        half inputs). float16/bfloat16 are computed in float32, float32 in float32, float64
        in float64. ``X`` or ``Y`` may be 0 and ``K != V`` is fine.

    Returns:
        ``(h, (c_right, c_bottom))``: the outputs ``[B, X, Y, H, V]`` in ``q``'s dtype; the
        states leaving the right edge, :math:`C_r(X-1, y)`, ``[B, Y, H, K, V]``, and the bottom
        edge, :math:`C_d(x, Y-1)`, ``[B, X, H, K, V]`` (float32 for half inputs, else ``q``'s
        dtype). Passing ``c_right`` as ``h0_left`` of the grid to the right (or ``c_bottom``
        as ``h0_top`` of the grid below) continues the scan exactly.

    The ``"torch"`` backend has three exact paths, chosen by the state size and the number of
    cells ``N = X Y`` (README.md):

    * ``K V >= 512`` and ``N <= 256``: dense (``dense.py``): the ``N x N`` path-sum gating
      matrix ``G`` and ``(G * q k^T) v`` per (batch, head), i.e. one tile covering the grid;
      time ``O(N^2 (K + V))`` and memory ``O(N^2 + N K V)`` per (batch, head);
    * ``K V < 512``: anti-diagonal wavefronts (``wavefront.py``), ``X + Y - 1`` sequential
      steps over per-cell states; time and memory ``O(X Y H K V)``;
    * ``K V >= 512`` and ``N > 256``: ``6 x 6`` tiles (``chunked.py``): intra-tile masked
      linear attention with path-sum coefficients, boundary states handed from tile to tile; time
      ``O(X Y H (36 K + 12 K V))`` as matrix products, memory ``O(X Y H (36 + K + V))`` plus
      ``12`` boundary states per tile, i.e. ``O(X Y H K V / 3)``.

    The wavefront and tiled paths are linear in the number of cells; the dense path is
    quadratic (like the released pLSTM code's fused path) and is chosen only for small grids,
    where it is the fastest. None pads beyond the last partial tile.
    Gradients come from autograd through the vectorised steps (the Triton path has a
    hand-written, first-order backward: a reverse sweep with the adjoints).

    NaN or inf in a cell's inputs reach the outputs of the cells downstream of it (as in the
    loop) on the reference and wavefront paths; on the tiled path they reach every cell of
    its tile and of the tiles downstream of that tile, on the dense path every cell of the
    grid (``0 * NaN`` inside the masked products); never another batch row or head.

    Example::

        >>> import torch
        >>> from graphseq.kernels.grid_scan_2d import grid_scan_2d
        >>> B, X, Y, H, K = 2, 5, 7, 3, 4
        >>> q, k, v = (torch.randn(B, X, Y, H, K) for _ in range(3))
        >>> t_rl, t_du, t_ru = (torch.empty(B, X, Y, H).uniform_(-1, 1) for _ in range(3))
        >>> s_r, s_d, m_l, m_u, dd = (torch.rand(B, X, Y, H) for _ in range(5))
        >>> h, (c_right, c_bottom) = grid_scan_2d(
        ...     q, k, v, t_rl, t_ru, t_du, None, s_r, s_d, m_l, m_u, dd)  # D-mode: t_dl = 0
        >>> h.shape, c_right.shape, c_bottom.shape
        (torch.Size([2, 5, 7, 3, 4]), torch.Size([2, 7, 3, 4, 4]), torch.Size([2, 5, 3, 4, 4]))
        >>> # the grid cut in two along x: the right half starts from the left half's edge states
        >>> cut = lambda t, s: None if t is None else t[:, s]
        >>> g = (t_rl, t_ru, t_du, None, s_r, s_d, m_l, m_u, dd)
        >>> a, b = slice(0, 2), slice(2, None)
        >>> h1, (r1, b1) = grid_scan_2d(q[:, a], k[:, a], v[:, a], *[cut(t, a) for t in g])
        >>> h2, _ = grid_scan_2d(q[:, b], k[:, b], v[:, b], *[cut(t, b) for t in g], h0_left=r1)
        >>> torch.allclose(torch.cat([h1, h2], 1), h, atol=1e-5)
        True
    """
    check_tensor(_OP, "q", q)
    if q.dim() != 5:
        raise ValueError(f"{_OP}: q must have shape [B, X, Y, H, K], got {tuple(q.shape)}")
    check_float(_OP, "q", q)
    B, X, Y, H, K = q.shape
    check_tensor(_OP, "k", k)
    check_same(_OP, "q", q, "k", k)
    check_shape(_OP, "k", k, (B, X, Y, H, K))
    check_tensor(_OP, "v", v)
    check_same(_OP, "q", q, "v", v)
    if v.dim() != 5 or tuple(v.shape[:4]) != (B, X, Y, H):
        raise ValueError(
            f"{_OP}: v must have shape [B, X, Y, H, V] = ({B}, {X}, {Y}, {H}, V), "
            f"got {tuple(v.shape)}"
        )
    V = v.shape[4]
    gates = {
        "t_rl": (t_rl, True), "t_ru": (t_ru, True), "t_du": (t_du, True),
        "t_dl": (t_dl, True), "s_r": (s_r, False), "s_d": (s_d, False),
        "m_l": (m_l, False), "m_u": (m_u, False), "d": (d, True),
    }  # fmt: skip
    for name, (gate, optional) in gates.items():
        if gate is None:
            if not optional:
                raise TypeError(f"{_OP}: {name} must be a tensor of shape [B, X, Y, H], got None")
            continue
        check_tensor(_OP, name, gate)
        check_same(_OP, "q", q, name, gate)
        check_shape(_OP, name, gate, (B, X, Y, H))
    state_dtype = torch.promote_types(q.dtype, torch.float32)
    for name, h0, side in (("h0_left", h0_left, Y), ("h0_top", h0_top, X)):
        if h0 is None:
            continue
        check_tensor(_OP, name, h0)
        check_float(_OP, name, h0)
        if h0.device != q.device:
            raise ValueError(f"{_OP}: {name} is on {h0.device} but q is on {q.device}")
        if h0.dtype not in (q.dtype, state_dtype):
            raise ValueError(
                f"{_OP}: {name} must have dtype {q.dtype} or {state_dtype}, got {h0.dtype}"
            )
        check_shape(_OP, name, h0, (B, side, H, K, V))

    if method is not None and method not in METHODS:
        raise ValueError(f"{_OP}: method must be one of {METHODS} or None, got {method!r}")
    if method is not None and backend == "triton":
        raise ValueError(
            f"{_OP}: method={method!r} selects a path of backend='torch', not 'triton'"
        )
    # method= names a torch path, which has no Triton kernel: GRAPHSEQ_BACKEND=triton (a
    # preference) then runs PyTorch, before any check that Triton could run here
    backend = resolve_backend(
        backend, q.device, op=_OP, triton_supported=method is None, triton_default=False
    )
    args = (q, k, v, t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, d)
    if backend == "reference":
        return reference.grid_scan_2d(*args, h0_left=h0_left, h0_top=h0_top)
    if backend == "triton":
        from . import triton as triton_path  # imports triton only when it is asked for

        return triton_path.grid_scan_2d(*args, h0_left=h0_left, h0_top=h0_top)
    if method is None:
        if K * V < TILED_MIN_STATE:
            method = "wavefront"
        else:
            method = "dense" if X * Y <= DENSE_MAX_CELLS else "tiled"
    if method == "dense":
        return dense.grid_scan_2d(*args, h0_left=h0_left, h0_top=h0_top)
    if method == "tiled":
        return chunked.grid_scan_2d(*args, h0_left=h0_left, h0_top=h0_top, tile=TILE)
    return wavefront.grid_scan_2d(*args, h0_left=h0_left, h0_top=h0_top)
