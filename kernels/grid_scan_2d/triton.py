"""Triton path of :func:`~graphseq.kernels.grid_scan_2d.grid_scan_2d`: one program per
(batch row, head, block of value channels) sweeps its grid in row-major order.

The state arriving from above, ``C_d(x, y-1)``, is carried in registers along a row; the
states arriving from the left, ``C_r(x-1, y)``, are the previous row's, read back from the
per-cell state buffer the sweep writes (a barrier closes every row, so each row sees the
previous one's stores). Every cell costs ``O(K V)`` and a program runs ``X Y`` cells in
sequence; programs are independent, so the parallelism is ``B H ceil(V / BLOCK_V)``. The
sequential depth is ``X Y`` instead of the wavefront path's ``X + Y - 1``: it is meant for the
patch grids of vision models (tens to hundreds of cells), where the whole scan is one launch.

The backward pass is one more launch that sweeps the grid in reverse with the adjoints:
with ``R = dL/dC_r(x, y)`` (the right neighbour's adjoint of its left state, read from a
row buffer) and ``D = dL/dC_d(x, y)`` (carried in registers from the cell below in the
sweep order), the adjoints of the two states the cell read are

    dL/dC_r(x-1, y) = M_l q dh^T + T_rl R + T_dl D
    dL/dC_d(x, y-1) = M_u q dh^T + T_ru R + T_du D

and the inputs' gradients are inner products of these with the stored states. Sums over the
value channels (``dq``, ``dk``, the gates) are written per value block and added afterwards.

Accumulation is in float32 (float64 for float64 inputs): the wrapper casts half-precision
inputs first. Grids with no cells, batches with no rows or heads, and empty states
(``K == 0`` or ``V == 0``) go to the PyTorch wavefront path (there is nothing to launch).

This module imports triton; :mod:`graphseq.kernels.grid_scan_2d` imports it lazily.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._autograd import first_order_only
from . import wavefront

_GATES = ("t_rl", "t_ru", "t_du", "t_dl", "s_r", "s_d", "m_l", "m_u", "d")
_MAX_BLOCK_V = 64


@triton.jit
def _gate(ptr, off, HAS: tl.constexpr):
    if HAS:
        return tl.load(ptr + off)
    else:
        return 0.0


@triton.jit
def _state(ptr, index, kv_off, mask, KD, VD, HAS: tl.constexpr, BLOCK_K: tl.constexpr,
           BLOCK_V: tl.constexpr):  # fmt: skip
    # this program's K x BLOCK_V block of state ``index`` of a [..., K, V] buffer; zeros when
    # the buffer is absent (``ptr`` is then a placeholder of the same dtype)
    if HAS:
        return tl.load(ptr + index * KD * VD + kv_off, mask=mask, other=0.0)
    else:
        return tl.zeros([BLOCK_K, BLOCK_V], dtype=ptr.dtype.element_ty)


@triton.jit
def _forward_kernel(
    Q, Kt, Vt,  # [B, X, Y, H, K], [B, X, Y, H, K], [B, X, Y, H, V]
    T_RL, T_RU, T_DU, T_DL, S_R, S_D, M_L, M_U, Dg,  # [B, X, Y, H]
    H0L, H0T,  # [B, Y, H, K, V], [B, X, H, K, V]
    OUT,  # [B, X, Y, H, V]
    CR, CD,  # [B, X, Y, H, K, V]: every cell's outgoing states
    X, Y, H, KD, VD,
    HAS_TRL: tl.constexpr, HAS_TRU: tl.constexpr, HAS_TDU: tl.constexpr,
    HAS_TDL: tl.constexpr, HAS_D: tl.constexpr, HAS_H0L: tl.constexpr, HAS_H0T: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    kk = tl.arange(0, BLOCK_K)
    vv = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mk = kk < KD
    mv = vv < VD
    m2 = mk[:, None] & mv[None, :]
    kv_off = kk[:, None] * VD + vv[None, :]  # within one K x V state
    for x in range(X):
        above = _state(H0T, (b * X + x) * H + h, kv_off, m2, KD, VD, HAS_H0T, BLOCK_K, BLOCK_V)
        for y in range(Y):
            cell = (b * X + x) * Y + y
            g = cell * H + h  # gate index
            if x > 0:
                left = _state(CR, g - Y * H, kv_off, m2, KD, VD, True, BLOCK_K, BLOCK_V)
            else:
                left = _state(H0L, (b * Y + y) * H + h, kv_off, m2, KD, VD, HAS_H0L, BLOCK_K,
                              BLOCK_V)  # fmt: skip
            q = tl.load(Q + g * KD + kk, mask=mk, other=0.0)
            k = tl.load(Kt + g * KD + kk, mask=mk, other=0.0)
            v = tl.load(Vt + g * VD + vv, mask=mv, other=0.0)
            read = tl.load(M_L + g) * left + tl.load(M_U + g) * above
            out = tl.sum(q[:, None] * read, axis=0)
            if HAS_D:
                out += tl.load(Dg + g) * tl.sum(q * k, axis=0) * v
            kv = k[:, None] * v[None, :]
            c_r = _gate(T_RL, g, HAS_TRL) * left + _gate(T_RU, g, HAS_TRU) * above
            c_r += tl.load(S_R + g) * kv
            c_d = _gate(T_DL, g, HAS_TDL) * left + _gate(T_DU, g, HAS_TDU) * above
            c_d += tl.load(S_D + g) * kv
            tl.store(OUT + g * VD + vv, out, mask=mv)
            tl.store(CR + g * KD * VD + kv_off, c_r, mask=m2)
            tl.store(CD + g * KD * VD + kv_off, c_d, mask=m2)
            above = c_d
        tl.debug_barrier()  # the next row reads this row's C_r stores


@triton.jit
def _backward_kernel(
    Q, Kt, Vt,
    T_RL, T_RU, T_DU, T_DL, S_R, S_D, M_L, M_U, Dg,
    H0L, H0T,
    CR, CD,  # the forward's states
    DOUT,  # [B, X, Y, H, V]
    GA,  # [B, Y, H, K, V]: in: dL/dc_right; row by row the adjoint of the left states;
    #      out: dL/dh0_left
    DCB,  # [B, X, H, K, V]: dL/dc_bottom
    DH0T,  # [B, X, H, K, V]: out, dL/dh0_top
    DQ, DK,  # [NVB, B, X, Y, H, K]: per value block
    DV,  # [B, X, Y, H, V]
    DG,  # [NVB, B, X, Y, H, 9]: per value block, the gates in _GATES order
    NB, X, Y, H, KD, VD,
    HAS_TRL: tl.constexpr, HAS_TRU: tl.constexpr, HAS_TDU: tl.constexpr,
    HAS_TDL: tl.constexpr, HAS_D: tl.constexpr, HAS_H0L: tl.constexpr, HAS_H0T: tl.constexpr,
    HAS_DCB: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0).to(tl.int64)
    vb = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    kk = tl.arange(0, BLOCK_K)
    vv = vb * BLOCK_V + tl.arange(0, BLOCK_V)
    mk = kk < KD
    mv = vv < VD
    m2 = mk[:, None] & mv[None, :]
    kv_off = kk[:, None] * VD + vv[None, :]
    block_base = vb * NB * X * Y * H  # this value block's slice of the per-block buffers
    for xi in range(X):
        x = X - 1 - xi
        # dL/dC_d(x, Y-1), the state leaving the bottom edge
        below = _state(DCB, (b * X + x) * H + h, kv_off, m2, KD, VD, HAS_DCB, BLOCK_K, BLOCK_V)
        for yi in range(Y):
            y = Y - 1 - yi
            cell = (b * X + x) * Y + y
            g = cell * H + h
            ga_off = ((b * Y + y) * H + h) * KD * VD + kv_off
            right = tl.load(GA + ga_off, mask=m2, other=0.0)  # dL/dC_r(x, y)
            if x > 0:
                left = _state(CR, g - Y * H, kv_off, m2, KD, VD, True, BLOCK_K, BLOCK_V)
            else:
                left = _state(H0L, (b * Y + y) * H + h, kv_off, m2, KD, VD, HAS_H0L, BLOCK_K,
                              BLOCK_V)  # fmt: skip
            if y > 0:
                above = _state(CD, g - H, kv_off, m2, KD, VD, True, BLOCK_K, BLOCK_V)
            else:
                above = _state(H0T, (b * X + x) * H + h, kv_off, m2, KD, VD, HAS_H0T, BLOCK_K,
                               BLOCK_V)  # fmt: skip
            q = tl.load(Q + g * KD + kk, mask=mk, other=0.0)
            k = tl.load(Kt + g * KD + kk, mask=mk, other=0.0)
            v = tl.load(Vt + g * VD + vv, mask=mv, other=0.0)
            dout = tl.load(DOUT + g * VD + vv, mask=mv, other=0.0)
            m_l = tl.load(M_L + g)
            m_u = tl.load(M_U + g)
            s_r = tl.load(S_R + g)
            s_d = tl.load(S_D + g)
            qd = q[:, None] * dout[None, :]
            kv = k[:, None] * v[None, :]
            src = s_r * right + s_d * below  # dL/d(k v^T)
            dq = tl.sum((m_l * left + m_u * above) * dout[None, :], axis=1)
            dk = tl.sum(src * v[None, :], axis=1)
            dv = tl.sum(src * k[:, None], axis=0)
            blk = (block_base + g) * 9  # this cell's gate gradients, this value block's share
            if HAS_D:
                d = tl.load(Dg + g)
                qk = tl.sum(q * k, axis=0)
                vd = tl.sum(v * dout, axis=0)  # this block's share of v . dh
                dq += d * vd * k
                dk += d * vd * q
                dv += d * qk * dout
                tl.store(DG + blk + 8, qk * vd)
            tl.store(DG + blk + 6, tl.sum(tl.sum(qd * left, axis=1), axis=0))
            tl.store(DG + blk + 7, tl.sum(tl.sum(qd * above, axis=1), axis=0))
            tl.store(DG + blk + 4, tl.sum(tl.sum(right * kv, axis=1), axis=0))
            tl.store(DG + blk + 5, tl.sum(tl.sum(below * kv, axis=1), axis=0))
            d_left = m_l * qd
            d_above = m_u * qd
            if HAS_TRL:
                d_left += tl.load(T_RL + g) * right
                tl.store(DG + blk + 0, tl.sum(tl.sum(right * left, axis=1), axis=0))
            if HAS_TRU:
                d_above += tl.load(T_RU + g) * right
                tl.store(DG + blk + 1, tl.sum(tl.sum(right * above, axis=1), axis=0))
            if HAS_TDU:
                d_above += tl.load(T_DU + g) * below
                tl.store(DG + blk + 2, tl.sum(tl.sum(below * above, axis=1), axis=0))
            if HAS_TDL:
                d_left += tl.load(T_DL + g) * below
                tl.store(DG + blk + 3, tl.sum(tl.sum(below * left, axis=1), axis=0))
            kb = (block_base + g) * KD
            tl.store(DQ + kb + kk, dq, mask=mk)
            tl.store(DK + kb + kk, dk, mask=mk)
            tl.store(DV + g * VD + vv, dv, mask=mv)
            tl.store(GA + ga_off, d_left, mask=m2)  # dL/dC_r(x-1, y): the next row's right
            if y == 0:
                tl.store(DH0T + ((b * X + x) * H + h) * KD * VD + kv_off, d_above, mask=m2)
            below = d_above  # dL/dC_d(x, y-1)
        tl.debug_barrier()  # the next row reads this row's GA stores


def _blocks(K: int, V: int) -> tuple[int, int, int]:
    block_k = triton.next_power_of_2(K)
    block_v = min(_MAX_BLOCK_V, triton.next_power_of_2(V))
    return block_k, block_v, triton.cdiv(V, block_v)


class GridScanTritonFn(torch.autograd.Function):
    """Autograd of the Triton path; inputs already in the accumulation dtype."""

    @staticmethod
    def forward(ctx, q, k, v, h0_left, h0_top, *gates):
        B, X, Y, H, K = q.shape
        V = v.shape[-1]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        gates = tuple(None if g is None else g.contiguous() for g in gates)
        h0l = None if h0_left is None else h0_left.contiguous()
        h0t = None if h0_top is None else h0_top.contiguous()
        out = q.new_empty(B, X, Y, H, V)
        c_r = q.new_empty(B, X, Y, H, K, V)
        c_d = q.new_empty(B, X, Y, H, K, V)
        block_k, block_v, nvb = _blocks(K, V)
        t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, d = (q if g is None else g for g in gates)
        _forward_kernel[(B * H, nvb)](
            q, k, v, t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, d,
            q if h0l is None else h0l, q if h0t is None else h0t,
            out, c_r, c_d, X, Y, H, K, V,
            HAS_TRL=gates[0] is not None, HAS_TRU=gates[1] is not None,
            HAS_TDU=gates[2] is not None, HAS_TDL=gates[3] is not None,
            HAS_D=gates[8] is not None, HAS_H0L=h0l is not None, HAS_H0T=h0t is not None,
            BLOCK_K=block_k, BLOCK_V=block_v,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, h0l, h0t, c_r, c_d, *gates)
        return out, c_r[:, X - 1].clone(), c_d[:, :, Y - 1].clone()

    @staticmethod
    @first_order_only("grid_scan_2d (triton backend)", "backend='reference' records a graph")
    def backward(ctx, dout, dc_right, dc_bottom):
        q, k, v, h0l, h0t, c_r, c_d, *gates = ctx.saved_tensors
        B, X, Y, H, K = q.shape
        V = v.shape[-1]
        block_k, block_v, nvb = _blocks(K, V)
        dout = torch.zeros_like(c_r[..., 0, :]) if dout is None else dout.contiguous()
        ga = (
            q.new_zeros(B, Y, H, K, V) if dc_right is None else dc_right.contiguous().clone()
        )  # becomes dL/dh0_left
        dh0t = q.new_empty(B, X, H, K, V)
        dq = q.new_empty(nvb, B, X, Y, H, K)
        dk = q.new_empty(nvb, B, X, Y, H, K)
        dv = q.new_empty(B, X, Y, H, V)
        dg = q.new_zeros(nvb, B, X, Y, H, len(_GATES))
        t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, d = (q if g is None else g for g in gates)
        _backward_kernel[(B * H, nvb)](
            q, k, v, t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, d,
            q if h0l is None else h0l, q if h0t is None else h0t,
            c_r, c_d, dout, ga, q if dc_bottom is None else dc_bottom.contiguous(),
            dh0t, dq, dk, dv, dg, B, X, Y, H, K, V,
            HAS_TRL=gates[0] is not None, HAS_TRU=gates[1] is not None,
            HAS_TDU=gates[2] is not None, HAS_TDL=gates[3] is not None,
            HAS_D=gates[8] is not None, HAS_H0L=h0l is not None, HAS_H0T=h0t is not None,
            HAS_DCB=dc_bottom is not None, BLOCK_K=block_k, BLOCK_V=block_v,
        )  # fmt: skip
        dgs = dg.sum(0).unbind(-1)
        d_gates = [None if g is None else dgs[i] for i, g in enumerate(gates)]
        return (
            dq.sum(0),
            dk.sum(0),
            dv,
            None if h0l is None else ga,
            None if h0t is None else dh0t,
            *d_gates,
        )


def grid_scan_2d(
    q, k, v, t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, d=None, *, h0_left=None, h0_top=None
):
    """Triton path; same contract as the public function (arguments already validated)."""
    B, X, Y, H, K = q.shape
    if B * H == 0 or X == 0 or Y == 0 or K * v.shape[-1] == 0:  # no cell or no state: no launch
        return wavefront.grid_scan_2d(
            q, k, v, t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, d, h0_left=h0_left, h0_top=h0_top
        )
    out_dtype = q.dtype
    acc = torch.promote_types(q.dtype, torch.float32)

    def up(t):
        return None if t is None else t.to(acc)

    gates = (t_rl, t_ru, t_du, t_dl, s_r, s_d, m_l, m_u, d)
    h, c_right, c_bottom = GridScanTritonFn.apply(
        up(q), up(k), up(v), up(h0_left), up(h0_top), *(up(g) for g in gates)
    )
    return h.to(out_dtype), (c_right, c_bottom)
