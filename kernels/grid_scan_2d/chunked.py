"""Tiled path of :func:`~graphseq.kernels.grid_scan_2d.grid_scan_2d`: dense tiles, boundary
states between them.

The grid is cut into ``bx x by`` tiles. Inside a tile everything is linear in the states that
enter it (``by`` from the left, ``bx`` from above) and in the ``k v^T`` of its own cells, with
scalar coefficients that depend only on the gates:

* ``G[c, c']``: how much of cell ``c'``'s ``k v^T`` cell ``c`` reads (strictly upstream
  paths; the diagonal is the direct gate, added separately);
* ``Min[c, j]``: how much of entering state ``j`` cell ``c`` reads;
* ``Tout[j', j]`` and ``Sout[j', c']``: how leaving state ``j'`` is made of the entering
  states and of the tile's own cells.

These coefficients are the recurrence itself run on unit inputs: the wavefront path with
``K = 1``, ``q = k = 1``, one-hot values (one slot per cell) and one-hot entering states (one
slot per boundary position), so a cell's read-out and every leaving state come out as
coefficient vectors over the ``by + bx + bx by`` inputs of the tile. With them,

* intra-tile outputs are masked linear attention: ``h_c += sum_c' G[c, c'] (q_c . k_c') v_c'``;
* leaving states: ``C_j' = sum_j Tout[j', j] C_j + sum_c' Sout[j', c'] k_c' v_c'^T``;
* the states are handed from tile to tile in row-major tile order (left and upper
  neighbours first), and each tile's outputs get ``q_c^T sum_j Min[c, j] C_j``.

Tiles at the right/bottom edge are padded to full size with pass-through cells (``T_rl = 1``
beyond the right edge, ``T_du = 1`` below the bottom edge, every other gate and ``q, k, v``
zero), which changes no output and carries the edge states out exactly; the padding is less
than one tile per axis.

Cost per cell: ``O(b^2 K)`` (intra-tile attention) + ``O(b K V)`` (boundary states, as matrix
products) + ``O(b^2)`` per head for the coefficients; memory linear in the number of cells
for fixed tile size; ``(X/bx) (Y/by)`` sequential tile steps plus ``bx + by - 1`` wavefront steps
for the coefficients (all tiles at once). Gradients come from autograd.
"""

from __future__ import annotations

import torch

from . import wavefront


def _pad_gates(t, X, Y, Xp, Yp, fill_right=0.0, fill_bottom=0.0):
    """Pad ``[B, X, Y, H]`` to ``[B, Xp, Yp, H]``: ``fill_right`` where ``x >= X`` (and
    ``y < Y``), ``fill_bottom`` where ``y >= Y`` (and ``x < X``), zero in the far corner."""
    if Xp == X and Yp == Y:
        return t
    B, _, _, H = t.shape
    out = t.new_zeros(B, Xp, Yp, H)
    out[:, X:, :Y] = fill_right
    out[:, :X, Y:] = fill_bottom
    out[:, :X, :Y] = t
    return out


def _tiles(t, bx, by):
    """``[B, Xp, Yp, *rest]`` -> ``[B, TX, TY, bx, by, *rest]``."""
    B, Xp, Yp = t.shape[:3]
    t = t.reshape(B, Xp // bx, bx, Yp // by, by, *t.shape[3:])
    return t.transpose(2, 3)


def grid_scan_2d(
    q, k, v, t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, d=None, *, h0_left=None, h0_top=None,
    tile=8,
):  # fmt: skip
    """Tiled path; same contract as the public function, plus the tile side ``tile``."""
    B, X, Y, H, K = q.shape
    V = v.shape[-1]
    out_dtype = q.dtype
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    state_dtype = torch.promote_types(q.dtype, torch.float32)
    dev = q.device
    if X == 0 or Y == 0:
        return wavefront.grid_scan_2d(
            q, k, v, t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, d, h0_left=h0_left,
            h0_top=h0_top,
        )  # fmt: skip
    bx, by = min(tile, X), min(tile, Y)
    Xp, Yp = -(-X // bx) * bx, -(-Y // by) * by
    TX, TY = Xp // bx, Yp // by
    nc = bx * by  # cells per tile
    P = by + bx + nc  # inputs of a tile: left states, top states, cells

    def gate(t, right=0.0, bottom=0.0):
        if t is None:
            t = torch.zeros((), dtype=acc, device=dev).expand(B, X, Y, H)
        return _tiles(_pad_gates(t.to(acc), X, Y, Xp, Yp, right, bottom), bx, by)

    # ---- 1. coefficients of every tile: the recurrence on unit inputs (K = 1, V = P)
    g = dict(
        t_rl=gate(t_rl, right=1.0), t_ru=gate(t_ru), t_du=gate(t_du, bottom=1.0),
        t_dl=None if t_dl is None else gate(t_dl), s_r=gate(s_r), s_d=gate(s_d),
        m_l=gate(m_l), m_u=gate(m_u),
    )  # fmt: skip  # each [B, TX, TY, bx, by, H]
    n_t = B * TX * TY
    g = {n: None if t is None else t.reshape(n_t, bx, by, H) for n, t in g.items()}
    eye = torch.eye(P, dtype=acc, device=dev)
    ones = torch.ones((), dtype=acc, device=dev).expand(n_t, bx, by, H, 1)
    unit_v = eye[by + bx :].view(1, bx, by, 1, P).expand(n_t, bx, by, H, P)
    unit_left = eye[:by].view(1, by, 1, 1, P).expand(n_t, by, H, 1, P)
    unit_top = eye[by : by + bx].view(1, bx, 1, 1, P).expand(n_t, bx, H, 1, P)
    coef, (c_right, c_bottom) = wavefront.grid_scan_2d(
        ones, ones, unit_v, g["t_rl"], g["t_ru"], g["t_du"], g["t_dl"], g["s_r"], g["s_d"],
        g["m_l"], g["m_u"], None, h0_left=unit_left, h0_top=unit_top,
    )  # fmt: skip
    # coef: [n_t, bx, by, H, P] read-out coefficients of every cell
    # c_right: [n_t, by, H, 1, P], c_bottom: [n_t, bx, H, 1, P] leaving-state coefficients
    coef = coef.reshape(B, TX, TY, nc, H, P).permute(0, 1, 2, 4, 3, 5)  # [B,TX,TY,H,nc,P]
    leave = torch.cat([c_right, c_bottom], 1).squeeze(-2)  # [n_t, by + bx, H, P]
    leave = leave.reshape(B, TX, TY, by + bx, H, P).permute(0, 1, 2, 4, 3, 5)

    # ---- 2. tile inputs, [B, TX, TY, H, nc, K|V]
    def cells(t):
        t = t.to(acc)
        if Xp != X or Yp != Y:
            t = torch.nn.functional.pad(t, (0, 0, 0, 0, 0, Yp - Y, 0, Xp - X))
        return _tiles(t, bx, by).reshape(B, TX, TY, nc, H, t.shape[-1]).transpose(3, 4)

    qt, kt, vt = cells(q), cells(k), cells(v)

    # ---- 3. intra-tile outputs: masked linear attention with the path-sum mask G
    G = coef[..., by + bx :]  # [B, TX, TY, H, nc, nc]
    h = (G * (qt @ kt.transpose(-1, -2))) @ vt  # [B, TX, TY, H, nc, V]

    # ---- 4. each tile's own contribution to its leaving states, [.., H, by+bx, K*V]
    own = torch.einsum("...jc,...ck,...cv->...jkv", leave[..., by + bx :], kt, vt)
    own = own.flatten(-2)  # [B, TX, TY, H, by + bx, KV]
    Tout = leave[..., : by + bx]  # [B, TX, TY, H, by + bx (leaving), by + bx (entering)]

    # ---- 5. hand the states from tile to tile (row-major order over tiles)
    zeros = torch.zeros(B, H, 1, K * V, dtype=acc, device=dev)

    def boundary(h0, n, b):  # [B, n*b padded, H, K, V] per tile -> list of [B, H, b, KV]
        if h0 is None:
            return [zeros.expand(B, H, b, K * V)] * n
        t = h0.to(acc).flatten(-2)  # [B, side, H, KV]
        side = t.shape[1]
        if side != n * b:
            t = torch.cat([t, t.new_zeros(B, n * b - side, H, K * V)], 1)
        return list(t.view(B, n, b, H, K * V).transpose(2, 3).unbind(1))

    from_left = boundary(h0_left, TY, by)  # state entering tile (0, ty) from the left
    from_top = boundary(h0_top, TX, bx)
    entering = [[None] * TY for _ in range(TX)]
    for tx in range(TX):
        for ty in range(TY):
            C_in = torch.cat([from_left[ty], from_top[tx]], 2)  # [B, H, by + bx, KV]
            entering[tx][ty] = C_in
            C_out = Tout[:, tx, ty] @ C_in + own[:, tx, ty]  # [B, H, by + bx, KV]
            from_left[ty], from_top[tx] = C_out[:, :, :by], C_out[:, :, by:]
    right_edge, bottom_edge = from_left, from_top
    C_in = torch.stack([torch.stack(row, 1) for row in entering], 1)  # [B,TX,TY,H,by+bx,KV]

    # ---- 6. outputs from the entering states: q_c^T sum_j Min[c, j] C_j
    Min = coef[..., : by + bx]  # [B, TX, TY, H, nc, by + bx]
    qC = qt @ C_in.unflatten(-1, (K, V)).transpose(-3, -2).flatten(-2)  # [.., nc, (j V)]
    h = h + torch.einsum("...cj,...cjv->...cv", Min, qC.unflatten(-1, (by + bx, V)))

    # ---- back to the grid, crop, direct term
    h = h.transpose(3, 4).reshape(B, TX, TY, bx, by, H, V).transpose(2, 3)
    h = h.reshape(B, Xp, Yp, H, V)[:, :X, :Y]
    if d is not None:
        qk = (q.to(acc) * k.to(acc)).sum(-1)
        h = h + (d.to(acc) * qk).unsqueeze(-1) * v.to(acc)
    c_right = torch.cat(right_edge, 2).transpose(1, 2)[:, :Y].unflatten(-1, (K, V))
    c_bottom = torch.cat(bottom_edge, 2).transpose(1, 2)[:, :X].unflatten(-1, (K, V))
    return h.to(out_dtype), (c_right.to(state_dtype), c_bottom.to(state_dtype))
