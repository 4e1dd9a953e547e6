"""The wavefront schedule of :func:`~graphseq.kernels.dag_scan`: topological levels of a DAG.

A schedule depends only on the graph (``edge_index`` and the number of states), never on the
data, so it is built once per graph with :meth:`DagScanPlan.from_edge_index` and reused by every
call on the same graph (several layers, forward and backward). The object is explicit and
immutable; nothing here caches anything behind the caller's back.

Building a plan is Kahn's algorithm run one whole level at a time: the states with no
unprocessed predecessor form the next level, their outgoing edges are retired together, and the
Python loop runs over the ``depth`` levels only. Every edge is touched once, so the cost is
O(S + L) integer work plus O(depth) small tensor ops, and a batch of disjoint graphs is
scheduled as one graph (its depth is that of its deepest member).
"""

from __future__ import annotations

import torch

from .._checks import check_tensor
from .._index import exclusive_cumsum as _exclusive_cumsum
from .._index import ranges as _ranges

__all__ = ["DagCycleError", "DagScanPlan"]


class DagCycleError(ValueError):
    """The graph given to :class:`DagScanPlan` has a directed cycle.

    Attributes:
        state: a state (node of the scanned graph) that lies on a directed cycle.
    """

    def __init__(self, message: str, state: int) -> None:
        super().__init__(message)
        self.state = state


def _numel(shape: torch.Size | tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _find_cycle_state(src: torch.Tensor, dst: torch.Tensor, unfinished: torch.Tensor) -> int:
    """A state on a directed cycle, given the states Kahn's algorithm could not schedule.

    Every unscheduled state has an unscheduled predecessor, so walking backwards through
    unscheduled predecessors must revisit a state; the first revisited one is on a cycle.
    """
    left = set(unfinished.tolist())
    pred: dict[int, int] = {}
    for s, d in zip(src.tolist(), dst.tolist()):
        if s in left and d in left and d not in pred:
            pred[d] = s
    seen: set[int] = set()
    u = min(left)
    while u not in seen:
        seen.add(u)
        u = pred[u]
    return u


class DagScanPlan:
    """Schedule of :func:`~graphseq.kernels.dag_scan` for one graph (or a batch of graphs).

    The states are grouped into topological **levels**: level 0 holds the states without a
    predecessor, level ``l`` the states whose longest path from a level-0 state has ``l``
    edges. Every edge points from a lower level to a higher one, so all states of a level can
    be updated at once from finished states: one gather, one multiply and one scatter-add per
    level (and the same in reverse order for the backward pass).

    Edges are kept sorted by the level of their target (stably, so the order of the
    predecessors of a state is the caller's order); ``edge_perm`` maps that sorted order back
    to the caller's edge order, so edge weights are always given in the caller's order.

    Build it with :meth:`from_edge_index`; move it with :meth:`to`.

    Attributes:
        num_states: ``S``, the number of states (nodes of the scanned graph).
        num_edges: ``L``, the number of edges.
        level: ``[S]`` int64, the level of every state.
        edge_perm: ``[L]`` int64, caller's edge index of each sorted edge.
        src, dst: ``[L]`` int64, source and target state of each sorted edge.
        edge_ptr: ``[depth + 1]`` int64 (a Python list), the sorted edges entering level ``l``
            are ``edge_ptr[l]:edge_ptr[l + 1]`` (level 0 has none).
        depth: number of levels (0 for an empty graph); the fast path runs ``depth - 1``
            sequential steps.

    Example:
        >>> import torch
        >>> from graphseq.kernels.dag_scan import DagScanPlan
        >>> # a diamond 0 -> {1, 2} -> 3 and an isolated state 4
        >>> plan = DagScanPlan.from_edge_index(torch.tensor([[0, 0, 1, 2], [1, 2, 3, 3]]), 5)
        >>> plan.depth, plan.level.tolist()
        (3, [0, 1, 1, 2, 0])
    """

    def __init__(
        self,
        *,
        num_states: int,
        level: torch.Tensor,
        edge_perm: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        edge_ptr: list[int],
    ) -> None:
        self.num_states = num_states
        self.level = level
        self.edge_perm = edge_perm
        self.src = src
        self.dst = dst
        self.edge_ptr = edge_ptr
        self._level_edges: list | None = None  # views of src/dst, made on first use
        self._triton_schedule = None  # the Triton path's rows (triton.py), made on first use

    def level_edges(self) -> list[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """``(lo, hi, src, dst)`` of the sorted edges entering each level ``1 .. depth - 1``
        that has any (``src = self.src[lo:hi]``, ``dst = self.dst[lo:hi]``)."""
        if self._level_edges is None:
            ptr = self.edge_ptr
            self._level_edges = [
                (ptr[lvl], ptr[lvl + 1], self.src[ptr[lvl] : ptr[lvl + 1]],
                 self.dst[ptr[lvl] : ptr[lvl + 1]])
                for lvl in range(1, self.depth)
                if ptr[lvl + 1] > ptr[lvl]
            ]  # fmt: skip
        return self._level_edges

    @property
    def num_edges(self) -> int:
        return self.src.numel()

    @property
    def depth(self) -> int:
        return len(self.edge_ptr) - 1

    @property
    def device(self) -> torch.device:
        return self.level.device

    @classmethod
    def from_edge_index(cls, edge_index: torch.Tensor, num_states: int) -> DagScanPlan:
        """Schedule the DAG with edges ``edge_index[0] -> edge_index[1]`` on ``num_states``.

        Args:
            edge_index: ``[2, L]`` int32/int64 edges between states ``0 .. num_states - 1``.
                Parallel edges are allowed (their weights add up); self-loops are cycles.
            num_states: number of states ``S >= 0``.

        Raises:
            DagCycleError: (a ``ValueError``) if the graph has a directed cycle; its
                ``state`` attribute and the message name a state on the cycle.
        """
        op = "DagScanPlan.from_edge_index"
        check_tensor(op, "edge_index", edge_index)
        if edge_index.dtype not in (torch.int32, torch.int64):
            raise TypeError(
                f"{op}: edge_index must be an int32 or int64 tensor, got {edge_index.dtype}"
            )
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(
                f"{op}: edge_index must have shape [2, L], got {tuple(edge_index.shape)}"
            )
        if isinstance(num_states, bool) or not isinstance(num_states, int):
            raise TypeError(f"{op}: num_states must be an int, got {type(num_states).__name__}")
        if num_states < 0:
            raise ValueError(f"{op}: num_states must be >= 0, got {num_states}")
        dev = edge_index.device
        src, dst = edge_index.long().unbind(0)  # [L], [L]
        L = src.numel()
        if L and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_states):
            raise ValueError(
                f"{op}: edge_index entries must lie in [0, num_states) = [0, {num_states}), got "
                f"values in [{int(edge_index.min())}, {int(edge_index.max())}]"
            )

        # CSR of the outgoing edges of every state
        out_order = torch.argsort(src, stable=True)  # [L]
        out_deg = torch.bincount(src, minlength=num_states)  # [S]
        out_start = _exclusive_cumsum(out_deg)  # [S]
        in_deg = torch.bincount(dst, minlength=num_states)  # [S], decremented as we go

        level = torch.full((num_states,), -1, dtype=torch.long, device=dev)
        frontier = torch.nonzero(in_deg == 0).flatten()
        lvl = 0
        while frontier.numel() > 0:
            level[frontier] = lvl
            edges = out_order[_ranges(out_start[frontier], out_deg[frontier])]  # retired edges
            targets = dst[edges]
            in_deg -= torch.bincount(targets, minlength=num_states)
            targets = torch.unique(targets)
            frontier = targets[in_deg[targets] == 0]
            lvl += 1
        unfinished = torch.nonzero(level < 0).flatten()
        if unfinished.numel() > 0:
            state = _find_cycle_state(src.cpu(), dst.cpu(), unfinished.cpu())
            raise DagCycleError(
                f"{op}: the graph has a directed cycle through state {state}; "
                "a DAG scan needs an acyclic graph",
                state,
            )

        depth = lvl  # number of levels (0 when there are no states)
        edge_level = level[dst]  # [L], >= 1
        # stable sort by target level, then by target, keeps each state's predecessors in the
        # caller's order (so summation order, hence rounding, does not depend on the batch)
        key = edge_level * max(num_states, 1) + dst
        edge_perm = torch.argsort(key, stable=True)
        counts = torch.bincount(edge_level, minlength=depth) if L else level.new_zeros(depth)
        edge_ptr = [0, *torch.cumsum(counts, 0).tolist()] if depth else [0]
        return cls(
            num_states=num_states,
            level=level,
            edge_perm=edge_perm,
            src=src[edge_perm],
            dst=dst[edge_perm],
            edge_ptr=edge_ptr,
        )

    def to(self, device: torch.device | str) -> DagScanPlan:
        """A copy of the plan with every index tensor on ``device``."""
        return DagScanPlan(
            num_states=self.num_states,
            level=self.level.to(device),
            edge_perm=self.edge_perm.to(device),
            src=self.src.to(device),
            dst=self.dst.to(device),
            edge_ptr=list(self.edge_ptr),
        )

    def __repr__(self) -> str:
        return (
            f"DagScanPlan(num_states={self.num_states}, num_edges={self.num_edges}, "
            f"depth={self.depth}, device={self.device})"
        )
