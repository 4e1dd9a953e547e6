"""PATTERN / CLUSTER generators: determinism, sizes, block statistics, labels."""

import numpy as np
import pytest
import torch

from graphseq.datasets.sbm import cluster, pattern, sbm_splits


def test_pattern_statistics():
    graphs = pattern(60, seed=0)
    nodes = np.array([g.num_nodes for g in graphs])
    assert nodes.min() >= 5 * 5 + 5 and nodes.max() <= 5 * 34 + 34
    assert 100 < nodes.mean() < 140  # official: 118.9
    pos = torch.cat([g.y for g in graphs]).float().mean()
    assert 0.1 < pos < 0.3  # official: about 20% pattern nodes
    for g in graphs[:10]:
        assert g.x.shape == (g.num_nodes, 3) and torch.equal(g.x.sum(1), torch.ones(g.num_nodes))
        ei = g.edge_index
        assert (ei[0] != ei[1]).all()
        y = g.y
        inside = (y[ei[0]] == 1) & (y[ei[1]] == 1)
        # pattern-internal and pattern-base edges have probability 0.5, base-internal ~0.38
        k = int(y.sum())
        dens_pat = inside.sum().item() / max(k * (k - 1), 1)
        assert 0.3 < dens_pat < 0.7


def test_cluster_statistics():
    graphs = cluster(40, seed=0)
    for g in graphs:
        assert g.x.shape == (g.num_nodes, 7)
        marked = g.x[:, 1:].sum(0)
        assert torch.equal(marked, torch.ones(6))  # one marked node per cluster
        feat = g.x.argmax(1)
        assert torch.equal(g.y[feat > 0], feat[feat > 0] - 1)  # the mark is the cluster id + 1
    ys = torch.cat([g.y for g in graphs])
    assert set(ys.tolist()) == set(range(6))
    g = graphs[0]
    same = g.y[g.edge_index[0]] == g.y[g.edge_index[1]]
    n_same = sum(int((g.y == c).sum()) ** 2 - int((g.y == c).sum()) for c in range(6))
    n_all = g.num_nodes * (g.num_nodes - 1)
    assert 0.4 < same.sum().item() / n_same < 0.7  # p = 0.55
    assert 0.15 < (~same).sum().item() / (n_all - n_same) < 0.35  # q = 0.25


def test_splits_are_seeded_and_share_patterns():
    a = sbm_splits("pattern", (4, 2, 2), seed=0)
    b = sbm_splits("pattern", (4, 2, 2), seed=0)
    assert [len(v) for v in a.values()] == [4, 2, 2]
    for k in a:
        for x, y in zip(a[k], b[k], strict=True):
            assert torch.equal(x.edge_index, y.edge_index)
    bigger = sbm_splits("pattern", (6, 2, 2), seed=0)
    assert torch.equal(bigger["test"][0].edge_index, a["test"][0].edge_index)

    def pattern_of(g):  # the pattern's signal multiset and its number of internal edges
        inside = g.y.bool()
        internal = (inside[g.edge_index[0]] & inside[g.edge_index[1]]).sum()
        return sorted(g.x[inside].argmax(1).tolist()), int(internal)

    # graph i of every split carries pattern i (mod 100), drawn once from the dataset's seed
    for i in range(2):
        assert pattern_of(a["train"][i]) == pattern_of(a["valid"][i]) == pattern_of(a["test"][i])
    assert pattern_of(a["train"][0]) != pattern_of(a["train"][1])
    other = sbm_splits("pattern", (4, 2, 2), seed=1)
    assert pattern_of(other["train"][0]) != pattern_of(a["train"][0])
    assert len(sbm_splits("cluster", (3, 1, 1))["train"]) == 3


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: pattern(-1), "num_graphs"),
        (lambda: cluster(1.5), "num_graphs"),
        (lambda: pattern(2, num_patterns=0), "num_patterns"),
        (lambda: sbm_splits("zinc"), "name"),
        (lambda: sbm_splits("pattern", (1, 2)), "sizes"),
        (lambda: sbm_splits("pattern", (2.9, 1, 1)), r"sbm_splits: sizes \(train size\) must"),
        (lambda: sbm_splits("pattern", (2, -1, 1)), r"sbm_splits: sizes \(valid size\) must"),
        (lambda: pattern(2, num_patterns=2.5), "num_patterns must be an int"),
        (lambda: pattern(2, seed=-1), "seed must be >= 0"),
        (lambda: pattern(2, pattern_seed=-1), "pattern_seed must be >= 0"),
        (lambda: cluster(2, seed=-1), "seed must be >= 0"),
        (lambda: sbm_splits("cluster", (1, 1, 1), seed=-1), "sbm_splits: seed must be >= 0"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_seed_must_be_an_int():
    with pytest.raises(TypeError, match="seed must be an int"):
        cluster(2, seed="0")


def test_sbm_splits_takes_numpy_sizes():
    """Sizes from numpy were refused although sbm_splits converts them with int()."""
    a = sbm_splits("cluster", np.array([2, 1, 1]))
    b = sbm_splits("cluster", (2, 1, 1))
    assert all(torch.equal(x.y, y.y) for k in a for x, y in zip(a[k], b[k], strict=True))
    assert len(pattern(np.int64(2))) == 2


@pytest.mark.parametrize("name", ["cluster", "pattern"])
def test_splits_of_neighbouring_seeds_share_no_graphs(name):
    """Split j of seed s draws from seed 3 s + j + 1: seeds 0 and 1 use seeds 1-3 and 4-6, so
    no graph of one dataset seed reappears in another's splits."""
    a = sbm_splits(name, (2, 2, 2), seed=0)
    b = sbm_splits(name, (2, 2, 2), seed=1)

    def key(g):
        return g.num_nodes, tuple(g.edge_index.flatten().tolist())

    assert not {key(g) for s in a.values() for g in s} & {key(g) for s in b.values() for g in s}
    gen = cluster if name == "cluster" else lambda n, seed: pattern(n, seed=seed, pattern_seed=1)
    assert key(b["train"][0]) == key(gen(1, seed=4)[0])
