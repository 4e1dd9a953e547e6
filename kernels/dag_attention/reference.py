"""The readable reference of :func:`~graphseq.kernels.dag_attention.dag_attention`: dense
per-graph linear algebra in float64, one graph and head at a time (the test ground truth)."""

from __future__ import annotations

import torch
from torch import Tensor

from .plan import DagAttentionPlan


def dag_attention(
    qkv: Tensor,
    source: Tensor,
    transition: Tensor,
    mark: Tensor,
    direct: Tensor,
    plan: DagAttentionPlan,
    scale: float = 1.0,
) -> Tensor:
    """Per graph and head: ``P = (I - A)^{-1} X``, ``G = R^T P + diag(D)``,
    ``h = ((scale q k^T) * G) v``, with ``A[p, p'] = T`` of the line-graph edge ``p' -> p``,
    ``X[p, src(p)] = S_p``, ``R[p, dst(p)] = M_p`` (see the op's docstring). float64."""
    N, _, H, C = qkv.shape
    qkv, S, T, M, D = (t.double() for t in (qkv, source, transition, mark, direct))
    out = qkv.new_zeros(N, H, C)
    for g in range(plan.num_graphs):
        n0, n1 = int(plan.node_ptr[g]), int(plan.node_ptr[g + 1])
        e0, e1 = int(plan.edge_ptr[g]), int(plan.edge_ptr[g + 1])
        nodes, edges = plan.node[n0:n1], plan.edge[e0:e1]
        W, F = n1 - n0, e1 - e0
        # the line-graph edges into this graph's edges: (target position, source position)
        lg = [
            (p, int(plan.lg_pred[j]), int(plan.lg_id[j]))
            for p in range(F)
            for j in range(int(plan.lg_ptr[e0 + p]), int(plan.lg_ptr[e0 + p + 1]))
        ]
        rows = torch.arange(F, device=qkv.device)
        for h in range(H):
            A = qkv.new_zeros(F, F)
            for p, pred, j in lg:
                A[p, pred] += T[j, h]
            X = qkv.new_zeros(F, W)
            X[rows, plan.esrc[e0:e1]] = S[edges, h]
            R = qkv.new_zeros(F, W)
            R[rows, plan.edst[e0:e1]] = M[edges, h]
            P = torch.linalg.solve(torch.eye(F, dtype=A.dtype, device=A.device) - A, X)
            gating = R.T @ P + torch.diag(D[nodes, h])
            q, k, v = (qkv[nodes, i, h] for i in range(3))
            out[nodes, h] = ((scale * q @ k.T) * gating) @ v
    if not out.requires_grad:
        # nothing planned (an empty batch, no graph selected): keep the output connected to
        # the inputs, with zero gradients, as the compiled path does; an empty sum adds 0
        out = out + sum(t[:0].sum() for t in (qkv, S, T, M, D))
    return out
