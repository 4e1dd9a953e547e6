"""Triton path of the segment ops, for the named combines ``sum``, ``max``, ``min``, ``prod``.

One program per (segment, channel block) walks its segment in ``[BLOCK_E, BLOCK_C]`` tiles:
the reduction folds each tile with ``tl.sum`` / ``tl.max`` / ``tl.min`` (``prod``: last row
of ``tl.cumprod``) into a ``[BLOCK_C]`` accumulator; the scan scans each tile
(``tl.cumsum`` / ``tl.cumprod`` / ``tl.associative_scan``) and combines it with the running
carry. Accumulation is in float32 (float64 for float64 inputs). NaN propagates for every
combine, as with ``torch.maximum``.

Gradients (:class:`torch.autograd.Function`, first order only):

* reduce ``sum``: broadcast the output gradient to the segment's elements.
* scan ``sum``: the reverse segmented cumsum, computed by the same scan kernel on the flipped
  rows.
* ``max`` / ``min``: all of the gradient goes to the *first* element that attains the
  extremum (of the segment for reduce, of the prefix for scan); ties do not split it.
* reduce ``prod``: ``d out / d x_i`` is the product of the other elements, computed as
  exclusive prefix times exclusive suffix products (two scan-kernel launches, no division),
  so zeros are exact.
* scan ``prod``: recomputed through the vectorised PyTorch path under autograd (exact with
  zeros, O(E) memory).

This module imports triton; :mod:`graphseq.kernels.segment.ops` imports it lazily.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._autograd import first_order_only
from .._triton import autotune

OPS = {"sum": 0, "max": 1, "min": 2, "prod": 3}
_IDENTITY = {0: 0.0, 1: float("-inf"), 2: float("inf"), 3: 1.0}

# The first config is the one the interpreter uses: small tiles keep the element-by-element
# fallback of tl.associative_scan (max/min scans) cheap there.
_CONFIGS = [
    triton.Config({"BLOCK_E": 16, "BLOCK_C": 16}, num_warps=2),
    triton.Config({"BLOCK_E": 32, "BLOCK_C": 32}, num_warps=4),
    triton.Config({"BLOCK_E": 64, "BLOCK_C": 32}, num_warps=4),
    triton.Config({"BLOCK_E": 32, "BLOCK_C": 64}, num_warps=4),
    triton.Config({"BLOCK_E": 128, "BLOCK_C": 64}, num_warps=8),
]


@triton.jit
def _max_fn(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _min_fn(a, b):
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _combine(a, b, OP: tl.constexpr):
    if OP == 0:
        r = a + b
    elif OP == 1:
        r = _max_fn(a, b)
    elif OP == 2:
        r = _min_fn(a, b)
    else:
        r = a * b
    return r


@triton.jit
def _load_tile(x_ptr, rows, end, cols, C, IDENT: tl.constexpr, IS_FP64: tl.constexpr):
    mask = (rows < end)[:, None] & (cols < C)[None, :]
    t = tl.load(x_ptr + rows[:, None] * C + cols[None, :], mask=mask, other=IDENT)
    if IS_FP64:
        t = t.to(tl.float64)
    else:
        t = t.to(tl.float32)
    return t, mask


@autotune(configs=_CONFIGS, key=["C", "OP"])
@triton.jit
def _segment_reduce_kernel(
    x_ptr,  # [E, C]
    ptr_ptr,  # [N + 1] int64
    out_ptr,  # [N, C]
    C,
    OP: tl.constexpr,
    IDENT: tl.constexpr,
    IS_FP64: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    seg = tl.program_id(0).to(tl.int64)  # seg * C may pass 2**31
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    start = tl.load(ptr_ptr + seg)
    end = tl.load(ptr_ptr + seg + 1)
    rows0 = tl.arange(0, BLOCK_E)
    if IS_FP64:
        acc = tl.full([BLOCK_C], IDENT, tl.float64)
    else:
        acc = tl.full([BLOCK_C], IDENT, tl.float32)
    has_nan = tl.zeros([BLOCK_C], tl.int32)
    for blk in range(start, end, BLOCK_E):
        t, _ = _load_tile(x_ptr, blk + rows0, end, cols, C, IDENT, IS_FP64)
        if OP == 0:
            part = tl.sum(t, axis=0)
        elif OP == 1:
            part = tl.max(t, axis=0)
            has_nan = tl.maximum(has_nan, tl.max((t != t).to(tl.int32), axis=0))
        elif OP == 2:
            part = tl.min(t, axis=0)
            has_nan = tl.maximum(has_nan, tl.max((t != t).to(tl.int32), axis=0))
        else:
            # masked rows hold 1, so the last row of the tile's cumprod is the tile's product
            cp = tl.cumprod(t, axis=0)
            part = tl.sum(tl.where((rows0 == BLOCK_E - 1)[:, None], cp, 0.0), axis=0)
        acc = _combine(acc, part, OP)
    if OP == 1 or OP == 2:
        acc = tl.where(has_nan > 0, float("nan"), acc)
    tl.store(out_ptr + seg * C + cols, acc.to(out_ptr.dtype.element_ty), mask=cols < C)


@autotune(configs=_CONFIGS, key=["C", "OP"])
@triton.jit
def _segment_scan_kernel(
    x_ptr,  # [E, C]
    ptr_ptr,  # [N + 1] int64
    y_ptr,  # [E, C]
    C,
    OP: tl.constexpr,
    IDENT: tl.constexpr,
    IS_FP64: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    seg = tl.program_id(0).to(tl.int64)  # seg * C may pass 2**31
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    start = tl.load(ptr_ptr + seg)
    end = tl.load(ptr_ptr + seg + 1)
    rows0 = tl.arange(0, BLOCK_E)
    if IS_FP64:
        carry = tl.full([BLOCK_C], IDENT, tl.float64)
    else:
        carry = tl.full([BLOCK_C], IDENT, tl.float32)
    for blk in range(start, end, BLOCK_E):
        rows = blk + rows0
        t, mask = _load_tile(x_ptr, rows, end, cols, C, IDENT, IS_FP64)
        if OP == 0:
            s = tl.cumsum(t, axis=0)
        elif OP == 1:
            s = tl.associative_scan(t, 0, _max_fn)
        elif OP == 2:
            s = tl.associative_scan(t, 0, _min_fn)
        else:
            s = tl.cumprod(t, axis=0)
        s = _combine(carry[None, :], s, OP)
        tl.store(y_ptr + rows[:, None] * C + cols[None, :], s.to(y_ptr.dtype.element_ty), mask=mask)
        # masked rows hold the identity, so the tile's last row is the running total
        carry = tl.sum(tl.where((rows0 == BLOCK_E - 1)[:, None], s, 0.0), axis=0)


def _launch(kernel, x2: torch.Tensor, ptr: torch.Tensor, out: torch.Tensor, op: int):
    N, C = ptr.numel() - 1, x2.shape[1]
    if N == 0 or C == 0 or out.numel() == 0:
        return out
    kernel[lambda meta: (N, triton.cdiv(C, meta["BLOCK_C"]))](
        x2, ptr, out, C, OP=op, IDENT=_IDENTITY[op], IS_FP64=x2.dtype == torch.float64
    )
    return out


def _reduce(x2: torch.Tensor, ptr: torch.Tensor, op: int) -> torch.Tensor:
    out = x2.new_empty((ptr.numel() - 1, x2.shape[1]))
    return _launch(_segment_reduce_kernel, x2, ptr, out, op)


def _scan(x2: torch.Tensor, ptr: torch.Tensor, op: int) -> torch.Tensor:
    return _launch(_segment_scan_kernel, x2, ptr, torch.empty_like(x2), op)


def _reverse_scan(x2: torch.Tensor, ptr: torch.Tensor, op: int) -> torch.Tensor:
    """Inclusive scan from the end of every segment: the forward scan of the flipped rows."""
    flipped_ptr = x2.shape[0] - ptr.flip(0)
    return _scan(x2.flip(0).contiguous(), flipped_ptr, op).flip(0)


def _segment_ids(ptr: torch.Tensor, E: int) -> torch.Tensor:
    N = ptr.numel() - 1
    return torch.repeat_interleave(
        torch.arange(N, device=ptr.device), ptr[1:] - ptr[:-1], output_size=E
    )


def _boundary_mask(ptr: torch.Tensor, E: int, *, last: bool) -> torch.Tensor:
    """``[E, 1]`` bool: rows that start (``last=False``) or end a segment."""
    lengths = ptr[1:] - ptr[:-1]
    rows = ptr[1:][lengths > 0] - 1 if last else ptr[:-1][lengths > 0]
    mask = torch.zeros(E, dtype=torch.bool, device=ptr.device)
    mask[rows] = True
    return mask[:, None]


def _first_hit_mask(hit: torch.Tensor, seg: torch.Tensor, N: int) -> torch.Tensor:
    """``hit`` ([E, C] bool) restricted to the first hit of every segment and channel."""
    E, C = hit.shape
    rows = torch.arange(E, device=hit.device)[:, None].expand(E, C)
    cand = torch.where(hit, rows, E)
    first = torch.full((N, C), E, dtype=torch.long, device=hit.device)
    first = first.scatter_reduce(0, seg[:, None].expand(E, C), cand, "amin", include_self=True)
    return rows == first.index_select(0, seg)


class _SegmentReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, ptr, op):
        out = _reduce(x2, ptr, op)
        ctx.op = op
        ctx.save_for_backward(x2, ptr, out)
        return out

    @staticmethod
    @first_order_only("segment_tree_reduce (triton backend)", "backend='torch' records a graph")
    def backward(ctx, grad_out):
        x2, ptr, out = ctx.saved_tensors
        E, N = x2.shape[0], ptr.numel() - 1
        seg = _segment_ids(ptr, E)
        g = grad_out.index_select(0, seg)  # [E, C]
        if ctx.op == OPS["sum"]:
            return g, None, None
        if ctx.op in (OPS["max"], OPS["min"]):
            target = out.index_select(0, seg)
            hit = (x2 == target) | torch.isnan(x2)  # a NaN result comes from the first NaN
            return torch.where(_first_hit_mask(hit, seg, N), g, 0), None, None
        # prod: product of the other elements = exclusive prefix * exclusive suffix product
        op = OPS["prod"]
        one = torch.ones_like(x2[:1])
        prefix = torch.cat([one, _scan(x2, ptr, op)[:-1]])
        prefix = torch.where(_boundary_mask(ptr, E, last=False), 1, prefix)
        suffix = torch.cat([_reverse_scan(x2, ptr, op)[1:], one])
        suffix = torch.where(_boundary_mask(ptr, E, last=True), 1, suffix)
        return g * prefix * suffix, None, None


class _SegmentScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, ptr, op):
        y = _scan(x2, ptr, op)
        ctx.op = op
        ctx.save_for_backward(x2, ptr, y)
        return y

    @staticmethod
    @first_order_only("segment_scan (triton backend)", "backend='torch' records a graph")
    def backward(ctx, grad_y):
        x2, ptr, y = ctx.saved_tensors
        E = x2.shape[0]
        grad_y = grad_y.contiguous()
        if ctx.op == OPS["sum"]:  # d x_i = sum_{j >= i in the segment} d y_j
            return _reverse_scan(grad_y, ptr, OPS["sum"]), None, None
        if ctx.op in (OPS["max"], OPS["min"]):
            # y_j comes from the last position <= j where the running extremum changed
            # (a "record"); every segment start is one. Ties keep the earlier record, and so
            # does a NaN prefix (NaN != NaN): its gradient goes to the first NaN, as in reduce.
            prev = torch.cat([y[:1], y[:-1]])
            changed = (y != prev) & ~(torch.isnan(y) & torch.isnan(prev))
            record = _boundary_mask(ptr, E, last=False) | changed
            rows = torch.arange(E, device=y.device)[:, None].expand_as(y)
            source = torch.cummax(torch.where(record, rows, -1), dim=0).values  # [E, C]
            return torch.zeros_like(grad_y).scatter_add(0, source, grad_y), None, None
        # prod: recompute through the vectorised path (exact with zeros)
        from .plan import SegmentScanPlan
        from .tree import scan

        with torch.enable_grad():
            xr = x2.detach().requires_grad_(True)
            yr = scan("segment_scan", xr, SegmentScanPlan.from_ptr(ptr), torch.mul)
            (grad_x,) = torch.autograd.grad(yr, xr, grad_y)
        return grad_x, None, None


def segment_reduce_triton(x: torch.Tensor, ptr: torch.Tensor, name: str) -> torch.Tensor:
    """``[E, *] -> [N, *]``; empty segments get the monoid identity of ``name``."""
    E, feat = x.shape[0], x.shape[1:]
    x2 = x.reshape(E, math.prod(feat)).contiguous()  # [E, C]
    out = _SegmentReduce.apply(x2, ptr.contiguous(), OPS[name])
    return out.reshape(ptr.numel() - 1, *feat)


def segment_scan_triton(x: torch.Tensor, ptr: torch.Tensor, name: str) -> torch.Tensor:
    """``[E, *] -> [E, *]`` inclusive scan inside every segment."""
    E, feat = x.shape[0], x.shape[1:]
    x2 = x.reshape(E, math.prod(feat)).contiguous()  # [E, C]
    return _SegmentScan.apply(x2, ptr.contiguous(), OPS[name]).reshape(E, *feat)
