"""HAC by Borůvka rounds: the vectorised path against the loop reference, tree invariants,
tie-breaking, and bad input."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphseq.nn.gsm.hac import HACTree, edge_affinity, hac_tree, hac_tree_reference


def _random_case(rng, n, m, kind):
    ei = rng.integers(0, max(n, 1), size=(2, m)) if n else np.zeros((2, 0), dtype=np.int64)
    if kind == "ties":  # few distinct feature vectors: many exactly equal affinities
        x = rng.integers(0, 2, size=(n, 3)).astype(float)
    else:
        x = rng.normal(size=(n, 4))
    return ei, x


def _same(a: HACTree, b: HACTree) -> None:
    assert a.depth == b.depth
    for la, lb in zip(a.labels, b.labels, strict=True):
        np.testing.assert_array_equal(la, lb)


@settings(max_examples=60)
@given(
    n=st.integers(0, 40),
    density=st.floats(0.0, 3.0),
    seed=st.integers(0, 10_000),
    affinity=st.sampled_from(["cosine", "euclidean", "uniform"]),
    linkage=st.sampled_from(["max", "mean"]),
    kind=st.sampled_from(["ties", "continuous"]),
)
def test_fast_matches_reference(n, density, seed, affinity, linkage, kind):
    rng = np.random.default_rng(seed)
    ei, x = _random_case(rng, n, int(density * n), kind)
    _same(hac_tree(ei, n, x, affinity, linkage), hac_tree_reference(ei, n, x, affinity, linkage))


@pytest.mark.parametrize("n", [1, 2, 7, 64, 500])
def test_depth_bound_and_root(n):
    rng = np.random.default_rng(n)
    ei, x = _random_case(rng, n, 3 * n, "continuous")
    tree = hac_tree(ei, n, x)
    assert 1 <= tree.depth <= math.ceil(math.log2(n)) + 1 if n > 1 else tree.depth == 1
    assert tree.num_clusters[-1] == 1
    # clusters only merge: every level is a coarsening of the one below
    for fine, coarse in zip(tree.labels[:-1], tree.labels[1:], strict=True):
        pairs = np.unique(np.stack([fine, coarse]), axis=1)
        assert np.unique(pairs[0]).size == pairs.shape[1]
    # ids at every level follow the smallest member node id
    for lab in tree.labels:
        _, first = np.unique(lab, return_index=True)
        assert np.all(np.diff(first) > 0)


def test_invariant_to_edge_order_direction_duplicates_and_self_loops():
    rng = np.random.default_rng(0)
    n = 30
    ei, x = _random_case(rng, n, 60, "continuous")
    base = hac_tree(ei, n, x)
    shuffled = ei[:, rng.permutation(ei.shape[1])]
    flipped = shuffled[::-1]
    noisy = np.concatenate([flipped, ei, np.stack([np.arange(n), np.arange(n)])], axis=1)
    _same(base, hac_tree(noisy, n, x))


def test_merge_edges_form_a_maximum_spanning_forest():
    import networkx as nx

    rng = np.random.default_rng(3)
    n = 25
    ei, x = _random_case(rng, n, 50, "continuous")
    tree = hac_tree(ei, n, x, "euclidean", "max")
    g = nx.Graph()
    g.add_nodes_from(range(n))
    for u, v in ei.T:
        if u != v:
            g.add_edge(int(u), int(v), weight=1 / (1 + np.linalg.norm(x[u] - x[v])))
    # single linkage: two nodes share a level-l cluster iff they are joined in the maximum
    # spanning forest by a path whose edges were all selected by round l; at the top, the
    # non-root levels group exactly the connected components
    comps = list(nx.connected_components(g))
    top = tree.labels[-2] if tree.depth > 1 and tree.num_clusters[-1] == 1 else tree.labels[-1]
    if tree.num_clusters[-2 if tree.depth > 1 else -1] == len(comps):
        for comp in comps:
            assert len({int(top[v]) for v in comp}) == 1
    forest = nx.maximum_spanning_tree(g)
    # level-1 clusters: each node with its best edge; all these edges lie in the forest
    for u in range(n):
        nbrs = [(d["weight"], -v, v) for v, d in g[u].items()]
        if nbrs:
            v = max(nbrs)[2]
            assert forest.has_edge(u, v)
            assert tree.labels[0][u] == tree.labels[0][v]


def test_tie_breaking_picks_the_smallest_neighbour():
    # a path 0-1-2-3 with uniform affinity: 0->1, 1->0, 2->1, 3->2: one cluster after round 1
    ei = np.array([[0, 1, 2], [1, 2, 3]])
    tree = hac_tree(ei, 4, affinity="uniform")
    assert tree.depth == 1 and tree.num_clusters == [1]
    # a star of equal affinities merges at once
    star = np.array([[0, 0, 0], [1, 2, 3]])
    assert hac_tree(star, 4, affinity="uniform").num_clusters == [1]


def test_degenerate_graphs():
    empty = hac_tree(np.zeros((2, 0), dtype=np.int64), 0, np.zeros((0, 2)))
    assert empty.depth == 0 and empty.path(3).shape == (0, 3) and empty.dfs_order().size == 0
    one = hac_tree(np.zeros((2, 0), dtype=np.int64), 1, np.ones((1, 2)))
    assert one.depth == 1 and one.path(2).tolist() == [[0, 0]]
    loops = hac_tree(np.array([[0, 1, 2], [0, 1, 2]]), 3, np.ones((3, 2)))
    assert loops.depth == 1 and loops.num_clusters == [1]  # no edges: nodes join the root
    iso = hac_tree(np.array([[0], [1]]), 4, np.ones((4, 2)))
    assert iso.labels[0].tolist() == [0, 0, 1, 2] and iso.num_clusters == [3, 1]
    # cosine of a zero vector is 0, not NaN
    x = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    w = edge_affinity(np.array([0, 1]), np.array([1, 2]), x, "cosine")
    assert w.tolist() == [0.0, 1.0]
    assert hac_tree(np.array([[0, 1], [1, 2]]), 3, x).labels[0].tolist() == [0, 0, 0]


def test_edge_affinity_values_by_hand():
    # the documented formulas on vectors that are not unit length: cosine similarity and
    # 1 / (1 + ||x_u - x_v||); the fast path and the reference share edge_affinity, so only
    # hand values pin it down
    x = np.array([[3.0, 4.0], [6.0, 8.0], [0.0, 2.0]])
    u, v = np.array([0, 0, 1]), np.array([1, 2, 2])
    np.testing.assert_allclose(edge_affinity(u, v, x, "cosine"), [1.0, 0.8, 0.8])
    np.testing.assert_allclose(
        edge_affinity(u, v, x, "euclidean"),
        [1 / 6, 1 / (1 + math.sqrt(13)), 1 / (1 + math.sqrt(36 + 36))],
    )
    np.testing.assert_array_equal(edge_affinity(u, v, x, "uniform"), [1.0, 1.0, 1.0])


def test_path_child_rank_size_and_dfs_order():
    rng = np.random.default_rng(5)
    n = 40
    ei, x = _random_case(rng, n, 80, "continuous")
    tree = hac_tree(ei, n, x)
    width = tree.depth + 2
    path, child, size = tree.path(width), tree.child_rank(width), tree.cluster_size(width)
    offsets = tree.cluster_offsets()
    root = offsets[-1] - 1
    assert (path[:, :3] == root).all() and (size[:, :3] == n).all() and (child[:, :3] == 0).all()
    for level in range(tree.depth):
        col = width - 1 - level
        np.testing.assert_array_equal(path[:, col], tree.labels[level] + offsets[level])
        np.testing.assert_array_equal(
            size[:, col], np.bincount(tree.labels[level])[tree.labels[level]]
        )
    # DFS leaf order: every cluster is a contiguous run, clusters by ascending id
    order = tree.dfs_order()
    assert sorted(order.tolist()) == list(range(n))
    for level in range(tree.depth):
        seq = tree.labels[level][order]
        runs = seq[np.r_[True, seq[1:] != seq[:-1]]]
        assert runs.size == np.unique(seq).size  # contiguous
    # siblings: child ranks of one parent are 0..k-1
    for level in range(tree.depth - 1):
        col = width - 1 - level
        for parent in np.unique(path[:, col - 1]):
            ranks = np.unique(child[path[:, col - 1] == parent, col])
            assert ranks.tolist() == list(range(ranks.size))
    with pytest.raises(ValueError, match="levels"):
        tree.path(tree.depth - 1)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"edge_index": np.zeros((3, 2), dtype=int)}, ValueError, r"\[2, E\]"),
        ({"edge_index": np.array([[0], [5]])}, ValueError, "outside"),
        ({"edge_index": np.array([[0.0], [1.0]])}, TypeError, "integers"),
        ({"num_nodes": -1}, ValueError, "num_nodes"),
        ({"num_nodes": 2.0}, TypeError, "num_nodes"),
        ({"x": None}, ValueError, "needs node features"),
        ({"x": np.ones((2, 2))}, ValueError, "shape"),
        ({"x": np.array([[np.nan], [1.0], [1.0]])}, ValueError, "NaN"),
        ({"affinity": "dot"}, ValueError, "affinity"),
        ({"linkage": "ward"}, ValueError, "linkage"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = {"edge_index": np.array([[0, 1], [1, 2]]), "num_nodes": 3, "x": np.ones((3, 1))}
    args.update(kwargs)
    for fn in (hac_tree, hac_tree_reference):
        with pytest.raises(exc, match=match):
            fn(**args)


def test_mean_linkage_ties_match_the_reference():
    """Integer features give exactly tied mean affinities; both implementations must still
    build the same tree (case 1459 of this stream tied two clusters at 0.43080763918...)."""
    rng = np.random.default_rng(1)
    for t in range(1500):
        n = int(rng.integers(4, 30))
        ei = rng.integers(0, n, (2, int(rng.integers(n, 3 * n))))
        x = rng.integers(0, 3, (n, 2)).astype(float)
        affinity = ["cosine", "euclidean"][t % 2]
        _same(hac_tree(ei, n, x, affinity, "mean"), hac_tree_reference(ei, n, x, affinity, "mean"))


def test_child_rank_and_dfs_order_follow_ascending_ids():
    # siblings are ranked by ascending cluster id, and the DFS visits children by ascending id
    # and the nodes of one cluster by ascending node id (the documented orders; the checks in
    # test_path_child_rank_size_and_dfs_order hold for any order)
    rng = np.random.default_rng(5)
    n = 40
    ei, x = _random_case(rng, n, 80, "continuous")
    tree = hac_tree(ei, n, x)
    width = tree.depth
    path, child = tree.path(width), tree.child_rank(width)
    for col in range(1, width):
        for parent in np.unique(path[:, col - 1]):
            kids = np.unique(path[path[:, col - 1] == parent, col])  # ascending ids
            ranks = [int(child[path[:, col] == kid, col][0]) for kid in kids]
            assert ranks == list(range(kids.size))
    expected = sorted(range(n), key=lambda v: (tuple(path[v]), v))
    assert tree.dfs_order().tolist() == expected
