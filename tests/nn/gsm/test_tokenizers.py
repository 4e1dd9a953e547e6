"""Tokenizer transforms: results against brute force (networkx), determinism, PyG batching,
degenerate graphs and bad input."""

import networkx as nx
import numpy as np
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from graphseq.nn.gsm import HACTokenizer, KHopTokenizer, NodeTokenizer, RandomWalkTokenizer
from graphseq.nn.gsm.hac import hac_tree

ALL = [
    NodeTokenizer("degree"),
    NodeTokenizer("random", seed=3),
    NodeTokenizer("bfs"),
    KHopTokenizer(2),
    RandomWalkTokenizer(3, 4, seed=1),
    HACTokenizer(levels=8),
]


def _graph(n=14, m=20, seed=0, isolated=True):
    rng = np.random.default_rng(seed)
    ei = torch.from_numpy(rng.integers(0, n - (2 if isolated else 0), size=(2, m)))
    return Data(x=torch.from_numpy(rng.normal(size=(n, 3))).float(), edge_index=ei, num_nodes=n)


def _nx(data):
    g = nx.Graph()
    g.add_nodes_from(range(data.num_nodes))
    g.add_edges_from((int(u), int(v)) for u, v in data.edge_index.t() if u != v)
    return g


def test_degree_order():
    data = NodeTokenizer("degree")(_graph())
    g = _nx(data)
    seq = torch.argsort(data.degree_rank).tolist()
    keys = [(g.degree(v), v) for v in seq]
    assert keys == sorted(keys)  # ascending degree, ties by node id


def test_bfs_order_is_a_bfs_per_component():
    data = NodeTokenizer("bfs")(_graph(isolated=True))
    g = _nx(data)
    seq = torch.argsort(data.bfs_rank).tolist()
    comps = sorted((sorted(c) for c in nx.connected_components(g)), key=lambda c: c[0])
    pos = 0
    for comp in comps:
        part = seq[pos : pos + len(comp)]
        pos += len(comp)
        assert sorted(part) == comp  # components one after another, by smallest id
        start = max(comp, key=lambda v: (g.degree(v), -v))
        expected = [start] + [v for _, v in nx.bfs_edges(g, start, sort_neighbors=sorted)]
        assert part == expected


def test_random_order_is_seeded():
    a, b = NodeTokenizer("random", seed=5)(_graph()), NodeTokenizer("random", seed=5)(_graph())
    c = NodeTokenizer("random", seed=6)(_graph())
    assert torch.equal(a.random_rank, b.random_rank) and not torch.equal(
        a.random_rank, c.random_rank
    )
    assert sorted(a.random_rank.tolist()) == list(range(14))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_khop_pairs_match_shortest_paths(k):
    data = KHopTokenizer(k)(_graph())
    g = _nx(data)
    expected = sorted(
        (u, v, d)
        for u, dist in nx.all_pairs_shortest_path_length(g, cutoff=k)
        for v, d in dist.items()
        if v != u
    )
    got = sorted(zip(*data.khop_index.tolist(), data.khop_dist.tolist(), strict=True))
    assert got == expected


def test_random_walks_follow_edges():
    W, L = 3, 5
    data = RandomWalkTokenizer(W, L, seed=0)(_graph(isolated=True))
    g = _nx(data)
    walks = data.rw_index.view(W, L + 1, -1)
    assert torch.equal(walks[:, 0], torch.arange(14).expand(W, 14))
    for w in range(W):
        for t in range(L):
            for v in range(14):
                a, b = int(walks[w, t, v]), int(walks[w, t + 1, v])
                assert g.has_edge(a, b) or (a == b and g.degree(a) == 0)
    again = RandomWalkTokenizer(W, L, seed=0)(_graph(isolated=True))
    assert torch.equal(again.rw_index, data.rw_index) and int(data.rw_walk_length) == L


def test_hac_tokenizer_stores_the_tree():
    data = _graph()
    out = HACTokenizer(levels=8)(data)
    tree = hac_tree(data.edge_index.numpy(), 14, data.x.double().numpy())
    assert torch.equal(out.hac_path, torch.from_numpy(tree.path(8)))
    assert torch.equal(out.hac_child, torch.from_numpy(tree.child_rank(8)))
    assert torch.equal(out.hac_size, torch.from_numpy(tree.cluster_size(8)))
    assert torch.equal(torch.argsort(out.hac_rank), torch.from_numpy(tree.dfs_order()))
    assert int(out.hac_depth) == tree.depth and int(out.hac_num_clusters) == out.hac_path.max() + 1
    # several attributes as affinity features, and the structure-only affinity
    data.pe = torch.randn(14, 2)
    assert HACTokenizer(on=["x", "pe"])(data).hac_path.shape == (14, 16)
    assert (
        HACTokenizer(affinity="uniform")(
            Data(edge_index=data.edge_index, num_nodes=14)
        ).hac_rank.numel()
        == 14
    )


def test_batching_shifts_and_concatenates():
    graphs = [_graph(seed=s) for s in range(3)]
    for t in ALL:
        graphs = [t(g) for g in graphs]
    batch = next(iter(DataLoader(graphs, batch_size=3)))
    assert batch.hac_path.shape == (42, 8) and batch.hac_num_clusters.shape == (3,)
    assert batch.rw_index.shape == (15, 42)
    last = graphs[2].khop_dist.numel()
    assert torch.equal(batch.khop_index[:, -last:], graphs[2].khop_index + 28)
    assert torch.equal(batch.rw_index[:, 14:28], graphs[1].rw_index + 14)
    assert torch.equal(batch.degree_rank[14:28], graphs[1].degree_rank)


@pytest.mark.parametrize("n, edges", [(0, []), (1, []), (1, [(0, 0)]), (3, []), (4, [(0, 1)])])
def test_degenerate_graphs_tokenize(n, edges):
    ei = torch.tensor(edges, dtype=torch.long).t().reshape(2, -1)
    data = Data(x=torch.ones(n, 2), edge_index=ei, num_nodes=n)
    for t in ALL:
        data = t(data)
    assert data.degree_rank.shape == data.bfs_rank.shape == data.hac_rank.shape == (n,)
    assert sorted(data.bfs_rank.tolist()) == list(range(n))
    assert data.hac_path.shape == (n, 8) and data.rw_index.shape == (3 * 5, n)
    assert data.khop_index.shape == (2, 2 * int(n == 4))
    assert int(data.hac_depth) == {0: 0, 1: 1, 3: 1, 4: 2}[n]
    assert int(data.hac_num_clusters) == {0: 0, 1: 1, 3: 1, 4: 4}[n]


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: NodeTokenizer("dfs"), ValueError, "order"),
        (lambda: KHopTokenizer(0), ValueError, "k must"),
        (lambda: RandomWalkTokenizer(0), ValueError, "num_walks"),
        (lambda: HACTokenizer(affinity="dot"), ValueError, "affinity"),
        (lambda: HACTokenizer(levels=0), ValueError, "levels"),
        (lambda: HACTokenizer(on=[]), ValueError, "on must"),
    ],
)
def test_bad_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_sparse_adjacency_without_edge_index_is_refused():
    """T.ToSparseTensor moves the edges to adj_t: a tokenizer must not read the graph as
    edgeless."""
    import torch_geometric.transforms as T

    data = T.ToSparseTensor()(_graph())
    for t in ALL:
        with pytest.raises(ValueError, match="adj_t"):
            t(data.clone())


def test_bad_data():
    bad = Data(x=torch.ones(3, 1), edge_index=torch.tensor([[0], [7]]), num_nodes=3)
    for t in ALL:
        with pytest.raises(ValueError, match="outside"):
            t(bad)
    with pytest.raises(ValueError, match="'pos'"):
        HACTokenizer(on="pos")(_graph())
    with pytest.raises(ValueError, match="levels"):
        HACTokenizer(levels=1)(_graph(n=40, m=80, isolated=False))
    with pytest.raises(ValueError, match="node attribute 'x' contains NaN"):
        HACTokenizer()(
            Data(x=torch.tensor([[float("nan")], [1.0]]), edge_index=torch.tensor([[0], [1]]))
        )
    with pytest.raises(ValueError, match="node attribute 'pos' contains NaN"):
        HACTokenizer(on=("x", "pos"))(
            Data(x=torch.ones(2, 1), pos=torch.tensor([[0.0], [float("inf")]]),
                 edge_index=torch.tensor([[0], [1]]))
        )  # fmt: skip


def test_reprs():
    assert repr(NodeTokenizer("bfs")) == "NodeTokenizer(order='bfs', seed=0)"
    assert repr(KHopTokenizer(3)) == "KHopTokenizer(k=3)"
    assert (
        repr(RandomWalkTokenizer(2, 3, 4))
        == "RandomWalkTokenizer(num_walks=2, walk_length=3, seed=4)"
    )
    assert (
        repr(HACTokenizer()) == "HACTokenizer(on='x', affinity='cosine', linkage='max', levels=16)"
    )


@pytest.mark.parametrize("on", [5, None, ["x", 3], ("x", "")])
def test_hac_tokenizer_on_must_be_names(on):
    with pytest.raises(TypeError, match="HACTokenizer: on must be a node attribute name"):
        HACTokenizer(on=on)


def test_random_walk_steps_are_uniform_over_neighbours():
    """Every neighbour is a possible (and equally likely) next step: 400 first steps from the
    centre of a star with four leaves reach each leaf about 100 times."""
    star = Data(edge_index=torch.tensor([[0, 0, 0, 0], [1, 2, 3, 4]]), num_nodes=5)
    out = RandomWalkTokenizer(num_walks=400, walk_length=1, seed=0)(star)
    counts = torch.bincount(out.rw_index.view(400, 2, 5)[:, 1, 0], minlength=5)
    assert counts[0] == 0 and counts[1:].min() >= 60, counts.tolist()


def test_a_tree_exactly_levels_deep_fits():
    data = _graph()
    depth = int(HACTokenizer(levels=16)(data.clone()).hac_depth)
    assert HACTokenizer(levels=depth)(data.clone()).hac_path.shape == (14, depth)
    with pytest.raises(ValueError, match="raise levels"):
        HACTokenizer(levels=depth - 1)(data.clone())


def test_a_node_id_equal_to_num_nodes_is_refused():
    bad = Data(x=torch.ones(3, 1), edge_index=torch.tensor([[0], [3]]), num_nodes=3)
    for t in ALL:
        with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
            t(bad.clone())
