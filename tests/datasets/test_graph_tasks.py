"""The six algorithmic tasks: determinism, labels recomputed with networkx, balance, bad input."""

import networkx as nx
import pytest
import torch

from graphseq.datasets.graph_tasks import (
    GRAPH_TASKS,
    MIN_NODES,
    exact_match,
    graph_task,
    task_info,
)


def _nx(d):
    g = nx.Graph()
    g.add_nodes_from(range(d.num_nodes))
    g.add_edges_from(d.edge_index.t().tolist())
    return g


@pytest.mark.parametrize("task", GRAPH_TASKS)
def test_seeded_and_well_formed(task):
    a, b, c = (
        graph_task(task, 20, seed=1),
        graph_task(task, 20, seed=1),
        graph_task(task, 20, seed=2),
    )
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.edge_index, y.edge_index) and torch.equal(x.y, y.y)
    assert any(not torch.equal(x.edge_index, y.edge_index) for x, y in zip(a, c, strict=True))
    info = task_info(task)
    for d in a:
        assert 10 <= d.num_nodes <= 25 and d.x.shape == (d.num_nodes, info["node_dim"])
        ei = d.edge_index
        assert (ei[0] != ei[1]).all()  # no self-loops
        assert {tuple(e) for e in ei.t().tolist()} == {tuple(e) for e in ei.flip(0).t().tolist()}


def test_labels_are_correct():
    for d in graph_task("node_degree", 10, seed=0):
        g = _nx(d)
        assert d.y.tolist() == [min(g.degree(v), 10) for v in range(d.num_nodes)]
    for d in graph_task("cycle_check", 10, seed=0):
        assert int(d.y) == int(not nx.is_forest(_nx(d)))
    for fam in ("er", "regular"):
        for d in graph_task("triangle_counting", 10, seed=0, family=fam):
            assert float(d.y) == sum(nx.triangles(_nx(d)).values()) / 3
    for d in graph_task("connectivity", 20, seed=0):
        s, t = int(d.x[:, 1].argmax()), int(d.x[:, 2].argmax())
        assert s != t and int(d.y) == int(nx.has_path(_nx(d), s, t))
    for d in graph_task("colour_counting", 10, seed=0):
        assert d.y.view(-1).tolist() == d.x.sum(0).tolist()
    for d in graph_task("shortest_path", 10, seed=0):
        s, t = int(d.x[:, 1].argmax()), int(d.x[:, 2].argmax())
        assert float(d.y) == nx.shortest_path_length(_nx(d), s, t) >= 1


def test_binary_tasks_are_balanced():
    assert sum(int(d.y) for d in graph_task("cycle_check", 100, seed=0)) == 50
    pos = sum(int(d.y) for d in graph_task("connectivity", 200, seed=0))
    assert 70 <= pos <= 130


def test_exact_match():
    y = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    assert exact_match(y, torch.tensor([[1.2, 1.9], [3.0, 0.6]])) == 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "diameter"}, "task must"),
        ({"num_graphs": -1}, "num_graphs"),
        ({"min_nodes": 1}, "min_nodes"),
        ({"min_nodes": 9, "max_nodes": 5}, "min_nodes"),
        ({"family": "ba"}, "family"),
        ({"task": "node_degree", "max_degree": -1}, "max_degree must be an int >= 1"),
        ({"min_nodes": 7.5, "max_nodes": 9}, "min_nodes must be an int"),
        ({"max_nodes": 8.9}, "max_nodes must be an int"),
        ({"task": "colour_counting", "num_colours": 0}, "num_colours must be an int >= 1"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"task": "cycle_check", "num_graphs": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        graph_task(**args)
    with pytest.raises(ValueError, match="task must"):
        task_info("diameter")
    with pytest.raises(ValueError, match="max_degree must be an int >= 1"):
        task_info("node_degree", max_degree=-1)


@pytest.mark.parametrize("task", GRAPH_TASKS)
def test_smallest_allowed_graphs_are_generated_with_correct_sizes(task):
    # every generator works at the documented minimum, and never leaves [min_nodes, max_nodes]
    for family in ("er", "regular") if task == "triangle_counting" else ("er",):
        data = graph_task(task, 40, seed=1, min_nodes=MIN_NODES, max_nodes=MIN_NODES,
                          family=family)  # fmt: skip
        assert all(d.num_nodes == MIN_NODES for d in data)
        if task == "cycle_check":  # label 1 exactly when the graph has a cycle
            for d in data:
                assert int(d.y) == int(d.edge_index.shape[1] // 2 >= d.num_nodes)


def test_seed_must_be_an_int():
    with pytest.raises(TypeError, match="seed must be an int"):
        graph_task("cycle_check", 2, seed=0.5)


def _contiguous_components(graphs) -> tuple[int, int]:
    """(graphs whose every component is a run of consecutive node ids, graphs with >1 one)"""
    runs = multi = 0
    for d in graphs:
        comps = list(nx.connected_components(_nx(d)))
        if len(comps) > 1:
            multi += 1
            runs += all(max(c) - min(c) + 1 == len(c) for c in comps)
    return runs, multi


def test_storage_order_does_not_leak_the_structure():
    # networkx numbers an SBM block by block: unshuffled, a disconnected connectivity graph
    # has its components in runs of consecutive ids, an answer an order-reading model can use
    runs, multi = _contiguous_components(graph_task("connectivity", 200, seed=0))
    assert multi >= 50 and runs <= 0.1 * multi
    # Barabási–Albert numbers its hubs first: degree and node id must not be correlated
    ids, degs = [], []
    for d in graph_task("node_degree", 300, seed=0):
        ids.append(torch.arange(d.num_nodes, dtype=torch.float) / d.num_nodes)
        degs.append(d.y.float() / d.y.float().mean().clamp(min=1e-9))
    corr = torch.corrcoef(torch.stack([torch.cat(ids), torch.cat(degs)]))[0, 1]
    assert abs(float(corr)) < 0.05
