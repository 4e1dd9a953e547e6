r"""Graph tokenizers of the GSM framework, as PyG transforms.

A tokenizer turns a graph into sequences (`Behrouz et al., "Best of Both Worlds: Advantages of
Hybrid Graph Sequence Models", ICML 2025 <https://arxiv.org/abs/2411.15671>`_, §3):

* **node tokenizers** make the whole graph one sequence of its nodes in some order;
* **subgraph tokenizers** give every node its own sequence of subgraphs, coarse to fine.

Each transform computes the structure once on the CPU and stores it on the ``Data`` object with
attribute names that PyG's batching already handles (node-wise tensors are concatenated; tensors
whose name contains ``index`` are shifted by the number of nodes), so tokenized graphs go through
``DataLoader`` unchanged and a model reads them back per batch:

=====================  =========================================================================
transform              stored attributes
=====================  =========================================================================
NodeTokenizer          ``<order>_rank`` ``[n]``: position of each node in the sequence
KHopTokenizer          ``khop_index`` ``[2, P]`` (node, neighbour) pairs at hop distance 1..k,
                       ``khop_dist`` ``[P]`` their distance, ``khop_k`` ``[1]``
RandomWalkTokenizer    ``rw_index`` ``[W * (L + 1), n]``: row ``w * (L + 1) + t`` is the node
                       reached at step ``t`` of walk ``w`` started at each node;
                       ``rw_walk_length`` ``[1]``
HACTokenizer           ``hac_rank`` ``[n]`` (leaf position in the depth-first walk),
                       ``hac_path`` ``[n, levels]`` (coarse-to-fine cluster ids, unique within
                       the graph), ``hac_child`` / ``hac_size`` ``[n, levels]`` (rank among
                       siblings, cluster size), ``hac_num_clusters`` and ``hac_depth`` ``[1]``
=====================  =========================================================================

Tokenize last: the stored attributes describe the graph as it was tokenized, and a transform
that changes the structure afterwards (``subgraph``, ``ToUndirected``, ``AddSelfLoops``, ...)
does not update them. It may even mistake them for edge features: PyG tells edge attributes
by size, and at ``k = 1`` a simple undirected graph has exactly as many ``khop_index`` pairs as
``edge_index`` columns, so ``Data.subgraph`` keeps them unrelabelled and ``ToUndirected``
fails. (Batching is unaffected: the ``DataLoader`` shifts and concatenates them correctly.)

All tokenizers read ``edge_index`` as undirected and ignore self-loops and duplicate edges.
Every result is a deterministic function of the graph (and ``seed`` where randomness is
involved); ties are broken by node id as documented per class. Empty graphs, one-node graphs,
isolated nodes and disconnected graphs are all valid input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import breadth_first_order, connected_components
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from .hac import AFFINITIES, LINKAGES, _undirected, hac_tree

__all__ = [
    "NODE_ORDERS",
    "HACTokenizer",
    "KHopTokenizer",
    "NodeTokenizer",
    "RandomWalkTokenizer",
    "undirected_adjacency",
]

NODE_ORDERS = ("degree", "random", "bfs")


def _num_nodes(data: Data, cls: str) -> int:
    n = data.num_nodes
    if n is None:
        raise ValueError(f"{cls}: the graph has no num_nodes, x or edge_index to count nodes from")
    return int(n)


def sparse_adjacency_error(data: Data, cls: str) -> None:
    """Refuse a graph whose edges are stored only as a sparse adjacency (``adj_t`` / ``adj``,
    e.g. from ``T.ToSparseTensor``): read as ``edge_index`` it would look edgeless."""
    for name in ("adj_t", "adj"):
        if getattr(data, name, None) is not None:
            raise ValueError(
                f"{cls}: the graph has no edge_index but a sparse adjacency data.{name} "
                "(from T.ToSparseTensor?); graphseq's GSM tokenizers and models read "
                "edge_index: use T.ToSparseTensor(remove_edge_index=False) or drop it"
            )


def _edges(data: Data, cls: str, n: int) -> np.ndarray:
    ei = getattr(data, "edge_index", None)
    if ei is None:
        sparse_adjacency_error(data, cls)
        return np.zeros((2, 0), dtype=np.int64)
    if not isinstance(ei, torch.Tensor) or ei.dim() != 2 or ei.size(0) != 2:
        raise ValueError(
            f"{cls}: edge_index must be a [2, E] tensor, got {getattr(ei, 'shape', ei)}"
        )
    if ei.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{cls}: edge_index must be an integer tensor, got {ei.dtype}")
    out = ei.detach().cpu().numpy().astype(np.int64)
    if out.size and (out.min() < 0 or out.max() >= n):
        raise ValueError(f"{cls}: edge_index holds node ids outside [0, {n})")
    return out


def undirected_adjacency(edge_index: np.ndarray, n: int) -> sp.csr_matrix:
    """Symmetric 0/1 CSR adjacency without self-loops, column indices sorted in every row."""
    lo, hi = _undirected(edge_index, n)
    rows, cols = np.concatenate([lo, hi]), np.concatenate([hi, lo])
    adj = sp.csr_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n, n))
    adj.sort_indices()
    return adj


def _long(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


def _check_seed(cls: str, seed: object) -> int | None:
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0
    ):
        raise ValueError(f"{cls}: seed must be None or a non-negative int, got {seed!r}")
    return seed


class NodeTokenizer(BaseTransform):
    r"""Node tokenization: the graph becomes one sequence of its nodes.

    Stores ``data.<order>_rank`` (``[n]``, the position of every node in the sequence), e.g.
    ``degree_rank``. Orders:

    * ``"degree"``: ascending degree (number of distinct neighbours), ties by node id
      (Graph-Mamba's degree ordering without the noise);
    * ``"random"``: a uniformly random permutation drawn from ``numpy.random.default_rng(seed)``,
      so the same graph size and seed give the same permutation (``seed=None``: fresh each
      call, for augmentation);
    * ``"bfs"``: breadth-first search, one component after another in order of their smallest
      node id; each component starts from its highest-degree node (ties: smallest id) and
      visits neighbours in ascending id.

    Args:
        order (str): ``"degree"``, ``"random"`` or ``"bfs"``. (default: ``"degree"``)
        seed (int, optional): seed of the ``"random"`` order. (default: ``0``)
    """

    def __init__(self, order: str = "degree", seed: int | None = 0) -> None:
        if order not in NODE_ORDERS:
            raise ValueError(f"NodeTokenizer: order must be one of {NODE_ORDERS}, got {order!r}")
        self.order = order
        self.seed = _check_seed("NodeTokenizer", seed)

    @property
    def attr(self) -> str:
        return f"{self.order}_rank"

    def forward(self, data: Data) -> Data:
        cls = type(self).__name__
        n = _num_nodes(data, cls)
        ei = _edges(data, cls, n)
        if self.order == "random":
            seq = np.random.default_rng(self.seed).permutation(n)
        else:
            adj = undirected_adjacency(ei, n)
            deg = np.diff(adj.indptr)
            if self.order == "degree":
                seq = np.lexsort((np.arange(n), deg))
            else:
                seq = _bfs_order(adj, deg)
        rank = np.empty(n, dtype=np.int64)
        rank[seq] = np.arange(n)
        data[self.attr] = _long(rank)
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order!r}, seed={self.seed})"


def _bfs_order(adj: sp.csr_matrix, deg: np.ndarray) -> np.ndarray:
    n = adj.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    num, comp = connected_components(adj, directed=False)
    # start of each component: highest degree, then smallest id
    order = np.lexsort((np.arange(n), -deg, comp))
    first = np.r_[True, comp[order][1:] != comp[order][:-1]]
    starts = order[first]  # indexed by component label
    # one BFS from a virtual node linked to every start; restricted to one component, a FIFO
    # queue visits nodes exactly as a BFS from that component's start would
    coo = adj.tocoo()
    rows = np.concatenate([coo.row, np.full(num, n)])
    cols = np.concatenate([coo.col, starts])
    big = sp.csr_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n + 1, n + 1))
    big.sort_indices()
    seq = breadth_first_order(big, n, directed=True, return_predecessors=False)[1:]
    # components in order of their smallest node id; stable, so BFS order is kept inside each
    _, smallest = np.unique(comp, return_index=True)
    comp_rank = np.empty(num, dtype=np.int64)
    comp_rank[np.argsort(smallest)] = np.arange(num)
    return seq[np.argsort(comp_rank[comp[seq]], kind="stable")].astype(np.int64)


class KHopTokenizer(BaseTransform):
    r"""k-hop subgraph tokenization: node :math:`v` gets the sequence of its neighbourhoods
    :math:`N_k(v), \dots, N_1(v), \{v\}` (nodes within hop distance :math:`\le j`), coarse to
    fine, as in NAGphormer / GRED / S4G.

    Stores every pair of distinct nodes at hop distance :math:`1 \le d \le k` as
    ``data.khop_index`` ``[2, P]`` (row 0 the centre node, row 1 the other node, sorted by
    centre then other) and ``data.khop_dist`` ``[P]``. A model pools its node states over
    :math:`\{u : d(v, u) \le j\} \cup \{v\}` to form token :math:`j`. Memory is the number of
    pairs within distance ``k``: at most :math:`n^2`, much less on sparse graphs.

    Args:
        k (int): largest hop distance. (default: ``2``)
    """

    def __init__(self, k: int = 2) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"KHopTokenizer: k must be an int >= 1, got {k!r}")
        self.k = k

    def forward(self, data: Data) -> Data:
        cls = type(self).__name__
        n = _num_nodes(data, cls)
        adj = undirected_adjacency(_edges(data, cls, n), n).astype(np.int32)
        reach = sp.identity(n, dtype=np.int32, format="csr")
        rows, cols, dist = [], [], []
        for d in range(1, self.k + 1):
            nxt = reach + reach @ adj
            nxt.data[:] = 1
            new = (nxt - reach).tocoo()
            keep = new.data > 0
            rows.append(new.row[keep])
            cols.append(new.col[keep])
            dist.append(np.full(int(keep.sum()), d))
            reach = nxt
        r, c, d = (np.concatenate(v).astype(np.int64) for v in (rows, cols, dist))
        order = np.lexsort((c, r))
        data.khop_index = _long(np.stack([r[order], c[order]]))
        data.khop_dist = _long(d[order])
        data.khop_k = _long(np.array([self.k]))
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k})"


class RandomWalkTokenizer(BaseTransform):
    r"""Random-walk tokenization (DeepWalk / CRaWl / Graph Mamba (GMN) style): from every node
    start ``num_walks`` uniform random walks of ``walk_length`` steps.

    Stores ``data.rw_index`` ``[num_walks * (walk_length + 1), n]``: entry
    ``[w * (walk_length + 1) + t, v]`` is the node reached at step ``t`` of walk ``w`` from
    ``v`` (step 0 is ``v`` itself), and ``data.rw_walk_length`` ``[1]``. A walk at a node
    without neighbours stays there. A model forms token :math:`t` of node :math:`v` from
    steps :math:`0..t` of its walks: the mean over the walks of the mean of the features at
    those steps (a node visited twice counts twice, so it is a mean over visits, not over the
    set of visited nodes).

    Args:
        num_walks (int): walks per node. (default: ``4``)
        walk_length (int): steps per walk. (default: ``4``)
        seed (int, optional): seed of ``numpy.random.default_rng``; ``None`` draws fresh walks
            on every call. (default: ``0``)
    """

    def __init__(self, num_walks: int = 4, walk_length: int = 4, seed: int | None = 0) -> None:
        for name, v in (("num_walks", num_walks), ("walk_length", walk_length)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"RandomWalkTokenizer: {name} must be an int >= 1, got {v!r}")
        self.num_walks, self.walk_length = num_walks, walk_length
        self.seed = _check_seed("RandomWalkTokenizer", seed)

    def forward(self, data: Data) -> Data:
        cls = type(self).__name__
        n = _num_nodes(data, cls)
        adj = undirected_adjacency(_edges(data, cls, n), n)
        deg = np.diff(adj.indptr)
        rng = np.random.default_rng(self.seed)
        W, L = self.num_walks, self.walk_length
        walks = np.empty((W, L + 1, n), dtype=np.int64)
        cur = np.tile(np.arange(n), (W, 1))  # [W, n]
        walks[:, 0] = cur
        for t in range(1, L + 1):
            r = rng.random(cur.shape)
            d = deg[cur]
            step = adj.indptr[cur] + np.floor(r * d).astype(np.int64)
            if adj.nnz:
                cur = np.where(d > 0, adj.indices[np.minimum(step, adj.nnz - 1)], cur)
            walks[:, t] = cur
        data.rw_index = _long(walks.reshape(W * (L + 1), n))
        data.rw_walk_length = _long(np.array([L]))
        return data

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_walks={self.num_walks}, "
            f"walk_length={self.walk_length}, seed={self.seed})"
        )


class HACTokenizer(BaseTransform):
    r"""Hierarchical affinity clustering (HAC) tokenization of GSM++ (see
    :mod:`graphseq.nn.gsm.hac` for the Borůvka rounds, affinities and tie-breaking).

    Both readings of the tree are stored:

    * **leaf order** (model name ``"hac_dfs"``, aliases ``"dfs_leaves"`` and ``"dfs"``; a
      node tokenization):
      ``data.hac_rank`` ``[n]``, each node's position when the leaves are listed by a
      depth-first walk from the root visiting children in ascending cluster id, so nodes merged
      early (high affinity) are adjacent;
    * **ancestor path** (model name ``"hac_bfs"``, aliases ``"ancestor_path"`` and
      ``"bfs_hac"``, the paper's HAC(BFS); a subgraph tokenization; the bare ``"bfs"`` is
      :class:`NodeTokenizer`'s breadth-first node order, a different tokenization):
      ``data.hac_path`` ``[n, levels]``, each node's coarse-to-fine chain of clusters (column 0
      the root, the last column its level-1 cluster), left-padded with the root when the tree
      has fewer than ``levels`` levels. Cluster ids are unique within the graph (``0 ..
      hac_num_clusters - 1``); a model shifts them per graph with ``hac_num_clusters``.

    For the hierarchical positional encoding it also stores ``hac_child`` (rank of each path
    cluster among its parent's children) and ``hac_size`` (nodes in each path cluster), both
    ``[n, levels]``, and ``hac_depth`` ``[1]`` (levels before padding).

    Bad input: a graph without edges (or all self-loops) gives depth 1 (every node a child of
    the root); an empty graph gives ``[0, levels]`` tensors and ``hac_num_clusters = 0``; a tree
    deeper than ``levels`` raises ``ValueError`` (depth is at most ``ceil(log2 n) + 1``, so the
    default ``levels=16`` covers graphs up to 32,768 nodes in the worst case).

    Args:
        on (str or list of str): node attributes concatenated as the affinity features.
            (default: ``"x"``)
        affinity (str): ``"cosine"``, ``"euclidean"`` or ``"uniform"`` (structure only,
            all ties). (default: ``"cosine"``)
        linkage (str): ``"max"`` or ``"mean"``. (default: ``"max"``)
        levels (int): width of the stored paths. (default: ``16``)
    """

    def __init__(
        self,
        on: str | Sequence[str] = "x",
        affinity: str = "cosine",
        linkage: str = "max",
        levels: int = 16,
    ) -> None:
        cls = type(self).__name__
        if affinity not in AFFINITIES:
            raise ValueError(f"{cls}: affinity must be one of {AFFINITIES}, got {affinity!r}")
        if linkage not in LINKAGES:
            raise ValueError(f"{cls}: linkage must be one of {LINKAGES}, got {linkage!r}")
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"{cls}: levels must be an int >= 1, got {levels!r}")
        names = (on,) if isinstance(on, str) else on
        if not isinstance(names, Sequence) or not all(
            isinstance(name, str) and name for name in names
        ):
            raise TypeError(
                f"{cls}: on must be a node attribute name or a sequence of names, got {on!r}"
            )
        self.on = tuple(names)
        if not self.on:
            raise ValueError(f"{cls}: on must name at least one node attribute")
        self.affinity, self.linkage, self.levels = affinity, linkage, levels

    def _features(self, data: Data, n: int) -> np.ndarray | None:
        if self.affinity == "uniform":
            return None
        parts = []
        for name in self.on:
            value = getattr(data, name, None)
            if not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"{type(self).__name__}: affinity={self.affinity!r} reads node attribute "
                    f"{name!r}, which the graph does not have; set on= or affinity='uniform'"
                )
            value = value.detach().cpu().double()
            if value.dim() == 0 or value.size(0) != n:
                raise ValueError(
                    f"{type(self).__name__}: node attribute {name!r} must have {n} rows, "
                    f"got shape {tuple(value.shape)}"
                )
            if not torch.isfinite(value).all():
                raise ValueError(
                    f"{type(self).__name__}: node attribute {name!r} contains NaN or inf; "
                    "the affinities would be undefined"
                )
            parts.append(value.reshape(n, -1).numpy() if n else np.zeros((0, 1)))
        return np.concatenate(parts, axis=1)

    def forward(self, data: Data) -> Data:
        cls = type(self).__name__
        n = _num_nodes(data, cls)
        ei = _edges(data, cls, n)
        tree = hac_tree(ei, n, self._features(data, n), self.affinity, self.linkage)
        if tree.depth > self.levels:
            raise ValueError(
                f"{cls}: the HAC tree of this {n}-node graph has {tree.depth} levels, more "
                f"than levels={self.levels}; raise levels"
            )
        rank = np.empty(n, dtype=np.int64)
        rank[tree.dfs_order()] = np.arange(n)
        data.hac_rank = _long(rank)
        data.hac_path = _long(tree.path(self.levels))
        data.hac_child = _long(tree.child_rank(self.levels))
        data.hac_size = _long(tree.cluster_size(self.levels))
        data.hac_num_clusters = _long(np.array([tree.cluster_offsets()[-1]]))
        data.hac_depth = _long(np.array([tree.depth]))
        return data

    def __repr__(self) -> str:
        on = self.on[0] if len(self.on) == 1 else list(self.on)
        return (
            f"{type(self).__name__}(on={on!r}, affinity={self.affinity!r}, "
            f"linkage={self.linkage!r}, levels={self.levels})"
        )
