"""Linear recurrence over a directed acyclic graph, computed by topological wavefronts.

See :func:`dag_scan` and :class:`DagScanPlan`. The recurrence, the level schedule, the backward
pass and what each backend does are in this folder's README.md.
"""

from __future__ import annotations

import torch

from .._backend import resolve_backend
from .._checks import check_float, check_same, check_tensor
from . import reference, wavefront
from .plan import DagCycleError, DagScanPlan

__all__ = ["DagCycleError", "DagScanPlan", "dag_scan"]

_OP = "dag_scan"


def dag_scan(
    x: torch.Tensor,
    weight: torch.Tensor,
    edge_index: torch.Tensor,
    *,
    plan: DagScanPlan | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    r"""Scalar-weighted linear recurrence on the states of a DAG, one topological level at a time.

    Every state (node of the DAG) ``s`` holds a tensor ``C_s`` (per head, any trailing shape,
    e.g. a ``K x V`` matrix); every edge ``p -> s`` carries a scalar weight per head:

    .. math::
        C_s = x_s + \sum_{(p \to s) \in E} w_{p \to s}\, C_p

    so ``C_s`` sums ``x`` over all paths into ``s``, each path weighted by the product of its
    edge weights. pLSTM on graphs is this recurrence on the line graph of the input DAG (states
    are the graph's edges, the weights its transitions ``T``, ``x_e = S_e k v^T``); see
    :class:`graphseq.nn.plstm.PLSTMGraph`.

    Weights may be negative or exactly zero. A batch of disjoint graphs is one DAG: pass the
    concatenated states and offset edges (as PyG batches do) and every graph is scanned at
    once; the result of a graph does not depend on the rest of the batch.

    Args:
        x: per-state inputs, ``[S, H, *state]`` (e.g. ``[S, H, K, V]``).
        weight: per-edge, per-head weights, ``[L, H]``, in the order of ``edge_index``.
        edge_index: ``[2, L]`` int32/int64 edges ``edge_index[0] -> edge_index[1]`` between
            states ``0 .. S - 1``. Parallel edges add up; a directed cycle (a self-loop
            included) raises :class:`DagCycleError`, a ``ValueError`` naming a state on it.
        plan: the :class:`DagScanPlan` of ``edge_index`` with ``S`` states, built once with
            ``DagScanPlan.from_edge_index(edge_index, S)`` and reused across calls on the same
            graph; built here when ``None``. It must describe this ``edge_index`` (checked:
            its state and edge counts).
        backend: ``"reference"`` (loop over states in topological order), ``"torch"``
            (vectorised wavefront, the default on CPU) or ``"triton"`` (one fused launch per
            level, no atomics; the default for CUDA tensors when Triton is installed).
            ``None`` picks the default, see :mod:`graphseq.kernels._backend`.

    Shapes and dtypes:
        ``x`` and ``weight`` share one floating dtype and device. float16/bfloat16 inputs are
        computed in float32, float32 in float32, float64 in float64. ``S = 0`` and ``L = 0``
        are fine.

    Returns:
        ``C``, the states, with ``x``'s shape and dtype.

    The torch and Triton paths are differentiable with respect to ``x`` and ``weight`` (first
    order) by custom autograd functions whose backward pass is the reverse wavefront scan; they
    keep the states ``C`` for the backward pass and nothing per level, so memory is linear in
    ``S``.
    The sequential depth is the number of levels (the longest path), not the number of
    states. NaN or inf in ``x_s`` or in a weight reaches exactly the states downstream of it.

    Example::

        >>> import torch
        >>> from graphseq.kernels.dag_scan import DagScanPlan, dag_scan
        >>> # two graphs in one batch: a diamond 0 -> {1, 2} -> 3, and a chain 4 -> 5
        >>> edge_index = torch.tensor([[0, 0, 1, 2, 4], [1, 2, 3, 3, 5]])
        >>> x = torch.ones(6, 1, 1)  # [S, H, state]
        >>> w = torch.tensor([[0.5], [-1.0], [2.0], [1.0], [3.0]])  # [L, H]
        >>> dag_scan(x, w, edge_index).flatten().tolist()
        [1.0, 1.5, 0.0, 4.0, 1.0, 4.0]
        >>> plan = DagScanPlan.from_edge_index(edge_index, 6)  # build once, reuse
        >>> dag_scan(x, w, edge_index, plan=plan).flatten().tolist()
        [1.0, 1.5, 0.0, 4.0, 1.0, 4.0]
    """
    check_tensor(_OP, "x", x)
    if x.dim() < 2:
        raise ValueError(f"{_OP}: x must have shape [S, H, *state], got {tuple(x.shape)}")
    check_float(_OP, "x", x)
    S, H = x.shape[0], x.shape[1]
    check_tensor(_OP, "weight", weight)
    check_same(_OP, "x", x, "weight", weight)
    check_tensor(_OP, "edge_index", edge_index)
    if edge_index.dtype not in (torch.int32, torch.int64):
        raise TypeError(
            f"{_OP}: edge_index must be an int32 or int64 tensor, got dtype {edge_index.dtype}"
        )
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"{_OP}: edge_index must have shape [2, L], got {tuple(edge_index.shape)}")
    if edge_index.device != x.device:
        raise ValueError(f"{_OP}: edge_index is on {edge_index.device} but x is on {x.device}")
    L = edge_index.shape[1]
    if tuple(weight.shape) != (L, H):
        raise ValueError(
            f"{_OP}: weight must have shape [L, H] = ({L}, {H}) (one weight per edge of "
            f"edge_index and head of x), got {tuple(weight.shape)}"
        )
    if plan is None:
        plan = DagScanPlan.from_edge_index(edge_index, S)
    else:
        if not isinstance(plan, DagScanPlan):
            raise TypeError(f"{_OP}: plan must be a DagScanPlan, got {type(plan).__name__}")
        if plan.num_states != S or plan.num_edges != L:
            raise ValueError(
                f"{_OP}: plan was built for {plan.num_states} states and {plan.num_edges} "
                f"edges, but x has {S} states and edge_index {L} edges"
            )
        if plan.device != x.device:
            raise ValueError(f"{_OP}: plan is on {plan.device} but x is on {x.device}")
        # O(L): a plan built for another graph of the same sizes would give a wrong answer
        ei = edge_index.long()[:, plan.edge_perm]
        if not (torch.equal(ei[0], plan.src) and torch.equal(ei[1], plan.dst)):
            raise ValueError(
                f"{_OP}: plan was built for a different edge_index (same sizes, other edges); "
                "build it with DagScanPlan.from_edge_index(edge_index, num_states)"
            )

    backend = resolve_backend(backend, x.device, op=_OP)
    if backend == "reference":
        return reference.dag_scan(x, weight, edge_index, plan)
    if backend == "triton":
        from . import triton as triton_path  # imports triton only when it is asked for

        return triton_path.dag_scan(x, weight, edge_index, plan)
    return wavefront.dag_scan(x, weight, edge_index, plan)
