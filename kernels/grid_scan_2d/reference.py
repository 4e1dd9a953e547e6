"""Ground truth for :func:`~graphseq.kernels.grid_scan_2d.grid_scan_2d`: a loop over cells.

Written to be read, not to be fast. The cells are visited in row-major order (every cell's
left and upper neighbours come first), vectorised over batch and heads only:

    A = C_r(x-1, y)   (h0_left[y] when x = 0)      the state arriving from the left
    B = C_d(x, y-1)   (h0_top[x]  when y = 0)      the state arriving from above
    h(x, y)   = M_l q.A + M_u q.B + D (q.k) v
    C_r(x, y) = T_rl A + T_ru B + S_r k v^T
    C_d(x, y) = T_dl A + T_du B + S_d k v^T

The arithmetic runs in float64 for float64 inputs and in float32 otherwise. Arguments are
assumed validated by the public function; absent gates (``None``) are zero.
"""

from __future__ import annotations

import torch


def grid_scan_2d(
    q, k, v, t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, d=None, *, h0_left=None, h0_top=None
):
    """Loop reference; same contract as the public function."""
    B, X, Y, H, K = q.shape
    V = v.shape[-1]
    out_dtype = q.dtype
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    state_dtype = torch.promote_types(q.dtype, torch.float32)

    def up(t):
        return None if t is None else t.to(acc)

    q, k, v = up(q), up(k), up(v)
    t_rl, t_ru, t_du, t_dl = up(t_rl), up(t_ru), up(t_du), up(t_dl)
    s_r, s_d, m_l, m_u, d = up(s_r), up(s_d), up(m_l), up(m_u), up(d)
    zero_state = q.new_zeros(B, H, K, V)
    left = [zero_state] * Y if h0_left is None else list(up(h0_left).unbind(1))
    top = [zero_state] * X if h0_top is None else list(up(h0_top).unbind(1))

    def g(gate, x, y):  # a gate at one cell, [B, H, 1, 1]; None means 0
        return 0.0 if gate is None else gate[:, x, y, :, None, None]

    C_r = [[None] * Y for _ in range(X)]
    C_d = [[None] * Y for _ in range(X)]
    rows = []
    for x in range(X):
        row = []
        for y in range(Y):
            A = C_r[x - 1][y] if x > 0 else left[y]
            Bs = C_d[x][y - 1] if y > 0 else top[x]
            qc, kc, vc = q[:, x, y], k[:, x, y], v[:, x, y]  # [B, H, K|V]
            read = g(m_l, x, y) * A + g(m_u, x, y) * Bs
            h = torch.einsum("bhk,bhkv->bhv", qc, read)
            if d is not None:
                h = h + (d[:, x, y] * (qc * kc).sum(-1))[..., None] * vc
            kv = kc[..., :, None] * vc[..., None, :]
            C_r[x][y] = g(t_rl, x, y) * A + g(t_ru, x, y) * Bs + g(s_r, x, y) * kv
            C_d[x][y] = g(t_dl, x, y) * A + g(t_du, x, y) * Bs + g(s_d, x, y) * kv
            row.append(h)
        rows.append(torch.stack(row, 1) if row else q.new_zeros(B, 0, H, V))
    h = torch.stack(rows, 1) if rows else q.new_zeros(B, 0, Y, H, V)
    # final states: C_r leaving the right edge (x = X-1), C_d leaving the bottom edge (y = Y-1)
    right = [C_r[X - 1][y] for y in range(Y)] if X > 0 else left
    bottom = [C_d[x][Y - 1] for x in range(X)] if Y > 0 else top
    c_right = torch.stack(right, 1) if right else q.new_zeros(B, 0, H, K, V)
    c_bottom = torch.stack(bottom, 1) if bottom else q.new_zeros(B, 0, H, K, V)
    return h.to(out_dtype), (c_right.to(state_dtype), c_bottom.to(state_dtype))
