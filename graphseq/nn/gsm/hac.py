r"""Hierarchical affinity clustering (HAC) by Borůvka rounds: the tree behind GSM++'s tokens.

Affinity clustering (`Bateni et al., NeurIPS 2017 <https://arxiv.org/abs/1710.08637>`_) as used
by GSM++ (`Behrouz et al., ICML 2025 <https://arxiv.org/abs/2411.15671>`_):

1. every edge ``{u, v}`` gets an affinity ``w_uv`` from the endpoint features (cosine
   similarity, ``1 / (1 + ||x_u - x_v||)``, or 1 for ``"uniform"``);
2. level 0: every node is a cluster. In each round every cluster that has an edge to another
   cluster selects its highest-affinity neighbouring cluster; the connected components of the
   selected edges become the clusters of the next level (a cluster with no neighbouring cluster
   carries over unchanged, as a one-child parent);
3. the affinity between two clusters is recomputed from the edges between them (``"max"``:
   single linkage, the merge edges then form a maximum-affinity spanning forest; ``"mean"``:
   average linkage, of the affinities rounded to multiples of ``MEAN_STEP = 2**-30`` so that
   the average is exact and independent of the summation order);
4. rounds stop when no edge joins two different clusters; if several clusters remain (a
   disconnected graph, isolated nodes) a virtual root joins them.

Each round at least halves the number of clusters that still have a neighbour, so the tree has
at most ``ceil(log2 n) + 1`` levels and costs ``O(m log m)`` per round (one sort).

**Tie-breaking** (documented, deterministic, independent of edge order): clusters are numbered
at every level in increasing order of the smallest node id they contain; among neighbouring
clusters of equal affinity a cluster selects the one with the smallest id. Affinities of an
undirected edge are computed once from its ``(min, max)`` endpoint order, so both directions
agree bit for bit.

**Input conventions**: edges are read as undirected (``(u, v)`` and ``(v, u)`` are the same
edge; one direction suffices), duplicate edges are merged, self-loops are ignored. Isolated
nodes and separate components are joined only by the root. An empty graph has no levels.

Two implementations with one signature: :func:`hac_tree` (vectorised numpy/scipy per round, no
Python loop over nodes or edges) and :func:`hac_tree_reference` (plain Python loops, the ground
truth in tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

__all__ = ["AFFINITIES", "LINKAGES", "HACTree", "edge_affinity", "hac_tree", "hac_tree_reference"]

AFFINITIES = ("cosine", "euclidean", "uniform")
LINKAGES = ("max", "mean")


@dataclass
class HACTree:
    """The levels of an HAC tree over ``num_nodes`` nodes.

    Attributes:
        num_nodes: number of leaves ``n``.
        labels: one ``[n]`` int64 array per level, finest first: ``labels[l][v]`` is the id of
            the level-``l + 1`` cluster holding node ``v``. Ids at a level run ``0..k_l - 1`` in
            increasing order of the clusters' smallest node id. The last level has exactly one
            cluster (the root) whenever ``n >= 1``; an empty graph has no levels.
    """

    num_nodes: int
    labels: list[np.ndarray]

    @property
    def depth(self) -> int:
        """Number of levels above the leaves (the root's level included)."""
        return len(self.labels)

    @property
    def num_clusters(self) -> list[int]:
        """Clusters per level, finest first."""
        return [int(lab.max()) + 1 if lab.size else 0 for lab in self.labels]

    def cluster_offsets(self) -> np.ndarray:
        """``[depth + 1]`` offsets that make cluster ids unique over all levels (finest first)."""
        return np.concatenate([[0], np.cumsum(self.num_clusters)]).astype(np.int64)

    def _width(self, width: int | None) -> int:
        width = self.depth if width is None else int(width)
        if width < self.depth:
            raise ValueError(
                f"HACTree: the tree has {self.depth} levels but width={width}; "
                "raise the tokenizer's `levels`"
            )
        return width

    def path(self, width: int | None = None) -> np.ndarray:
        """Each node's coarse-to-fine chain of clusters, ``[n, width]`` int64.

        Column 0 is the root, the last column the node's level-1 cluster; ids are unique over
        all levels (level ``l``'s ids are shifted by the number of clusters below it). With
        ``width > depth`` the chain is left-padded with the root; ``width < depth`` raises.
        """
        width = self._width(width)
        n = self.num_nodes
        out = np.empty((n, width), dtype=np.int64)
        if n == 0:
            return out
        offsets = self.cluster_offsets()
        pad = width - self.depth
        out[:, :pad] = offsets[-1] - 1  # the root's id
        for level in range(self.depth):
            out[:, width - 1 - level] = self.labels[level] + offsets[level]
        return out

    def child_rank(self, width: int | None = None) -> np.ndarray:
        """``[n, width]`` rank of each path cluster among its parent's children (ids ascending).

        The root (and the root padding) has rank 0. Same column layout as :meth:`path`.
        """
        width = self._width(width)
        n = self.num_nodes
        out = np.zeros((n, width), dtype=np.int64)
        if n == 0:
            return out
        for level in range(self.depth - 1):  # the root (last level) keeps rank 0
            child, parent = self.labels[level], self.labels[level + 1]
            k = int(child.max()) + 1
            parent_of = np.empty(k, dtype=np.int64)
            parent_of[child] = parent  # every member of a cluster has the same parent
            order = np.lexsort((np.arange(k), parent_of))  # by parent, then by child id
            starts = np.r_[0, np.flatnonzero(np.diff(parent_of[order])) + 1]
            group_start = np.repeat(starts, np.diff(np.r_[starts, k]))
            rank = np.empty(k, dtype=np.int64)
            rank[order] = np.arange(k) - group_start
            out[:, width - 1 - level] = rank[child]
        return out

    def cluster_size(self, width: int | None = None) -> np.ndarray:
        """``[n, width]`` number of nodes in each path cluster (same layout as :meth:`path`)."""
        width = self._width(width)
        n = self.num_nodes
        out = np.full((n, width), n, dtype=np.int64)
        for level in range(self.depth):
            lab = self.labels[level]
            out[:, width - 1 - level] = np.bincount(lab)[lab]
        return out

    def dfs_order(self) -> np.ndarray:
        """Leaves in the order of a depth-first walk from the root, children by ascending id.

        Equal to sorting nodes by their coarse-to-fine cluster chain, then by node id.
        """
        n = self.num_nodes
        keys = [np.arange(n), *self.labels]  # np.lexsort: the last key is the primary one
        return np.lexsort(keys).astype(np.int64) if n else np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# input handling shared by both implementations


def _check(edge_index, num_nodes, x, affinity, linkage) -> tuple[np.ndarray, int, np.ndarray]:
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer)):
        raise TypeError(f"hac_tree: num_nodes must be an int, got {type(num_nodes).__name__}")
    if num_nodes < 0:
        raise ValueError(f"hac_tree: num_nodes must be >= 0, got {num_nodes}")
    if affinity not in AFFINITIES:
        raise ValueError(f"hac_tree: affinity must be one of {AFFINITIES}, got {affinity!r}")
    if linkage not in LINKAGES:
        raise ValueError(f"hac_tree: linkage must be one of {LINKAGES}, got {linkage!r}")
    ei = np.asarray(edge_index)
    if ei.size == 0:
        ei = ei.reshape(2, 0)
    if ei.ndim != 2 or ei.shape[0] != 2:
        raise ValueError(f"hac_tree: edge_index must have shape [2, E], got {ei.shape}")
    if not np.issubdtype(ei.dtype, np.integer):
        raise TypeError(f"hac_tree: edge_index must hold integers, got dtype {ei.dtype}")
    ei = ei.astype(np.int64)
    if ei.size and (ei.min() < 0 or ei.max() >= num_nodes):
        raise ValueError(
            f"hac_tree: edge_index holds node ids outside [0, {num_nodes}) "
            f"(min {ei.min()}, max {ei.max()})"
        )
    if affinity == "uniform":
        feats = np.zeros((num_nodes, 0))
    else:
        if x is None:
            raise ValueError(
                f"hac_tree: affinity={affinity!r} needs node features x; "
                "pass x or use affinity='uniform'"
            )
        feats = np.asarray(x, dtype=np.float64)
        if feats.ndim == 1:
            feats = feats[:, None]
        if feats.ndim != 2 or feats.shape[0] != num_nodes:
            raise ValueError(
                f"hac_tree: x must have shape [num_nodes={num_nodes}, F], got {feats.shape}"
            )
        if not np.isfinite(feats).all():
            raise ValueError("hac_tree: x contains NaN or inf; affinities would be undefined")
    return ei, int(num_nodes), feats


def edge_affinity(u: np.ndarray, v: np.ndarray, x: np.ndarray, affinity: str) -> np.ndarray:
    """Affinity of edges ``(u, v)`` (symmetric; a zero feature vector has cosine 0)."""
    if affinity == "uniform":
        return np.ones(u.shape[0])
    if affinity == "cosine":
        norm = np.linalg.norm(x, axis=1)
        safe = np.where(norm > 0, norm, 1.0)
        xn = x / safe[:, None]
        return np.einsum("ef,ef->e", xn[u], xn[v])
    return 1.0 / (1.0 + np.linalg.norm(x[u] - x[v], axis=1))


#: ``"mean"`` linkage averages affinities rounded to multiples of this step: their sums are
#: then exact in float64 (up to 2**22 edges between two clusters), so the mean does not depend
#: on the summation order and both implementations break ties alike.
MEAN_STEP = 2.0**-30


def _linkage_weights(w: np.ndarray, linkage: str) -> np.ndarray:
    return np.round(w / MEAN_STEP) * MEAN_STEP if linkage == "mean" else w


def _undirected(ei: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique undirected edges as ``(lo, hi)`` with ``lo < hi``, sorted (self-loops dropped)."""
    lo, hi = np.minimum(ei[0], ei[1]), np.maximum(ei[0], ei[1])
    keep = lo != hi
    key = np.sort(lo[keep] * n + hi[keep])
    key = key[np.r_[True, key[1:] != key[:-1]]] if key.size else key
    return key // max(n, 1), key % max(n, 1)


# --------------------------------------------------------------------------------------------
# fast path


def _aggregate(cu, cv, ws, wc, k, linkage):
    """Merge parallel cluster edges: one row per ordered pair (cu, cv), cu != cv, sorted by
    ``(cu, cv)``; ``ws`` becomes the max (``"max"``) or the sum (``"mean"``, with counts ``wc``)."""
    keep = cu != cv
    cu, cv, ws, wc = cu[keep], cv[keep], ws[keep], wc[keep]
    if cu.size == 0:
        return cu, cv, ws, wc
    key = cu * k + cv
    order = np.argsort(key)
    key_s = key[order]
    starts = np.flatnonzero(np.r_[True, key_s[1:] != key_s[:-1]])
    sel = order[starts]
    reduce = np.maximum if linkage == "max" else np.add
    return cu[sel], cv[sel], reduce.reduceat(ws[order], starts), np.add.reduceat(wc[order], starts)


def _best_neighbour(cu, cv, score):
    """Each source cluster's best edge: largest score, then smallest ``cv``.

    Expects rows sorted by ``(cu, cv)`` (what :func:`_aggregate` returns); linear time.
    """
    starts = np.flatnonzero(np.r_[True, cu[1:] != cu[:-1]])
    group = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, cu.size]))
    best = np.maximum.reduceat(score, starts)
    hit = np.flatnonzero(score == best[group])  # ascending, so the first hit has the smallest cv
    first = hit[np.r_[True, group[hit][1:] != group[hit][:-1]]]
    return cu[first], cv[first]


def hac_tree(
    edge_index,
    num_nodes: int,
    x=None,
    affinity: str = "cosine",
    linkage: str = "max",
) -> HACTree:
    """Hierarchical affinity clustering by Borůvka rounds (see the module docstring).

    Args:
        edge_index: ``[2, E]`` integer array (numpy or torch on CPU); read as undirected.
        num_nodes: number of nodes ``n``.
        x: ``[n, F]`` node features for the affinity (``None`` only with ``"uniform"``).
        affinity: ``"cosine"``, ``"euclidean"`` (``1 / (1 + distance)``) or ``"uniform"``.
        linkage: inter-cluster affinity, ``"max"`` (single linkage) or ``"mean"``.

    Returns:
        The :class:`HACTree`. Work per round is one sort of the inter-cluster edges.

    Raises:
        ValueError: malformed ``edge_index``, node ids out of range, ``x`` of the wrong shape or
            with NaN/inf, an unknown ``affinity``/``linkage``.
    """
    ei, n, feats = _check(edge_index, num_nodes, x, affinity, linkage)
    if n == 0:
        return HACTree(0, [])
    lo, hi = _undirected(ei, n)
    w = _linkage_weights(edge_affinity(lo, hi, feats, affinity), linkage)
    # both directions of every edge; (sum, count) so that "mean" linkage can be aggregated
    cu = np.concatenate([lo, hi])
    cv = np.concatenate([hi, lo])
    ws = np.concatenate([w, w])
    wc = np.ones_like(ws)
    label = np.arange(n, dtype=np.int64)
    k = n
    levels: list[np.ndarray] = []
    cu, cv, ws, wc = _aggregate(cu, cv, ws, wc, k, linkage)
    while cu.size:
        score = ws if linkage == "max" else ws / wc
        bsrc, bdst = _best_neighbour(cu, cv, score)
        graph = sp.coo_matrix((np.ones(bsrc.size), (bsrc, bdst)), shape=(k, k)).tocsr()
        num, comp = connected_components(graph, directed=True, connection="weak")
        # renumber components by their smallest member (cluster ids already follow min node id)
        _, first_member = np.unique(comp, return_index=True)  # smallest cluster id per comp
        rank = np.empty(num, dtype=np.int64)
        rank[np.argsort(first_member, kind="stable")] = np.arange(num)
        new = rank[comp]
        label = new[label]
        levels.append(label)
        k = num
        cu, cv, ws, wc = _aggregate(new[cu], new[cv], ws, wc, k, linkage)
    if k > 1 or not levels:
        levels.append(np.zeros(n, dtype=np.int64))  # virtual root over components
    return HACTree(n, levels)


# --------------------------------------------------------------------------------------------
# reference: plain loops over clusters and original edges


def hac_tree_reference(
    edge_index,
    num_nodes: int,
    x=None,
    affinity: str = "cosine",
    linkage: str = "max",
) -> HACTree:
    """Same result as :func:`hac_tree`, computed with Python loops (the ground truth in tests).

    Each round recomputes every inter-cluster affinity from the original edges, picks each
    cluster's best neighbour by scanning its edges, merges with a union-find, and renumbers.
    """
    ei, n, feats = _check(edge_index, num_nodes, x, affinity, linkage)
    if n == 0:
        return HACTree(0, [])
    lo, hi = _undirected(ei, n)
    w = _linkage_weights(edge_affinity(lo, hi, feats, affinity), linkage)
    edges = [(int(a), int(b), float(c)) for a, b, c in zip(lo, hi, w, strict=True)]
    label = list(range(n))
    levels: list[np.ndarray] = []
    while True:
        pair: dict[tuple[int, int], list[float]] = {}
        for u, v, a in edges:
            cu, cv = label[u], label[v]
            if cu != cv:
                pair.setdefault((cu, cv), []).append(a)
                pair.setdefault((cv, cu), []).append(a)
        if not pair:
            break
        best: dict[int, tuple[float, int]] = {}
        for (cu, cv), values in pair.items():
            score = max(values) if linkage == "max" else sum(values) / len(values)
            cur = best.get(cu)
            if cur is None or score > cur[0] or (score == cur[0] and cv < cur[1]):
                best[cu] = (score, cv)
        parent = list(range(max(label) + 1))

        def find(i: int, parent: list[int] = parent) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for cu, (_, cv) in best.items():
            ru, rv = find(cu), find(cv)
            if ru != rv:
                parent[max(ru, rv)] = min(ru, rv)
        roots = [find(label[v]) for v in range(n)]
        smallest: dict[int, int] = {}
        for v in range(n):
            smallest.setdefault(roots[v], v)
        ids = {r: i for i, r in enumerate(sorted(smallest, key=smallest.__getitem__))}
        label = [ids[roots[v]] for v in range(n)]
        levels.append(np.array(label, dtype=np.int64))
    if len(set(label)) > 1 or not levels:
        levels.append(np.zeros(n, dtype=np.int64))
    return HACTree(n, levels)
