"""Dense (quadratic) path of :func:`~graphseq.kernels.grid_scan_2d.grid_scan_2d` for small
grids: the whole ``N x N`` path-sum gating matrix, then masked linear attention.

With scalar gates, the recurrence unrolls to (README.md)

    h(n) = sum_{n'} G[n, n'] (q_n . k_n') v_n' + (entering-state terms),

where ``G[n, n']`` (``n'`` strictly upstream of ``n``) is the sum over lattice paths from
``n'`` to ``n`` of the source at ``n'``, the transitions along the path and the mark at ``n``.
:func:`gating_matrix` builds ``G`` for all ``N = X Y`` cells by the recurrence itself on
*coefficient vectors*: the state of an edge is a vector over source cells (how much of each
source's ``k v^T`` it holds) instead of a ``K x V`` matrix,

    a_r(x,y) = T_rl a_r(x-1,y) + T_ru a_d(x,y-1) + S_r e_(x,y)
    a_d(x,y) = T_dl a_r(x-1,y) + T_du a_d(x,y-1) + S_d e_(x,y)
    G[(x,y), :] = M_l a_r(x-1,y) + M_u a_d(x,y-1)

processed one anti-diagonal at a time (``X + Y - 1`` vectorised steps over the diagonal's
cells and over batch and heads). Sources are numbered in diagonal order, so before diagonal
``t`` only the sources on diagonals ``< t`` can be non-zero: the vectors grow by one block per
step and the total work is about ``N^2`` multiply-adds per (batch, head), half of a dense
``N``-vector per cell.

Cost per (batch, head): ``O(N^2)`` time and memory for ``G`` (also what autograd keeps), and
``O(N^2 K + N^2 V)`` for ``(G * q k^T) v`` as two matrix products; i.e. ``O(B H N^2)`` memory
in all. It beats the linear paths when ``N`` is small and ``K V`` large (see README.md).

:func:`grid_scan_2d` (the op's contract, with entering and leaving edge states) is the tiled
path with one tile covering the whole grid, which is exactly this dense form plus boundary
coefficients.
"""

from __future__ import annotations

import torch

from . import chunked


def diagonal_order(X: int, Y: int, device=None) -> torch.Tensor:
    """Row-major cell indices ``x Y + y`` listed in anti-diagonal order (diagonal ``x + y``
    ascending, ``x`` ascending within a diagonal), ``[X Y]`` int64."""
    xs = torch.arange(X, device=device).repeat_interleave(Y)
    ys = torch.arange(Y, device=device).repeat(X)
    key = (xs + ys) * max(X, 1) + xs  # diagonal first, then x
    return torch.argsort(key)


def gating_matrix(t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, d=None):
    """The path-sum gating matrix of a grid scan from the top-left corner.

    Args:
        t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, d: the gates of
            :func:`~graphseq.kernels.grid_scan_2d.grid_scan_2d`, ``[B, X, Y, H]``; ``t_*`` and
            ``d`` may be ``None`` (zero). Assumed validated (same dtype and device).

    Returns:
        ``G`` ``[B, H, N, N]`` with ``N = X Y`` cells in row-major order (``x Y + y``):
        ``G[b, h, n, n']`` is the weight of source cell ``n'``'s ``k v^T`` in the output of
        target cell ``n``, so that ``h = (G * (q k^T)) v`` per (batch, head) for zero entering
        states; ``D`` on the diagonal (zero if ``d`` is ``None``). Computed in float64 for
        float64 gates and float32 otherwise.
    """
    B, X, Y, H = s_r.shape
    N = X * Y
    rows = gating_rows(t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u)
    acc = torch.float64 if s_r.dtype == torch.float64 else torch.float32
    G = torch.zeros(B, H, 0, N, dtype=acc, device=s_r.device)
    if rows:  # rows of diagonal t cover the sources of the diagonals before it: pad to N
        G = torch.cat([torch.nn.functional.pad(r, (0, N - r.shape[-1])) for r in rows], 2)
    inv = torch.argsort(diagonal_order(X, Y, s_r.device))  # row-major cell -> diagonal slot
    G = G[:, :, inv][:, :, :, inv]
    if d is not None:
        G = G + torch.diag_embed(d.to(acc).permute(0, 3, 1, 2).reshape(B, H, N))
    return G


def gating_rows(t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u):
    """The rows of :func:`gating_matrix` (without ``D``) one anti-diagonal at a time, cells
    in :func:`diagonal_order`: a list over the ``X + Y - 1`` diagonals of ``[B, H, L_t, O_t]``,
    where ``L_t`` is the number of cells on diagonal ``t`` and ``O_t`` the number on the
    diagonals before it (the only sources that can reach it); so the matrix in diagonal order
    is strictly block lower triangular and these are its non-zero blocks.

    A gate pair passed as one tensor object (``t_rl is t_ru``, ``t_du is t_dl`` or
    ``m_l is m_u``) is used once on the sum of the two incoming vectors: the same result with
    fewer operations (pLSTM's P-mode shares all three pairs)."""
    B, X, Y, H = s_r.shape
    N = X * Y
    acc = torch.float64 if s_r.dtype == torch.float64 else torch.float32
    dev = s_r.device
    if N == 0:
        return []
    order = diagonal_order(X, Y, dev)
    bounds = [(max(0, t - Y + 1), min(t, X - 1)) for t in range(X + Y - 1)]
    sizes = [hi - lo + 1 for lo, hi in bounds]

    def per_diagonal(t):  # [B, X, Y, H] -> list over diagonals of [B, H, L_t, 1]
        if t is None:
            return [None] * len(sizes)
        t = t.to(acc).permute(0, 3, 1, 2).reshape(B, H, N)[..., order]
        return list(t.unsqueeze(-1).split(sizes, -2))

    Trl, Tru, Tdu, Tdl = map(per_diagonal, (t_rl, t_ru, t_du, t_dl))
    Sr, Sd, Ml, Mu = map(per_diagonal, (s_r, s_d, m_l, m_u))
    # the same tensor passed for both gates of a pair (T_rl = T_ru, T_du = T_dl or
    # M_l = M_u, as in P-mode) lets a step multiply A + Bs once instead of A and Bs apart
    shared_r = t_rl is not None and t_rl is t_ru
    shared_d = t_du is not None and t_du is t_dl
    shared_m = m_l is m_u

    def axpy(out, gate, state):  # out + gate * state; None gate means zero
        if gate is None:
            return out
        return gate * state if out is None else torch.addcmul(out, gate, state)

    zero = torch.zeros(B, H, 1, 0, dtype=acc, device=dev)
    Ar = Ad = zero[:, :, :0]  # coefficient vectors of the previous diagonal, [B, H, L, O]
    plo, offset, rows = 0, 0, []
    for t, (lo, hi) in enumerate(bounds):
        L = hi - lo + 1
        edge = zero.new_zeros(B, H, 1, offset)
        # A = a_r(x-1, y): slot x-1 of the previous diagonal (zero at the left edge, x = 0)
        A = torch.cat([edge, Ar[:, :, : hi - plo]], 2) if lo == 0 else Ar[:, :, lo - 1 - plo :]
        A = A[:, :, :L]
        # Bs = a_d(x, y-1): slot x of the previous diagonal (zero at the top edge, y = 0)
        Bs = torch.cat([Ad[:, :, lo - plo :], edge], 2) if hi == t else Ad[:, :, lo - plo :]
        Bs = Bs[:, :, :L]
        # a gate pair given as one tensor multiplies A + Bs once (P-mode: all three pairs)
        AB = A + Bs if (shared_r or shared_d or shared_m) else None
        rows.append(Ml[t] * AB if shared_m else torch.addcmul(Ml[t] * A, Mu[t], Bs))
        own = torch.diag_embed(torch.cat([Sr[t], Sd[t]], -1).transpose(-1, -2))  # [B,H,2,L,L]
        new_r = Trl[t] * AB if shared_r else axpy(axpy(None, Trl[t], A), Tru[t], Bs)
        new_d = Tdu[t] * AB if shared_d else axpy(axpy(None, Tdu[t], Bs), Tdl[t], A)
        Ar = torch.cat([new_r, own[:, :, 0]], -1)
        Ad = torch.cat([new_d, own[:, :, 1]], -1)
        plo, offset = lo, offset + L
    return rows


def grid_scan_2d(
    q, k, v, t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, d=None, *, h0_left=None, h0_top=None
):
    """Dense path; same contract as the public function (one tile covering the grid)."""
    X, Y = q.shape[1], q.shape[2]
    return chunked.grid_scan_2d(
        q, k, v, t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, d, h0_left=h0_left, h0_top=h0_top,
        tile=max(X, Y, 1),
    )  # fmt: skip
