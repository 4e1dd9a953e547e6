"""The integer schedule of :func:`~graphseq.kernels.dag_attention.dag_attention`: graphs, their
nodes, their DAG edges in a topological order of the line graph, and the line-graph edges
into every DAG edge (CSR). Built once per batch and reused by every layer and call."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .._index import exclusive_cumsum
from ..dag_scan.plan import DagScanPlan

__all__ = ["DagAttentionPlan"]


@dataclass(frozen=True)
class DagAttentionPlan:
    """Which nodes, DAG edges and line-graph edges each graph of a batch has, in the order the
    kernels walk them (all ``int64``, contiguous).

    Attributes:
        num_nodes, num_edges, num_lg: ``N``, ``E``, ``L`` of the tensors the op reads.
        node_ptr: ``[G' + 1]`` boundaries in ``node`` of the ``G'`` planned graphs.
        node: the planned graphs' nodes, graph after graph, increasing inside a graph; a
            node's *local position* is its rank inside its graph.
        edge_ptr: ``[G' + 1]`` boundaries in ``edge``.
        edge: the planned graphs' DAG edges, graph after graph, each graph's in a topological
            order of the line graph (by level).
        esrc, edst: local positions of every ``edge``'s source and target node.
        lg_ptr: ``[len(edge) + 1]`` boundaries in ``lg_id`` of the line-graph edges into each
            ``edge`` entry.
        lg_id: the columns of ``lg_edge_index`` (the rows of the transition gate).
        lg_pred: the local position (inside its graph's run of ``edge``) of each one's
            source edge; always before the edge it enters.
    """

    num_nodes: int
    num_edges: int
    num_lg: int
    node_ptr: Tensor
    node: Tensor
    edge_ptr: Tensor
    edge: Tensor
    esrc: Tensor
    edst: Tensor
    lg_ptr: Tensor
    lg_id: Tensor
    lg_pred: Tensor

    @property
    def num_graphs(self) -> int:
        return self.node_ptr.numel() - 1

    @classmethod
    def from_graph(
        cls,
        edge_index: Tensor,
        lg_edge_index: Tensor,
        num_nodes: int,
        batch: Tensor | None = None,
        graphs: Tensor | None = None,
        level: Tensor | None = None,
    ) -> DagAttentionPlan:
        """The plan of a batch of DAGs.

        Args:
            edge_index: ``[2, E]`` the DAG's edges (node ids ``0 .. N - 1``).
            lg_edge_index: ``[2, L]`` the transitions between DAG edges (``e' -> e``, with
                ``dst(e') = src(e)`` for pLSTM's line graph; any DAG on the ``E`` edges works).
            num_nodes: ``N``.
            batch: ``[N]`` sorted graph id of each node (PyG's ``batch``); ``None``: one graph.
                No DAG edge or line-graph edge may join two graphs.
            graphs: ``[G]`` bool, the graphs to plan (default: all); the op leaves the other
                graphs' outputs zero.
            level: ``[E]`` every DAG edge's topological level in ``lg_edge_index``
                (:attr:`~graphseq.kernels.dag_scan.DagScanPlan.level`); computed when
                ``None`` (a cycle raises :class:`~graphseq.kernels.dag_scan.DagCycleError`).

        Raises:
            ValueError: if an edge or a line-graph edge joins two graphs of ``batch``; if
                ``batch`` is not sorted; if an id is out of range; if ``graphs`` or ``level``
                has the wrong size, or ``level`` is no topological order of ``lg_edge_index``.
        """
        op = "DagAttentionPlan.from_graph"
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
            raise ValueError(f"{op}: num_nodes must be a non-negative int, got {num_nodes!r}")
        for name, t in (("edge_index", edge_index), ("lg_edge_index", lg_edge_index),
                        ("batch", batch), ("level", level)):  # fmt: skip
            if t is None and name in ("batch", "level"):
                continue
            if not isinstance(t, Tensor):
                raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"{op}: {name} must be an integer tensor, got {t.dtype}")
        dev = edge_index.device
        edge_index, lg_edge_index = edge_index.long(), lg_edge_index.long()
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(
                f"{op}: edge_index must have shape [2, E], got {list(edge_index.shape)}"
            )
        if lg_edge_index.dim() != 2 or lg_edge_index.shape[0] != 2:
            raise ValueError(
                f"{op}: lg_edge_index must have shape [2, L], got {list(lg_edge_index.shape)}"
            )
        E, L = edge_index.shape[1], lg_edge_index.shape[1]
        if E and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
            raise ValueError(f"{op}: edge_index must hold node ids in [0, {num_nodes})")
        if L and (int(lg_edge_index.min()) < 0 or int(lg_edge_index.max()) >= E):
            raise ValueError(f"{op}: lg_edge_index must hold edge ids in [0, {E})")
        if batch is None:
            batch = torch.zeros(num_nodes, dtype=torch.long, device=dev)
        batch = batch.long()
        if batch.shape != (num_nodes,):
            raise ValueError(f"{op}: batch must have shape [{num_nodes}], got {list(batch.shape)}")
        if num_nodes and (bool((batch[1:] < batch[:-1]).any()) or int(batch[0]) < 0):
            raise ValueError(f"{op}: batch must be sorted and >= 0 (PyG batches are)")
        if level is None:
            level = DagScanPlan.from_edge_index(lg_edge_index, E).level
        if level.shape != (E,):
            raise ValueError(f"{op}: level must have shape [E] = [{E}], got {list(level.shape)}")
        level = level.long()
        if E and int(level.min()) < 0:
            raise ValueError(f"{op}: level must be >= 0, got a minimum of {int(level.min())}")
        src, dst = edge_index
        edge_graph = batch[src]
        if E and not torch.equal(edge_graph, batch[dst]):
            raise ValueError(f"{op}: an edge of edge_index joins two graphs of batch")
        lg_src, lg_dst = lg_edge_index
        if L and not torch.equal(edge_graph[lg_src], edge_graph[lg_dst]):
            raise ValueError(f"{op}: an edge of lg_edge_index joins two graphs of batch")
        G = int(batch.max()) + 1 if num_nodes else 0
        if graphs is None:
            graphs = torch.ones(G, dtype=torch.bool, device=dev)
        elif not isinstance(graphs, Tensor):
            raise TypeError(
                f"{op}: graphs must be a bool tensor of shape [{G}], got {type(graphs).__name__}"
            )
        elif graphs.shape != (G,) or graphs.dtype != torch.bool:
            raise ValueError(
                f"{op}: graphs must be a bool tensor of shape [{G}], got dtype {graphs.dtype} "
                f"and shape {list(graphs.shape)}"
            )
        sizes = torch.bincount(batch, minlength=G)
        keep_graph = graphs & (sizes > 0)
        node = torch.nonzero(keep_graph[batch]).flatten()  # graph after graph (batch sorted)
        node_start = exclusive_cumsum(sizes)  # [G] first node of every graph
        node_ptr = torch.cat([node.new_zeros(1), torch.cumsum(sizes[keep_graph], 0)])
        ids = torch.nonzero(keep_graph[edge_graph]).flatten()
        # graph after graph, each by level: two stable sorts (a combined key such as
        # graph * (max level + 1) + level overflows int64 for large levels and then moves
        # edges into another graph's run)
        by_level = ids[torch.argsort(level[ids], stable=True)]
        edge = by_level[torch.argsort(edge_graph[by_level], stable=True)]
        counts = torch.bincount(edge_graph[edge], minlength=G)[keep_graph]
        edge_ptr = torch.cat([edge.new_zeros(1), torch.cumsum(counts, 0)])
        position = torch.full((E,), -1, dtype=torch.long, device=dev)
        position[edge] = torch.arange(edge.numel(), device=dev)
        first = edge_ptr[:-1].repeat_interleave(counts)  # [len(edge)] its graph's first slot
        local = torch.full((E,), -1, dtype=torch.long, device=dev)
        local[edge] = position[edge] - first
        g = edge_graph[edge]
        esrc = src[edge] - node_start[g]
        edst = dst[edge] - node_start[g]
        lg_keep = torch.nonzero(position[lg_dst] >= 0).flatten()
        lg_id = lg_keep[torch.argsort(position[lg_dst[lg_keep]], stable=True)]
        per_edge = torch.bincount(position[lg_dst[lg_id]], minlength=edge.numel())
        lg_ptr = torch.cat([lg_id.new_zeros(1), torch.cumsum(per_edge, 0)])
        lg_pred = local[lg_src[lg_id]]
        # the kernels compute an edge's path weights from its predecessors': these must come
        # first in the graph's order, which a level that is no topological order breaks
        if bool((lg_pred >= local[lg_dst[lg_id]]).any()):
            raise ValueError(
                f"{op}: level is not a topological order of lg_edge_index (a line-graph edge "
                "goes from a level to the same or a lower one)"
            )
        return cls(num_nodes, E, L, node_ptr, node, edge_ptr, edge, esrc, edst, lg_ptr,
                   lg_id, lg_pred)  # fmt: skip

    def to(self, device: torch.device | str) -> DagAttentionPlan:
        """A copy with every tensor on ``device``."""
        values = {
            f.name: (getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), Tensor)
                     else getattr(self, f.name))
            for f in fields(self)
        }  # fmt: skip
        return DagAttentionPlan(**values)
