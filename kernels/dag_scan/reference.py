"""Ground truth for :func:`~graphseq.kernels.dag_scan`: a loop over states in topological order.

Written to be read, not to be fast. It needs no :class:`~graphseq.kernels.DagScanPlan`: it
orders the states itself (Kahn's algorithm, one state at a time) and then visits them one by
one::

    C[s] = x[s] + sum over edges (p -> s) of w[p -> s] * C[p]

The arithmetic runs in float64 for float64 inputs and in float32 otherwise; autograd
differentiates straight through the loop. Arguments are assumed validated by the public
function.
"""

from __future__ import annotations

from collections import deque

import torch

from .plan import DagCycleError, _numel


def topological_order(edge_index: torch.Tensor, num_states: int) -> list[int]:
    """States in a topological order (Kahn's algorithm, smallest ready state first)."""
    preds_left = [0] * num_states
    succ: list[list[int]] = [[] for _ in range(num_states)]
    for s, d in edge_index.t().tolist():
        succ[s].append(d)
        preds_left[d] += 1
    ready = deque(s for s in range(num_states) if preds_left[s] == 0)
    order = []
    while ready:
        s = ready.popleft()
        order.append(s)
        for d in succ[s]:
            preds_left[d] -= 1
            if preds_left[d] == 0:
                ready.append(d)
    if len(order) != num_states:
        state = min(set(range(num_states)) - set(order))
        raise DagCycleError(f"dag_scan: the graph has a directed cycle (state {state})", state)
    return order


def dag_scan(
    x: torch.Tensor, weight: torch.Tensor, edge_index: torch.Tensor, plan=None
) -> torch.Tensor:
    """Loop reference; same contract as the public function (``plan`` is unused)."""
    del plan  # the loop orders the states itself
    S, H = x.shape[0], x.shape[1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    x_ = x.to(acc).reshape(S, H, _numel(x.shape[2:]))  # [S, H, F]
    w_ = weight.to(acc)  # [L, H]
    preds: list[list[tuple[int, int]]] = [[] for _ in range(S)]  # (edge id, source state)
    for j, (s, d) in enumerate(edge_index.t().tolist()):
        preds[d].append((j, s))
    # unbind, not x_[s] / w_[j]: autograd of one indexing op per state would build an
    # [S, H, F] gradient for each state (quadratic backward); unbind's backward is one stack
    xs, ws = x_.unbind(0), w_.unbind(0)
    C: list[torch.Tensor | None] = [None] * S
    for s in topological_order(edge_index, S):
        c = xs[s]  # [H, F]
        for j, p in preds[s]:
            c = c + ws[j][:, None] * C[p]
        C[s] = c
    out = torch.stack(C) if S else x_.clone()  # type: ignore[arg-type]
    return out.reshape(x.shape).to(x.dtype)
