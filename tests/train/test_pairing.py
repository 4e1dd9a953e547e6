"""Which models run on which benchmarks: declared at registration, shown by ``graphseq list``,
checked by ``graphseq run`` before any data loads, and true of the models themselves."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch_geometric.loader import DataLoader

from graphseq import cli
from graphseq.models import InputSpec, build_model, get_model, register_model
from graphseq.train import benchmarks as benchmarks_module
from graphseq.train import run_benchmark
from graphseq.train.benchmarks import Benchmark, get_benchmark
from graphseq.train.benchmarks_gsm import graph_tasks_task, sbm_task

BUILT_IN = ("gat", "gin", "gin-vn", "gps", "gsm", "gsm++", "plstm", "sage")


def _small_task(name):
    """The benchmark's own task where it is quick to load, else the same loader at a few graphs."""
    if name == "pattern-small":
        return sbm_task("pattern", (4, 2, 2))
    if name.startswith("graph-"):
        return graph_tasks_task(name[len("graph-") :], (4, 2, 2))
    return get_benchmark(name).load(None, None)


@pytest.mark.parametrize(
    "name", ["fake-graph", "fake-node", "chembl2321810", "pattern-small", "graph-node_degree",
             "graph-cycle_check"],
)  # fmt: skip
def test_the_models_a_benchmark_lists_run_on_it_and_the_others_refuse(name):
    pytest.importorskip("rdkit")
    bench = get_benchmark(name)
    task = _small_task(name)
    bench.check_task(task)  # the registration says what the loader returns
    runs = set(bench.models())
    if task.level == "graph":
        batch = next(iter(DataLoader(task.splits["train"][:3], batch_size=3)))
        rows = batch.num_graphs if task.spec.level == "graph" else batch.num_nodes
    else:
        batch, rows = task.graph, task.graph.num_nodes
    for model in BUILT_IN:
        if model in runs:
            net = build_model(model, task.spec, hidden=16, layers=1).eval()
            with torch.no_grad():
                assert net(batch).shape == (rows, task.spec.out_dim), model
        else:
            with pytest.raises(ValueError):
                build_model(model, task.spec, hidden=16, layers=1).eval()(batch)
    assert runs & set(BUILT_IN), name


def test_molecular_and_untokenized_benchmarks_exclude_the_models_that_cannot_run():
    assert set(get_benchmark("ogbg-molhiv").models()) & set(BUILT_IN) == {"gin", "gin-vn", "plstm"}
    assert set(get_benchmark("fake-graph").models()) & set(BUILT_IN) == (
        set(BUILT_IN) - {"gsm", "gsm++"}
    )
    assert set(get_benchmark("pattern-small").models()) >= set(BUILT_IN)


@pytest.mark.parametrize(
    "benchmark, model, reason",
    [
        ("ogbg-molesol", "gsm", "takes dense node features, not 'ogb-atom'"),
        ("ogbg-molesol", "gat", "takes dense node features, not 'ogb-atom'"),
        ("fake-graph", "gsm++", "reads the GSM tokens"),
    ],
)
def test_run_refuses_a_pairing_before_loading_and_names_the_models_that_fit(
    benchmark, model, reason, monkeypatch, tmp_path
):
    def no_load(*a, **k):
        raise AssertionError("the data was loaded")

    registry = benchmarks_module._BENCHMARKS
    monkeypatch.setitem(registry, benchmark, replace(registry[benchmark], load=no_load))
    with pytest.raises(ValueError, match=rf"cannot run on benchmark '{benchmark}': it {reason}"):
        run_benchmark(benchmark, model, epochs=1, seeds=1, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"models that run on .*gin, gin-vn"):
        run_benchmark(benchmark, model, epochs=1, seeds=1, out_dir=tmp_path, progress=False)


def test_cli_list_and_run_show_the_pairing(capsys, tmp_path):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "moleculenet/hiv.csv" in x)
    assert "models: gin, gin-vn, plstm" in line
    argv = ["run", "fake-graph", "--model", "gsm", "--out", str(tmp_path), "--epochs", "1"]
    assert cli.main(argv) == 2
    assert "reads the GSM tokens" in capsys.readouterr().err


def test_a_loader_that_contradicts_its_registration_is_refused():
    bench = get_benchmark("fake-graph")
    task = bench.load(None, None)
    wrong = replace(bench, node_features="ogb-atom")
    with pytest.raises(RuntimeError, match="registered with node_features='ogb-atom'"):
        wrong.check_task(task)
    # the prediction level is checked too: fake-graph predicts per graph, not per node
    with pytest.raises(RuntimeError, match="prediction level 'node'"):
        replace(bench, prediction_level="node").check_task(task)


def test_run_refuses_a_loader_that_contradicts_its_registration(monkeypatch, tmp_path):
    """run_benchmark checks the loaded task against the registration before training."""
    registry = benchmarks_module._BENCHMARKS
    wrong = replace(registry["fake-graph"], node_features="ogb-atom")
    monkeypatch.setitem(registry, "fake-graph", wrong)
    with pytest.raises(RuntimeError, match="registered with node_features='ogb-atom'"):
        run_benchmark("fake-graph", "gin", epochs=1, seeds=1, out_dir=tmp_path, progress=False)
    assert not list(tmp_path.rglob("results*.json"))


def test_pairing_uses_the_prediction_level_not_the_batching_level(monkeypatch):
    """PATTERN batches graphs but predicts per node: a model registered for graph-level
    prediction only must not be listed for it (no built-in model is graph-only)."""
    from graphseq.models import registry as registry_module

    entry = replace(get_model("gin"), name="test-graph-only", levels=("graph",))
    monkeypatch.setitem(registry_module._REGISTRY, "test-graph-only", entry)
    bench = get_benchmark("pattern-small")
    assert "test-graph-only" not in bench.models()
    assert bench.incompatibility("test-graph-only") == "it predicts at graph level, not 'node'"
    assert "test-graph-only" in get_benchmark("fake-graph").models()


def test_register_model_checks_the_data_it_declares():
    for bad in ("dense", (), ("dense", "onehot")):
        with pytest.raises(ValueError, match="node_features must be a non-empty tuple"):
            register_model("test-bad-features", node_features=bad)
    with pytest.raises(TypeError, match="tokenized must be a bool"):
        register_model("test-bad-tokens", tokenized=1)
    entry = get_model("gsm")
    assert entry.incompatibility("graph", "dense", True) is None
    assert "predicts at graph/node level" in get_model("gin").incompatibility(
        "edge", "dense", False
    )


def test_a_closed_pipe_ends_list_quietly(monkeypatch, capsys):
    def closed(*a, **k):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_cmd_list", closed)
    monkeypatch.setattr(cli.os, "dup2", lambda *a: None)  # keep pytest's captured stdout
    assert cli.main(["list"]) == 141
    assert "writable folders" not in capsys.readouterr().err


def _undeclared_pattern(name: str) -> Benchmark:
    """A tiny PATTERN-like benchmark registered as before the declarations existed."""
    return Benchmark(
        name, "tiny PATTERN", "graph", "multiclass classification", "acc_sbm",
        lambda d, c: sbm_task("pattern", (8, 4, 4)),
        {"epochs": 1, "batch_size": 4, "seeds": 1, "model": {"hidden": 8, "layers": 1}},
    )  # fmt: skip


def test_a_benchmark_registered_without_the_declarations_still_runs(monkeypatch, tmp_path):
    """register_benchmark is public: a benchmark registered as before the declarations existed
    (here PATTERN-like: batches of graphs, per-node predictions) runs, and a model that cannot
    run on it is refused by name once its data is loaded."""
    bench = _undeclared_pattern("test-undeclared")
    monkeypatch.setitem(benchmarks_module._BENCHMARKS, bench.name, bench)
    for model in ("gin", "gsm"):
        results, _ = run_benchmark(bench.name, model, out_dir=tmp_path, progress=False,
                                   log=lambda *a, **k: None)  # fmt: skip
        assert results[0]["best_epoch"] is not None, model

    def atoms(data_dir, cache_dir):  # a task whose spec says OGB atoms
        task = get_benchmark("fake-graph").load(data_dir, cache_dir)
        return replace(task, spec=InputSpec("graph", 1, "ogb-atom", 0, "ogb-bond"))

    ogb = replace(bench, name="test-undeclared-ogb", load=atoms)
    monkeypatch.setitem(benchmarks_module._BENCHMARKS, ogb.name, ogb)
    with pytest.raises(ValueError, match=r"'gat' cannot run on .*'test-undeclared-ogb': it takes"):
        run_benchmark(ogb.name, "gat", out_dir=tmp_path, progress=False, log=lambda *a, **k: None)


def test_gsm_without_tokens_still_runs_on_untokenized_data(tmp_path):
    """gsm with tokenization='none' (and no hierarchical PE) reads no tokenizer attribute:
    the pairing follows the hyperparameters, not only the model's name."""
    results, _ = run_benchmark(
        "fake-graph", "gsm", epochs=1, seeds=1, out_dir=tmp_path, progress=False,
        model_args={"tokenization": "none", "hidden": 16}, log=lambda *a, **k: None,
    )  # fmt: skip
    assert results[0]["best_epoch"] is not None
    for args in ({}, {"tokenization": "none", "hpe": True}):
        with pytest.raises(ValueError, match="reads the GSM tokens"):
            run_benchmark("fake-graph", "gsm", epochs=1, seeds=1, out_dir=tmp_path,
                          progress=False, model_args=args)  # fmt: skip


def test_an_undeclared_benchmark_of_graphs_runs_a_node_level_model(monkeypatch, tmp_path):
    """A benchmark of graphs registered without the declarations may predict per node (PATTERN):
    its prediction level is not known before loading, so a node-level-only model is not
    refused then (it ran before the declarations existed), and runs on the loaded task."""
    from graphseq.models import registry
    from graphseq.models.gin import gin

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("test-node-only", levels=("node",))
    def node_only(spec, hidden: int = 8, layers: int = 1):
        return gin(spec, hidden=hidden, layers=layers)

    bench = _undeclared_pattern("test-undeclared-node")
    monkeypatch.setitem(benchmarks_module._BENCHMARKS, bench.name, bench)
    assert "test-node-only" in bench.models()
    results, _ = run_benchmark(bench.name, "test-node-only", out_dir=tmp_path, progress=False,
                               log=lambda *a, **k: None)  # fmt: skip
    assert results[0]["best_epoch"] is not None

    # a graph-level-only model is still refused, once the data says the level
    @register_model("test-graph-only", levels=("graph",))
    def graph_only(spec, hidden: int = 8, layers: int = 1):
        return gin(spec, hidden=hidden, layers=layers)

    with pytest.raises(ValueError, match=r"'test-graph-only' cannot run .* not 'node'"):
        run_benchmark(bench.name, "test-graph-only", out_dir=tmp_path, progress=False,
                      log=lambda *a, **k: None)  # fmt: skip


def test_a_tokenized_function_that_needs_a_hyperparameter_without_default(
    monkeypatch, tmp_path, capsys
):
    """register_model(tokenized=<function>) on a factory with a required hyperparameter: list
    (which knows only the defaults) still lists every benchmark, an unrelated refused pairing
    names its own reason, and the model itself names what its function could not read."""
    from graphseq.models import registry
    from graphseq.models.gsm import gsm

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("test-tok-required", node_features=("dense",),
                    tokenized=lambda hp: hp["tokenization"] != "none")  # fmt: skip
    def tok_required(spec, tokenization: str, hidden: int = 16):
        return gsm(spec, hidden=hidden, tokenization=tokenization)

    assert cli.main(["list"]) == 0
    assert "fake-node" in capsys.readouterr().out
    with pytest.raises(ValueError, match="'gsm\\+\\+' cannot run on benchmark 'fake-graph'"):
        run_benchmark("fake-graph", "gsm++", out_dir=tmp_path, progress=False,
                      log=lambda *a, **k: None)  # fmt: skip
    with pytest.raises(ValueError, match="'test-tok-required': its tokenized function failed"):
        run_benchmark("fake-graph", "test-tok-required", out_dir=tmp_path, progress=False,
                      log=lambda *a, **k: None)  # fmt: skip
    results, _ = run_benchmark("fake-graph", "test-tok-required", epochs=1, seeds=1,
                               out_dir=tmp_path, progress=False, log=lambda *a, **k: None,
                               model_args={"tokenization": "none"})  # fmt: skip
    assert results[0]["best_epoch"] is not None
