"""Triton path of :func:`~graphseq.kernels.dag_scan`: one launch per topological level, pull form.

The torch path updates a level with a gather, a multiply and a scatter-add (three launches and
an ``[n_l, H, F]`` temporary per level; atomics on CUDA). Here each level is one launch with
one program per (target state of the level, head, block of state entries): the program starts
from ``x[s]`` and adds ``w_e * C[src(e)]`` over the edges entering ``s`` in the caller's
order, so no two programs write the same state, nothing is atomic, and the summation order is
the reference loop's.

The backward pass is the same kernel on the reversed graph: the adjoint ``G = dL/dC`` obeys
``G[p] = dC[p] + sum over edges (p -> s) of w * G[s]``, and when the levels are visited from
the deepest down, every successor of a state of level ``l`` lies at a deeper level and is
final, so the states of one level pull from their successors in one launch. That needs the
edges grouped by source (``out`` rows below) as well as by target (``in`` rows); both come
from the plan's sorted edges and are built once per plan (:func:`schedule`). The weight
gradient ``dw_e = <G[dst(e)], C[src(e)]>`` is one more launch over all edges.

Accumulation is in float32 (float64 for float64 inputs): the public function casts
half-precision inputs before calling this path.

This module imports triton; :mod:`graphseq.kernels.dag_scan` imports it lazily.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .plan import DagScanPlan
from .wavefront import apply_scan

_MAX_BLOCK_F = 256  # state entries per program; larger states use more programs per row
_MAX_GRID_YZ = 65535  # CUDA's limit on grid dimensions 1 and 2 (dimension 0 allows 2**31 - 1)


@triton.jit
def _pull_kernel(
    C,  # [S, H, F], updated in place: C[s] += sum_e w[e] * C[nbr[e]] for the rows' states
    W,  # [L, H] weights, in the rows' edge order
    NBR,  # [L] int64: the state each edge reads
    ROW_STATE,  # [R] int64: the state a row writes
    ROW_PTR,  # [R + 1] int64: row r's edges are ROW_PTR[r] : ROW_PTR[r + 1]
    row_lo,  # first row of this launch
    H,
    F,
    N_F,  # blocks of BLOCK_F entries per (state, head)
    BLOCK_F: tl.constexpr,
):
    # grid (rows, min(H * N_F, 65535)): the second axis strides over the (head, block) pairs,
    # so neither many heads nor wide states exceed CUDA's grid limits
    r = row_lo + tl.program_id(0)
    s = tl.load(ROW_STATE + r)
    start = tl.load(ROW_PTR + r)
    end = tl.load(ROW_PTR + r + 1)
    for j in range(tl.program_id(1), H * N_F, tl.num_programs(1)):
        h = j // N_F
        offs = (j % N_F) * BLOCK_F + tl.arange(0, BLOCK_F)
        mask = offs < F
        target = C + (s * H + h) * F + offs
        acc = tl.load(target, mask=mask, other=0.0)
        for e in range(start, end):
            n = tl.load(NBR + e)
            w = tl.load(W + e * H + h)
            acc += w * tl.load(C + (n * H + h) * F + offs, mask=mask, other=0.0)
        tl.store(target, acc, mask=mask)


@triton.jit
def _edge_dot_kernel(
    G,  # [S, H, F]
    C,  # [S, H, F]
    SRC,  # [L] int64
    DST,  # [L] int64
    OUT,  # [L, H]: OUT[e, h] = <G[DST[e], h], C[SRC[e], h]>
    H,
    F,
    BLOCK_F: tl.constexpr,
):
    # grid (L, min(H, 65535)); int64 edge index: L * H may exceed 2**31
    e = tl.program_id(0).to(tl.int64)
    s = tl.load(SRC + e)
    d = tl.load(DST + e)
    for h in range(tl.program_id(1), H, tl.num_programs(1)):
        acc = tl.zeros([BLOCK_F], dtype=OUT.dtype.element_ty)
        for f0 in range(0, F, BLOCK_F):
            offs = f0 + tl.arange(0, BLOCK_F)
            mask = offs < F
            g = tl.load(G + (d * H + h) * F + offs, mask=mask, other=0.0)
            c = tl.load(C + (s * H + h) * F + offs, mask=mask, other=0.0)
            acc += g * c
        tl.store(OUT + e * H + h, tl.sum(acc, axis=0))


class TritonSchedule:
    """The rows of the pull kernel for one plan, forward (by target) and backward (by source).

    Attributes:
        in_state, in_ptr: rows of the forward pass: ``in_state[r]`` gathers the sorted edges
            ``in_ptr[r] : in_ptr[r + 1]`` (its incoming edges, the caller's order).
        in_levels: ``(row_lo, row_hi)`` of every level ``1 .. depth - 1`` that has rows.
        out_perm: ``[L]``, sorted edge index of each edge grouped by source.
        out_state, out_ptr, out_levels: the same for the backward pass, where row ``r``
            (state ``out_state[r]``) pulls over its outgoing edges ``out_perm[out_ptr[r] :
            out_ptr[r + 1]]``; ``out_levels`` lists the levels from the deepest down.
        out_nbr: ``[L]``, the target state of each edge in ``out_perm`` order.
    """

    def __init__(self, plan: DagScanPlan) -> None:
        S, level = plan.num_states, plan.level
        # forward rows: the sorted edges are grouped by (level of target, target) already
        self.in_state, counts = torch.unique_consecutive(plan.dst, return_counts=True)
        self.in_ptr = _with_zero(torch.cumsum(counts, 0))
        self.in_levels = _level_ranges(level[self.in_state], plan.depth, reverse=False)
        # backward rows: group the same edges by (level of source, source)
        key = level[plan.src] * max(S, 1) + plan.src
        self.out_perm = torch.argsort(key, stable=True)  # [L]
        out_src = plan.src[self.out_perm]
        self.out_nbr = plan.dst[self.out_perm].contiguous()
        self.out_state, counts = torch.unique_consecutive(out_src, return_counts=True)
        self.out_ptr = _with_zero(torch.cumsum(counts, 0))
        self.out_levels = _level_ranges(level[self.out_state], plan.depth, reverse=True)


def _with_zero(cum: torch.Tensor) -> torch.Tensor:
    return torch.cat([cum.new_zeros(1), cum]).contiguous()


def _level_ranges(row_level: torch.Tensor, depth: int, *, reverse: bool) -> list[tuple[int, int]]:
    """``(row_lo, row_hi)`` of each level with rows (rows are sorted by level)."""
    counts = torch.bincount(row_level, minlength=depth).tolist() if depth else []
    ranges, lo = [], 0
    for c in counts:
        if c:
            ranges.append((lo, lo + c))
        lo += c
    return ranges[::-1] if reverse else ranges


def schedule(plan: DagScanPlan) -> TritonSchedule:
    """The plan's :class:`TritonSchedule`, built on first use and kept with the plan (it
    depends only on the graph, like the plan itself)."""
    if plan._triton_schedule is None:
        plan._triton_schedule = TritonSchedule(plan)
    return plan._triton_schedule


def _block_f(F: int) -> int:
    return min(_MAX_BLOCK_F, triton.next_power_of_2(max(F, 1)))


def _pull(C, W, nbr, row_state, row_ptr, levels, H, F) -> None:
    """Run the pull kernel level by level, in the order of ``levels``."""
    block = _block_f(F)
    n_f = triton.cdiv(F, block)
    grid_y = min(H * n_f, _MAX_GRID_YZ)
    for lo, hi in levels:
        _pull_kernel[(hi - lo, grid_y)](C, W, nbr, row_state, row_ptr, lo, H, F, n_f, BLOCK_F=block)


def scan_forward(x: torch.Tensor, w: torch.Tensor, plan: DagScanPlan) -> torch.Tensor:
    """States ``C`` ``[S, H, F]`` from ``x`` ``[S, H, F]`` and sorted weights ``[L, H]``."""
    C = x.contiguous().clone()
    _, H, F = C.shape
    if F == 0 or H == 0 or plan.num_edges == 0:
        return C
    sched = schedule(plan)
    _pull(C, w.contiguous(), plan.src, sched.in_state, sched.in_ptr, sched.in_levels, H, F)
    return C


def scan_backward(
    C: torch.Tensor, w: torch.Tensor, dC: torch.Tensor, plan: DagScanPlan, need_dw: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Adjoint scan: ``(dx, dw_sorted)`` for states ``C`` and upstream gradient ``dC``."""
    G = dC.contiguous().clone()
    _, H, F = G.shape
    L = plan.num_edges
    if F == 0 or H == 0 or L == 0:
        return G, (w.new_zeros(L, H) if need_dw else None)
    sched = schedule(plan)
    w_out = w[sched.out_perm].contiguous()
    _pull(G, w_out, sched.out_nbr, sched.out_state, sched.out_ptr, sched.out_levels, H, F)
    dw = None
    if need_dw:
        dw = torch.empty(L, H, dtype=C.dtype, device=C.device)
        grid = (L, min(H, _MAX_GRID_YZ))
        _edge_dot_kernel[grid](G, C, plan.src, plan.dst, dw, H, F, BLOCK_F=_block_f(F))
    return G, dw


def dag_scan(
    x: torch.Tensor, weight: torch.Tensor, edge_index: torch.Tensor, plan: DagScanPlan
) -> torch.Tensor:
    """Triton path; same contract as the public function (``plan`` already built)."""
    del edge_index  # the plan holds the sorted edges
    schedule(plan)  # cached on the plan, built outside the autograd function
    return apply_scan(x, weight, plan, (scan_forward, scan_backward))
