"""Triton path of :func:`graphseq.kernels.linear_scan` (the CUDA default).

One program owns one sequence and a block of ``BD`` channels. It walks the sequence in tiles
of ``BT`` steps; inside a tile ``tl.associative_scan`` composes the affine maps
``h -> a h + b`` in parallel over time, and the state at the tile's end is carried into the next
tile. Every input is read once and every state written once (the 12N-byte floor of a float32
forward pass), and packed sequences are native: a program reads its sequence's bounds from
``cu_seqlens`` and never touches a neighbour's steps. The backward pass reuses this kernel
as a reverse scan (see ``__init__.py``).

The state entering a tile enters it as the loop has it: folded into the input of the tile's
first step, ``b + a * carry``, so it is never multiplied by a product of the tile's gates
(which can overflow or underflow where the loop's state does not, and turns an infinite gate's
``inf`` state into ``inf * 0`` or ``inf - inf`` = NaN).

Gates with ``|a| > 1``: the products a tile forms can overflow to inf where the loop's state
is still exactly 0 (no input yet) or right after an exact reset (a zero gate), and ``0 * inf``
would be NaN. The combine therefore tracks whether a span's gates are all finite and, where
they are, keeps an exact 0 exact (a product with a zero gate or a zero input).
Unlike the torch path it does not carry exponents, so inside a tile a product of gates that
overflows (underflows) while the state it multiplies is small (large) still gives inf (0).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton import autotune


@triton.jit
def _affine_combine(a1, b1, f1, a2, b2, f2):
    # apply (a1, b1) first, then (a2, b2): h -> a2 (a1 h + b1) + b2. f marks spans whose
    # gates are all finite: there a product with an exact 0 is 0 (a reset, or no input yet),
    # although the product of the other gates may have overflowed to inf (0 * inf = NaN), as
    # the loop, which never forms these products, has it
    f = f1 & f2
    a = tl.where((f != 0) & ((a1 == 0) | (a2 == 0)), 0.0, a1 * a2)
    ab = tl.where((f2 != 0) & (b1 == 0), 0.0, a2 * b1)
    return a, ab + b2, f


@autotune(
    configs=[
        # the first config is the one the interpreter uses: small tiles keep it quick
        triton.Config({"BT": 32, "BD": 16}, num_warps=2),
        triton.Config({"BT": 64, "BD": 32}, num_warps=4),
        triton.Config({"BT": 128, "BD": 32}, num_warps=4),
        triton.Config({"BT": 64, "BD": 64}, num_warps=4),
        triton.Config({"BT": 128, "BD": 64}, num_warps=8),
        triton.Config({"BT": 256, "BD": 16}, num_warps=4),
    ],
    key=["M", "REVERSE", "IS_VARLEN"],
)
@triton.jit(do_not_specialize=["T"])
def _linear_scan_kernel(
    a_ptr,
    b_ptr,
    h0_ptr,
    h_ptr,
    cu_ptr,
    T,
    M,
    REVERSE: tl.constexpr,
    HAS_H0: tl.constexpr,
    IS_VARLEN: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
):
    # sequences on grid axis 0 (up to 2**31 - 1 of them; CUDA caps axis 1 at 65,535)
    i_n = tl.program_id(0).to(tl.int64)
    i_d = tl.program_id(1)
    if IS_VARLEN:
        bos = tl.load(cu_ptr + i_n).to(tl.int64)
        eos = tl.load(cu_ptr + i_n + 1).to(tl.int64)
    else:
        bos = i_n * T
        eos = bos + T
    L = eos - bos
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < M
    if HAS_H0:
        carry = tl.load(h0_ptr + i_n * M + o_d, mask=m_d, other=0.0)
    else:
        carry = tl.zeros([BD], dtype=a_ptr.dtype.element_ty)
    rows = tl.arange(0, BT)
    n_tiles = tl.cdiv(L, BT)
    for c in range(0, n_tiles):
        if REVERSE:
            t0 = L - (c + 1) * BT
        else:
            t0 = c * BT
        o_t = t0 + rows
        m_t = (o_t >= 0) & (o_t < L)
        offs = (bos + o_t)[:, None] * M + o_d[None, :]
        mask = m_t[:, None] & m_d[None, :]
        # padding rows are the identity map (a = 1, b = 0), so they pass the state through
        a = tl.load(a_ptr + offs, mask=mask, other=1.0)
        b = tl.load(b_ptr + offs, mask=mask, other=0.0)
        # the carry enters at the tile's first step (always a real row), as in the loop
        first = (BT - 1) if REVERSE else 0
        b = tl.where(rows[:, None] == first, a * carry[None, :] + b, b)
        finite = ((a == a) & (tl.abs(a) < float("inf"))).to(tl.int32)
        _, h, _ = tl.associative_scan(
            (a, b, finite), axis=0, combine_fn=_affine_combine, reverse=REVERSE
        )
        tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)
        if REVERSE:
            carry = tl.sum(tl.where(rows[:, None] == 0, h, 0.0), axis=0)
        else:
            carry = tl.sum(tl.where(rows[:, None] == BT - 1, h, 0.0), axis=0)


def scan(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None,
    reverse: bool,
    cu_seqlens: torch.Tensor | None,
) -> torch.Tensor:
    """Core: ``a, b: [B, T, M]`` contiguous float32/float64 (``B = 1`` with ``cu_seqlens``),
    ``h0: [B, M]`` or ``None`` (always ``None`` with ``cu_seqlens``; the caller folds it in).
    Returns ``h: [B, T, M]``."""
    Bsz, T, M = a.shape
    h = torch.empty_like(b)
    if T == 0 or M == 0:
        return h
    if cu_seqlens is not None:
        n_seq = cu_seqlens.numel() - 1
        cu = cu_seqlens.to(torch.int64).contiguous()
    else:
        n_seq = Bsz
        cu = a  # unused placeholder pointer
    h0_arg = h0.contiguous() if h0 is not None else a

    def grid(meta):
        return (n_seq, triton.cdiv(M, meta["BD"]))

    _linear_scan_kernel[grid](
        a,
        b,
        h0_arg,
        h,
        cu,
        T,
        M,
        REVERSE=reverse,
        HAS_H0=h0 is not None,
        IS_VARLEN=cu_seqlens is not None,
    )
    return h
