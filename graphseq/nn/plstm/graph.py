"""pLSTM on directed acyclic graphs: :class:`PLSTMGraph` and its graph preprocessing.

The preprocessing turns a PyG ``edge_index`` into what the recurrence runs on, with plain torch
integer ops (no networkx, no Python loop over edges or nodes):

1. **orientation** (:func:`orient_edges`): undirected inputs (PyG stores both directions, as
   for molecules) become a DAG by pointing every edge from the lower to the higher node index;
   directed inputs are used as given and must be acyclic;
2. **line graph** (:func:`line_graph`): one line-graph edge ``e' -> e`` for every node ``n``
   and every pair (incoming edge ``e'`` of ``n``, outgoing edge ``e`` of ``n``); the cell
   states live on the DAG's edges, the transitions on the line-graph edges;
3. **multitree pruning** (D-mode only, :func:`prune_to_multitree`);
4. **topological levels** (:class:`~graphseq.kernels.DagScanPlan`), the wavefront schedule
   of :func:`~graphseq.kernels.dag_scan`;
5. **graph layout** (:class:`GraphLayout`): the graphs of a batch grouped by size into
   buckets, each a dense block of the ``"paths"`` algorithm padded to its own widths; on CPU,
   where the compiled path form runs, its :class:`NativeLayout` instead (every graph on its
   own, :class:`~graphseq.kernels.dag_attention.DagAttentionPlan`).

:func:`prepare_dag` runs the first four and returns a :class:`DagStructure`, which depends on
the graph only: build it once (per batch, or per graph and keep it) and pass it to every layer
of the same mode and direction. The fifth is built from it on first use by a ``"paths"`` or
``"auto"`` layer (:meth:`DagStructure.layout`, :meth:`DagStructure.native_layout`) and cached
on it.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import torch
from torch import Tensor

from graphseq.kernels._autograd import first_order_only
from graphseq.kernels._index import exclusive_cumsum as _exclusive_cumsum
from graphseq.kernels._index import ranges as _ranges
from graphseq.kernels.dag_attention import DagAttentionPlan, dag_attention, native_available
from graphseq.kernels.dag_scan import DagCycleError, DagScanPlan, dag_scan

from ..seq.base import (
    check_choice,
    check_matches_parameters,
    check_positive_int,
    check_real,
)
from .gates import (
    DIRECT_BIAS,
    MARK_BIAS,
    SOURCE_BIAS,
    TRANSITION_BIAS,
    TRANSITION_FACTOR,
    MultiHeadRMSNorm,
    small_init_,
)

__all__ = [
    "BUCKET_OVERHEAD",
    "NATIVE_PATHS",
    "PATH_BLOCK_BYTES",
    "PATH_FORM_MAX_EDGES",
    "PATH_FORM_MAX_NODES",
    "P_MODE_OFFSET",
    "DagStructure",
    "GraphBucket",
    "GraphLayout",
    "NativeLayout",
    "PLSTMGraph",
    "StateGroup",
    "line_graph",
    "orient_edges",
    "plstm_graph_reference",
    "pmode_normalize",
    "prepare_dag",
    "prune_to_multitree",
]

#: ``c`` in the P-mode normalisation ``T = t / (c + sum_out |t|)`` (the released code's 0.5).
P_MODE_OFFSET = 0.5

_ORIENTATIONS = ("index", "directed")
_MODES = ("P", "D")
_ALGORITHMS = ("auto", "states", "paths")
#: ``algorithm="auto"`` runs a graph by the path form when it has at most this many nodes
#: (and at most :data:`PATH_FORM_MAX_EDGES` DAG edges).
PATH_FORM_MAX_NODES = 128
#: ``algorithm="auto"`` runs a graph by the path form when it has at most this many DAG edges
#: (and at most :data:`PATH_FORM_MAX_NODES` nodes): the path form's triangular solve holds an
#: ``F x F`` block per graph and head, O(F^2) memory and O(F^2 W) work, the state form O(F K V).
#: Molecules have ``F ~ 1.1 W`` (trees plus a few rings), far below the limit; dense graphs
#: (a complete 128-node graph has F = 8128) go to the state form.
PATH_FORM_MAX_EDGES = 2 * PATH_FORM_MAX_NODES
#: The path form runs a bucket in chunks of graphs so that its largest ``[b, H, ., .]`` block
#: (``F x F``, ``F x W`` or ``W x W`` per graph and head) stays under this many bytes (a single
#: graph above it is run alone). The backward recomputes the blocks of such a bucket chunk by
#: chunk, so that they are not all kept alive (a bucket of one chunk keeps its blocks).
PATH_BLOCK_BYTES = 64 * 2**20
#: On CPU, ``algorithm="paths"`` / ``"auto"`` run the path form by the compiled kernel of
#: :func:`graphseq.kernels.dag_attention.dag_attention` (graph by graph, no padding) when it
#: can be built (a C compiler; see :mod:`graphseq.kernels.dag_attention.native`); ``False``
#: runs the bucketed PyTorch path form there too (as on GPUs, and where there is no compiler).
NATIVE_PATHS = True
#: Cost of one more bucket in :func:`_bucket_bounds`'s model, in the units of
#: :func:`_padded_cost` (the fixed cost of a block's dozen tensor ops).
BUCKET_OVERHEAD = 4096.0


def _to_device(obj, device: torch.device | str):
    """A copy of the dataclass ``obj`` with every tensor or object with a ``.to`` (also inside
    tuples) among its constructor fields on ``device``; fields left out of the constructor
    (caches) start empty."""

    def move(value):
        if isinstance(value, tuple):
            return tuple(move(v) for v in value)
        return value.to(device) if hasattr(value, "to") else value

    return type(obj)(**{f.name: move(getattr(obj, f.name)) for f in fields(obj) if f.init})


def _check_edge_index(op: str, edge_index: object, num_nodes: int) -> Tensor:
    _check_edge_index_form(op, edge_index)
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(
            f"{op}: edge_index entries must lie in [0, num_nodes) = [0, {num_nodes}), got values "
            f"in [{int(edge_index.min())}, {int(edge_index.max())}]"
        )
    return edge_index.long()


def _check_edge_index_form(op: str, edge_index: object) -> None:
    """Type, dtype and shape of ``edge_index`` (no host sync; the range check needs one)."""
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"{op}: edge_index must be a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.layout != torch.strided:
        raise TypeError(
            f"{op}: edge_index must be a dense [2, E] integer tensor; a sparse adjacency "
            f"({edge_index.layout}) is not supported, pass its indices (e.g. "
            "torch_geometric.utils.to_edge_index(adj)[0])"
        )
    if edge_index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: edge_index must be an int32/int64 tensor, got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"{op}: edge_index must have shape [2, E], got {tuple(edge_index.shape)}")


def orient_edges(
    edge_index: Tensor, num_nodes: int, orientation: str = "index"
) -> tuple[Tensor, Tensor]:
    """Turn ``edge_index`` into the edges of a DAG.

    ``orientation="index"`` (for undirected graphs, e.g. PyG molecules, which store both
    directions): every edge ``{u, v}`` becomes ``min(u, v) -> max(u, v)``; the two stored
    directions collapse into one DAG edge (the stored ``min -> max`` copy if there is one, so
    its ``edge_attr`` is used), repeated edges collapse too, self-loops are dropped. The
    result is always acyclic, needs no root, and is the same graph by graph inside a PyG batch
    (batching only adds offsets, which keep the index order). For molecules built from SMILES
    (RDKit numbers atoms along the SMILES depth-first traversal) index order follows the
    traversal, so directed paths are long.

    ``orientation="directed"``: the edges as given (parallel edges kept); the graph must be
    acyclic, which :func:`prepare_dag` checks.

    Returns:
        ``(dag_edge_index [2, E'], input_edge [E'])``: the DAG's edges, sorted by
        ``(source, target)`` for ``"index"`` and in input order for ``"directed"``, and for
        each the column of ``edge_index`` it came from (to gather ``edge_attr``).
    """
    op = "orient_edges"
    check_choice(op, "orientation", orientation, _ORIENTATIONS)
    edge_index = _check_edge_index(op, edge_index, num_nodes)
    E = edge_index.shape[1]
    if orientation == "directed":
        return edge_index, torch.arange(E, device=edge_index.device)
    src, dst = edge_index
    kept = torch.nonzero(src != dst).flatten()  # self-loops dropped
    s, d = src[kept], dst[kept]
    lo, hi = torch.minimum(s, d), torch.maximum(s, d)
    pair = lo * num_nodes + hi
    order = torch.argsort(pair * 2 + (s > d).long(), stable=True)  # min -> max copy first
    pair = pair[order]
    first = torch.ones_like(pair, dtype=torch.bool)
    first[1:] = pair[1:] != pair[:-1]
    sel = order[first]
    return torch.stack([lo[sel], hi[sel]]), kept[sel]


def line_graph(dag_edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """The line graph of a directed graph: ``e' -> e`` whenever ``target(e') = source(e)``.

    Returns:
        ``(lg_edge_index [2, L], lg_node [L])``: line-graph edges between the graph's edges
        (grouped by ``e'`` in increasing order, then ``e`` in increasing order), and the node
        ``n = target(e') = source(e)`` each one passes through. ``L = sum_n indeg(n)
        outdeg(n)``; built with O(E + L) vectorised integer work.
    """
    src, dst = dag_edge_index
    E = src.numel()
    dev = src.device
    out_order = torch.argsort(src, stable=True)  # outgoing edges of each node, increasing
    out_deg = torch.bincount(src, minlength=num_nodes)
    out_start = _exclusive_cumsum(out_deg)
    count = out_deg[dst]  # [E] successors of each edge
    lg_src = torch.repeat_interleave(torch.arange(E, device=dev), count)
    lg_dst = out_order[_ranges(out_start[dst], count)]
    return torch.stack([lg_src, lg_dst]), dst[lg_src]


def _bits(local: Tensor, words: int) -> Tensor:
    """``[n, words]`` int64 bitsets with only bit ``local[i]`` set in row ``i``."""
    out = torch.zeros(local.numel(), words, dtype=torch.long, device=local.device)
    one = torch.ones_like(local)
    out[torch.arange(local.numel(), device=local.device), local // 64] = torch.bitwise_left_shift(
        one, local % 64
    )
    return out


def prune_to_multitree(
    lg_edge_index: Tensor, num_states: int, state_graph: Tensor | None = None
) -> Tensor:
    """Keep a subset of a DAG's edges so that any two states are joined by at most one path.

    The rule is greedy and deterministic. States are visited level by level in topological
    order; the incoming edges of a state are considered in their order in ``lg_edge_index``
    (for :func:`line_graph`'s output: increasing source edge), and an edge ``p -> s`` is kept
    iff the ancestors of ``p`` (``p`` included, in the pruned graph) share no state with the
    ancestors already collected by ``s`` (``s`` itself and the ancestors of the kept edges).
    The first incoming edge is always kept, so no state loses all its inputs.

    Why the result is a multitree: if two different paths ran from ``u`` to ``w``, follow them
    backwards from ``w`` to the first state where they split into two different incoming edges
    ``p -> s`` and ``p' -> s``; ``u`` is an ancestor of both ``p`` and ``p'``, which the rule
    forbids.

    Ancestor sets are int64 bitsets, indexed inside each graph of a batch when
    ``state_graph`` (``[num_states]``, the graph of each state, non-decreasing) is given:
    memory and time O(S * W / 64) with ``W`` the largest graph's state count (one tensor op per
    level and predecessor slot).

    Returns:
        ``keep`` ``[L]`` bool, over the columns of ``lg_edge_index``.
    """
    plan = DagScanPlan.from_edge_index(lg_edge_index, num_states)
    L = lg_edge_index.shape[1]
    dev = lg_edge_index.device
    keep_sorted = torch.zeros(plan.num_edges, dtype=torch.bool, device=dev)
    if L == 0:
        return keep_sorted
    if state_graph is None:
        local = torch.arange(num_states, device=dev)
    else:
        counts = torch.bincount(state_graph)
        local = torch.arange(num_states, device=dev) - _exclusive_cumsum(counts)[state_graph]
    words = (int(local.max()) // 64) + 1
    anc = _bits(local, words)  # [S, W] each state's own bit
    # rank of each sorted edge among the incoming edges of its target
    dst = plan.dst
    in_deg = torch.bincount(dst, minlength=num_states)
    first_pos = torch.zeros(num_states, dtype=torch.long, device=dev)
    # the sorted edges of one target are contiguous (sorted by (level, target), stably)
    pos = torch.arange(plan.num_edges, device=dev)
    new_target = torch.ones(plan.num_edges, dtype=torch.bool, device=dev)
    new_target[1:] = dst[1:] != dst[:-1]
    first_pos[dst[new_target]] = pos[new_target]
    slot = pos - first_pos[dst]
    ptr = plan.edge_ptr
    for lvl in range(1, plan.depth):
        lo, hi = ptr[lvl], ptr[lvl + 1]
        if lo == hi:
            continue
        lvl_slot = slot[lo:hi]
        for j in range(int(in_deg[dst[lo:hi]].max())):
            e = lo + torch.nonzero(lvl_slot == j).flatten()  # one edge per target
            s, d = plan.src[e], dst[e]
            ok = ~(anc[s] & anc[d]).any(-1)
            e, s, d = e[ok], s[ok], d[ok]
            keep_sorted[e] = True
            anc[d] |= anc[s]
    keep = torch.empty_like(keep_sorted)
    keep[plan.edge_perm] = keep_sorted
    return keep


@dataclass(frozen=True)
class DagStructure:
    """Everything :class:`PLSTMGraph` needs about a graph, computed once by :func:`prepare_dag`.

    Attributes:
        num_nodes: number of nodes ``N``.
        edge_index: ``[2, E]`` the DAG's edges (after orientation, pruning-independent); cell
            states live on them.
        input_edge: ``[E]`` the column of the input ``edge_index`` each DAG edge came from.
        lg_edge_index: ``[2, L]`` the line-graph edges the recurrence uses (pruned in D-mode).
        lg_node: ``[L]`` the node each line-graph edge passes through.
        plan: the :class:`~graphseq.kernels.DagScanPlan` of ``lg_edge_index`` on ``E`` states.
        mode: ``"P"`` (full line graph) or ``"D"`` (pruned to a multitree).
        orientation: how the input was oriented, see :func:`orient_edges`.
        reverse: whether the DAG was reversed after orientation.
        batch: ``[N]`` int64, the (checked) ``batch`` given to :func:`prepare_dag`, or
            ``None`` (the whole input is one graph).
        bucket_overhead: the fixed cost of one more bucket when :meth:`layout` groups the
            graphs by size (see :func:`prepare_dag`).

    The :class:`GraphLayout` of ``algorithm="paths"`` / ``"auto"`` is built on first use by
    :meth:`layout` and cached on the structure, so layers sharing a structure build it once
    and ``"states"`` layers never build it.
    """

    num_nodes: int
    edge_index: Tensor
    input_edge: Tensor
    lg_edge_index: Tensor
    lg_node: Tensor
    plan: DagScanPlan
    mode: str
    orientation: str
    reverse: bool
    batch: Tensor | None = None
    bucket_overhead: float = BUCKET_OVERHEAD
    _layouts: dict[str, GraphLayout] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _native: dict[str, NativeLayout] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    def layout(self, algorithm: str = "auto") -> GraphLayout:
        """The :class:`GraphLayout` of ``algorithm`` for :attr:`batch`, built on first call and
        cached: for ``"paths"`` every graph is in a bucket; for ``"auto"`` only the graphs of
        at most :data:`PATH_FORM_MAX_NODES` nodes and :data:`PATH_FORM_MAX_EDGES` DAG edges
        are, the others form the layout's ``large`` :class:`StateGroup`."""
        check_choice("DagStructure.layout", "algorithm", algorithm, ("auto", "paths"))
        layout = self._layouts.get(algorithm)
        if layout is None:
            layout = _graph_layout(self, self.batch, algorithm == "auto")
            self._layouts[algorithm] = layout
            # when every graph takes the path form, "auto" and "paths" share one layout
            if algorithm == "auto" and layout.large is None:
                self._layouts.setdefault("paths", layout)
            small = all(
                b.width <= PATH_FORM_MAX_NODES and b.edge_width <= PATH_FORM_MAX_EDGES
                for b in layout.buckets
            )
            if algorithm == "paths" and small:
                self._layouts.setdefault("auto", layout)
        return layout

    def native_layout(self, algorithm: str = "auto") -> NativeLayout:
        """The :class:`NativeLayout` of ``algorithm`` (``"auto"`` or ``"paths"``) for
        :attr:`batch`, built on first call and cached: what the compiled path form runs on
        CPU instead of :meth:`layout`'s buckets (see :class:`PLSTMGraph`, "Algorithms")."""
        check_choice("DagStructure.native_layout", "algorithm", algorithm, ("auto", "paths"))
        native = self._native.get(algorithm)
        if native is None:
            native = _native_layout(self, self.batch, algorithm == "auto")
            self._native[algorithm] = native
        return native

    def to(self, device: torch.device | str) -> DagStructure:
        """A copy with every tensor (and every bucket layout built so far) on ``device``."""
        out = _to_device(self, device)
        moved: dict[int, GraphLayout] = {}  # a layout cached under both keys is moved once
        for key, layout in self._layouts.items():
            if id(layout) not in moved:
                moved[id(layout)] = layout.to(device)
            out._layouts[key] = moved[id(layout)]
        return out


@dataclass(frozen=True)
class GraphBucket:
    """Graphs of similar size padded to common widths: one dense block of ``algorithm="paths"``.

    Its nodes, DAG edges and line-graph edges are consecutive runs of the :class:`GraphLayout`'s
    ``node``, ``edge`` and ``lg``, of lengths ``node_slot.numel()``, ``source_slot.numel()``
    and ``lg_slot.numel()``.

    Attributes:
        num_graphs: ``B``, the graphs in the bucket.
        width: ``W``, node slots per graph (the node count of its largest graph).
        edge_width: ``F``, DAG edge slots per graph (the largest DAG edge count). A graph's
            edges fill its slots in a topological order of the line graph, so the block's
            transition matrix is strictly lower triangular.
        node_slot: ``[n]`` ``b * W + i`` for the ``i``-th node of the bucket's ``b``-th graph.
        source_slot, target_slot: ``[e]`` ``(b * W + i) * F + j`` for an edge in slot ``j``
            and the slot ``i`` of its source (target) node: entries of a ``[B, W, F]`` block
            (node-major, the transpose of the edge-by-node matrices of the algorithm, so that
            the triangular solve reads them in column-major order without a copy).
        lg_slot: ``[l]`` ``(b * F + j') * F + j`` for a line-graph edge ``e' -> e`` with slots
            ``j'``, ``j``: entries of a ``[B, F, F]`` block (the transposed transition matrix).
    """

    num_graphs: int
    width: int
    edge_width: int
    node_slot: Tensor
    source_slot: Tensor
    target_slot: Tensor
    lg_slot: Tensor

    def to(self, device: torch.device | str) -> GraphBucket:
        """A copy with every tensor on ``device``."""
        return _to_device(self, device)


@dataclass(frozen=True)
class StateGroup:
    """A subset of a batch's graphs run by ``algorithm="states"``: their nodes and DAG edges,
    the line-graph edges among them renumbered to ``0 .. len(edge) - 1``, and its own plan.

    Attributes:
        node: ``[n]`` the nodes, increasing.
        edge: ``[e]`` the DAG edges (ids in the structure), increasing.
        lg: ``[l]`` the line-graph edges (columns of the structure's ``lg_edge_index``).
        lg_edge_index: ``[2, l]`` those line-graph edges between positions in ``edge``.
        plan: the :class:`~graphseq.kernels.DagScanPlan` of ``lg_edge_index`` on ``e`` states
            (the structure's plan filtered to these graphs, :func:`_sub_plan`).
    """

    node: Tensor
    edge: Tensor
    lg: Tensor
    lg_edge_index: Tensor
    plan: DagScanPlan

    def to(self, device: torch.device | str) -> StateGroup:
        """A copy with every tensor on ``device``."""
        return _to_device(self, device)


@dataclass(frozen=True)
class GraphLayout:
    """The graphs of a batch grouped by size: the schedule of ``algorithm="paths"`` and
    ``"auto"`` (see :class:`PLSTMGraph`), built by :meth:`DagStructure.layout`.

    Attributes:
        graph_sizes: ``[G]`` node count of every graph of the batch it was built for.
        buckets: the :class:`GraphBucket` s of the graphs run by the path form, by increasing
            width; each such graph is in exactly one, its entries are grouped by graph (in
            slot order) so that a bucket can be run in chunks of graphs.
        node, edge, lg: the nodes, DAG edges and line-graph edges (columns of
            ``lg_edge_index``) of the buckets, bucket after bucket (isolated nodes included).
        large: the graphs ``"auto"`` runs by the state form (above
            :data:`PATH_FORM_MAX_NODES` nodes or :data:`PATH_FORM_MAX_EDGES` DAG edges) as a
            :class:`StateGroup`; ``None`` if there are none (always for ``"paths"``).
        plans: a cache the path form fills on first use: per head count, float size, node
            count and :data:`PATH_BLOCK_BYTES`, a ``_PathPlan`` (the arena rows of every
            node and head, of every ``q, k, v`` entry (``3 H`` per node), and every bucket's
            chunks with the block positions of their edge entries: integer tensors of about
            ``3 H`` times the size of ``node``, and ``H`` times that of ``edge`` and ``lg``).
    """

    graph_sizes: Tensor
    buckets: tuple[GraphBucket, ...]
    node: Tensor
    edge: Tensor
    lg: Tensor
    large: StateGroup | None
    plans: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def to(self, device: torch.device | str) -> GraphLayout:
        """A copy with every tensor on ``device``."""
        return _to_device(self, device)


@dataclass(frozen=True)
class NativeLayout:
    """The schedule of ``algorithm="paths"`` / ``"auto"`` for the compiled CPU kernel
    (:func:`graphseq.kernels.dag_attention.dag_attention`), built by
    :meth:`DagStructure.native_layout`: no buckets, no padding, every graph on its own.

    Attributes:
        plan: the :class:`~graphseq.kernels.dag_attention.DagAttentionPlan` of the graphs run
            by the path form.
        large: as :attr:`GraphLayout.large`, the graphs ``"auto"`` runs by the state form.
    """

    plan: DagAttentionPlan
    large: StateGroup | None

    def to(self, device: torch.device | str) -> NativeLayout:
        """A copy with every tensor on ``device``."""
        return _to_device(self, device)


def _padded_cost(width: int, edge_width: int) -> float:
    """Work of one graph padded to ``width`` nodes and ``edge_width`` edges, per head and
    channel: the masked attention (``W^2``) and the triangular solve (``F^2 W``, per channel
    of a 32-channel head)."""
    return width * width + edge_width * edge_width * width / 32.0


def _bucket_bounds(sizes: Tensor, edge_counts: Tensor, overhead: float) -> list[int]:
    """Node-count upper bounds of the buckets: the partition of the distinct graph sizes into
    ranges that minimises ``sum over buckets (overhead + graphs * _padded_cost(W, F))``
    (an exact dynamic programme over the ``k`` distinct sizes, O(k^2) Python steps)."""
    keep = sizes > 0
    if not bool(keep.any()):
        return []
    keys, inverse, counts = torch.unique(sizes[keep], return_inverse=True, return_counts=True)
    most = torch.zeros_like(keys).scatter_reduce(0, inverse, edge_counts[keep], "amax")
    keys, counts, most = keys.tolist(), counts.tolist(), most.tolist()
    k = len(keys)
    best = [0.0] + [math.inf] * k  # best[j]: cheapest partition of the j smallest sizes
    start = [0] * (k + 1)
    for j in range(1, k + 1):
        graphs = widest = 0
        for i in range(j, 0, -1):  # bucket = sizes i-1 .. j-1
            graphs += counts[i - 1]
            widest = max(widest, most[i - 1])
            cost = best[i - 1] + overhead + graphs * _padded_cost(keys[j - 1], widest)
            if cost < best[j]:
                best[j], start[j] = cost, i - 1
    bounds, j = [], k
    while j > 0:
        bounds.append(keys[j - 1])
        j = start[j]
    return bounds[::-1]


def _check_batch(op: str, batch: object, num_nodes: int) -> Tensor:
    """``batch`` as int64: a signed integer ``[N]`` tensor, sorted, non-negative (a PyG
    batch)."""
    if not isinstance(batch, Tensor):
        raise TypeError(f"{op}: batch must be a torch.Tensor, got {type(batch).__name__}")
    if batch.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64):
        raise TypeError(f"{op}: batch must be a signed integer tensor, got {batch.dtype}")
    if batch.shape != (num_nodes,):
        raise ValueError(
            f"{op}: batch must be an integer tensor of shape [N] = [{num_nodes}], got "
            f"{list(batch.shape)}"
        )
    batch = batch.long()
    if num_nodes and (bool((batch[1:] < batch[:-1]).any()) or int(batch[0]) < 0):
        raise ValueError(f"{op}: batch must be sorted and >= 0 (PyG batches are)")
    return batch


def _check_batch_edges(op: str, batch: Tensor, edge_index: Tensor) -> None:
    if edge_index.numel() and not torch.equal(batch[edge_index[0]], batch[edge_index[1]]):
        raise ValueError(f"{op}: an edge joins two graphs of batch")


def _sub_plan(plan: DagScanPlan, edge: Tensor, lg: Tensor, position: Tensor) -> DagScanPlan:
    """``plan`` restricted to the states ``edge`` and the line-graph edges ``lg`` between them
    (whole graphs: every predecessor of a kept state is kept), states renumbered by
    ``position`` (``[S]``, ``-1`` for a dropped state) and edges by their rank in ``lg``.

    A state's level is the length of the longest path reaching it, which lies inside its own
    graph, so the levels and the level order of the sorted edges carry over unchanged: O(S + L)
    filtering instead of a second topological sort."""
    dev = plan.level.device
    lg_position = torch.full((plan.num_edges,), -1, dtype=torch.long, device=dev)
    lg_position[lg] = torch.arange(lg.numel(), device=dev)
    kept = torch.nonzero(lg_position[plan.edge_perm] >= 0).flatten()  # still sorted by level
    level = plan.level[edge]
    depth = int(level.max()) + 1 if edge.numel() else 0
    per_level = torch.bincount(plan.level[plan.dst[kept]], minlength=depth)
    return DagScanPlan(
        num_states=edge.numel(),
        level=level,
        edge_perm=lg_position[plan.edge_perm[kept]],
        src=position[plan.src[kept]],
        dst=position[plan.dst[kept]],
        edge_ptr=[0, *torch.cumsum(per_level, 0).tolist()],
    )


def _split_graphs(structure: DagStructure, batch: Tensor | None, auto: bool) -> tuple:
    """The graphs of ``batch`` (``None``: one graph) the path form runs (all non-empty ones;
    with ``auto`` those of at most :data:`PATH_FORM_MAX_NODES` nodes and
    :data:`PATH_FORM_MAX_EDGES` DAG edges) and the others as a :class:`StateGroup` (or
    ``None``). Returns ``batch, sizes, edge_graph, edge_counts, path, large``."""
    edge_index, lg_edge_index, plan = structure.edge_index, structure.lg_edge_index, structure.plan
    num_nodes = structure.num_nodes
    dev = edge_index.device
    if batch is None:
        batch = torch.zeros(num_nodes, dtype=torch.long, device=dev)
    src = edge_index[0]
    lg_dst = lg_edge_index[1]
    sizes = torch.bincount(batch) if num_nodes else batch.new_zeros(0)  # [G]
    G = sizes.numel()
    edge_graph = batch[src]  # [E]
    lg_graph = edge_graph[lg_dst]  # [L]
    edge_counts = torch.bincount(edge_graph, minlength=G)  # [G]
    path = sizes > 0  # [G] the graphs of the buckets
    large = None
    if auto:
        path &= (sizes <= PATH_FORM_MAX_NODES) & (edge_counts <= PATH_FORM_MAX_EDGES)
        big = (sizes > 0) & ~path
        if bool(big.any()):
            edge = torch.nonzero(big[edge_graph]).flatten()
            lg = torch.nonzero(big[lg_graph]).flatten()
            position = torch.full_like(edge_graph, -1)
            position[edge] = torch.arange(edge.numel(), device=dev)
            large = StateGroup(
                torch.nonzero(big[batch]).flatten(),
                edge,
                lg,
                position[lg_edge_index[:, lg]],
                _sub_plan(plan, edge, lg, position),
            )
    return batch, sizes, edge_graph, edge_counts, path, large


def _native_layout(structure: DagStructure, batch: Tensor | None, auto: bool) -> NativeLayout:
    """The :class:`NativeLayout` of ``"auto"`` (``auto=True``) or ``"paths"`` for ``batch``
    (checked by the caller): O((N + E + L) log) integer work, no per-graph Python step."""
    batch, *_, path, large = _split_graphs(structure, batch, auto)
    plan = DagAttentionPlan.from_graph(
        structure.edge_index, structure.lg_edge_index, structure.num_nodes, batch, path,
        structure.plan.level,
    )  # fmt: skip
    return NativeLayout(plan, large)


def _graph_layout(structure: DagStructure, batch: Tensor | None, auto: bool) -> GraphLayout:
    """Group the graphs of ``batch`` (checked by the caller; one graph when ``None``) by size:
    the :class:`GraphLayout` of ``"auto"`` (``auto=True``) or ``"paths"``.

    The graphs the path form runs (all for ``"paths"``; for ``"auto"`` those of at most
    :data:`PATH_FORM_MAX_NODES` nodes and :data:`PATH_FORM_MAX_EDGES` DAG edges) are split
    into buckets of contiguous node-count ranges chosen by :func:`_bucket_bounds`; the others
    form a :class:`StateGroup` on a plan filtered from ``structure.plan``. Slots come from one
    stable sort of the graphs by bucket and one sort each of the nodes, DAG edges (by graph,
    then topological level of the line graph) and line-graph edges: O((N + E + L) log) integer
    work plus the O(k^2) choice of ranges over the ``k`` distinct sizes of those graphs.
    """
    edge_index, lg_edge_index, plan = structure.edge_index, structure.lg_edge_index, structure.plan
    dev = edge_index.device
    batch, sizes, edge_graph, edge_counts, path, large = _split_graphs(structure, batch, auto)
    src, dst = edge_index
    lg_src, lg_dst = lg_edge_index
    G = sizes.numel()
    node_start = _exclusive_cumsum(sizes)  # [G]
    lg_graph = edge_graph[lg_dst]  # [L]
    empty = batch.new_zeros(0)
    bounds = _bucket_bounds(sizes * path, edge_counts, structure.bucket_overhead)
    nb = len(bounds)
    if nb == 0:
        return GraphLayout(sizes, (), empty, empty, empty, large)
    bucket_of = torch.searchsorted(torch.tensor(bounds, device=dev), sizes)  # [G]
    bucket_of[~path] = nb  # past the last bucket
    # graph slots: the graphs bucket after bucket (one stable sort), numbered inside the bucket
    graph_order = torch.argsort(bucket_of, stable=True)
    rank = torch.empty_like(graph_order)
    rank[graph_order] = torch.arange(G, device=dev)
    per_bucket = torch.bincount(bucket_of, minlength=nb + 1)  # [nb + 1]
    slot = rank - _exclusive_cumsum(per_bucket)[bucket_of]  # [G]
    widths = torch.zeros(nb + 1, dtype=torch.long, device=dev)
    widths = widths.scatter_reduce(0, bucket_of, sizes, "amax")
    edge_widths = torch.zeros_like(widths).scatter_reduce(0, bucket_of, edge_counts, "amax")

    def grouped(graph_of: Tensor, minor: Tensor | None = None) -> Tensor:
        """The items of the bucketed graphs, by graph rank (then ``minor``), stably."""
        ids = torch.nonzero(path[graph_of]).flatten()
        key = rank[graph_of[ids]]
        if minor is not None:
            key = key * (int(minor.max()) + 1 if minor.numel() else 1) + minor[ids]
        return ids[torch.argsort(key, stable=True)]

    node = grouped(batch)
    edge = grouped(edge_graph, plan.level)  # by graph, then level: a topological order
    lg = grouped(lg_graph)
    # edge slots: rank of an edge among its graph's edges in that order
    ranked_counts = (edge_counts * path)[graph_order]
    edge_start = _exclusive_cumsum(ranked_counts)[rank]  # [G]
    edge_local = torch.empty_like(edge_graph)
    edge_local[edge] = torch.arange(edge.numel(), device=dev) - edge_start[edge_graph[edge]]

    g = batch[node]
    node_slot = slot[g] * widths[bucket_of[g]] + node - node_start[g]
    g = edge_graph[edge]
    W, F = widths[bucket_of[g]], edge_widths[bucket_of[g]]
    base = slot[g] * W - node_start[g]
    source_slot = (base + src[edge]) * F + edge_local[edge]
    target_slot = (base + dst[edge]) * F + edge_local[edge]
    g = lg_graph[lg]
    F = edge_widths[bucket_of[g]]
    lg_slot = (slot[g] * F + edge_local[lg_src[lg]]) * F + edge_local[lg_dst[lg]]

    def counts(graph_of: Tensor) -> list[int]:
        return torch.bincount(bucket_of[graph_of], minlength=nb)[:nb].tolist()

    n, e, m = counts(batch[node]), counts(edge_graph[edge]), counts(lg_graph[lg])
    buckets = tuple(
        GraphBucket(*info, *slots)
        for info, *slots in zip(
            zip(per_bucket[:nb].tolist(), widths[:nb].tolist(), edge_widths[:nb].tolist()),
            node_slot.split(n),
            source_slot.split(e),
            target_slot.split(e),
            lg_slot.split(m),
        )
    )
    return GraphLayout(sizes, buckets, node, edge, lg, large)


def prepare_dag(
    edge_index: Tensor,
    num_nodes: int,
    *,
    mode: str = "P",
    orientation: str = "index",
    reverse: bool = False,
    batch: Tensor | None = None,
    bucket_overhead: float = BUCKET_OVERHEAD,
) -> DagStructure:
    """Orient, build the line graph, prune (D-mode) and schedule: a :class:`DagStructure`.

    The grouping of the graphs by size (:class:`GraphLayout`) that ``algorithm="paths"`` and
    ``"auto"`` need is not built here but on first use (:meth:`DagStructure.layout`), so
    ``"states"`` layers never pay for it.

    Args:
        edge_index: ``[2, E_in]`` int edges of the input graph (a whole PyG batch is fine).
        num_nodes: number of nodes ``N``.
        mode: ``"P"`` keeps the whole line graph, ``"D"`` prunes it with
            :func:`prune_to_multitree`.
        orientation: ``"index"`` (undirected input, edges from lower to higher index) or
            ``"directed"`` (a DAG given as is), see :func:`orient_edges`.
        reverse: reverse the DAG after orienting it (information flows the other way).
        batch: ``[N]`` graph of each node (PyG ``batch``, sorted; no edge may join two
            graphs). It tells the graphs apart for the :class:`GraphLayout` (``algorithm=
            "paths"`` pads each graph only to the widths of its bucket of similar sizes,
            ``"auto"`` picks the algorithm graph by graph) and for D-mode's bitsets.
            Without it the whole input is one graph: ``"paths"`` pads to ``N`` and D-mode's
            bitsets span all ``E`` edge states, ``E^2 / 8`` bytes (a warning is issued above
            16,384 states). Pass the PyG batch.
        bucket_overhead: the fixed cost of one more bucket in the layout's choice of buckets
            (:data:`BUCKET_OVERHEAD`, in units of padded per-graph work); ``0`` makes one
            bucket per distinct graph size, ``math.inf`` one bucket. Any value gives the same
            result up to rounding.

    Raises:
        ValueError: if ``orientation="directed"`` and the graph has a directed cycle (the
            message names a node on the cycle); if ``batch`` is not sorted, not of shape
            ``[N]``, or an edge joins two of its graphs.
        TypeError: if ``batch`` is not a signed integer tensor.
    """
    op = "prepare_dag"
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int):
        raise TypeError(f"{op}: num_nodes must be an int, got {type(num_nodes).__name__}")
    if num_nodes < 0:
        raise ValueError(f"{op}: num_nodes must be >= 0, got {num_nodes}")
    check_choice(op, "mode", mode, _MODES)
    if isinstance(bucket_overhead, bool) or not isinstance(bucket_overhead, (int, float)):
        raise TypeError(
            f"{op}: bucket_overhead must be a number, got {type(bucket_overhead).__name__}"
        )
    if not bucket_overhead >= 0:  # NaN too
        raise ValueError(f"{op}: bucket_overhead must be >= 0, got {bucket_overhead}")
    if batch is not None:
        batch = _check_batch(op, batch, num_nodes)
    dag, input_edge = orient_edges(edge_index, num_nodes, orientation)
    if batch is not None:
        _check_batch_edges(op, batch, dag)
    if reverse:
        dag = dag.flip(0)
    E = dag.shape[1]
    lg, lg_node = line_graph(dag, num_nodes)
    try:
        plan = DagScanPlan.from_edge_index(lg, E)
    except DagCycleError as err:
        node = int(dag[0, err.state])
        raise ValueError(
            f"{op}: the directed graph has a cycle through node {node}; pLSTM needs a DAG "
            "(use orientation='index' for undirected graphs)"
        ) from None
    if mode == "D":
        state_graph = None if batch is None else batch[dag[0]]
        if (
            state_graph is not None
            and state_graph.numel()
            and (
                bool((state_graph[1:] < state_graph[:-1]).any())
                or not torch.equal(state_graph, batch[dag[1]])
            )
        ):
            state_graph = None  # edges not grouped by graph: index the bitsets globally
        if state_graph is None and E > 16384:
            warnings.warn(
                f"prepare_dag: D-mode pruning of {E} edge states without a per-graph `batch` "
                f"keeps ancestor bitsets over all of them (~{E * E // 8 / 2**20:.0f} MiB); pass "
                "the PyG batch vector if this is a batch of several graphs",
                stacklevel=2,
            )
        keep = prune_to_multitree(lg, E, state_graph)
        lg, lg_node = lg[:, keep], lg_node[keep]
        plan = DagScanPlan.from_edge_index(lg, E)
    return DagStructure(
        num_nodes,
        dag,
        input_edge,
        lg,
        lg_node,
        plan,
        mode,
        orientation,
        reverse,
        batch,
        float(bucket_overhead),
    )


def pmode_normalize(t: Tensor, lg_src: Tensor, num_states: int, offset: float = P_MODE_OFFSET):
    r"""P-mode transitions: :math:`T_{e'e} = t_{e'e} / (c + \sum_{e'' \in out(n)} |t_{e'e''}|)`.

    For every incoming edge :math:`e'` of a node :math:`n`, the sum runs over the outgoing
    edges of :math:`n`, i.e. over the line-graph successors of :math:`e'` (grouped by
    ``lg_src``). Hence :math:`\sum_{e \in out(n)} |T_{e'e}| < 1` for every :math:`e'` (the
    column-sum bound of the paper's Eq. 9; the released edge layer normalises the other way,
    over incoming edges), and it tends to 1 when :math:`\sum |t| \gg c`.

    Args:
        t: ``[L, H]`` raw transitions.
        lg_src: ``[L]`` the incoming edge :math:`e'` of each line-graph edge.
        num_states: number of DAG edges.
        offset: :math:`c > 0`.
    """
    denom = t.new_zeros(num_states, t.shape[1]).index_add_(0, lg_src, t.abs())
    return t / (offset + denom[lg_src])


def plstm_graph_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    source: Tensor,
    transition: Tensor,
    mark: Tensor,
    direct: Tensor,
    edge_index: Tensor,
    lg_edge_index: Tensor,
) -> Tensor:
    r"""The graph pLSTM recurrence as a plain loop over edges in topological order (float64).

    The released code's scheme, one edge at a time, written to be read:

    .. math::
        C_e = \sum_{e' \to e} T_{e'e}\, C_{e'} + S_e\, k_{src(e)} v_{src(e)}^\top, \qquad
        h_n = \sum_{e \in in(n)} M_e\, q_n^\top C_e + D_n (q_n \cdot k_n)\, v_n

    (no :math:`K^{-1/2}` here: scale ``q`` first). Shapes: ``q, k`` ``[N, H, K]``, ``v``
    ``[N, H, V]``, ``source, mark`` ``[E, H]`` (per DAG edge), ``transition`` ``[L, H]`` (per
    column of ``lg_edge_index``), ``direct`` ``[N, H]``. Returns ``h`` ``[N, H, V]`` float64.
    """
    from graphseq.kernels.dag_scan.reference import topological_order

    q, k, v = q.double(), k.double(), v.double()
    S, T, M, D = source.double(), transition.double(), mark.double(), direct.double()
    E = edge_index.shape[1]
    src, dst = edge_index.tolist()
    preds: list[list[tuple[int, int]]] = [[] for _ in range(E)]
    for j, (a, b) in enumerate(lg_edge_index.t().tolist()):
        preds[b].append((j, a))
    C: list[Tensor | None] = [None] * E
    h = D[..., None] * (q * k).sum(-1, keepdim=True) * v  # [N, H, V]
    h = list(h.unbind(0))
    for e in topological_order(lg_edge_index, E):
        a = src[e]
        c = S[e][:, None, None] * k[a][:, :, None] * v[a][:, None, :]  # [H, K, V]
        for j, p in preds[e]:
            c = c + T[j][:, None, None] * C[p]
        C[e] = c
        n = dst[e]
        h[n] = h[n] + M[e][:, None] * torch.einsum("hk,hkv->hv", q[n], c)
    return torch.stack(h) if h else v.new_zeros(0, *v.shape[1:])


def _check_structure_edges(cls: str, structure: DagStructure, edge_index: Tensor) -> None:
    """The structure's DAG must be the one :func:`prepare_dag` builds from ``edge_index`` (a
    structure of another graph with the same sizes would give a silently wrong answer): each
    DAG edge comes from the column ``structure.input_edge`` records, and every column of
    ``edge_index`` is one of the DAG's edges (``"index"``: every column but a self-loop, in
    either direction). O(E) gathers and one ``isin`` (a sort) over the edges."""
    msg = (
        f"{cls}: structure was built for a different edge_index; build it with "
        "prepare_dag(edge_index, num_nodes, ...) for this graph"
    )
    E, columns = structure.num_edges, edge_index.shape[1]
    ei = edge_index.long()
    if structure.orientation == "directed" and E != columns:
        raise ValueError(msg)  # "directed" keeps every column, in order
    if E > 0:
        if int(structure.input_edge.max()) >= columns:
            raise ValueError(msg)
        src, dst = ei[:, structure.input_edge.to(ei.device)]
        if structure.orientation == "index":
            src, dst = torch.minimum(src, dst), torch.maximum(src, dst)
        if structure.reverse:
            src, dst = dst, src
        dag_src, dag_dst = structure.edge_index
        if not (torch.equal(src, dag_src) and torch.equal(dst, dag_dst)):
            raise ValueError(msg)
    if structure.orientation == "index":  # no column may be left out of the DAG
        src, dst = ei[:, ei[0] != ei[1]]
        n = max(structure.num_nodes, 1)
        keys = torch.minimum(src, dst) * n + torch.maximum(src, dst)
        dag = structure.edge_index.to(ei.device)
        dag_keys = torch.minimum(dag[0], dag[1]) * n + torch.maximum(dag[0], dag[1])
        if not bool(torch.isin(keys, dag_keys).all()):
            raise ValueError(msg)


def _layout_for(
    op: str, structure: DagStructure, batch: Tensor | None, algorithm: str, native: bool = False
) -> GraphLayout | NativeLayout:
    """The structure's cached :class:`GraphLayout` (with ``native``: :class:`NativeLayout`) of
    ``algorithm``, or, when ``batch`` (already checked) describes other graphs than the
    structure's ``batch``, one built from ``batch`` for this call."""
    if batch is None or (structure.batch is not None and torch.equal(batch, structure.batch)):
        return structure.native_layout(algorithm) if native else structure.layout(algorithm)
    _check_batch_edges(op, batch, structure.edge_index)
    build = _native_layout if native else _graph_layout
    return build(structure, batch, algorithm == "auto")


def _state_form(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    source: Tensor,
    transition: Tensor,
    mark: Tensor,
    direct: Tensor,
    edge_index: Tensor,
    lg_edge_index: Tensor,
    plan: DagScanPlan,
) -> Tensor:
    r"""``h`` ``[N, H, V]`` by ``"states"``: the direct term :math:`D_n (q_n \cdot k_n) v_n` plus
    the reads :math:`M_e q_n^T C_e` of the given DAG edges, the ``K x V`` edge states by
    :func:`~graphseq.kernels.dag_scan` on ``lg_edge_index``."""
    src, dst = edge_index
    h = (direct * (q * k).sum(-1)).unsqueeze(-1) * v  # [N, H, V] the direct term
    kv = torch.einsum("ehk,ehv->ehkv", source.unsqueeze(-1) * k[src], v[src])  # [E, H, K, V]
    states = dag_scan(kv, transition, lg_edge_index, plan=plan)
    read = torch.einsum("ehk,ehkv->ehv", q[dst] * mark.unsqueeze(-1), states)  # [E, H, V]
    return h.index_add(0, dst, read.to(h.dtype))


def _block_rows(slot: Tensor, size: int, heads: Tensor) -> Tensor:
    """``[m, H]``: the flat positions in a ``[B, H, size]`` block of the entries ``slot`` of a
    ``[B, size]`` one, for every head."""
    H = heads.numel()
    return (slot + (slot // size) * ((H - 1) * size)).unsqueeze(-1) + heads * size


def _scatter_block(values: Tensor, rows: Tensor, shape: tuple[int, ...]) -> Tensor:
    """A zero block of ``shape`` with ``values`` ``[m, H]`` at the flat positions ``rows``
    (``[m * H]``) of its ``[B, H, ...]`` entries."""
    out = values.new_zeros(math.prod(shape))
    return out.index_copy_(0, rows, values.reshape(-1)).view(shape)


def _gather_block(block: Tensor, rows: Tensor, heads: int) -> Tensor:
    """The inverse of :func:`_scatter_block`: the entries of ``block`` at the flat positions
    ``rows`` ``[m * H]``, as ``[m, H]``."""
    return block.reshape(-1).index_select(0, rows).view(-1, heads)


class _ChunkRows(NamedTuple):
    """A chunk of a bucket (:func:`_chunk_bounds`) with the flat block positions of its edge
    entries for ``H`` heads (:func:`_block_rows`, flattened): its edges' sources and targets
    in the ``[b, H, W, F]`` blocks and its line-graph edges in the ``[b, H, F, F]`` one."""

    lo: int  # its graphs lo .. hi - 1 of the bucket
    hi: int
    ranges: tuple[tuple[int, int], ...]  # its runs of the bucket's node, edge and lg entries
    source: Tensor
    target: Tensor
    lg: Tensor


def _chunk_rows(bucket: GraphBucket, lo: int, hi: int, ranges, heads: Tensor) -> _ChunkRows:
    W, F = bucket.width, bucket.edge_width
    return _ChunkRows(
        lo,
        hi,
        ranges,
        _block_rows(bucket.source_slot, W * F, heads).flatten(),
        _block_rows(bucket.target_slot, W * F, heads).flatten(),
        _block_rows(bucket.lg_slot, F * F, heads).flatten(),
    )


def _bucket_outputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    d: Tensor,
    source: Tensor,
    transition: Tensor,
    mark: Tensor,
    bucket: GraphBucket,
    rows: _ChunkRows,
    out: Tensor,
) -> tuple[Tensor | None, ...]:
    r"""``h`` of one bucket (or a chunk of its graphs) by ``"paths"``, written into ``out``
    ``[B, H, W, V]``; returns the intermediates :func:`_bucket_grads` reads.

    Inputs: the chunk's ``q, k, v`` blocks ``[B, H, W, C]`` and ``direct`` block ``d``
    ``[B, H, W]`` (views of the path form's node arenas, padding slots zero), its rows of
    ``source`` ``[e, H]``, ``transition`` ``[l, H]`` and ``mark`` ``[e, H]`` (in the
    layout's order), and the block positions of those rows.

    Per graph and head, with ``A[e, e'] = T_{e'e}`` (strictly lower triangular in the edge
    slots' topological order), ``X[e, m] = S_e [m = src(e)]`` and ``R[e, n] = M_e [n = dst(e)]``:
    the path weights are ``P = (I - A)^{-1} X`` (one batched triangular solve), the gating
    matrix of the paper's Eq. 7 ``G = R^T P + diag(D)`` (``R^T P`` has a zero diagonal: no
    path leads from a node back to itself in a DAG), and ``h = ((q k^T) * G) v``, a masked
    linear attention whose diagonal is the state form's direct term ``D (q . k) v``. Padding
    slots have zero rows and columns in ``G``. Kept for the backward: ``P``, ``R^T``, ``G``,
    ``q k^T`` and the masked scores, four ``[B, H, W, W]``-sized blocks and ``-A``.
    """
    B, W, F = bucket.num_graphs, bucket.width, bucket.edge_width
    H = d.shape[1]
    if not F:  # G = diag(D)
        qk = (q * k).sum(-1)  # [B, H, W]
        torch.mul((d * qk).unsqueeze(-1), v, out=out)
        return qk, None, None, None, None, None
    # A and X are built transposed, so the solve gets them in LAPACK's column-major order
    neg_a = _scatter_block(-transition, rows.lg, (B, H, F, F)).mT  # -A
    x = _scatter_block(source, rows.source, (B, H, W, F)).mT  # X [B, H, F, W]
    paths = torch.linalg.solve_triangular(neg_a, x, upper=False, unitriangular=True)
    reads_t = _scatter_block(mark, rows.target, (B, H, W, F))  # R^T
    gating = reads_t @ paths  # [B, H, W, W] sum_{e in in(n)} M_e P_e[m]
    gating.diagonal(dim1=-2, dim2=-1).add_(d)
    scores = q @ k.mT  # [B, H, W, W]
    masked = scores * gating
    torch.matmul(masked, v, out=out)
    return neg_a, paths, reads_t, gating, scores, masked


def _bucket_grads(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    d: Tensor,
    rows: _ChunkRows,
    saved: tuple[Tensor | None, ...],
    dout: Tensor,
    grads: tuple[Tensor, Tensor, Tensor, Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The backward of :func:`_bucket_outputs` for the output gradient ``dout``
    ``[B, H, W, V]``, from its saved intermediates: writes ``dq, dk, dv`` ``[B, H, W, C]`` and
    ``ddirect`` ``[B, H, W]`` into the blocks ``grads`` (views of the gradient arenas) and
    returns the gradients of ``source, transition, mark`` in the bucket's row order.

    With :math:`\Sigma = q k^T` and :math:`\bar h` the output gradient:
    :math:`\mathrm{d}(\Sigma \odot G) = \bar h v^T`, so :math:`\mathrm{d}\Sigma = (\bar h v^T)
    \odot G` and :math:`\mathrm{d}G = (\bar h v^T) \odot \Sigma`; :math:`\mathrm{d}D` is the
    diagonal of :math:`\mathrm{d}G`; :math:`\mathrm{d}R^T = \mathrm{d}G\,P^T`,
    :math:`\mathrm{d}P = R\,\mathrm{d}G`; from :math:`(I - A) P = X`:
    :math:`\mathrm{d}X = (I - A)^{-T} \mathrm{d}P` (one transposed triangular solve) and
    :math:`\mathrm{d}A = \mathrm{d}X\,P^T`, each read at the entries its gate was scattered to.
    """
    dq, dk, dv, ddirect = grads
    H = d.shape[1]
    if saved[1] is None:  # no edges: h = D (q . k) v
        qk = saved[0]
        dov = (dout * v).sum(-1)  # [B, H, W]
        torch.mul(qk, dov, out=ddirect)
        c = (d * dov).unsqueeze(-1)  # d(q . k) per channel of q and k
        torch.mul(c, k, out=dq)
        torch.mul(c, q, out=dk)
        torch.mul((d * qk).unsqueeze(-1), dout, out=dv)
        empty = dout.new_zeros(0, H)
        return empty, empty, empty
    neg_a, paths, reads_t, gating, scores, masked = saved
    torch.matmul(masked.mT, dout, out=dv)
    dmasked = dout @ v.mT  # [B, H, W, W]
    dscores = dmasked * gating
    dgating = dmasked.mul_(scores)  # dmasked is not read again
    ddirect.copy_(dgating.diagonal(dim1=-2, dim2=-1))
    torch.matmul(dscores, k, out=dq)
    torch.matmul(dscores.mT, q, out=dk)
    dmark = _gather_block(dgating @ paths.mT, rows.target, H)
    # dP [B, H, F, W] built transposed (column-major, as the solve reads it: no copy)
    dpaths = (dgating.mT @ reads_t).mT
    dx = torch.linalg.solve_triangular(neg_a.mT, dpaths, upper=True, unitriangular=True)
    dsource = _gather_block(dx.mT, rows.source, H)  # dx comes back column-major: a view
    # T_{e'e} = A[e, e'] sits at (e', e) of the transposed block it was scattered to, so
    # read dA^T = P dX^T (contiguous) rather than dA = dX P^T
    dtransition = _gather_block(paths @ dx.mT, rows.lg, H)
    return dsource, dtransition, dmark


def _chunk_bounds(bucket: GraphBucket, heads: int, itemsize: int) -> list[int]:
    """Graph boundaries ``[0, ..., B]`` of the chunks a bucket runs in: as many graphs per
    chunk as keep its largest ``[b, H, ., .]`` block under :data:`PATH_BLOCK_BYTES`."""
    B, W, F = bucket.num_graphs, bucket.width, bucket.edge_width
    per_graph = heads * max(F * F, F * W, W * W) * itemsize
    step = max(1, PATH_BLOCK_BYTES // max(per_graph, 1))
    return [*range(0, B, step), B]


def _chunk(
    bucket: GraphBucket, lo: int, hi: int, ranges: tuple[tuple[int, int], ...]
) -> GraphBucket:
    """The graphs ``lo .. hi - 1`` of ``bucket`` as a bucket of their own; ``ranges`` are the
    ``(start, end)`` of their entries in ``node_slot``, the edge slots and ``lg_slot``."""
    W, F = bucket.width, bucket.edge_width
    (n0, n1), (e0, e1), (l0, l1) = ranges
    return GraphBucket(
        hi - lo,
        W,
        F,
        bucket.node_slot[n0:n1] - lo * W,
        bucket.source_slot[e0:e1] - lo * W * F,
        bucket.target_slot[e0:e1] - lo * W * F,
        bucket.lg_slot[l0:l1] - lo * F * F,
    )


def _bucket_chunks(bucket: GraphBucket, heads: Tensor, itemsize: int) -> list[tuple]:
    """A bucket's chunks of graphs (:func:`_chunk_bounds`) as ``(sub_bucket, _ChunkRows)``
    (a bucket's entries are grouped by graph slot, so a chunk's entries are contiguous runs)."""
    W, F, B = bucket.width, bucket.edge_width, bucket.num_graphs
    bounds = _chunk_bounds(bucket, heads.numel(), itemsize)
    counts = (bucket.node_slot.numel(), bucket.source_slot.numel(), bucket.lg_slot.numel())
    if len(bounds) <= 2:
        ranges = tuple((0, c) for c in counts)
        return [(bucket, _chunk_rows(bucket, 0, B, ranges, heads))]
    at = torch.tensor(bounds, device=heads.device)
    cuts = [  # [chunks + 1] entry boundaries of the node, edge and line-graph entries
        torch.searchsorted(slot // size, at).tolist()
        for slot, size in (
            (bucket.node_slot, W),
            (bucket.source_slot, W * F),
            (bucket.lg_slot, F * F),
        )
    ]
    chunks = []
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        ranges = tuple((c[i], c[i + 1]) for c in cuts)
        sub = _chunk(bucket, lo, hi, ranges)
        chunks.append((sub, _chunk_rows(sub, lo, hi, ranges, heads)))
    return chunks


class _PathPlan(NamedTuple):
    """The path form's schedule of a :class:`GraphLayout` for ``H`` heads.

    Every bucket's ``[B, H, W]`` node block is a run of rows of one **node arena** of ``rows``
    rows (bucket after bucket, at ``offset``), so ``q, k, v`` enter all blocks with one
    ``index_copy_`` and ``h`` leaves them with one ``index_select``, whatever the number of
    buckets; ``[3 * rows, C]`` holds ``q``, ``k`` and ``v`` one after the other.
    """

    rows: int
    buckets: tuple[tuple[int, list[tuple]], ...]  # per bucket: (offset, its chunks)
    node_rows: Tensor  # [m * H] the arena row of each (node, head) of ``nodes``
    nodes: Tensor | None  # [m] the nodes in buckets, increasing; None if that is every node
    qkv_rows: Tensor  # [m * 3 * H] the rows in the [3 * rows, C] arena of a [m, 3, H, C] qkv


def _layout_plan(layout: GraphLayout, heads: int, itemsize: int, num_nodes: int) -> _PathPlan:
    """The :class:`_PathPlan` of ``layout``, cached on it per ``(heads, itemsize, N)`` and
    chunk budget (:data:`PATH_BLOCK_BYTES`)."""
    key = (heads, itemsize, PATH_BLOCK_BYTES, num_nodes)
    plan = layout.plans.get(key)
    if plan is not None:
        return plan
    ids = torch.arange(heads, device=layout.node.device)
    offsets, rows, chunks, total = [], [], [], 0
    for bucket in layout.buckets:
        offsets.append(total)
        rows.append(_block_rows(bucket.node_slot, bucket.width, ids) + total)  # [n, H]
        chunks.append(_bucket_chunks(bucket, ids, itemsize))
        total += bucket.num_graphs * heads * bucket.width
    order = torch.argsort(layout.node)
    node_rows = torch.cat(rows).index_select(0, order) if rows else ids.new_zeros(0, heads)
    nodes = layout.node.index_select(0, order)
    qkv_rows = node_rows.unsqueeze(1) + total * torch.arange(3, device=ids.device).view(1, 3, 1)
    plan = _PathPlan(
        total,
        tuple(zip(offsets, chunks)),
        node_rows.flatten(),
        None if nodes.numel() == num_nodes else nodes,
        qkv_rows.flatten(),
    )
    layout.plans[key] = plan
    return plan


def _chunk_span(offset: int, rows: _ChunkRows, heads: int, width: int) -> tuple[slice, tuple]:
    """The node-arena rows of a chunk's ``[b, H, W]`` block (its bucket at ``offset``), and
    that shape."""
    start, shape = offset + rows.lo * heads * width, (rows.hi - rows.lo, heads, width)
    return slice(start, start + math.prod(shape)), shape


def _chunk_blocks(arena: Tensor, rows: int, span: slice, shape: tuple[int, ...]) -> tuple:
    """The ``[b, H, W, C]`` blocks at rows ``span`` of the three parts of a ``[3 * rows, C]``
    arena (views)."""
    return tuple(
        arena[i * rows + span.start : i * rows + span.stop].view(*shape, arena.shape[1])
        for i in range(3)
    )


def _path_form(
    layout: GraphLayout,
    qkv: Tensor,
    scale: float,
    source: Tensor,
    transition: Tensor,
    mark: Tensor,
    direct: Tensor,
    keep: bool,
) -> tuple[Tensor, tuple | None]:
    """``h`` ``[N, H, C]`` of the nodes of ``layout.buckets`` by the path form (zero rows for
    the other nodes) from ``qkv`` ``[N, 3, H, C]`` (``q`` multiplied by ``scale`` here), one
    dense block per bucket in chunks of graphs, and, with ``keep``, what :class:`_PathForm`'s
    backward reads: the node arenas and, per bucket, its gates and, for a bucket that runs in
    one chunk, the chunk's intermediates (a bucket of several chunks has them recomputed in
    the backward, so that only one chunk's ``[b, H, ., .]`` blocks are alive at a time).
    Runs with autocast off: the path form picks its own working dtype (float32 or wider),
    and autocast would hand its ``out=`` products operands of another."""
    with torch.autocast(qkv.device.type, enabled=False):
        N, H = direct.shape
        C = qkv.shape[-1]
        acc = torch.promote_types(qkv.dtype, torch.float32)
        plan = _layout_plan(layout, H, torch.empty((), dtype=acc).element_size(), N)
        R = plan.rows
        qkv, direct = qkv.to(acc), direct.to(acc)
        if plan.nodes is not None:
            qkv, direct = qkv.index_select(0, plan.nodes), direct.index_select(0, plan.nodes)
        arena = qkv.new_zeros(3 * R, C).index_copy_(0, plan.qkv_rows, qkv.reshape(-1, C))
        if scale != 1.0:
            arena[:R].mul_(scale)
        d_arena = direct.new_zeros(R).index_copy_(0, plan.node_rows, direct.reshape(-1))
        out = arena.new_empty(R, C)
        buckets = layout.buckets
        e = [b.source_slot.numel() for b in buckets]
        m = [b.lg_slot.numel() for b in buckets]
        per_bucket = zip(
            buckets,
            plan.buckets,
            *(t.index_select(0, layout.edge).to(acc).split(e) for t in (source, mark)),
            transition.index_select(0, layout.lg).to(acc).split(m),
        )
        saved = []
        for bucket, (offset, chunks), s, mk, t in per_bucket:
            caches = []
            for sub, cr in chunks:
                span, shape = _chunk_span(offset, cr, H, bucket.width)
                q, k, v = _chunk_blocks(arena, R, span, shape)
                (_, _), (e0, e1), (l0, l1) = cr.ranges
                cache = _bucket_outputs(
                    q, k, v, d_arena[span].view(shape), s[e0:e1], t[l0:l1], mk[e0:e1], sub, cr,
                    out[span].view(*shape, C),
                )  # fmt: skip
                caches.append(cache if keep and len(chunks) == 1 else None)
            if keep:
                saved.append(((s, t, mk), caches))
        h = out.index_select(0, plan.node_rows).view(-1, H, C)
        if plan.nodes is not None:
            h = out.new_zeros(N, H, C).index_copy_(0, plan.nodes, h)
        return h, ((plan, arena, d_arena, saved) if keep else None)


class _PathForm(torch.autograd.Function):
    """:func:`_path_form` with the hand-written backward of :func:`_bucket_grads`. Autograd
    through the blocks would record a dozen small ops per bucket and send each gathered
    input's gradient back through a serial ``index_add``; here the output gradient enters the
    blocks with one ``index_copy_``, every block's gradients are written into gradient arenas
    laid out as the node arenas, and each input's gradient leaves them with one
    ``index_select`` (every node, edge and line-graph edge has exactly one slot). Once
    differentiable."""

    @staticmethod
    def forward(ctx, layout, scale, qkv, source, transition, mark, direct):
        h, ctx.saved = _path_form(layout, qkv, scale, source, transition, mark, direct, keep=True)
        ctx.layout, ctx.scale = layout, scale
        ctx.inputs = [(t.shape, t.dtype) for t in (qkv, source, transition, mark, direct)]
        return h.to(qkv.dtype)

    @staticmethod
    @first_order_only("PLSTMGraph path form", "no PLSTMGraph algorithm is twice differentiable")
    def backward(ctx, dh):
        with torch.autocast(dh.device.type, enabled=False):  # as in _path_form
            return _path_form_backward(ctx, dh)


def _path_form_backward(ctx, dh: Tensor) -> tuple[Tensor | None, ...]:
    """:meth:`_PathForm.backward` (autocast off)."""
    layout = ctx.layout
    plan, arena, d_arena, saved = ctx.saved
    R, C = plan.rows, arena.shape[1]
    N, H = ctx.inputs[4][0]  # direct is [N, H]
    dh = dh.to(arena.dtype)
    if plan.nodes is not None:
        dh = dh.index_select(0, plan.nodes)
    dout = dh.new_zeros(R, C).index_copy_(0, plan.node_rows, dh.reshape(-1, C))
    dqkv = arena.new_empty(3 * R, C)
    ddirect = arena.new_empty(R)
    parts: list[list[Tensor]] = [[], [], []]  # source, transition, mark; per chunk
    for bucket, (offset, chunks), (gates, caches) in zip(layout.buckets, plan.buckets, saved):
        for (sub, cr), cache in zip(chunks, caches):
            span, shape = _chunk_span(offset, cr, H, bucket.width)
            q, k, v = _chunk_blocks(arena, R, span, shape)
            d = d_arena[span].view(shape)
            if cache is None:  # recompute the chunk's intermediates
                s, t, mk = gates
                (_, _), (e0, e1), (l0, l1) = cr.ranges
                scratch = arena.new_empty(*shape, C)
                cache = _bucket_outputs(q, k, v, d, s[e0:e1], t[l0:l1], mk[e0:e1], sub, cr, scratch)
            grads = (*_chunk_blocks(dqkv, R, span, shape), ddirect[span].view(shape))
            dout_block = dout[span].view(*shape, C)
            for part, g in zip(parts, _bucket_grads(q, k, v, d, cr, cache, dout_block, grads)):
                part.append(g)
    if ctx.scale != 1.0:
        dqkv[:R].mul_(ctx.scale)
    dqkv = dqkv.index_select(0, plan.qkv_rows).view(-1, 3, H, C)
    ddirect = ddirect.index_select(0, plan.node_rows).view(-1, H)
    if plan.nodes is not None:
        dqkv = dqkv.new_zeros(N, 3, H, C).index_copy_(0, plan.nodes, dqkv)
        ddirect = ddirect.new_zeros(N, H).index_copy_(0, plan.nodes, ddirect)
    grads = [dqkv]
    for (shape, _), index, part in zip(
        ctx.inputs[1:4], (layout.edge, layout.lg, layout.edge), parts
    ):
        grads.append(dh.new_zeros(shape).index_copy_(0, index, torch.cat(part)))
    grads.append(ddirect)
    out = [
        g.to(dtype) if needed else None
        for g, needed, (_, dtype) in zip(grads, ctx.needs_input_grad[2:], ctx.inputs)
    ]
    return None, None, *out


def _split_qkv(qkv: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """``q`` (times ``scale``), ``k``, ``v`` ``[N, H, C]`` of a ``[N, 3, H, C]`` ``qkv``."""
    q, k, v = qkv.unbind(1)
    return (q * scale if scale != 1.0 else q), k, v


def _layout_recurrence(
    qkv: Tensor,
    scale: float,
    source: Tensor,
    transition: Tensor,
    mark: Tensor,
    direct: Tensor,
    edge_index: Tensor,
    layout: GraphLayout,
) -> Tensor:
    """``h`` ``[N, H, C]``: the graphs of ``layout.buckets`` by the path form
    (:class:`_PathForm`), and those of ``layout.large`` by the state form (on the DAG edges
    ``edge_index``). Every node must be in one of them."""
    inputs = (qkv, source, transition, mark, direct)
    if not layout.buckets:
        N, _, H, C = qkv.shape
        h = qkv.new_zeros(N, H, C)
    elif torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        h = _PathForm.apply(layout, scale, *inputs)
    else:
        h = _path_form(layout, qkv, scale, source, transition, mark, direct, keep=False)[0]
        h = h.to(qkv.dtype)
    return _large_graphs(h, qkv, scale, source, transition, mark, direct, edge_index, layout.large)


def _large_graphs(
    h: Tensor,
    qkv: Tensor,
    scale: float,
    source: Tensor,
    transition: Tensor,
    mark: Tensor,
    direct: Tensor,
    edge_index: Tensor,
    large: StateGroup | None,
) -> Tensor:
    """``h`` with the rows of the graphs of ``large`` replaced by the state form's."""
    if large is None:
        return h
    s_l, t_l, m_l = source[large.edge], transition[large.lg], mark[large.edge]
    large_edges = edge_index[:, large.edge]
    h_large = _state_form(
        *_split_qkv(qkv, scale), s_l, t_l, m_l, direct, large_edges, large.lg_edge_index,
        large.plan,
    )  # fmt: skip
    return h.index_copy(0, large.node, h_large[large.node].to(h.dtype))


def _native_recurrence(
    qkv: Tensor,
    scale: float,
    source: Tensor,
    transition: Tensor,
    mark: Tensor,
    direct: Tensor,
    edge_index: Tensor,
    native: NativeLayout,
) -> Tensor:
    """``h`` ``[N, H, C]``: the graphs of ``native.plan`` by the compiled path form
    (:func:`graphseq.kernels.dag_attention.dag_attention`), those of ``native.large`` by the
    state form."""
    h = dag_attention(
        qkv, source, transition, mark, direct, native.plan, scale=scale, backend="native"
    ).to(qkv.dtype)
    return _large_graphs(h, qkv, scale, source, transition, mark, direct, edge_index, native.large)


def _recurrence(
    op: str,
    qkv: Tensor,
    scale: float,
    source: Tensor,
    transition: Tensor,
    mark: Tensor,
    direct: Tensor,
    structure: DagStructure,
    batch: Tensor | None,
    algorithm: str,
) -> Tensor:
    """:meth:`PLSTMGraph.recurrence` on checked arguments (``batch`` int64 or ``None``), with
    ``q, k, v`` packed as ``qkv`` ``[N, 3, H, C]`` and ``q`` still to be multiplied by
    ``scale``."""
    if algorithm == "states":
        q, k, v = _split_qkv(qkv, scale)
        return _state_form(q, k, v, source, transition, mark, direct, structure.edge_index,
                           structure.lg_edge_index, structure.plan)  # fmt: skip
    if NATIVE_PATHS and qkv.device.type == "cpu" and native_available():
        native = _layout_for(op, structure, batch, algorithm, native=True)
        return _native_recurrence(qkv, scale, source, transition, mark, direct,
                                  structure.edge_index, native)  # fmt: skip
    layout = _layout_for(op, structure, batch, algorithm)
    return _layout_recurrence(qkv, scale, source, transition, mark, direct, structure.edge_index,
                              layout)  # fmt: skip


class PLSTMGraph(torch.nn.Module):
    r"""pLSTM on graphs, from `"pLSTM: parallelizable Linear Source Transition Mark networks"
    <https://arxiv.org/abs/2506.11997>`_ (Pöppel et al., 2025): a linear recurrence whose cell
    states live on the **edges** of a DAG.

    Per head, with states :math:`C_e \in \mathbb{R}^{K \times V}` on the DAG's edges,
    transitions :math:`T_{e'e}` on its line graph (incoming edge :math:`e'` of node :math:`n`
    to outgoing edge :math:`e` of :math:`n`), :math:`K = V = D_\text{out} / H`:

    .. math::
        C_e &= \sum_{e' \to e} T_{e'e}\, C_{e'} + S_e\, k_{src(e)} v_{src(e)}^\top

        h_n &= K^{-1/2} \Big( \sum_{e \in in(n)} M_e\, q_n^\top C_e
               + D_n\, (q_n \cdot k_n)\, v_n \Big)

        y_n &= W_o\, \mathrm{RMSNorm}_{\text{head}}(h_n)

    Gates (per head), all functions of the layer input only, so the recurrence stays linear:
    source :math:`S_e = \sigma(W_S x_{src(e)} + U_S a_e + b_S)`, mark
    :math:`M_e = \sigma(W_M x_{dst(e)} + U_M a_e + b_M)`, direct
    :math:`D_n = \sigma(W_D x_n + b_D)`, and the transition pre-activation of
    :math:`e' = (u \to n)`, :math:`e = (n \to w)`:
    :math:`t_{e'e} = W_T x_n + W_T^- x_u + W_T^+ x_w + U_T^- a_{e'} + U_T^+ a_e + b_T`
    (the :math:`a` terms only with ``edge_dim``).

    * **P-mode** (propagation): :math:`T_{e'e} = t_{e'e} / (c + \sum_{e'' \in out(n)}
      |t_{e'e''}|)`, :math:`c = 0.5` (:func:`pmode_normalize`), so that for every incoming
      edge :math:`e'` of every node :math:`n`, :math:`\sum_{e \in out(n)} |T_{e'e}| < 1`: the
      L1 mass a state hands on never grows, whatever the number of paths.
    * **D-mode** (distribution): :math:`T_{e'e} = \tanh(5\, t_{e'e})` on the line graph pruned
      to a multitree (:func:`prune_to_multitree`), so there is at most one path between any
      two edge states and :math:`|T| \le 1` bounds every path.

    Orientation: ``orientation="index"`` (default) reads ``edge_index`` as undirected (PyG
    stores both directions of each bond) and points every edge from the lower to the higher
    node index (:func:`orient_edges`): always acyclic, no root to choose, unchanged by PyG
    batching, and for SMILES-built molecules it follows RDKit's atom order (the SMILES
    traversal), which gives long directed paths. ``reverse=True`` runs on the reversed DAG
    (stack a forward and a reverse layer to let information flow both ways).
    ``orientation="directed"`` takes ``edge_index`` as a DAG; a directed cycle raises
    ``ValueError`` naming a node on it.

    Algorithms (all exact: the same sums in different orders, equal up to rounding):

    * ``"states"`` scans the :math:`K \times V` edge states :math:`C_e` themselves with
      :func:`graphseq.kernels.dag_scan` (one vectorised step per topological level of the
      line graph, the whole batch at once), then reads them out: memory and work
      :math:`O(E H K V)`, independent of graph size;
    * ``"paths"`` works graph by graph in dense blocks. Per graph and head, with
      :math:`A_{ee'} = T_{e'e}` on the graph's edges (strictly lower triangular in a
      topological order), :math:`X_{em} = S_e [m = src(e)]` and
      :math:`R_{en} = M_e [n = dst(e)]`, the path weights with which node :math:`m`'s write
      reaches :math:`C_e` are :math:`P = (I - A)^{-1} X` (one batched triangular solve, no
      loop over levels), the gating matrix of the paper's Eq. 7 is
      :math:`G = R^\top P + \mathrm{diag}(D)`, and :math:`h = ((q k^\top) \odot G)\, v`, a
      masked linear attention. The graphs of a batch are grouped into **buckets** of
      similar node counts (:class:`GraphLayout`, built on first use from the ``batch`` given
      to :func:`prepare_dag` and cached on the :class:`DagStructure`), each padded only to
      its own largest graph: work :math:`O(\sum_g H (F_g^2 W_g + W_g^2 (K + V)))` and
      memory :math:`O(H (F_g^2 + F_g W_g + W_g^2))` per graph, with :math:`W_g, F_g` the node
      and DAG-edge widths of graph :math:`g`'s bucket (the solve's :math:`F \times F` block
      dominates for dense graphs: a complete 128-node graph has :math:`F = 8128`). A bucket
      runs in chunks of graphs so that no ``[b, H, ., .]`` block exceeds
      :data:`PATH_BLOCK_BYTES` unless one graph's own block does (then that graph is a chunk
      of its own); when autograd records and a bucket has several chunks, the backward
      recomputes each chunk's blocks: about one more forward, but only one chunk's blocks held
      at a time. Its backward is written by hand (once differentiable), as is the
      ``"states"`` algorithm's (:func:`graphseq.kernels.dag_scan`'s wavefront): no
      algorithm supports double backward, and asking for a gradient's graph
      (``create_graph=True``) raises instead of returning a partial second derivative.
      **On CPU** the same sums run by the compiled kernel of
      :func:`graphseq.kernels.dag_attention.dag_attention` instead (when a C compiler is
      there to build it on first use; :data:`NATIVE_PATHS`): graph by graph without padding
      or buckets, :math:`P` by forward substitution over the sparse line graph, and the
      attention over :math:`G`'s structural support only (work
      :math:`O(H (L_g W_g + \text{pairs}_g\, C))` per graph, no :math:`F \times F` block;
      :meth:`DagStructure.native_layout`, cached like the layout). The bucketed PyTorch
      form runs on GPUs and where the kernel cannot be built;
    * ``"auto"`` (default) runs by ``"paths"`` the graphs of at most
      :data:`PATH_FORM_MAX_NODES` nodes **and** at most :data:`PATH_FORM_MAX_EDGES` DAG
      edges (molecules and other sparse small graphs), and the others by ``"states"`` (on a
      plan of their own edges), so the choice is made per graph, not per batch.

    Non-finite inputs: for finite inputs the algorithms compute the same sums, but NaN and
    inf spread differently. Under ``"states"`` a NaN in the input of node :math:`m` reaches
    only :math:`m` and its descendants in the DAG (in P-mode also the descendants of
    :math:`m`'s parents: the normalisation of a transition through a parent sums over all
    of the parent's outgoing edges); under ``"paths"`` (and for the graphs ``"auto"`` runs
    by it) on GPUs, or without the compiled kernel, it reaches every node of :math:`m`'s
    graph (the products :math:`0 \cdot \mathrm{NaN}` of the masked attention and of the
    triangular solve); the compiled CPU kernel multiplies over :math:`G`'s structural
    support only, so there it spreads as under ``"states"``. Under every algorithm it stays
    inside its own graph of the batch.

    The graph preprocessing (:func:`prepare_dag`) is vectorised integer work; pass its
    :class:`DagStructure` as ``structure`` to share it between layers of the same mode and
    direction.

    Args:
        in_channels (int): input size.
        out_channels (int): output size :math:`D_\text{out}`.
        heads (int, optional): heads :math:`H`; must divide ``out_channels``. (default: :obj:`4`)
        mode (str, optional): ``"P"`` or ``"D"``. (default: :obj:`"P"`)
        edge_dim (int, optional): size of ``edge_attr``; ``None`` for no edge features.
            (default: :obj:`None`)
        orientation (str, optional): ``"index"`` or ``"directed"``. (default: :obj:`"index"`)
        reverse (bool, optional): run on the reversed DAG. (default: :obj:`False`)
        gate_weight_std (float, optional): std of the gate weights' normal init (``0``: zero
            weights, the paper's choice on small data). (default: :obj:`0.0`)
        gate_bias (dict, optional): override the initial gate biases, keys ``"source"``,
            ``"transition"``, ``"mark"``, ``"direct"`` (defaults: the paper's -4, 1, -4, -6,
            :mod:`graphseq.nn.plstm.gates`).
        algorithm (str, optional): ``"auto"``, ``"states"`` or ``"paths"`` (see above).
            (default: :obj:`"auto"`)

    Shapes:
        - **input:** node features ``x`` :math:`(N, F_{in})`, ``edge_index`` :math:`(2, E)`,
          optional ``batch`` :math:`(N)`, ``edge_attr`` :math:`(E, F_e)`, ``structure``.
        - **output:** :math:`(N, D_\text{out})`.

    Example::

        >>> import torch
        >>> from graphseq.nn.plstm.graph import PLSTMGraph
        >>> conv = PLSTMGraph(16, 32, heads=4, mode="D")
        >>> x = torch.randn(5, 16)
        >>> edge_index = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4], [1, 0, 2, 1, 3, 2, 4, 3]])
        >>> conv(x, edge_index).shape
        torch.Size([5, 32])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        heads: int = 4,
        mode: str = "P",
        *,
        edge_dim: int | None = None,
        orientation: str = "index",
        reverse: bool = False,
        gate_weight_std: float = 0.0,
        gate_bias: dict[str, float] | None = None,
        algorithm: str = "auto",
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        check_positive_int(cls, "in_channels", in_channels)
        check_positive_int(cls, "out_channels", out_channels)
        check_positive_int(cls, "heads", heads)
        if out_channels % heads != 0:
            raise ValueError(f"{cls}: heads ({heads}) must divide out_channels ({out_channels})")
        check_choice(cls, "mode", mode, _MODES)
        check_choice(cls, "orientation", orientation, _ORIENTATIONS)
        check_choice(cls, "algorithm", algorithm, _ALGORITHMS)
        if edge_dim is not None:
            check_positive_int(cls, "edge_dim", edge_dim)
        if not isinstance(reverse, bool):
            raise TypeError(f"{cls}: reverse must be a bool, got {type(reverse).__name__}")
        gate_weight_std = check_real(cls, "gate_weight_std", gate_weight_std, 0.0)
        bias = {
            "source": SOURCE_BIAS,
            "transition": TRANSITION_BIAS,
            "mark": MARK_BIAS,
            "direct": DIRECT_BIAS,
        }
        unknown = set(gate_bias or {}) - set(bias)
        if unknown:
            raise ValueError(f"{cls}: gate_bias keys must be among {sorted(bias)}, got {unknown}")
        for k, v in (gate_bias or {}).items():
            bias[k] = check_real(cls, f"gate_bias[{k!r}]", v)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.head_channels = out_channels // heads
        self.mode = mode
        self.edge_dim = edge_dim
        self.orientation = orientation
        self.reverse = reverse
        self.gate_weight_std = float(gate_weight_std)
        self.gate_bias = bias
        self.algorithm = algorithm

        H, C = heads, self.head_channels
        Linear = torch.nn.Linear
        self.qkv = Linear(in_channels, 3 * H * C)
        self.source = Linear(in_channels, H)
        self.mark = Linear(in_channels, H)
        self.direct = Linear(in_channels, H)
        self.transition = Linear(in_channels, H)  # the node the transition passes through
        self.transition_ends = Linear(in_channels, 2 * H, bias=False)  # its two other ends
        if edge_dim is not None:
            self.source_edge = Linear(edge_dim, H, bias=False)
            self.mark_edge = Linear(edge_dim, H, bias=False)
            self.transition_edge = Linear(edge_dim, 2 * H, bias=False)  # e' and e
        self.norm = MultiHeadRMSNorm(H, C)
        self.out_proj = Linear(H * C, out_channels, bias=False)
        self.reset_parameters()

    def _gate_linears(self) -> list[torch.nn.Linear]:
        names = ["source", "mark", "direct", "transition", "transition_ends"]
        if self.edge_dim is not None:
            names += ["source_edge", "mark_edge", "transition_edge"]
        return [getattr(self, n) for n in names]

    def reset_parameters(self) -> None:
        """Small init for q/k/v, gate weights N(0, std²) or zero, the gate biases, unit norm."""
        small_init_(self.qkv.weight)
        torch.nn.init.zeros_(self.qkv.bias)
        with torch.no_grad():
            for lin in self._gate_linears():
                if self.gate_weight_std > 0:
                    lin.weight.normal_(0.0, self.gate_weight_std)
                else:
                    lin.weight.zero_()
            for name in ("source", "mark", "direct", "transition"):
                getattr(self, name).bias.fill_(self.gate_bias[name])
        self.norm.reset_parameters()
        self.out_proj.reset_parameters()

    def __repr__(self) -> str:
        extra = f", edge_dim={self.edge_dim}" if self.edge_dim is not None else ""
        extra += ", reverse=True" if self.reverse else ""
        extra += f", orientation={self.orientation!r}" if self.orientation != "index" else ""
        if self.gate_weight_std:
            extra += f", gate_weight_std={self.gate_weight_std!r}"
        defaults = {"source": SOURCE_BIAS, "transition": TRANSITION_BIAS, "mark": MARK_BIAS,
                    "direct": DIRECT_BIAS}  # fmt: skip
        bias = {k: v for k, v in self.gate_bias.items() if v != defaults[k]}
        extra += f", gate_bias={bias!r}" if bias else ""
        extra += f", algorithm={self.algorithm!r}" if self.algorithm != "auto" else ""
        return (
            f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
            f"heads={self.heads}, mode={self.mode!r}{extra})"
        )

    # ------------------------------------------------------------------------------------------

    def prepare(
        self,
        edge_index: Tensor,
        num_nodes: int,
        batch: Tensor | None = None,
        bucket_overhead: float = BUCKET_OVERHEAD,
    ) -> DagStructure:
        """:func:`prepare_dag` with this layer's mode, orientation and direction."""
        return prepare_dag(
            edge_index,
            num_nodes,
            mode=self.mode,
            orientation=self.orientation,
            reverse=self.reverse,
            batch=batch,
            bucket_overhead=bucket_overhead,
        )

    def gates(
        self, x: Tensor, structure: DagStructure, edge_attr: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """``q`` (scaled by :math:`K^{-1/2}`), ``k``, ``v`` ``[N, H, K]``, and the gates
        ``S, M`` ``[E, H]`` (per DAG edge), ``T`` ``[L, H]`` (per line-graph edge, normalised
        or squashed), ``D`` ``[N, H]``."""
        qkv, *gates = self._packed_gates(x, structure, edge_attr)
        return *_split_qkv(qkv, 1.0 / math.sqrt(self.head_channels)), *gates

    def _packed_gates(
        self, x: Tensor, structure: DagStructure, edge_attr: Tensor | None
    ) -> tuple[Tensor, ...]:
        """:meth:`gates` with ``q, k, v`` packed as the ``[N, 3, H, K]`` output of the
        ``qkv`` map, ``q`` not yet scaled (the path form scales it inside its blocks)."""
        H, C = self.heads, self.head_channels
        qkv = self.qkv(x).unflatten(-1, (3, H, C))  # [N, 3, H, C]
        src, dst = structure.edge_index
        lg_src, lg_dst = structure.lg_edge_index
        # the node gates' five linear maps as one matrix product (one pass over x)
        node_gates = [self.source, self.mark, self.direct, self.transition, self.transition_ends]
        bias = [lin.bias for lin in node_gates[:4]] + [x.new_zeros(2 * H)]
        pre = torch.nn.functional.linear(
            x, torch.cat([lin.weight for lin in node_gates]), torch.cat(bias)
        )
        s_x, m_x, d_x, t_x, ends = pre.split([H, H, H, H, 2 * H], -1)  # [N, H] (ends 2H)
        ends = ends.unflatten(-1, (2, H))  # [N, 2, H]
        s_pre = s_x[src]  # [E, H]
        m_pre = m_x[dst]
        t_pre = (
            t_x[structure.lg_node]
            + ends[src[lg_src], 0]  # the far end u of e' = (u -> n)
            + ends[dst[lg_dst], 1]  # the far end w of e = (n -> w)
        )  # [L, H]
        if edge_attr is not None:
            # map the input edges' features first, then pick the DAG edges' rows (a gather of
            # 4H numbers per edge rather than of F_e)
            edge_gates = [self.source_edge, self.mark_edge, self.transition_edge]
            s_a, m_a, ta = (
                torch.nn.functional.linear(edge_attr, torch.cat([lin.weight for lin in edge_gates]))
                .index_select(0, structure.input_edge)
                .split([H, H, 2 * H], -1)
            )
            s_pre = s_pre + s_a
            m_pre = m_pre + m_a
            ta = ta.unflatten(-1, (2, H))  # [E, 2, H]
            t_pre = t_pre + ta[lg_src, 0] + ta[lg_dst, 1]
        if self.mode == "P":
            T = pmode_normalize(t_pre, lg_src, structure.num_edges)
        else:
            T = torch.tanh(TRANSITION_FACTOR * t_pre)
        return qkv, torch.sigmoid(s_pre), T, torch.sigmoid(m_pre), torch.sigmoid(d_x)

    @staticmethod
    def recurrence(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        source: Tensor,
        transition: Tensor,
        mark: Tensor,
        direct: Tensor,
        structure: DagStructure,
        batch: Tensor | None = None,
        algorithm: str = "states",
    ) -> Tensor:
        """:func:`plstm_graph_reference`'s recurrence: ``h`` ``[N, H, V]`` from the outputs of
        :meth:`gates`, by ``algorithm`` (see the class docstring, "Algorithms").

        ``"paths"`` and ``"auto"`` use ``structure.native_layout(algorithm)`` on CPU where the
        compiled kernel runs, else ``structure.layout(algorithm)`` (the graphs grouped by
        size); both are built on first use and cached on the structure. When ``batch`` is
        given and differs from the structure's (e.g. a structure prepared without ``batch``),
        the graphs are laid out for this call from ``batch``.
        """
        op = "PLSTMGraph.recurrence"
        check_choice(op, "algorithm", algorithm, _ALGORITHMS)
        if not isinstance(structure, DagStructure):
            raise TypeError(
                f"{op}: structure must be a DagStructure (prepare_dag), got "
                f"{type(structure).__name__}"
            )
        if batch is not None:
            batch = _check_batch(op, batch, structure.num_nodes)
        if q.dim() != 3 or k.shape != q.shape or v.dim() != 3 or v.shape[:2] != q.shape[:2]:
            raise ValueError(
                f"{op}: q and k must have one shape [N, H, K] and v [N, H, V], got "
                f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
            )
        N, H = q.shape[:2]
        if N != structure.num_nodes:
            raise ValueError(f"{op}: q has {N} nodes but the structure has {structure.num_nodes}")
        wanted = {
            "source": (structure.num_edges, H),
            "transition": (structure.lg_edge_index.shape[1], H),
            "mark": (structure.num_edges, H),
            "direct": (N, H),
        }
        gates = {"source": source, "transition": transition, "mark": mark, "direct": direct}
        for name, g in gates.items():  # checked here: the "states" form would broadcast
            if not isinstance(g, Tensor) or tuple(g.shape) != wanted[name]:
                got = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
                raise ValueError(f"{op}: {name} must have shape {list(wanted[name])}, got {got}")
        for name, t in {"k": k, "v": v, **gates}.items():
            if t.dtype != q.dtype or t.device != q.device:
                raise ValueError(
                    f"{op}: {name} is {t.dtype} on {t.device} but q is {q.dtype} on {q.device}"
                )
        if algorithm == "states":
            return _state_form(q, k, v, source, transition, mark, direct, structure.edge_index,
                               structure.lg_edge_index, structure.plan)  # fmt: skip
        K, V = q.shape[-1], v.shape[-1]
        if K != V:  # zero channels: q . k and the masked attention keep their values
            q, k, v = (torch.nn.functional.pad(t, (0, max(K, V) - t.shape[-1])) for t in (q, k, v))
        qkv = torch.stack((q, k, v), 1)  # [N, 3, H, C]
        h = _recurrence(op, qkv, 1.0, source, transition, mark, direct, structure, batch,
                        algorithm)  # fmt: skip
        return h[..., :V] if K != V else h

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        batch: Tensor | None = None,
        edge_attr: Tensor | None = None,
        structure: DagStructure | None = None,
    ) -> Tensor:
        """Run the layer; see the class docstring. ``structure`` (from :meth:`prepare` or
        :func:`prepare_dag`) skips the preprocessing; it must describe ``edge_index``."""
        cls = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{cls}: x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{cls}: x must have shape [N, {self.in_channels}], got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{cls}: x must be a floating-point tensor, got {x.dtype}")
        check_matches_parameters(cls, "x", x, self.out_proj.weight)
        N = x.shape[0]
        _check_edge_index_form(cls, edge_index)  # named after the layer, not orient_edges
        for name, t in (("edge_index", edge_index), ("batch", batch), ("edge_attr", edge_attr)):
            if isinstance(t, Tensor) and t.device != x.device:
                raise ValueError(
                    f"{cls}: {name} is on {t.device} but x is on {x.device}; "
                    "move them to the same device"
                )
        if self.edge_dim is not None:
            if edge_attr is None:
                raise ValueError(f"{cls}: built with edge_dim={self.edge_dim}; pass edge_attr")
            if not isinstance(edge_attr, Tensor) or tuple(edge_attr.shape) != (
                edge_index.shape[1],
                self.edge_dim,
            ):
                raise ValueError(
                    f"{cls}: edge_attr must have shape [E, edge_dim] = "
                    f"({edge_index.shape[1]}, {self.edge_dim}), got "
                    f"{tuple(edge_attr.shape) if isinstance(edge_attr, Tensor) else edge_attr}"
                )
            edge_attr = edge_attr.to(x.dtype)
        elif edge_attr is not None:
            raise ValueError(f"{cls}: got edge_attr but the layer was built with edge_dim=None")
        if structure is None:
            structure = self.prepare(edge_index, N, batch)  # checks batch
            batch = None  # the structure's
        else:
            if batch is not None:
                batch = _check_batch(cls, batch, N)
            if not isinstance(structure, DagStructure):
                raise TypeError(
                    f"{cls}: structure must be a DagStructure, got {type(structure).__name__}"
                )
            if structure.edge_index.device != x.device:
                raise ValueError(
                    f"{cls}: structure is on {structure.edge_index.device} but x is on "
                    f"{x.device}; prepare it from an edge_index on x's device"
                )
            wanted = (N, self.mode, self.orientation, self.reverse)
            got = (structure.num_nodes, structure.mode, structure.orientation, structure.reverse)
            if got != wanted:
                raise ValueError(
                    f"{cls}: structure was built for (num_nodes, mode, orientation, reverse) = "
                    f"{got}, but this call needs {wanted}"
                )
            _check_structure_edges(cls, structure, edge_index)
        qkv, *gates = self._packed_gates(x, structure, edge_attr)
        if x.dtype in (torch.float16, torch.bfloat16):
            # the recurrence hands h back in its inputs' dtype, where it can overflow
            # (|h| > 65504 in float16): run it in float32 and cast after the norm
            qkv, gates = qkv.float(), [g.float() for g in gates]
        scale = 1.0 / math.sqrt(self.head_channels)
        h = _recurrence(cls, qkv, scale, *gates, structure, batch, self.algorithm)  # [N, H, V]
        return self.out_proj(self.norm(h).to(x.dtype).flatten(-2))
