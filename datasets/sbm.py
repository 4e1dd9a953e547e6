"""PATTERN and CLUSTER: the stochastic-block-model node-classification benchmarks of
Benchmarking-GNNs (Dwivedi et al., JMLR 2023), regenerated offline from a seed.

Parameters are those of the final "generate and save" cells of
``graphdeeplearning/benchmarking-gnns: data/SBMs/generate_SBM_{PATTERN,CLUSTER}.ipynb``:

* **PATTERN**: a base SBM of 5 communities, sizes uniform in ``[5, 34]``, intra-community edge
  probability ``p = 0.5``, inter ``q = 0.35``; node signals uniform over ``{0, 1, 2}``. One of
  100 patterns (size in ``[5, 34]``, internal edges with probability 0.5, its own signals) is
  attached: every (pattern node, base node) pair is joined with probability ``q_pattern = 0.5``.
  Nodes are shuffled; label 1 marks pattern nodes (about 20% of nodes, hence the class-weighted
  loss and class-balanced accuracy). Graph ``i`` uses pattern ``i mod 100``.
* **CLUSTER**: 6 communities, sizes in ``[5, 34]``, ``p = 0.55``, ``q = 0.25``; in each community
  one random node carries the community's label ``r + 1`` as its feature, all others 0; the
  target of every node is its community (6 classes).

The official sets are 10,000 / 2,000 / 2,000 (PATTERN) and 10,000 / 1,000 / 1,000 (CLUSTER)
graphs. Regenerated graphs are statistically, not bit-for-bit, identical to the published
pickles, so compare models on the same regenerated split. Features are one-hot (3 values for
PATTERN, 7 for CLUSTER); graphs are undirected without self-loops.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_geometric.data import Data

from ._checks import check_seed

__all__ = ["cluster", "pattern", "sbm_splits"]


def _sbm(rng: np.random.Generator, sizes: np.ndarray, p: float, q: float) -> np.ndarray:
    """Symmetric 0/1 adjacency (no self-loops) of an SBM with the given community sizes."""
    block = np.repeat(np.arange(sizes.size), sizes)
    prob = np.where(block[:, None] == block[None, :], p, q)
    upper = np.triu(rng.random(prob.shape) < prob, 1)
    return upper | upper.T


def _data(adj: np.ndarray, feat: np.ndarray, num_values: int, y: np.ndarray) -> Data:
    row, col = np.nonzero(adj)
    x = np.zeros((feat.size, num_values), dtype=np.float32)
    x[np.arange(feat.size), feat] = 1.0
    return Data(
        x=torch.from_numpy(x),
        edge_index=torch.from_numpy(np.stack([row, col]).astype(np.int64)),
        y=torch.from_numpy(y.astype(np.int64)),
    )


def _check(num_graphs: int, fn: str, name: str = "num_graphs") -> None:
    bad = not isinstance(num_graphs, (int, np.integer)) or isinstance(num_graphs, bool)
    if bad or num_graphs < 0:
        raise ValueError(f"{fn}: {name} must be an int >= 0, got {num_graphs!r}")


def pattern(
    num_graphs: int, seed: int = 0, num_patterns: int = 100, pattern_seed: int | None = None
) -> list[Data]:
    """``num_graphs`` PATTERN graphs (node labels 0/1).

    The ``num_patterns`` patterns come from ``default_rng([pattern_seed, 0])`` (default
    ``pattern_seed = seed``), the graphs from ``default_rng([seed, 1])``;
    splits of one dataset share them, as in the original (100 patterns, each with 100 train,
    20 valid and 20 test graphs).
    """
    _check(num_graphs, "pattern")
    if isinstance(num_patterns, bool) or not isinstance(num_patterns, int) or num_patterns < 1:
        raise ValueError(f"pattern: num_patterns must be an int >= 1, got {num_patterns!r}")
    check_seed("pattern", seed)
    if pattern_seed is not None:
        check_seed("pattern", pattern_seed, "pattern_seed")
    vocab, p, q, q_pattern = 3, 0.5, 0.35, 0.5
    prng = np.random.default_rng([seed if pattern_seed is None else pattern_seed, 0])
    patterns = []
    for _ in range(num_patterns):
        size = prng.integers(5, 35)
        patterns.append((_sbm(prng, np.array([size]), p, p), prng.integers(0, vocab, size)))
    rng = np.random.default_rng([seed, 1])
    graphs = []
    for i in range(num_graphs):
        w_pat, u_pat = patterns[i % num_patterns]
        sizes = rng.integers(5, 35, size=5)
        w_base = _sbm(rng, sizes, p, q)
        u_base = rng.integers(0, vocab, sizes.sum())
        attach = rng.random((w_pat.shape[0], w_base.shape[0])) < q_pattern
        adj = np.block([[w_base, attach.T], [attach, w_pat]])
        feat = np.concatenate([u_base, u_pat])
        label = np.r_[np.zeros(w_base.shape[0]), np.ones(w_pat.shape[0])]
        perm = rng.permutation(adj.shape[0])
        graphs.append(_data(adj[perm][:, perm], feat[perm], vocab, label[perm]))
    return graphs


def cluster(num_graphs: int, seed: int = 0) -> list[Data]:
    """``num_graphs`` CLUSTER graphs (node labels 0..5) from ``numpy.random.default_rng(seed)``."""
    _check(num_graphs, "cluster")
    check_seed("cluster", seed)
    rng = np.random.default_rng(seed)
    k, p, q = 6, 0.55, 0.25
    graphs = []
    for _ in range(num_graphs):
        sizes = rng.integers(5, 35, size=k)
        adj = _sbm(rng, sizes, p, q)
        label = np.repeat(np.arange(k), sizes)
        feat = np.zeros(label.size, dtype=np.int64)
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        feat[starts + (rng.random(k) * sizes).astype(np.int64)] = np.arange(1, k + 1)
        perm = rng.permutation(label.size)
        graphs.append(_data(adj[perm][:, perm], feat[perm], k + 1, label[perm]))
    return graphs


def sbm_splits(
    name: str, sizes: tuple[int, int, int] = (2000, 500, 500), seed: int = 0
) -> dict[str, list[Data]]:
    """Train / valid / test lists of ``"pattern"`` or ``"cluster"`` graphs.

    Split ``j`` (0 train, 1 valid, 2 test) draws its graphs from seed ``3 * seed + j + 1``, so a
    larger split never changes another split's graphs; PATTERN's 100 patterns come from
    ``seed`` and are shared by the three splits."""
    gen = {"pattern": pattern, "cluster": cluster}.get(name)
    if gen is None:
        raise ValueError(f"sbm_splits: name must be 'pattern' or 'cluster', got {name!r}")
    if len(sizes) != 3:
        raise ValueError(f"sbm_splits: sizes must be (train, valid, test), got {sizes!r}")
    check_seed("sbm_splits", seed)
    out = {}
    for j, (split, n) in enumerate(zip(("train", "valid", "test"), sizes, strict=True)):
        _check(n, "sbm_splits", f"sizes ({split} size)")  # sbm_splits has no num_graphs
        if name == "pattern":
            out[split] = pattern(int(n), seed=3 * seed + j + 1, pattern_seed=seed)
        else:
            out[split] = cluster(int(n), seed=3 * seed + j + 1)
    return out
