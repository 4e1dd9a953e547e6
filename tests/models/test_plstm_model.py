"""The ``plstm`` model: registry entry, shapes, batching, molecules, and a training smoke run."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data

import graphseq.models.plstm as plstm_model  # registers "plstm"
from graphseq.models import InputSpec, build_model, get_model
from graphseq.models.gin import OGB_ATOM_FEATURE_DIMS, OGB_BOND_FEATURE_DIMS

MOL = InputSpec("graph", 2, "ogb-atom", edge_features="ogb-bond")


def molecule(n: int, gen: torch.Generator) -> Data:
    """A random 'molecule': a chain with one ring closure, OGB integer features, both directions."""
    src = torch.arange(n - 1)
    dst = torch.arange(1, n)
    if n > 3:
        src, dst = torch.cat([src, torch.tensor([0])]), torch.cat([dst, torch.tensor([n - 1])])
    ei = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    x = torch.stack([torch.randint(d, (n,), generator=gen) for d in OGB_ATOM_FEATURE_DIMS], 1)
    bond = torch.stack(
        [torch.randint(d, (src.numel(),), generator=gen) for d in OGB_BOND_FEATURE_DIMS], 1
    )
    return Data(x=x, edge_index=ei, edge_attr=torch.cat([bond, bond]), num_nodes=n)


def test_registered_with_hyperparameters():
    entry = get_model("plstm")
    assert entry.factory is plstm_model.plstm
    assert entry.hyperparameters() == {
        "hidden": 128,
        "layers": 4,
        "heads": 4,
        "dropout": 0.1,
        "pool": "mean",
    }
    model = build_model("plstm", MOL, hidden=16, layers=3, heads=2)
    assert repr(model) == "PLSTMGraphNet(hidden=16, layers=3, heads=2, dropout=0.1, pool='mean')"
    modes = [(c.mode, c.reverse) for c in model.convs]
    assert modes == [("P", False), ("D", True), ("P", True)]
    with pytest.raises(TypeError, match="unknown hyperparameters"):
        build_model("plstm", MOL, width=3)
    with pytest.raises(ValueError, match="must divide hidden"):
        build_model("plstm", MOL, hidden=10, heads=4)


def test_molecule_batch_shapes_gradients_and_batch_invariance():
    gen = torch.Generator().manual_seed(0)
    graphs = [molecule(n, gen) for n in (5, 1, 9, 2, 13)]
    batch = Batch.from_data_list(graphs)
    torch.manual_seed(0)
    model = build_model("plstm", MOL, hidden=16, layers=4, heads=2).eval()
    out = model(batch)
    assert out.shape == (5, 2) and torch.isfinite(out).all()
    for i, g in enumerate(graphs):
        alone = model(Batch.from_data_list([g]))
        torch.testing.assert_close(out[i : i + 1], alone, atol=1e-5, rtol=1e-5)
    model.train()
    model(batch).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the pLSTM gates receive gradient (the recurrence is in the loss, not bypassed)
    assert model.convs[0].transition.bias.grad.abs().sum() > 0
    assert model.convs[1].transition_edge.weight.grad.abs().sum() > 0


def test_dense_features_and_node_level():
    gen = torch.Generator().manual_seed(1)
    spec = InputSpec("node", 3, "dense", 5, "dense", 2)
    model = build_model("plstm", spec, hidden=8, layers=2, heads=2)
    ei = torch.tensor([[0, 1, 2, 1], [1, 2, 3, 3]])
    data = Data(x=torch.randn(4, 5, generator=gen), edge_index=ei, edge_attr=torch.randn(4, 2))
    assert model(data).shape == (4, 3)
    no_edges = build_model("plstm", InputSpec("graph", 1, "dense", 5), hidden=8, layers=1)
    assert no_edges(Batch.from_data_list([data])).shape == (1, 1)


def test_trains_on_the_fake_benchmark(tmp_path):
    from graphseq.train import TrainConfig, fit, get_benchmark

    task = get_benchmark("fake-graph").load(None, None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = TrainConfig(
            benchmark="fake-graph",
            model="plstm",
            model_args={"hidden": 16, "layers": 2, "heads": 2, "dropout": 0.0},
            epochs=2,
            lr=1e-2,
            progress=False,
        )
        result = fit(task, cfg, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert result["epochs_run"] == 2
    assert 0.0 <= result["best"]["test"] <= 1.0


def test_model_keeps_the_pLSTM_gate_initialisation():
    # Resetting the model must not re-reset the layers' inner Linear modules with PyTorch's
    # defaults on top of PLSTMGraph's own gate initialisation.
    model = build_model("plstm", MOL, hidden=16, layers=2, heads=2)
    for conv in model.convs:
        fresh = type(conv)(16, 16, 2, conv.mode, edge_dim=16, reverse=conv.reverse)
        for name in ("source", "mark", "direct", "transition"):
            got, want = getattr(conv, name), getattr(fresh, name)
            torch.testing.assert_close(got.bias, want.bias)  # the gates' deterministic biases
            if not want.weight.detach().any():  # zero-initialised gate weights stay zero
                assert not got.weight.detach().any(), name


def test_model_passes_graph_sizes_so_auto_picks_the_paths_algorithm(monkeypatch):
    calls = []
    forward = plstm_model.PLSTMGraph.forward

    def spy(self, x, edge_index, batch=None, **kwargs):
        calls.append(batch)
        return forward(self, x, edge_index, batch=batch, **kwargs)

    monkeypatch.setattr(plstm_model.PLSTMGraph, "forward", spy)
    gen = torch.Generator().manual_seed(0)
    data = Batch.from_data_list([molecule(n, gen) for n in (5, 7)])
    build_model("plstm", MOL, hidden=16, layers=2, heads=2)(data)
    assert calls and all(b is not None and torch.equal(b, data.batch) for b in calls)


@pytest.mark.parametrize("name", ["plstm", "gin"])
def test_molecular_models_check_the_batch_against_their_spec(name):
    """A batch of another benchmark fails with the attribute named, not inside a matmul."""
    import graphseq.models.gin  # noqa: F401  (registers "gin")

    spec = InputSpec("graph", 1, "dense", 5, "dense", 3)
    model = build_model(name, spec, hidden=8, layers=2)
    ei = torch.tensor([[0, 1, 2], [1, 2, 3]])
    ok = Data(x=torch.randn(4, 5), edge_index=ei, edge_attr=torch.randn(3, 3))
    assert model(Batch.from_data_list([ok])).shape == (1, 1)
    for bad, match in [
        (Data(x=torch.randn(4, 6), edge_index=ei, edge_attr=ok.edge_attr), r"batch.x .*\[N, 5\]"),
        (Data(x=ok.x, edge_index=ei), "batch.edge_attr is NoneType"),
        (Data(x=ok.x, edge_index=ei, edge_attr=torch.randn(3, 2)), r"\[E, 3\]"),
    ]:
        with pytest.raises(ValueError, match=match):
            model(Batch.from_data_list([bad]))
    atoms = build_model(name, InputSpec("graph", 1, "ogb-atom", 0, None), hidden=8, layers=1)
    with pytest.raises(ValueError, match="integer OGB atom features"):
        atoms(Batch.from_data_list([Data(x=torch.randn(4, 9), edge_index=ei)]))
    with pytest.raises(TypeError, match="hidden must be an int"):
        build_model(name, spec, hidden=8.0)
