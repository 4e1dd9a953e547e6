"""Fast PyTorch path of :func:`~graphseq.kernels.grid_scan_2d.grid_scan_2d`: anti-diagonal
wavefronts.

Cell ``(x, y)`` depends only on ``(x-1, y)`` and ``(x, y-1)``, both on the previous
anti-diagonal ``x + y - 1``. So the ``X + Y - 1`` anti-diagonals are processed one after the
other, each in one vectorised step over all its cells (and over batch, heads, ``K``, ``V``).

Diagonal ``t`` holds the cells ``x = lo..hi`` (``y = t - x``), stored compactly (no padding
slots). Its left neighbours ``(x-1, y)`` are slots ``x-1`` and its upper neighbours
``(x, y-1)`` slots ``x`` of the previous diagonal, so both are contiguous slices of the
previous diagonal's states, extended by one boundary state (``h0_left`` / ``h0_top``, or
zero) at the grid edge. Per cell, with ``A = C_r(x-1, y)``, ``B = C_d(x, y-1)`` and the
``K x V`` matrices flattened, one ``3 x 3`` matrix product gives the two new states and the
read-out matrix:

    [C_r(x,y)]   [T_rl  T_ru  S_r] [A     ]
    [C_d(x,y)] = [T_dl  T_du  S_d] [B     ]        h(x,y) = q^T R + D (q.k) v
    [R       ]   [M_l   M_u   0  ] [k v^T ]

Cost: every cell is visited once with ``O(K V)`` work, so time and memory are linear in the
number of cells; ``X + Y - 1`` sequential Python steps. Autograd differentiates the
vectorised steps; it keeps ``O(K V)`` values per cell for the backward pass (linear memory).
"""

from __future__ import annotations

import torch


def grid_scan_2d(
    q, k, v, t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, d=None, *, h0_left=None, h0_top=None
):
    """Wavefront path; same contract as the public function."""
    B, X, Y, H, K = q.shape
    V = v.shape[-1]
    out_dtype = q.dtype
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    state_dtype = torch.promote_types(q.dtype, torch.float32)
    dev = q.device
    if X == 0 or Y == 0:
        h = q.new_zeros(B, X, Y, H, V)
        right = h0_left if h0_left is not None else q.new_zeros(B, Y, H, K, V, dtype=state_dtype)
        bottom = h0_top if h0_top is not None else q.new_zeros(B, X, H, K, V, dtype=state_dtype)
        return h, (right.to(state_dtype), bottom.to(state_dtype))

    # ---- cells in diagonal order: diagonal t holds x = lo_t..hi_t, y = t - x
    n_diag = X + Y - 1
    bounds = [(max(0, t - Y + 1), min(t, X - 1)) for t in range(n_diag)]
    sizes = [hi - lo + 1 for lo, hi in bounds]
    order = torch.cat([torch.arange(lo, hi + 1, device=dev) * (Y - 1) + t
                       for t, (lo, hi) in enumerate(bounds)])  # fmt: skip  # x*Y + (t-x)

    def by_diagonal(t):  # [B, X, Y, H, *rest] -> list over diagonals of [B, L_t, H, *rest]
        return t.to(acc).flatten(1, 2)[:, order].split(sizes, 1)

    def gates(t):  # [B, X, Y, H] or None -> list over diagonals of [B, L_t, H, 1]
        return [None] * n_diag if t is None else by_diagonal(t.unsqueeze(-1))

    Trl, Tru, Tdu, Tdl = gates(t_rl), gates(t_ru), gates(t_du), gates(t_dl)
    Sr, Sd, Ml, Mu = gates(s_r), gates(s_d), gates(m_l), gates(m_u)
    qs, ks, vs = by_diagonal(q), by_diagonal(k), by_diagonal(v)

    zero_state = torch.zeros(B, 1, H, K * V, dtype=acc, device=dev)
    left = None if h0_left is None else h0_left.to(acc).flatten(-2)  # [B, Y, H, KV]
    top = None if h0_top is None else h0_top.to(acc).flatten(-2)  # [B, X, H, KV]
    Cr = Cd = zero_state[:, :0]  # states of the previous diagonal, [B, L, H, KV]
    plo = 0
    outs, right, bottom = [], [None] * Y, [None] * X
    for t, (lo, hi) in enumerate(bounds):
        # A = C_r(x-1, y): slot x-1 of the previous diagonal; at x = 0 the left boundary.
        # (lo > 0 implies plo = lo - 1, so x - 1 >= plo always; and x - 1 <= phi.)
        if lo == 0:
            front = left[:, t : t + 1] if (left is not None and t < Y) else zero_state
            A = torch.cat([front, Cr[:, : hi - plo]], 1)
        else:
            A = Cr[:, lo - 1 - plo : hi - plo]
        # Bs = C_d(x, y-1): slot x of the previous diagonal; at y = 0 (x = t) the top boundary
        if hi == t:
            back = top[:, t : t + 1] if (top is not None and t < X) else zero_state
            Bs = torch.cat([Cd[:, lo - plo :], back], 1)
        else:
            Bs = Cd[:, lo - plo : hi - plo + 1]
        kv = (ks[t].unsqueeze(-1) * vs[t].unsqueeze(-2)).flatten(-2)  # [B, L, H, KV]
        R = torch.addcmul(Ml[t] * A, Mu[t], Bs)  # read-out matrix M_l A + M_u B
        outs.append(torch.einsum("blhk,blhkv->blhv", qs[t], R.unflatten(-1, (K, V))))
        Cr_new = Sr[t] * kv
        if Trl[t] is not None:
            Cr_new = torch.addcmul(Cr_new, Trl[t], A)
        if Tru[t] is not None:
            Cr_new = torch.addcmul(Cr_new, Tru[t], Bs)
        Cd_new = Sd[t] * kv
        if Tdu[t] is not None:
            Cd_new = torch.addcmul(Cd_new, Tdu[t], Bs)
        if Tdl[t] is not None:
            Cd_new = torch.addcmul(Cd_new, Tdl[t], A)
        Cr, Cd, plo = Cr_new, Cd_new, lo
        if hi == X - 1:  # cell (X-1, t-X+1) leaves through the right edge
            right[t - X + 1] = Cr[:, -1]
        if t >= Y - 1:  # cell (lo, Y-1) leaves through the bottom edge
            bottom[lo] = Cd[:, 0]

    # ---- back to grid order, plus the direct term
    h = torch.cat(outs, 1)[:, torch.argsort(order)].unflatten(1, (X, Y))  # [B, X, Y, H, V]
    if d is not None:
        qk = (q.to(acc) * k.to(acc)).sum(-1)
        h = h + (d.to(acc) * qk).unsqueeze(-1) * v.to(acc)
    c_right = torch.stack(right, 1).unflatten(-1, (K, V))  # [B, Y, H, K, V]
    c_bottom = torch.stack(bottom, 1).unflatten(-1, (K, V))  # [B, X, H, K, V]
    return h.to(out_dtype), (c_right.to(state_dtype), c_bottom.to(state_dtype))
