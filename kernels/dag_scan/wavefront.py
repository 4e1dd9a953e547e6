"""The fast PyTorch path of :func:`~graphseq.kernels.dag_scan`: one step per topological level.

Forward, for every level ``l >= 1`` of the :class:`~graphseq.kernels.DagScanPlan` (all states of
a level at once, every graph of a batch at once)::

    C[dst] += w * C[src]          over the edges entering level l   (gather, scale, scatter-add)

starting from ``C = x``. The edges entering level ``l`` read only states of lower levels,
which are final by then, so the in-place update is exact.

Backward (a custom autograd function; see README.md): the adjoint ``G = dL/dC`` obeys the same
recurrence on the reversed graph, ``G[src] += w * G[dst]``, run over the levels in reverse
order starting from the incoming gradient. Then ``dx = G`` and, per edge,
``dw = <G[dst], C[src]>`` summed over the state entries. Memory is that of the states, ``C``
and ``G`` (``O(S H F)``), plus one level's edges at a time.
"""

from __future__ import annotations

import torch

from .._autograd import first_order_only
from .plan import DagScanPlan, _numel


def _scatter_add_(buf: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    """``buf[index] += values`` with repeated indices summed, deterministically when asked.

    ``index_add_`` is deterministic on CPU; on CUDA it uses atomics, so under
    ``torch.use_deterministic_algorithms(True)`` the sorted ``index_put_`` path is used.
    """
    if buf.device.type != "cpu" and torch.are_deterministic_algorithms_enabled():
        buf.index_put_((index,), values, accumulate=True)
    else:
        buf.index_add_(0, index, values)


def scan_forward(x: torch.Tensor, w: torch.Tensor, plan: DagScanPlan) -> torch.Tensor:
    """States ``C`` ``[S, H, F]`` from inputs ``x`` ``[S, H, F]`` and sorted weights ``[L, H]``."""
    C = x.clone()
    w = w.unsqueeze(-1)  # [L, H, 1]
    for lo, hi, src, dst in plan.level_edges():
        _scatter_add_(C, dst, w[lo:hi] * C[src])  # [n_l, H, F]
    return C


def scan_backward(
    C: torch.Tensor, w: torch.Tensor, dC: torch.Tensor, plan: DagScanPlan, need_dw: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Adjoint scan: ``(dx, dw_sorted)`` for states ``C`` and upstream gradient ``dC``."""
    G = dC.clone()  # [S, H, F]
    w3 = w.unsqueeze(-1)  # [L, H, 1]
    for lo, hi, src, dst in reversed(plan.level_edges()):
        # G[dst] is final: the successors of this level's states were done before
        _scatter_add_(G, src, w3[lo:hi] * G[dst])
    dw = None
    if need_dw:  # every G is final now: one pass over all edges
        dw = torch.einsum("lhf,lhf->lh", G[plan.dst], C[plan.src])  # [L, H]
    return G, dw


class DagScanFn(torch.autograd.Function):
    """Autograd of the level-by-level paths (this module's and ``triton.py``'s): ``scans`` is
    the path's ``(scan_forward, scan_backward)`` pair; the backward pass is the reverse scan."""

    @staticmethod
    def forward(ctx, x, weight, plan, scans):
        w = weight[plan.edge_perm].contiguous()  # [L, H] in level order
        C = scans[0](x, w, plan)
        ctx.save_for_backward(C, w)
        ctx.plan, ctx.scan_backward = plan, scans[1]
        return C

    @staticmethod
    @first_order_only("dag_scan (torch and triton backends)", "backend='reference' records a graph")
    def backward(ctx, dC):
        C, w = ctx.saved_tensors
        plan = ctx.plan
        need_dw = ctx.needs_input_grad[1]
        G, dw_sorted = ctx.scan_backward(C, w, dC.contiguous(), plan, need_dw)
        dweight = None
        if need_dw:
            dweight = torch.empty_like(dw_sorted)
            dweight[plan.edge_perm] = dw_sorted
        dx = G if ctx.needs_input_grad[0] else None
        return dx, dweight, None, None


def apply_scan(x: torch.Tensor, weight: torch.Tensor, plan: DagScanPlan, scans) -> torch.Tensor:
    """Run a level-by-level path (``scans``, see :class:`DagScanFn`) in the accumulation dtype
    on ``[S, H, F]`` states and return ``C`` with ``x``'s shape and dtype. Whatever the path
    caches on the plan must be built before this call: torch.compile traces the autograd
    function's forward as a subgraph and refuses tensors created and stored on the plan there."""
    S, H = x.shape[0], x.shape[1]
    acc = torch.promote_types(x.dtype, torch.float32)
    C = DagScanFn.apply(x.to(acc).reshape(S, H, _numel(x.shape[2:])), weight.to(acc), plan, scans)
    return C.reshape(x.shape).to(x.dtype)


def dag_scan(
    x: torch.Tensor, weight: torch.Tensor, edge_index: torch.Tensor, plan: DagScanPlan
) -> torch.Tensor:
    """Wavefront path; same contract as the public function (``plan`` already built)."""
    del edge_index  # the plan holds the sorted edges
    plan.level_edges()  # the plan's cached level views, built outside the autograd function
    return apply_scan(x, weight, plan, (scan_forward, scan_backward))
