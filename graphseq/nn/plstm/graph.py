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
   of :func:`~graphseq.kernels.dag_scan`.

:func:`prepare_dag` runs all four and returns a :class:`DagStructure`, which depends on the
graph only: build it once (per batch, or per graph and keep it) and pass it to every layer of
the same mode and direction.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from graphseq.kernels._index import exclusive_cumsum as _exclusive_cumsum
from graphseq.kernels._index import ranges as _ranges
from graphseq.kernels.dag_scan import DagCycleError, DagScanPlan, dag_scan

from ..seq.base import check_choice, check_positive_int
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
    "PATH_FORM_MAX_NODES",
    "P_MODE_OFFSET",
    "DagStructure",
    "PLSTMGraph",
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
#: ``algorithm="auto"`` uses the path form when no graph has more nodes than this.
PATH_FORM_MAX_NODES = 128


def _check_edge_index(op: str, edge_index: object, num_nodes: int) -> Tensor:
    if not isinstance(edge_index, Tensor):
        raise TypeError(f"{op}: edge_index must be a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: edge_index must be an int32/int64 tensor, got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"{op}: edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(
            f"{op}: edge_index entries must lie in [0, num_nodes) = [0, {num_nodes}), got values "
            f"in [{int(edge_index.min())}, {int(edge_index.max())}]"
        )
    return edge_index.long()


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

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    def to(self, device: torch.device | str) -> DagStructure:
        """A copy with every tensor on ``device``."""
        return DagStructure(
            self.num_nodes,
            self.edge_index.to(device),
            self.input_edge.to(device),
            self.lg_edge_index.to(device),
            self.lg_node.to(device),
            self.plan.to(device),
            self.mode,
            self.orientation,
            self.reverse,
        )


def prepare_dag(
    edge_index: Tensor,
    num_nodes: int,
    *,
    mode: str = "P",
    orientation: str = "index",
    reverse: bool = False,
    batch: Tensor | None = None,
) -> DagStructure:
    """Orient, build the line graph, prune (D-mode) and schedule: a :class:`DagStructure`.

    Args:
        edge_index: ``[2, E_in]`` int edges of the input graph (a whole PyG batch is fine).
        num_nodes: number of nodes ``N``.
        mode: ``"P"`` keeps the whole line graph, ``"D"`` prunes it with
            :func:`prune_to_multitree`.
        orientation: ``"index"`` (undirected input, edges from lower to higher index) or
            ``"directed"`` (a DAG given as is), see :func:`orient_edges`.
        reverse: reverse the DAG after orienting it (information flows the other way).
        batch: ``[N]`` graph of each node (PyG ``batch``, sorted); only used to keep D-mode's
            bitsets per graph. The result does not otherwise depend on it, but without it (or
            with edges not grouped by graph) D-mode's bitsets span all ``E`` edge states:
            ``E^2 / 8`` bytes (a warning is issued above 16,384 states). Pass the PyG batch.

    Raises:
        ValueError: if ``orientation="directed"`` and the graph has a directed cycle; the
            message names a node on the cycle.
    """
    op = "prepare_dag"
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int):
        raise TypeError(f"{op}: num_nodes must be an int, got {type(num_nodes).__name__}")
    if num_nodes < 0:
        raise ValueError(f"{op}: num_nodes must be >= 0, got {num_nodes}")
    check_choice(op, "mode", mode, _MODES)
    dag, input_edge = orient_edges(edge_index, num_nodes, orientation)
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
    return DagStructure(num_nodes, dag, input_edge, lg, lg_node, plan, mode, orientation, reverse)


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
    """O(E): the structure's DAG edges must come from ``edge_index``'s columns as recorded in
    ``structure.input_edge`` (a structure of another graph with the same sizes would give a
    silently wrong answer)."""
    msg = (
        f"{cls}: structure was built for a different edge_index; build it with "
        "prepare_dag(edge_index, num_nodes, ...) for this graph"
    )
    E = structure.num_edges
    if E == 0:
        return
    if int(structure.input_edge.max()) >= edge_index.shape[1]:
        raise ValueError(msg)
    src, dst = edge_index.long()[:, structure.input_edge.to(edge_index.device)]
    if structure.orientation == "index":
        src, dst = torch.minimum(src, dst), torch.maximum(src, dst)
    if structure.reverse:
        src, dst = dst, src
    dag_src, dag_dst = structure.edge_index
    if not (torch.equal(src, dag_src) and torch.equal(dst, dag_dst)):
        raise ValueError(msg)


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

    Algorithms (both exact, both on :func:`graphseq.kernels.dag_scan`: one vectorised step per
    topological level of the line graph, for a whole PyG batch at once):

    * ``"states"`` scans the :math:`K \times V` edge states :math:`C_e` themselves, then reads
      them out: memory and work :math:`O(E H K V)`, independent of graph size;
    * ``"paths"`` scans, per edge, the vector of path weights :math:`P_e[m]` with which node
      :math:`m`'s write :math:`k_m v_m^\top` reaches :math:`C_e` (length :math:`W`, the
      largest graph's node count), assembles the gating matrix
      :math:`G_{mn} = \sum_{e \in in(n)} M_e P_e[m] + \delta_{mn} D_n` (the paper's Eq. 7)
      and applies it as a mask to per-graph linear attention: :math:`O(E H W + B H W^2 (K+V))`,
      dense matrix products, much faster for small graphs such as molecules;
    * ``"auto"`` (default) takes ``"paths"`` when no graph of the batch has more than
      :data:`PATH_FORM_MAX_NODES` nodes (``batch`` tells the graphs apart), else ``"states"``.

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
        if float(gate_weight_std) < 0:
            raise ValueError(f"{cls}: gate_weight_std must be >= 0, got {gate_weight_std}")
        bias = {
            "source": SOURCE_BIAS,
            "transition": TRANSITION_BIAS,
            "mark": MARK_BIAS,
            "direct": DIRECT_BIAS,
        }
        unknown = set(gate_bias or {}) - set(bias)
        if unknown:
            raise ValueError(f"{cls}: gate_bias keys must be among {sorted(bias)}, got {unknown}")
        bias.update({k: float(v) for k, v in (gate_bias or {}).items()})
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
        return (
            f"{type(self).__name__}({self.in_channels}, {self.out_channels}, "
            f"heads={self.heads}, mode={self.mode!r}{extra})"
        )

    # ------------------------------------------------------------------------------------------

    def prepare(
        self, edge_index: Tensor, num_nodes: int, batch: Tensor | None = None
    ) -> DagStructure:
        """:func:`prepare_dag` with this layer's mode, orientation and direction."""
        return prepare_dag(
            edge_index,
            num_nodes,
            mode=self.mode,
            orientation=self.orientation,
            reverse=self.reverse,
            batch=batch,
        )

    def gates(
        self, x: Tensor, structure: DagStructure, edge_attr: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """``q`` (scaled by :math:`K^{-1/2}`), ``k``, ``v`` ``[N, H, K]``, and the gates
        ``S, M`` ``[E, H]`` (per DAG edge), ``T`` ``[L, H]`` (per line-graph edge, normalised
        or squashed), ``D`` ``[N, H]``."""
        H, C = self.heads, self.head_channels
        q, k, v = self.qkv(x).unflatten(-1, (3, H, C)).unbind(-3)  # [N, H, C] each
        q = q * (1.0 / math.sqrt(C))
        src, dst = structure.edge_index
        lg_src, lg_dst = structure.lg_edge_index
        s_pre = self.source(x)[src]  # [E, H]
        m_pre = self.mark(x)[dst]
        ends = self.transition_ends(x).unflatten(-1, (2, H))  # [N, 2, H]
        t_pre = (
            self.transition(x)[structure.lg_node]
            + ends[src[lg_src], 0]  # the far end u of e' = (u -> n)
            + ends[dst[lg_dst], 1]  # the far end w of e = (n -> w)
        )  # [L, H]
        if edge_attr is not None:
            a = edge_attr[structure.input_edge]  # [E, F_e]
            s_pre = s_pre + self.source_edge(a)
            m_pre = m_pre + self.mark_edge(a)
            ta = self.transition_edge(a).unflatten(-1, (2, H))  # [E, 2, H]
            t_pre = t_pre + ta[lg_src, 0] + ta[lg_dst, 1]
        if self.mode == "P":
            T = pmode_normalize(t_pre, lg_src, structure.num_edges)
        else:
            T = torch.tanh(TRANSITION_FACTOR * t_pre)
        return q, k, v, torch.sigmoid(s_pre), T, torch.sigmoid(m_pre), torch.sigmoid(self.direct(x))

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
        """:func:`plstm_graph_reference`'s recurrence on :func:`~graphseq.kernels.dag_scan`:
        ``h`` ``[N, H, V]`` from the outputs of :meth:`gates`.

        Two exact evaluations of the same sum (see the class docstring, "Algorithms"):
        ``"states"`` scans the ``K x V`` edge states; ``"paths"`` scans, per edge, the path
        weights from every node of its graph (a vector of the graph's size) and then applies
        them as a mask to per-graph linear attention. ``batch`` (the graph of each node) is
        used by ``"paths"`` only.
        """
        src, dst = structure.edge_index
        qk = (q * k).sum(-1)  # [N, H]
        if algorithm == "states":
            kv = torch.einsum("ehk,ehv->ehkv", source.unsqueeze(-1) * k[src], v[src])
            states = dag_scan(kv, transition, structure.lg_edge_index, plan=structure.plan)
            read = torch.einsum("ehk,ehkv->ehv", q[dst] * mark.unsqueeze(-1), states)
            h = (direct * qk).unsqueeze(-1) * v  # [N, H, V]
            return h.index_add(0, dst, read)
        # "paths": P_e[m] = weight of node m's write k_m v_m^T in C_e (m in e's graph)
        N = q.shape[0]
        if N == 0:
            return v.new_zeros(v.shape)
        if batch is None:
            batch = torch.zeros(N, dtype=torch.long, device=q.device)
        counts = torch.bincount(batch)
        local = torch.arange(N, device=q.device) - _exclusive_cumsum(counts)[batch]  # [N]
        G, W = counts.numel(), int(counts.max())
        x = source.unsqueeze(-1) * torch.nn.functional.one_hot(local[src], W).to(q.dtype)[:, None]
        P = dag_scan(x, transition, structure.lg_edge_index, plan=structure.plan)  # [E, H, W]
        # the gating matrix of the paper's Eq. 7, G[g, n, h, m] = G_{mn} (diagonal D_n apart),
        # summed straight into its dense per-graph layout
        gating = P.new_zeros(G, W, *P.shape[1:])  # [G, W, H, W]
        gating = gating.index_put((batch[dst], local[dst]), mark.unsqueeze(-1) * P, accumulate=True)

        def dense(t: Tensor) -> Tensor:  # [N, H, C] -> [G, H, W, C], zero padded
            return t.new_zeros(G, W, *t.shape[1:]).index_put((batch, local), t).transpose(1, 2)

        scores = (dense(q) @ dense(k).transpose(-1, -2)) * gating.transpose(1, 2)  # [G, H, W, W]
        out = (scores @ dense(v)).transpose(1, 2)[batch, local]  # [N, H, V]
        return out + (direct * qk).unsqueeze(-1) * v

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
        N = x.shape[0]
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
        if batch is not None:
            if not isinstance(batch, Tensor) or batch.shape != (N,) or batch.is_floating_point():
                raise ValueError(f"{cls}: batch must be an integer tensor of shape [N] = [{N}]")
            if N and bool((batch[1:] < batch[:-1]).any()):
                raise ValueError(f"{cls}: batch must be sorted (PyG batches are)")
        if structure is None:
            structure = self.prepare(edge_index, N, batch)
        else:
            if not isinstance(structure, DagStructure):
                raise TypeError(
                    f"{cls}: structure must be a DagStructure, got {type(structure).__name__}"
                )
            wanted = (N, self.mode, self.orientation, self.reverse)
            got = (structure.num_nodes, structure.mode, structure.orientation, structure.reverse)
            if got != wanted:
                raise ValueError(
                    f"{cls}: structure was built for (num_nodes, mode, orientation, reverse) = "
                    f"{got}, but this call needs {wanted}"
                )
            _check_structure_edges(cls, structure, edge_index)
        algorithm = self.algorithm
        if algorithm == "auto":
            largest = N if batch is None else int(torch.bincount(batch).max()) if N else 0
            algorithm = "paths" if largest <= PATH_FORM_MAX_NODES else "states"
        if algorithm == "paths" and batch is not None and structure.num_edges:
            src, dst = structure.edge_index
            if not torch.equal(batch[src], batch[dst]):
                raise ValueError(f"{cls}: an edge joins two graphs of batch")
        gates = self.gates(x, structure, edge_attr)
        h = self.recurrence(*gates, structure, batch, algorithm)  # [N, H, V]
        return self.out_proj(self.norm(h).flatten(-2))
