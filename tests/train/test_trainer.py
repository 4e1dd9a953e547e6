"""graphseq.train: fit, resume, checkpoints, results files, metrics, registries, torchrun."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from graphseq.models import InputSpec, build_model, get_model, list_models, register_model
from graphseq.train import (
    CheckpointError,
    ResultsFileError,
    TrainConfig,
    fit,
    get_benchmark,
    init_distributed,
    load_checkpoint,
)
from graphseq.train import trainer as trainer_module
from graphseq.train.metrics import rmse, rocauc

SMALL = {"hidden": 16, "layers": 2, "dropout": 0.0}


@pytest.fixture(scope="module")
def fake_graph():
    return get_benchmark("fake-graph").load(None, None)


@pytest.fixture(scope="module")
def fake_node():
    return get_benchmark("fake-node").load(None, None)


def _kill_at(monkeypatch, epoch: int):
    """Make training die (KeyboardInterrupt) at the start of ``epoch``; returns a function
    that restores the real epoch."""
    real_epoch = trainer_module._train_epoch_graph

    def dies(task, model, optimizer, sampler, config, env, e):
        if e == epoch:
            raise KeyboardInterrupt
        return real_epoch(task, model, optimizer, sampler, config, env, e)

    monkeypatch.setattr(trainer_module, "_train_epoch_graph", dies)
    return lambda: monkeypatch.setattr(trainer_module, "_train_epoch_graph", real_epoch)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(**kw) -> TrainConfig:
    base = dict(benchmark="fake-graph", model="gin", model_args=SMALL, epochs=4, lr=1e-2,
                progress=False)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def test_fit_writes_results_plot_and_checkpoint(fake_graph, tmp_path):
    r = fit(fake_graph, _config(), tmp_path, extra={"command": "test"})
    assert r["status"] == "finished" and r["epochs_run"] == 4 and r["command"] == "test"
    assert set(r["best"]) == {"valid", "test"} and 1 <= r["best_epoch"] <= 4
    assert r["num_parameters"] == sum(
        p.numel() for p in build_model("gin", fake_graph.spec, **SMALL).parameters()
    )
    for key in ("config", "git_commit", "machine", "history", "wall_time_s", "task"):
        assert key in r
    assert [h["epoch"] for h in r["history"]] == [1, 2, 3, 4]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["best"] == r["best"]
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # checkpoints load with weights_only=True
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 4 and "model" in state
    # a finished run is returned, not retrained
    mtime = (tmp_path / "results.json").stat().st_mtime_ns
    assert fit(fake_graph, _config(), tmp_path)["best"] == r["best"]
    assert (tmp_path / "results.json").stat().st_mtime_ns == mtime


def test_kill_and_resume_gives_the_same_run(fake_graph, tmp_path, monkeypatch):
    # dropout > 0: the resumed run must also continue the random stream (dropout masks), which
    # a dropout-free model would not notice
    cfg = _config(epochs=5, model_args={**SMALL, "dropout": 0.5})
    full = fit(fake_graph, cfg, tmp_path / "full")
    revive = _kill_at(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        fit(fake_graph, cfg, tmp_path / "killed")
    assert not (tmp_path / "killed" / "results.json").exists()
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["epoch"] == 3
    revive()
    resumed = fit(fake_graph, cfg, tmp_path / "killed")
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4, 5]
    for a, b in zip(full["history"], resumed["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["valid_rocauc"] == pytest.approx(b["valid_rocauc"], rel=1e-5)
        assert a["test_rocauc"] == pytest.approx(b["test_rocauc"], rel=1e-5)
    assert (resumed["best_epoch"], resumed["best"]) == (full["best_epoch"], full["best"])


@pytest.mark.parametrize(
    "metric, valid, test, best_epoch",
    [
        # higher is better: the highest valid score, the first of tied epochs (OGB's argmax);
        # the test score is the one of that epoch, not the best test score
        ("rocauc", [0.6, 0.8, 0.8, 0.7], [0.9, 0.5, 0.95, 0.99], 2),
        # lower is better: the lowest valid score (a NaN epoch is never the best)
        ("rmse", [float("nan"), 1.0, 0.5, 0.5], [0.1, 0.05, 0.9, 0.2], 3),
    ],
)
def test_the_test_score_is_taken_at_the_best_validation_epoch(
    fake_graph, monkeypatch, metric, valid, test, best_epoch
):
    scores = iter([v for pair in zip(valid, test, strict=True) for v in pair])
    monkeypatch.setattr(
        trainer_module, "_evaluate_graph", lambda task, model, split, config, env: next(scores)
    )
    r = fit(replace(fake_graph, metric=metric), _config(epochs=4), None)
    assert r["higher_is_better"] == (metric == "rocauc")
    assert r["best_epoch"] == best_epoch
    assert r["best"] == {"valid": valid[best_epoch - 1], "test": test[best_epoch - 1]}


def test_cosine_schedule_values_and_validation():
    cfg = _config(epochs=6, lr=0.1, schedule="cosine", warmup_epochs=2)
    lrs = [cfg.lr_at(e) for e in range(1, 7)]
    # warm-up 0.1 * e / 3, then a half cosine over the last 4 epochs, never reaching 0
    assert lrs[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])
    assert lrs[3:] == pytest.approx([0.1 * (1 + math.cos(math.pi * k / 4)) / 2 for k in (1, 2, 3)])
    assert all(a > b for a, b in itertools.pairwise(lrs[2:])) and lrs[-1] > 0
    assert _config(lr=0.1).lr_at(3) == 0.1  # constant
    for epoch in (0, 7):
        with pytest.raises(ValueError, match="epoch must be in"):
            cfg.lr_at(epoch)
    # the constant schedule keeps the digest of results written before schedules existed
    # (this value is the digest the same settings had before the option was added)
    assert "schedule" not in _config().identity()
    assert _config().digest() == "3d234ff767d62272"
    assert _config(schedule="cosine").digest() != _config().digest()
    for kw, match in (
        ({"schedule": "linear"}, "schedule must be"),
        ({"schedule": "cosine", "warmup_epochs": 4}, "warmup_epochs must be"),
        ({"schedule": "cosine", "warmup_epochs": -1}, "warmup_epochs must be"),
        ({"warmup_epochs": 1}, "needs schedule='cosine'"),
        ({"schedule": "cosine", "warmup_epochs": 1.5}, "warmup_epochs must be an int"),
        ({"schedule": "cosine", "warmup_epochs": True}, "warmup_epochs must be an int"),
        ({"epochs": 0, "schedule": "cosine", "warmup_epochs": 1}, "epochs must be >= 1"),
    ):
        with pytest.raises(ValueError, match=match):
            _config(**kw)


def test_cosine_schedule_reaches_the_optimizer_and_survives_resume(
    fake_graph, tmp_path, monkeypatch
):
    cfg = _config(epochs=4, lr=0.05, schedule="cosine", warmup_epochs=1)
    seen = []
    real_epoch = trainer_module._train_epoch_graph

    def record(task, model, optimizer, sampler, config, env, epoch):
        seen.append(optimizer.param_groups[0]["lr"])
        if epoch == 3 and len(seen) == 3:
            raise KeyboardInterrupt  # killed once, at the start of epoch 3
        return real_epoch(task, model, optimizer, sampler, config, env, epoch)

    monkeypatch.setattr(trainer_module, "_train_epoch_graph", record)
    with pytest.raises(KeyboardInterrupt):
        fit(fake_graph, cfg, tmp_path)
    r = fit(fake_graph, cfg, tmp_path)
    assert r["epochs_run"] == 4 and r["config"]["schedule"] == "cosine"
    want = [cfg.lr_at(e) for e in (1, 2, 3, 3, 4)]
    assert seen == pytest.approx(want) and want[0] == pytest.approx(0.025)


def test_corrupted_checkpoint_is_a_clear_error(fake_graph, tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"checkpoint .*checkpoint\.pt is unreadable"):
        fit(fake_graph, _config(), tmp_path)
    assert ckpt.read_bytes() == b"PK\x03\x04 this is not a checkpoint"  # left untouched
    # a checkpoint holding arbitrary Python objects is refused by weights_only=True
    torch.save({"format": 1, "model": {}, "evil": object()}, ckpt)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(ckpt)


def test_checkpoint_of_other_settings_is_refused(fake_graph, tmp_path):
    fit(fake_graph, _config(epochs=2), tmp_path)
    (tmp_path / "results.json").unlink()
    with pytest.raises(CheckpointError, match="different settings"):
        fit(fake_graph, _config(epochs=2, lr=0.5), tmp_path)


def test_a_run_on_other_data_is_refused_not_read_back(fake_graph, tmp_path):
    """The digest holds the benchmark's name, not its data: a script that builds a differently
    sized task under the same name (--sizes) must not get the old run's score back."""
    fit(fake_graph, _config(epochs=2), tmp_path)
    splits = dict(fake_graph.splits)
    splits["train"] = splits["train"][:-8]
    smaller = replace(
        fake_graph, splits=splits,
        info={**fake_graph.info, "sizes": {k: len(v) for k, v in splits.items()}},
    )  # fmt: skip
    with pytest.raises(ResultsFileError, match=r"holds a run on other data .*'train': 192"):
        fit(smaller, _config(epochs=2), tmp_path)
    (tmp_path / "results.json").unlink()  # the checkpoint is checked the same way
    with pytest.raises(CheckpointError, match="holds a run on other data"):
        fit(smaller, _config(epochs=2), tmp_path)
    assert fit(fake_graph, _config(epochs=2), tmp_path)["status"] == "finished"


def test_a_checkpoint_of_another_world_size_is_refused(fake_graph, tmp_path, monkeypatch):
    """A seed started under torchrun with N processes and resumed with another number would
    mix two effective batch sizes in one result that records only the last world size."""
    from graphseq.train.distributed import DistEnv

    revive = _kill_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        fit(fake_graph, _config(), tmp_path)
    revive()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["world_size"] == 1
    before = (tmp_path / "checkpoint.pt").read_bytes()
    two = DistEnv(rank=0, world_size=2)  # refused on loading, before any process group is used
    with pytest.raises(
        CheckpointError,
        match=r"run of 1 process\(es\), this run has 2 \(the effective batch, \d+ graphs per "
        r"process and step, would change mid-run\)",
    ):
        fit(fake_graph, _config(), tmp_path, env=two)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert fit(fake_graph, _config(), tmp_path)["epochs_run"] == 4  # the same world resumes


def test_a_node_level_checkpoint_of_another_world_size_names_the_node_share(
    fake_node, tmp_path, monkeypatch
):
    """A node-level task trains one whole graph per step (batch_size does not apply): the
    refusal names each process's share of the training nodes, not a graph batch."""
    from graphseq.train.distributed import DistEnv

    real_epoch = trainer_module._train_epoch_node

    def dies(task, model, optimizer, config, env, e):
        if e == 2:
            raise KeyboardInterrupt
        return real_epoch(task, model, optimizer, config, env, e)

    monkeypatch.setattr(trainer_module, "_train_epoch_node", dies)
    cfg = _config(benchmark="fake-node", epochs=3)
    with pytest.raises(KeyboardInterrupt):
        fit(fake_node, cfg, tmp_path)
    monkeypatch.setattr(trainer_module, "_train_epoch_node", real_epoch)
    two = DistEnv(rank=0, world_size=2)
    with pytest.raises(CheckpointError, match=r"this run has 2 \(each process's share of the "
                       r"training nodes, would change mid-run\)") as err:  # fmt: skip
        fit(fake_node, cfg, tmp_path, env=two)
    assert "graphs per process" not in str(err.value)


def test_corrupted_results_file_is_a_clear_error(fake_graph, tmp_path):
    (tmp_path / "results.json").write_text('{"status": "finis')
    with pytest.raises(ResultsFileError, match=r"results\.json is unreadable"):
        fit(fake_graph, _config(), tmp_path)
    assert (tmp_path / "results.json").read_text() == '{"status": "finis'


def test_a_results_file_that_is_not_a_run_record_is_a_clear_error(fake_graph, tmp_path):
    """Valid JSON that is not a complete run: a ResultsFileError naming the file (a finished
    record without 'seed' reached the runner as a KeyError; null was 'other settings')."""
    cfg = _config(epochs=1)
    full = fit(fake_graph, cfg, tmp_path)
    path = tmp_path / "results.json"
    partial = {k: full[k] for k in ("status", "config_digest", "config")}
    no_config = {k: v for k, v in full.items() if k != "config"}  # the runner reads "config"
    for content, match in ((partial, r"finished run without \['seed', 'best_epoch', 'best'\]"),
                           (no_config, r"finished run without \['config'\]"),
                           (None, "is not a graphseq results file")):  # fmt: skip
        path.write_text(json.dumps(content))
        with pytest.raises(ResultsFileError, match=match):
            fit(fake_graph, cfg, tmp_path)
        assert json.loads(path.read_text()) == content


def test_node_level_and_early_stopping(fake_node, tmp_path):
    cfg = _config(benchmark="fake-node", epochs=60, patience=2)
    r = fit(fake_node, cfg, None)
    assert r["stopped_early"] and r["epochs_run"] < 60
    assert r["best_epoch"] == r["epochs_run"] - 2
    assert 0.0 <= r["best"]["test"] <= 1.0


def test_tensorboard(fake_graph, tmp_path):
    pytest.importorskip("tensorboard")
    fit(fake_graph, _config(epochs=1, tensorboard=True), tmp_path)
    assert any(
        p.name.startswith("events.out.tfevents") for p in (tmp_path / "tensorboard").iterdir()
    )


def test_tensorboard_logging_without_the_package(fake_graph, tmp_path, monkeypatch):
    """CI installs no tensorboard (test_tensorboard skips there), so the logging is also
    checked through a stand-in SummaryWriter: every epoch logs the training loss and every
    scored split under <out>/tensorboard, and the writer is closed; without the package the
    error says what to install."""
    import types

    calls = []

    class Writer:
        def __init__(self, log_dir):
            calls.append(("open", log_dir))

        def add_scalar(self, tag, value, step):
            assert math.isfinite(value)
            calls.append((tag, step))

        def close(self):
            calls.append(("close",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    r = fit(fake_graph, _config(epochs=2, tensorboard=True), tmp_path)
    metric = fake_graph.metric
    splits = [k[: -len(metric) - 1] for k in r["history"][0] if k.endswith(f"_{metric}")]
    assert "valid" in splits and "test" in splits
    want = [("open", str(tmp_path / "tensorboard"))]
    for epoch in (1, 2):
        want += [("train/loss", epoch)] + [(f"{s}/{metric}", epoch) for s in splits]
    assert calls == [*want, ("close",)]
    calls.clear()
    fit(fake_graph, _config(epochs=1, tensorboard=True), None)  # nowhere to write: no writer
    assert calls == []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    with pytest.raises(ImportError, match="tensorboard=True needs the tensorboard package"):
        fit(fake_graph, _config(epochs=1, tensorboard=True), tmp_path / "again")


def test_config_validation():
    with pytest.raises(ValueError, match="epochs"):
        _config(epochs=0)
    with pytest.raises(ValueError, match="patience"):
        _config(patience=0)
    for bad in (-1e-4, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
            _config(weight_decay=bad)
    assert _config().digest() != replace(_config(), seed=1).digest()
    assert _config().digest() == replace(_config(), progress=True, threads=3).digest()
    # one-graph batches are skipped in training, so batch_size 1 would train on nothing
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        _config(batch_size=1)
    for bad in (0, -3, 1.5):
        with pytest.raises(ValueError, match="threads must be an int >= 1"):
            _config(threads=bad)


def test_a_bad_device_is_named():
    from graphseq.train.distributed import select_device

    with pytest.raises(ValueError, match="device='bogus' is not a torch device"):
        select_device("bogus")


def test_an_index_less_cuda_device_is_the_local_ranks_gpu(monkeypatch):
    """`--device cuda` under torchrun: torch.cuda.set_device(torch.device("cuda")) raised
    "Expected a torch.device with a specified index" on every rank, and DDP got
    device_ids=[None]; it now means the local rank's GPU, as "auto" does (CUDA mocked)."""
    from graphseq.train.distributed import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device("cuda", 1) == torch.device("cuda", 1)
    assert select_device("cuda", 3) == torch.device("cuda", 1)
    assert select_device("cuda") == select_device("auto") == torch.device("cuda", 0)
    assert select_device("cuda:0", 1) == torch.device("cuda", 0)  # an explicit index is kept


def test_results_files_are_readable_by_others(tmp_path):
    from graphseq.train.io import write_json

    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(umask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


def test_summary_says_which_seeds_are_in_the_mean():
    from graphseq.train.runner import format_table, summarize

    runs = [
        {"seed": 0, "best": {"valid": 1.0, "test": 1.1}, "best_epoch": 2, "epochs_run": 2},
        {"seed": 1, "best": None, "best_epoch": None, "epochs_run": 2},  # NaN every epoch
        {"seed": 2, "best": {"valid": 1.2, "test": 1.3}, "best_epoch": 1, "epochs_run": 2},
    ]
    summary = summarize(runs)
    assert summary["seeds"] == [0, 1, 2] and summary["seeds_in_mean"] == [0, 2]
    summary.update(benchmark="b", model="m", num_parameters=1)
    assert "mean ± std (2 of 3 seeds)" in format_table(runs, summary)
    # a seed with a valid score but a NaN test score leaves both means, not the test mean only
    runs[1]["best"] = {"valid": 0.1, "test": float("nan")}
    summary = summarize(runs)
    assert summary["seeds_in_mean"] == [0, 2]
    assert summary["valid_mean"] == pytest.approx(1.1)
    assert summary["test_mean"] == pytest.approx(1.2)


def test_gin_atom_and_bond_embeddings_keep_ogbs_xavier_init():
    spec = InputSpec("graph", 1, "ogb-atom", edge_features="ogb-bond")
    model = build_model("gin", spec, hidden=300)
    model.reset_parameters()
    for encoder in (model.node_encoder, model.edge_encoders[0]):
        for emb in encoder.embeddings:
            fan = emb.weight.shape[0] + emb.weight.shape[1]
            assert emb.weight.abs().max() <= (6 / fan) ** 0.5 + 1e-6  # Xavier-uniform bound


# --------------------------------------------------------------------------------------------
# metrics and registries


def test_metrics_match_reference_implementations():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from ogb.graphproppred import Evaluator

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (200, 3), generator=g).double()
    s = torch.randn(200, 3, generator=g).round(decimals=1)  # ties
    y[::7, 1] = float("nan")
    ref = (
        sum(
            sklearn_metrics.roc_auc_score(y[~y[:, t].isnan(), t], s[~y[:, t].isnan(), t])
            for t in range(3)
        )
        / 3
    )
    assert rocauc(y, s) == pytest.approx(ref, abs=1e-12)
    yr, pr = torch.randn(50, 1, generator=g), torch.randn(50, 1, generator=g)
    assert rmse(yr, pr) == pytest.approx(
        Evaluator("ogbg-molesol").eval({"y_true": yr, "y_pred": pr})["rmse"]
    )


def test_a_nan_prediction_makes_the_score_nan_not_a_ranking():
    """A diverged model's NaN outputs must not get a ROC-AUC (NaN would rank as the highest
    score): the score is NaN, as RMSE's, so the epoch can never be the best one."""
    from graphseq.train.metrics import make_evaluator

    y = torch.tensor([[0.0], [1.0], [0.0], [1.0], [float("nan")]])
    s = torch.tensor([[0.1], [0.9], [0.2], [0.8], [0.5]])
    assert rocauc(y, s) == 1.0
    for bad in (torch.full_like(s, float("nan")), torch.where(y == 0, float("nan"), s)):
        assert math.isnan(rocauc(y, bad))
        assert math.isnan(make_evaluator("rocauc", "ogbg-molhiv")(y, bad))
        assert math.isnan(rmse(y, bad))
    # a NaN prediction where the label is missing is ignored, as OGB does
    s_unlabelled_nan = s.clone()
    s_unlabelled_nan[4] = float("nan")
    assert rocauc(y, s_unlabelled_nan) == 1.0
    assert make_evaluator("rocauc", "ogbg-molhiv")(y, s_unlabelled_nan) == 1.0


def test_a_nan_prediction_makes_accuracy_nan_and_never_the_best_epoch(fake_node):
    """argmax of a NaN row is the NaN column, so an all-NaN (diverged) model scored the share
    of class 0 and could become the best epoch; the metrics docstring promises NaN for every
    metric."""
    from graphseq.datasets.graph_tasks import exact_match
    from graphseq.train.metrics import accuracy, accuracy_sbm

    y = torch.tensor([0, 0, 0, 1])
    nan = torch.full((4, 2), float("nan"))
    assert math.isnan(accuracy(y, nan)) and math.isnan(accuracy_sbm(y, nan))
    assert math.isnan(exact_match(torch.ones(2, 3), torch.full((2, 3), float("nan"))))

    class Diverges(torch.nn.Module):  # epoch 1 never right, then NaN outputs
        def __init__(self):
            super().__init__()
            self.w, self.evals = torch.nn.Parameter(torch.zeros(3)), 0

        def forward(self, data):
            self.evals += not self.training
            out = self.w - torch.nn.functional.one_hot(data.y, 3).float()
            return out * float("nan") if self.evals > 1 else out

    r = fit(fake_node, _config(benchmark="fake-node", epochs=3), None, model_factory=Diverges)
    assert all(math.isnan(h["valid_acc"]) for h in r["history"][1:])
    assert r["best_epoch"] == 1


def test_metrics_refuse_predictions_of_another_shape():
    """As OGB's Evaluator: a [N, 2] two-class output for [N] labels is not scored on its
    first column (which gave 1 - AUC), nor [N, 3] regression outputs on the first."""
    y = torch.tensor([0.0, 1.0, 0.0, 1.0])
    logits = torch.stack([-y, y], 1)
    with pytest.raises(ValueError, match=r"rocauc: y_pred must have the shape of y_true.*\(4, 2\)"):
        rocauc(y, logits)
    with pytest.raises(ValueError, match="rmse: y_pred must have the shape of y_true"):
        rmse(y.view(4, 1), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="rocauc: y_pred must have the shape"):
        rocauc(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.zeros(4))  # rows differ
    # [N] labels with [N, 1] predictions (and the reverse) are one task, as before
    assert rocauc(y, y.view(4, 1)) == 1.0 and rmse(y.view(4, 1), y) == 0.0


def test_rocauc_refuses_labels_that_are_not_binary():
    """Labels 0/1/2 or soft labels were thresholded at 0.5 into a silent score (OGB's
    Evaluator refuses them); -0.0 and NaN (missing) stay valid."""
    s = torch.tensor([[0.1], [0.9], [0.2], [0.3]])
    for y in ([[0.0], [1.0], [2.0], [0.0]], [[0.0], [0.7], [0.2], [1.0]]):
        with pytest.raises(ValueError, match="rocauc: y_true must hold binary labels"):
            rocauc(torch.tensor(y), s)
    assert rocauc(torch.tensor([[-0.0], [1.0], [float("nan")], [0.0]]), s) == 1.0


def test_accuracy_refuses_predictions_that_are_not_class_scores():
    """accuracy / accuracy_sbm argmax [N, C] scores: one binary logit per row ([N, 1]), class
    ids ([N] or [N, 1], OGB's 'acc' convention) or another number of rows must be refused,
    not argmax-ed into a silently wrong score (one logit scored 0.25 for 4 right answers)."""
    from graphseq.train.metrics import accuracy, accuracy_sbm

    y = torch.tensor([0, 1, 1, 1])
    for fn in (accuracy, accuracy_sbm):
        name = fn.__name__
        for bad in (
            torch.tensor([[-5.0], [5.0], [5.0], [5.0]]),  # one binary logit per row
            y.float(),  # class ids
            torch.zeros(2, 2),  # two rows for four labels
        ):
            with pytest.raises(ValueError, match=rf"{name}: y_pred must be \[N, C\] class scores"):
                fn(y, bad)
        scores = torch.stack([-y.float(), y.float()], 1)
        assert fn(y, scores) == 1.0 and fn(y.view(4, 1), scores) == 1.0


def test_a_split_without_both_classes_is_a_value_error_naming_the_split(fake_graph):
    """OGB's Evaluator raises RuntimeError on a split with one class (the CLI printed a
    traceback); both evaluators raise ValueError, and fit names the split."""
    from graphseq.train.metrics import make_evaluator

    y, p = torch.zeros(3, 1), torch.rand(3, 1)
    for evaluate in (make_evaluator("rocauc"), make_evaluator("rocauc", "ogbg-molbace")):
        with pytest.raises(ValueError):
            evaluate(y, p)
    one_class = {k: [g.clone() for g in v] for k, v in fake_graph.splits.items()}
    for g in one_class["valid"]:
        g.y = torch.zeros_like(g.y)
    task = replace(fake_graph, splits=one_class)
    with pytest.raises(ValueError, match="fake-graph: cannot score the valid split: rocauc"):
        fit(task, _config(epochs=1), None)


def test_model_registry_lists_and_validates():
    names = [m.name for m in list_models()]
    assert {"gin", "gin-vn"} <= set(names)
    with pytest.raises(ValueError, match=r"valid models: .*gin-vn"):
        get_model("gat-nope")
    spec = InputSpec("graph", 1, "ogb-atom", edge_features="ogb-bond")
    with pytest.raises(TypeError, match="unknown hyperparameters \\['widht'\\]"):
        build_model("gin", spec, widht=3)

    @register_model("test-mlp", description="plug-in check", levels=("graph",))
    def _mlp(spec, hidden: int = 8):
        from torch_geometric.nn import global_mean_pool

        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(spec.node_dim, spec.out_dim)

            def forward(self, batch):
                return global_mean_pool(self.lin(batch.x.float()), batch.batch)

        return M()

    task = get_benchmark("fake-graph").load(None, None)
    r = fit(task, _config(model="test-mlp", model_args={"hidden": 4}, epochs=1), None)
    assert r["num_parameters"] == 9


def test_registry_takes_required_and_keyword_hyperparameters_and_checks_levels():
    spec = InputSpec("graph", 1, "dense", 3)

    @register_model("test-required", levels=("graph",))
    def _required(spec, hidden: int):
        return torch.nn.Linear(spec.node_dim, hidden)

    @register_model("test-kwargs")
    def _kwargs(spec, **kw):
        return torch.nn.Linear(spec.node_dim, kw.get("hidden", 2))

    assert build_model("test-required", spec, hidden=5).out_features == 5
    assert build_model("test-kwargs", spec, hidden=7).out_features == 7
    with pytest.raises(TypeError, match=r"unknown hyperparameters \['width'\]; it takes"):
        build_model("test-required", spec, hidden=5, width=2)
    for bad in ("graph", (), ("graph", "edge")):
        with pytest.raises(ValueError, match="levels must be a non-empty tuple"):
            register_model("test-bad-levels", levels=bad)


def test_gin_matches_ogb_baselines():
    from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims

    from graphseq.models.gin import OGB_ATOM_FEATURE_DIMS, OGB_BOND_FEATURE_DIMS

    assert list(OGB_ATOM_FEATURE_DIMS) == get_atom_feature_dims()
    assert list(OGB_BOND_FEATURE_DIMS) == get_bond_feature_dims()
    spec = InputSpec("graph", 1, "ogb-atom", edge_features="ogb-bond")
    # The OGB leaderboard lists 1,885,206 (GIN) and 3,336,306 (GIN-virtual) parameters for
    # ogbg-molhiv; ogb >= 1.3 added a 'misc' chirality value (4 -> 5 rows in the first
    # AtomEncoder table... of width 300), hence exactly 300 more here.
    assert sum(p.numel() for p in build_model("gin", spec).parameters()) == 1_885_206 + 300
    assert sum(p.numel() for p in build_model("gin-vn", spec).parameters()) == 3_336_306 + 300
    assert repr(build_model("gin-vn", spec, hidden=8)) == (
        "GIN(hidden=8, layers=5, dropout=0.5, virtual_node=True, pool='mean')"
    )


def test_unknown_benchmark_lists_valid_ones():
    with pytest.raises(ValueError, match=r"valid benchmarks: .*ogbg-molhiv"):
        get_benchmark("ogbg-molfoo")


# --------------------------------------------------------------------------------------------
# torchrun


def _torchrun(*args: str, env: dict, cwd) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 <args>``, which must succeed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    out = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=300,
                         cwd=cwd)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_torchrun_two_processes_write_one_result(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["-m", "graphseq.cli", "run", "fake-graph", "--epochs", "2", "--seeds", "1",
            "--hidden", "16", "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    out = _torchrun(*args, env=env, cwd=tmp_path)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "fake-graph/gin/seed0/checkpoint.pt",
        "fake-graph/gin/seed0/curves.png",
        "fake-graph/gin/seed0/results.json",
        "fake-graph/gin/summary.json",
    ]
    r = json.loads((tmp_path / "fake-graph/gin/seed0/results.json").read_text())
    assert r["world_size"] == 2 and r["epochs_run"] == 2
    assert out.stdout.count("mean ± std") == 1  # only rank 0 prints the table


def test_torchrun_scores_a_split_smaller_than_the_world(tmp_path):
    """A split with fewer graphs than processes: the rank without graphs never ran the DDP
    forward whose first call after training broadcasts rank 0's BatchNorm statistics, so the
    other rank waited there for ever (here: until the group's 30 s timeout)."""
    script = tmp_path / "run.py"
    script.write_text(
        "import dataclasses, datetime, json, sys\n"
        "import torch.distributed as dist\n"
        "from graphseq.train import TrainConfig, fit, get_benchmark, init_distributed\n"
        "from graphseq.train.metrics import rmse\n"
        "dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=30))\n"
        "env = init_distributed('cpu')\n"
        "task = get_benchmark('fake-graph').load(None, None)\n"
        "splits = dict(task.splits, valid=task.splits['valid'][:1])\n"
        "task = dataclasses.replace(task, splits=splits, evaluate=rmse)  # one graph: no AUC\n"
        "cfg = TrainConfig('fake-graph', model_args={'hidden': 8, 'layers': 2}, epochs=2,\n"
        "                  progress=False)\n"
        "r = fit(task, cfg, env=env)\n"
        "if env.is_main:\n"
        "    json.dump(r['history'], open(sys.argv[1], 'w'))\n"
        "dist.destroy_process_group()\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the installed graphseq, as the user runs it
    _torchrun(str(script), str(tmp_path / "history.json"), env=env, cwd=tmp_path)
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]


def test_torchrun_fit_twice_with_its_own_env(tmp_path):
    """fit(env=None) under torchrun twice in one process (a loop over seeds, as the examples
    run it): the first fit destroyed the group it had created, the second created the default
    group again under torchrun's store, whose rendezvous could read the first group's
    addresses: it crashed (Gloo connectFullMesh: Connection refused) or hung, by timing."""
    script = tmp_path / "run.py"
    script.write_text(
        "import json, sys\n"
        "import torch.distributed as dist\n"
        "from graphseq.train import TrainConfig, fit, get_benchmark\n"
        "task = get_benchmark('fake-graph').load(None, None)\n"
        "import atexit, os\n"
        "def at_exit():  # registered first, so it runs after the handlers fit registers\n"
        "    with open(f'{sys.argv[1]}.exit.{os.environ[\"RANK\"]}', 'w') as f:\n"
        "        f.write(str(dist.is_initialized()))\n"
        "atexit.register(at_exit)\n"
        "worlds = []\n"
        "for seed in (0, 1):\n"
        "    cfg = TrainConfig('fake-graph', model_args={'hidden': 8, 'layers': 1}, epochs=1,\n"
        "                      seed=seed, progress=False, device='cpu')\n"
        "    worlds.append(fit(task, cfg)['world_size'])\n"
        "    assert dist.is_initialized(), 'fit let go of the process group'\n"
        "json.dump(worlds, open(f'{sys.argv[1]}.{dist.get_rank()}', 'w'))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    _torchrun(str(script), str(tmp_path / "worlds"), env=env, cwd=tmp_path)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"worlds.{rank}").read_text()) == [2, 2]
        # the group init_distributed created is destroyed when the process exits
        assert (tmp_path / f"worlds.exit.{rank}").read_text() == "False"


def test_a_group_initialised_without_torchrun_variables_is_reused(tmp_path):
    """A group the caller set up with an explicit rank and world size (torch.multiprocessing
    .spawn: no WORLD_SIZE/RANK variables) was ignored: every process got rank 0 of a world of 1,
    so fit trained without DDP in each of them and every one wrote the results."""
    script = tmp_path / "run.py"
    script.write_text(
        "import json, os, sys\n"
        "import torch.distributed as dist\n"
        "import torch.multiprocessing as mp\n"
        "def worker(rank, port, out):\n"
        "    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,\n"
        "                            world_size=2)\n"
        "    from graphseq.train import init_distributed\n"
        "    env = init_distributed('cpu')\n"
        "    json.dump([env.rank, env.world_size, env.is_main, env.local_rank],\n"
        "              open(f'{out}.{rank}', 'w'))\n"
        "    dist.destroy_process_group()\n"
        "if __name__ == '__main__':\n"
        "    for k in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK'):\n"
        "        os.environ.pop(k, None)\n"
        "    mp.spawn(worker, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)\n"
    )
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(script), str(port), str(tmp_path / "env")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    got = [json.loads((tmp_path / f"env.{r}").read_text()) for r in (0, 1)]
    assert got == [[0, 2, True, 0], [1, 2, False, 1]]  # without LOCAL_RANK: the rank


@pytest.mark.parametrize(
    "env, error",
    [({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
     ({"WORLD_SIZE": "2", "LOCAL_RANK": "x"}, "LOCAL_RANK='x' is not an integer"),
     ({"WORLD_SIZE": ""}, None)],
)  # fmt: skip
def test_launcher_variables_that_are_not_integers_are_named(env, error, monkeypatch):
    """init_distributed reported int()'s "invalid literal for int() with base 10: 'two'",
    naming no variable; an empty WORLD_SIZE (one process, as runner._command reads it) failed
    the same way."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if error is None:
        assert init_distributed("cpu").world_size == 1
        return
    with pytest.raises(ValueError, match=error):
        init_distributed("cpu")


class _Recorder:
    def __init__(self):
        self.seen = None

    def __call__(self, y, p):
        self.seen = (y.clone(), p.clone())
        return 0.0


def _graphs_with_node_labels(sizes):
    from torch_geometric.data import Data

    graphs, start = [], 0
    for n in sizes:
        ids = torch.arange(start, start + n, dtype=torch.float).unsqueeze(1)
        graphs.append(Data(x=ids, y=ids.squeeze(1), edge_index=torch.empty(2, 0, dtype=torch.long)))
        start += n
    return graphs


class _Echo(torch.nn.Module):
    """Predicts each node's id (node level) or the sum of its graph's node ids (graph level)."""

    def __init__(self, level):
        super().__init__()
        self.level = level

    def forward(self, batch):
        if self.level == "node":
            return batch.x
        from torch_geometric.nn import global_add_pool

        return global_add_pool(batch.x, batch.batch, size=batch.num_graphs)


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("level", ["node", "graph"])
def test_graph_batches_are_scored_on_every_row_in_dataset_order(level, world_size):
    """A node-level task on batches of graphs (PATTERN) is scored on every node of every
    graph, in dataset order, with any sharding over ranks; a graph-level one on every graph.
    (The rows of a node-level task were once reordered per graph, which kept the first
    num_graphs nodes only.)"""
    from types import SimpleNamespace

    sizes = [3, 1, 4, 2, 5]
    graphs = _graphs_with_node_labels(sizes)
    if level == "graph":
        for i, g in enumerate(graphs):
            g.y = torch.tensor([float(i)])
    model = _Echo(level)
    recorder = _Recorder()
    task = SimpleNamespace(splits={"valid": graphs}, evaluate=recorder)
    shards = [
        trainer_module._shard(len(graphs), SimpleNamespace(rank=r, world_size=world_size))
        for r in range(world_size)
    ]
    gathered = [
        (idx, *trainer_module._predict_graph(model, graphs, idx, 2, "cpu")) for idx in shards
    ]
    env = SimpleNamespace(
        rank=0, world_size=world_size, device="cpu", all_gather_object=lambda obj: gathered
    )
    trainer_module._evaluate_graph(task, model, "valid", SimpleNamespace(batch_size=2), env)
    y, p = recorder.seen
    if level == "node":
        assert torch.equal(y.flatten(), torch.arange(15.0))
        assert torch.equal(p.flatten(), torch.arange(15.0))
    else:
        assert y.flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
        ends = torch.tensor(sizes).cumsum(0)
        sums = [float(sum(range(int(e) - n, int(e)))) for e, n in zip(ends, sizes, strict=True)]
        assert p.flatten().tolist() == sums


def test_resume_keeps_the_early_stopping_count(fake_graph, tmp_path, monkeypatch):
    """A run killed after two epochs without improvement stops where the uninterrupted run
    stops: the checkpoint's bad-epoch count carries over (patience=2)."""
    valid = [0.8, 0.7, 0.6, 0.9, 0.9, 0.9]

    def scripted(first_epoch):
        values = iter(v for v in valid[first_epoch - 1 :] for _ in ("valid", "test"))
        return lambda task, model, split, config, env: next(values)

    cfg = _config(epochs=6, patience=2)
    monkeypatch.setattr(trainer_module, "_evaluate_graph", scripted(1))
    full = fit(fake_graph, cfg, tmp_path / "full")
    assert full["stopped_early"] and full["epochs_run"] == 3 and full["best_epoch"] == 1
    revive = _kill_at(monkeypatch, 3)
    monkeypatch.setattr(trainer_module, "_evaluate_graph", scripted(1))
    with pytest.raises(KeyboardInterrupt):
        fit(fake_graph, cfg, tmp_path / "killed")
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["bad_epochs"] == 1
    revive()
    monkeypatch.setattr(trainer_module, "_evaluate_graph", scripted(3))
    resumed = fit(fake_graph, cfg, tmp_path / "killed")
    assert (resumed["stopped_early"], resumed["epochs_run"], resumed["best_epoch"]) == (True, 3, 1)


def test_rmse_averages_over_the_tasks_that_have_labels():
    """As OGB's Evaluator: a task without any label in the split is left out of the mean,
    not counted as a task of error 0."""
    nan = float("nan")
    y = torch.tensor([[1.0, nan], [2.0, nan], [3.0, nan]])
    p = torch.tensor([[2.0, 0.0], [3.0, 0.0], [4.0, 0.0]])
    assert rmse(y, p) == pytest.approx(1.0)


def test_an_all_nan_run_has_no_best_epoch_and_stops_at_patience(fake_graph, monkeypatch):
    """A diverged model scores NaN every epoch: no epoch becomes the best one, and a NaN epoch
    is not an improvement, so patience stops the run."""
    monkeypatch.setattr(
        trainer_module, "_evaluate_graph", lambda task, model, split, config, env: math.nan
    )
    r = fit(replace(fake_graph, metric="rmse"), _config(epochs=4, patience=2), None)
    assert r["best_epoch"] is None and r["best"] is None
    assert r["stopped_early"] and r["epochs_run"] == 2


def test_an_improvement_restarts_the_early_stopping_count(fake_graph, monkeypatch):
    """patience counts the epochs since the last improvement, not all epochs without one."""
    values = iter(v for v in [0.8, 0.7, 0.9, 0.6, 0.5, 0.95] for _ in ("valid", "test"))
    monkeypatch.setattr(
        trainer_module, "_evaluate_graph", lambda task, model, split, config, env: next(values)
    )
    r = fit(fake_graph, _config(epochs=6, patience=2), None)
    # epoch 3 improves: epochs 4 and 5 run, then two epochs without improvement stop the run
    assert (r["stopped_early"], r["epochs_run"], r["best_epoch"]) == (True, 5, 3)


class _ZeroLogit(torch.nn.Module):
    """Logit 0 for every graph (BCE = log 2 on every label); records its training batches."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.train_batches = []

    def forward(self, batch):
        if self.training:
            self.train_batches.append(batch.num_graphs)
        return self.w * torch.zeros(batch.num_graphs, 1)


def test_train_loss_is_the_mean_over_graphs_and_one_graph_batches_are_skipped(fake_graph):
    model = _ZeroLogit()
    n = len(fake_graph.splits["train"])
    r = fit(fake_graph, _config(epochs=1, batch_size=n - 1), None, model_factory=lambda: model)
    assert model.train_batches == [n - 1]  # the last batch holds one graph: skipped
    assert r["history"][0]["train_loss"] == pytest.approx(math.log(2.0))
