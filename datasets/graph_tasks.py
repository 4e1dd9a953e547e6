"""The six algorithmic graph tasks of the GSM paper (Behrouz et al., ICML 2025, Tables 1–2) as
seeded generators.

The paper names the tasks but not the graph distribution, sizes or query format (see
``research/gsm.md`` §3.1, §5.2). graphseq's choices, fixed here so results are reproducible:

* **graphs**: a GraphQA-like mix (Fatemi et al., 2024): each graph is Erdős–Rényi
  (``p ~ U(0.1, 0.4)``), Barabási–Albert (``m ~ {1, 2, 3}``) or a 2–3-block SBM (``p_in ~
  U(0.3, 0.7)``, ``p_out ~ U(0, 0.05)``), with equal probability, on ``n ~ U{min_nodes..
  max_nodes}`` nodes (default 10..24); undirected, no self-loops.
* **node_degree** (local, node level): every node's degree, a class in ``0..max_degree``
  (larger degrees clipped), features ``x = 1``; metric accuracy over nodes.
* **cycle_check** (local, graph level): does the graph contain a cycle? Half the graphs are
  random recursive trees (each new node joins a uniformly chosen earlier one; not uniform
  over labelled trees), half such trees plus 1–3 extra edges (so the classes are balanced
  and the graph size does not give the answer away); 2 classes, accuracy.
* **triangle_counting** (local, graph level): number of triangles, regression, RMSE;
  ``family="er"`` (ER graphs, ``p ~ U(0.1, 0.3)``) or ``"regular"`` (random 3-, 4- or
  5-regular graphs).
* **connectivity** (global, graph level): are the two query nodes (``x[:, 1]`` and
  ``x[:, 2]`` flag them) connected? Graphs are 2–3-block SBMs with sparse blocks and no
  edges between blocks about half the time; the query pair is connected in half the graphs
  (when the graph allows it); 2 classes, accuracy.
* **colour_counting** (global, graph level): every node has one of ``num_colours`` colours
  (one-hot ``x``); the target is the count of each colour, a regression of ``num_colours``
  outputs; the metric is exact-match accuracy after rounding (:func:`exact_match`), the
  paper's "accuracy".
* **shortest_path** (global, graph level): hop distance between the two flagged query nodes,
  drawn from the same connected component (so it is finite), regression, RMSE.

Every generator returns a list of PyG ``Data`` with ``x`` float, ``edge_index`` (both
directions) and ``y``; ``task_info(task)`` gives the level, task type, output width and metric.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from ._checks import check_seed

__all__ = ["GRAPH_TASKS", "exact_match", "graph_task", "task_info"]

GRAPH_TASKS = (
    "node_degree",
    "cycle_check",
    "triangle_counting",
    "connectivity",
    "colour_counting",
    "shortest_path",
)


def exact_match(y_true: Tensor, y_pred: Tensor) -> float:
    """Fraction of rows whose rounded predictions equal the targets in every column; NaN if a
    prediction is NaN (a diverged model is unscored, as in :mod:`graphseq.train.metrics`)."""
    y_true = y_true.reshape(len(y_true), -1)
    y_pred = y_pred.reshape(len(y_true), -1)
    if torch.isnan(y_pred).any():
        return math.nan
    return float((y_pred.round() == y_true.round()).all(1).double().mean())


def task_info(task: str, max_degree: int = 10, num_colours: int = 4) -> dict:
    """``{"level", "task_type", "out_dim", "metric", "node_dim"}`` of ``task``."""
    for name, value in (("max_degree", max_degree), ("num_colours", num_colours)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"task_info: {name} must be an int >= 1, got {value!r}")
    info = {
        "node_degree": ("node", "multiclass classification", max_degree + 1, "acc", 1),
        "cycle_check": ("graph", "multiclass classification", 2, "acc", 1),
        "triangle_counting": ("graph", "regression", 1, "rmse", 1),
        "connectivity": ("graph", "multiclass classification", 2, "acc", 3),
        "colour_counting": ("graph", "regression", num_colours, "acc", num_colours),
        "shortest_path": ("graph", "regression", 1, "rmse", 3),
    }
    if task not in info:
        raise ValueError(f"task_info: task must be one of {GRAPH_TASKS}, got {task!r}")
    keys = ("level", "task_type", "out_dim", "metric", "node_dim")
    return dict(zip(keys, info[task], strict=True))


#: Smallest ``min_nodes`` every task's generator supports.
MIN_NODES = 7


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _random_graph(rng: np.random.Generator, n: int) -> nx.Graph:
    kind = rng.integers(0, 3)
    if kind == 0:
        return nx.gnp_random_graph(n, rng.uniform(0.1, 0.4), seed=_seed(rng))
    if kind == 1:
        return nx.barabasi_albert_graph(n, int(rng.integers(1, 4)), seed=_seed(rng))
    return _sbm(rng, n, rng.uniform(0.3, 0.7), rng.uniform(0.0, 0.05))


def _sbm(rng: np.random.Generator, n: int, p_in: float, p_out: float) -> nx.Graph:
    k = int(rng.integers(2, 4))
    cuts = np.sort(rng.choice(np.arange(1, n), size=k - 1, replace=False))
    sizes = np.diff(np.r_[0, cuts, n]).tolist()
    probs = [[p_in if i == j else p_out for j in range(k)] for i in range(k)]
    return nx.Graph(nx.stochastic_block_model(sizes, probs, seed=_seed(rng)))


def _random_tree(rng: np.random.Generator, n: int) -> nx.Graph:
    g = nx.empty_graph(n)
    if n > 1:
        parents = [int(rng.integers(0, i)) for i in range(1, n)]  # random recursive tree
        g.add_edges_from((i, p) for i, p in zip(range(1, n), parents, strict=True))
    perm = rng.permutation(n)
    return nx.relabel_nodes(g, {i: int(perm[i]) for i in range(n)})


def _to_data(
    g: nx.Graph, x: np.ndarray, y: Tensor, rng: np.random.Generator, node_level: bool = False
) -> Data:
    """``g`` as a ``Data`` with its nodes stored in a random order: node ``i`` becomes
    ``perm[i]`` (its features and a node-level ``y`` move with it). networkx numbers an SBM's
    nodes block by block and a Barabási–Albert graph's hubs first, so the storage order would
    otherwise leak the answer to an order-reading model (the "w/o PE" rows). ``node_level``:
    ``y`` has one row per node."""
    n = x.shape[0]
    perm = rng.permutation(n)
    edges = np.array(list(g.edges()), dtype=np.int64).reshape(-1, 2)
    edges = perm[edges[edges[:, 0] != edges[:, 1]]]
    ei = np.concatenate([edges, edges[:, ::-1]]).T
    x_new = np.empty_like(x)
    x_new[perm] = x
    if node_level:
        y_new = torch.empty_like(y)
        y_new[torch.from_numpy(perm)] = y
        y = y_new
    return Data(
        x=torch.from_numpy(x_new.astype(np.float32)),
        edge_index=torch.from_numpy(np.ascontiguousarray(ei)),
        y=y,
        num_nodes=n,
    )


def _query_x(n: int, s: int, t: int) -> np.ndarray:
    x = np.zeros((n, 3))
    x[:, 0] = 1.0
    x[s, 1] = 1.0
    x[t, 2] = 1.0
    return x


def graph_task(
    task: str,
    num_graphs: int,
    seed: int = 0,
    min_nodes: int = 10,
    max_nodes: int = 24,
    family: str = "er",
    max_degree: int = 10,
    num_colours: int = 4,
) -> list[Data]:
    """``num_graphs`` examples of ``task`` from ``numpy.random.default_rng(seed)``.

    Args:
        task: one of :data:`GRAPH_TASKS`.
        num_graphs: number of graphs.
        seed: the generator's seed (the same arguments give the same graphs).
        min_nodes, max_nodes: node count range (inclusive), ``7 <= min_nodes <= max_nodes``
            (smaller graphs cannot host every generator: Barabási–Albert with up to 3 edges per
            node, 5-regular graphs, 3-block SBMs, a tree plus a non-edge for cycle check).
        family: triangle counting's family, ``"er"`` or ``"regular"``.
        max_degree: node degree's largest class (larger degrees are clipped to it).
        num_colours: colour counting's number of colours.
    """
    if task not in GRAPH_TASKS:
        raise ValueError(f"graph_task: task must be one of {GRAPH_TASKS}, got {task!r}")
    if isinstance(num_graphs, bool) or not isinstance(num_graphs, int) or num_graphs < 0:
        raise ValueError(f"graph_task: num_graphs must be an int >= 0, got {num_graphs!r}")
    ints = (("min_nodes", min_nodes, MIN_NODES), ("max_nodes", max_nodes, 1),
            ("max_degree", max_degree, 1), ("num_colours", num_colours, 1))  # fmt: skip
    for name, value, low in ints:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"graph_task: {name} must be an int >= {low}, got {value!r}")
    if not MIN_NODES <= min_nodes <= max_nodes:
        raise ValueError(
            f"graph_task: need {MIN_NODES} <= min_nodes <= max_nodes, got {min_nodes}, {max_nodes}"
        )
    if family not in ("er", "regular"):
        raise ValueError(f"graph_task: family must be 'er' or 'regular', got {family!r}")
    check_seed("graph_task", seed)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num_graphs):
        n = int(rng.integers(min_nodes, max_nodes + 1))
        if task == "node_degree":
            g = _random_graph(rng, n)
            deg = np.array([g.degree(v) for v in range(n)])
            y = torch.from_numpy(np.minimum(deg, max_degree).astype(np.int64))
            out.append(_to_data(g, np.ones((n, 1)), y, rng, node_level=True))
        elif task == "cycle_check":
            g = _random_tree(rng, n)
            label = i % 2
            if label:
                non_edges = [
                    (u, v) for u in range(n) for v in range(u + 1, n) if not g.has_edge(u, v)
                ]
                extra = int(rng.integers(1, 4))
                pick = rng.choice(len(non_edges), size=min(extra, len(non_edges)), replace=False)
                g.add_edges_from(non_edges[j] for j in pick)
            out.append(_to_data(g, np.ones((n, 1)), torch.tensor([label]), rng))
        elif task == "triangle_counting":
            if family == "er":
                g = nx.gnp_random_graph(n, rng.uniform(0.1, 0.3), seed=_seed(rng))
            else:
                d = int(rng.integers(3, 6))
                if (n * d) % 2:  # n * d must be even: an odd n takes the even degree 4
                    d = 4
                g = nx.random_regular_graph(d, n, seed=_seed(rng))
            tri = sum(nx.triangles(g).values()) // 3
            out.append(_to_data(g, np.ones((n, 1)), torch.tensor([[float(tri)]]), rng))
        elif task == "connectivity":
            g = _sbm(rng, n, rng.uniform(0.2, 0.5), 0.0 if rng.random() < 0.5 else 0.02)
            comp = np.empty(n, dtype=np.int64)
            for c, nodes in enumerate(nx.connected_components(g)):
                comp[list(nodes)] = c
            want = i % 2  # balanced when the graph allows both answers
            s = int(rng.integers(0, n))
            same = np.flatnonzero((comp == comp[s]) & (np.arange(n) != s))
            other = np.flatnonzero(comp != comp[s])
            pool = same if (want and same.size) or not other.size else other
            t = int(rng.choice(pool))
            label = int(comp[s] == comp[t])
            out.append(_to_data(g, _query_x(n, s, t), torch.tensor([label]), rng))
        elif task == "colour_counting":
            g = nx.gnp_random_graph(n, rng.uniform(0.1, 0.4), seed=_seed(rng))
            colour = rng.integers(0, num_colours, n)
            x = np.eye(num_colours)[colour]
            counts = np.bincount(colour, minlength=num_colours).astype(np.float32)
            out.append(_to_data(g, x, torch.from_numpy(counts).view(1, -1), rng))
        else:  # shortest_path
            g = _random_graph(rng, n)
            s = int(rng.integers(0, n))
            lengths = nx.single_source_shortest_path_length(g, s)
            reach = [v for v in lengths if v != s]
            if not reach:  # an isolated source: link it to a random node
                t = int((s + 1 + rng.integers(0, n - 1)) % n)
                g.add_edge(s, t)
                lengths = nx.single_source_shortest_path_length(g, s)
                reach = [v for v in lengths if v != s]
            t = int(rng.choice(reach))
            out.append(_to_data(g, _query_x(n, s, t), torch.tensor([[float(lengths[t])]]), rng))
    return out
