"""GSM benchmarks in the registry, the trainer's per-task loss, accuracy-SBM, and a short fit."""

import pytest
import torch

import graphseq.models.gsm  # noqa: F401
from graphseq.train.benchmarks import get_benchmark
from graphseq.train.benchmarks_gsm import (
    LAP_PE_DIM,
    graph_tasks_task,
    heterophilous_task,
    sbm_task,
    weighted_cross_entropy,
)
from graphseq.train.metrics import HIGHER_IS_BETTER, accuracy_sbm, make_evaluator
from graphseq.train.trainer import TrainConfig, fit


def test_registered():
    for name in ("minesweeper", "tolokers", "pattern-small", "cluster-small", "graph-connectivity",
                 "graph-node_degree"):  # fmt: skip
        assert get_benchmark(name).name == name
    assert get_benchmark("pattern-small").metric == "acc_sbm" and HIGHER_IS_BETTER["acc_sbm"]


def test_accuracy_sbm_is_class_balanced():
    y = torch.tensor([0, 0, 0, 1])
    pred = torch.tensor([[1.0, 0.0]] * 4)  # always class 0: plain accuracy 0.75
    assert accuracy_sbm(y, pred) == 0.5
    assert make_evaluator("acc_sbm") is accuracy_sbm


def test_fit_uses_the_task_loss():
    task = graph_tasks_task("node_degree", (16, 8, 8))
    calls = []

    def loss(out, y):
        calls.append(out.shape)
        return torch.nn.functional.cross_entropy(out, y.long())

    task.loss = loss
    config = TrainConfig(
        benchmark=task.name, model="gsm++", epochs=1, batch_size=8, progress=False,
        model_args={"hidden": 8, "layers": 1, "heads": 2, "hpe_levels": 16},
    )  # fmt: skip
    res = fit(task, config)
    assert len(calls) == 2 and calls[0][1] == 11 and 0 <= res["best"]["test"] <= 1


@pytest.mark.slow
def test_sbm_task_fits():
    task = sbm_task("pattern", (8, 4, 4))
    config = TrainConfig(
        benchmark=task.name, model="gsm++", epochs=1, batch_size=4, progress=False,
        model_args={"hidden": 8, "layers": 1, "heads": 2, "hpe_levels": 16},
    )  # fmt: skip
    assert 0 <= fit(task, config)["best"]["test"] <= 1


def test_graph_task_benchmark_fits():
    task = graph_tasks_task("colour_counting", (16, 8, 8))
    config = TrainConfig(benchmark=task.name, model="gsm", epochs=1, batch_size=8, progress=False,
                         model_args={"hidden": 8, "layers": 1, "heads": 2, "local": "none",
                                     "global_": "ssm", "tokenization": "none"})  # fmt: skip
    assert 0 <= fit(task, config)["best"]["test"] <= 1


def test_graph_task_laplacian_pe_is_deterministic_and_feeds_gsm():
    state = torch.get_rng_state()
    a = graph_tasks_task("connectivity", (6, 3, 3), seed=2)
    assert torch.equal(state, torch.get_rng_state())  # the global generator is left alone
    b = graph_tasks_task("connectivity", (6, 3, 3), seed=2)
    for ga, gb in zip(a.splits["train"], b.splits["train"], strict=True):
        assert ga.lap_pe.shape == (ga.num_nodes, LAP_PE_DIM)
        torch.testing.assert_close(ga.lap_pe, gb.lap_pe)
    # the columns are eigenvectors of the symmetric-normalised Laplacian, up to sign
    g = a.splits["train"][0]
    lap = torch.eye(g.num_nodes, dtype=torch.float64)
    adj = torch.zeros(g.num_nodes, g.num_nodes, dtype=torch.float64)
    adj[g.edge_index[0], g.edge_index[1]] = 1.0
    dinv = adj.sum(1).clamp(min=1e-12).rsqrt() * (adj.sum(1) > 0)
    lap = lap - dinv[:, None] * adj * dinv[None, :]
    pe = g.lap_pe.double()
    lam = (pe * (lap @ pe)).sum(0) / (pe * pe).sum(0)
    torch.testing.assert_close(lap @ pe, pe * lam, atol=1e-5, rtol=0)  # stored in float32
    # graphs of 100+ nodes (where PyG would use an unseeded sparse solver) are reproducible too
    big = [graph_tasks_task("node_degree", (2, 1, 1), seed=0, min_nodes=100, max_nodes=104)
           for _ in range(2)]  # fmt: skip
    for ga, gb in zip(big[0].splits["train"], big[1].splits["train"], strict=True):
        assert ga.num_nodes >= 100
        torch.testing.assert_close(ga.lap_pe, gb.lap_pe)
    assert "lap_pe" not in graph_tasks_task("node_degree", (4, 2, 2), lap_pe=0).splits["train"][0]
    with pytest.raises(ValueError, match="lap_pe"):
        graph_tasks_task("node_degree", (4, 2, 2), lap_pe=7)
    config = TrainConfig(benchmark=a.name, model="gsm", epochs=1, batch_size=4, progress=False,
                         model_args={"hidden": 8, "layers": 1, "heads": 2, "local": "none",
                                     "global_": "hybrid", "tokenization": "hac_dfs",
                                     "pe": "lap_pe", "pe_dim": LAP_PE_DIM,
                                     "pe_sign_flip": True})  # fmt: skip
    assert 0 <= fit(task=a, config=config)["best"]["test"] <= 1


def test_heterophilous_task_needs_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("GRAPHSEQ_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match=r"minesweeper\.npz"):
        heterophilous_task("minesweeper", 0, tmp_path)


def test_gsm_transform_hac_on_pe_changes_the_tree():
    import torch_geometric.transforms as T

    from graphseq.datasets.sbm import sbm_splits
    from graphseq.train.benchmarks_gsm import gsm_transform

    g = sbm_splits("pattern", (1, 1, 1), 0)["train"][0]
    rw = T.AddRandomWalkPE(8, attr_name="rw_pe")
    plain = gsm_transform(k=1)(rw(g.clone()))
    on_pe = gsm_transform(k=1, hac_on=("x", "rw_pe"))(rw(g.clone()))
    assert not torch.equal(plain.hac_rank, on_pe.hac_rank)


def test_weighted_cross_entropy():
    """GraphGPS's weights 1 - frequency; a one-class batch falls back to the plain loss
    instead of 0 / 0."""
    torch.manual_seed(0)
    out = torch.randn(6, 3, dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    weight = torch.tensor([1 - 4 / 6, 1 - 2 / 6, 0.0], dtype=torch.float64)
    torch.testing.assert_close(
        weighted_cross_entropy(out, y), torch.nn.functional.cross_entropy(out, y, weight=weight)
    )
    one = torch.ones(6, dtype=torch.long)
    loss = weighted_cross_entropy(out, one)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(out, one))


def test_sbm_task_needs_training_graphs():
    with pytest.raises(ValueError, match=r"sizes\[0\] \(training graphs\)"):
        sbm_task("pattern", (0, 2, 2))
