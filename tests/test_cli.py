"""The ``graphseq`` command: list, run, submit (resumable), bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from graphseq import cli
from graphseq.train import runner as runner_module

FAST = ["--epochs", "2", "--hidden", "16", "--layers", "2", "--no-progress", "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_list_shows_benchmarks_and_models(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("chembl2321810", "ogbg-molhiv", "ogbg-molesol", "ogbg-molfreesolv", "fake-graph"):
        assert name in out
    assert "gin-vn" in out and "hidden=300" in out


@pytest.mark.parametrize(
    "argv, valid",
    [
        (["run", "ogbg-molfoo"], "valid benchmarks: chembl2321810, ogbg-molhiv"),
        (["run", "fake-graph", "--model", "gcn"], "valid models: gat, gin, gin-vn, gps, gsm"),
        (["submit", "ogbg-molfoo", "--model", "gin"], "valid benchmarks:"),
    ],
)
def test_unknown_names_list_valid_ones(argv, valid, capsys, tmp_path):
    assert cli.main([*argv, "--out", str(tmp_path)]) == 2
    assert valid in capsys.readouterr().err


def test_run_prints_table_and_writes_results(capsys, tmp_path):
    assert cli.main(["run", "fake-graph", "--seeds", "2", "--out", str(tmp_path), *FAST]) == 0
    out = capsys.readouterr().out
    assert "mean ± std" in out and "valid rocauc" in out
    summary = json.loads((tmp_path / "fake-graph/gin/summary.json").read_text())
    assert summary["summary"]["seeds"] == [0, 1]
    assert (tmp_path / "fake-graph/gin/seed1/curves.png").exists()


def test_submit_killed_after_one_seed_resumes_the_rest(capsys, tmp_path, monkeypatch):
    real_fit = runner_module.fit
    calls = []

    def killed_during_seed_1(task, cfg, out_dir, **kw):
        calls.append(cfg.seed)
        if cfg.seed == 1:
            raise KeyboardInterrupt  # what Ctrl-C or a scheduler's SIGINT looks like
        return real_fit(task, cfg, out_dir, **kw)

    argv = ["submit", "fake-graph", "--model", "gin", "--seeds", "3", "--out", str(tmp_path), *FAST]
    monkeypatch.setattr(runner_module, "fit", killed_during_seed_1)
    assert cli.main(argv) == 130
    assert "rerun the same command" in capsys.readouterr().err
    seed0 = tmp_path / "fake-graph/gin/seed0/results.json"
    before = seed0.read_bytes()
    assert not (tmp_path / "fake-graph/gin/submission.json").exists()

    trained = []

    def records_training(task, cfg, out_dir, **kw):
        if not (out_dir / "results.json").exists():
            trained.append(cfg.seed)
        return real_fit(task, cfg, out_dir, **kw)

    monkeypatch.setattr(runner_module, "fit", records_training)
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert trained == [1, 2]  # only the unfinished seeds were trained
    assert "seed 0: finished earlier, skipped" in out
    assert seed0.read_bytes() == before
    sub = json.loads((tmp_path / "fake-graph/gin/submission.json").read_text())
    assert [s["seed"] for s in sub["seeds"]] == [0, 1, 2]
    assert sub["num_parameters"] > 0 and sub["command"] and sub["test_std"] is not None
    md = (tmp_path / "fake-graph/gin/submission.md").read_text()
    assert "| Method | Test rocauc | Validation rocauc | #Params | Hardware |" in md


def test_submission_names_the_data_source_and_the_ogb_version(tmp_path):
    """OGB's leaderboard form asks for the OGB version, and a molecular benchmark's graphs come
    from an OGB download or a rebuilt MoleculeNet CSV: the submission says both."""
    from importlib.metadata import version

    sub = runner_module.submit(
        "fake-graph", "gin", seeds=1, out_dir=tmp_path, log=lambda *a: None, epochs=1,
        model_args={"hidden": 8, "layers": 1}, progress=False,
    )  # fmt: skip
    assert sub["data"] == "PyG FakeDataset, seed 0"
    assert sub["ogb_version"] == version("ogb")
    md = (tmp_path / "fake-graph/gin/submission.md").read_text()
    assert f"Data: PyG FakeDataset, seed 0; OGB {version('ogb')}." in md


def test_an_output_folder_that_cannot_be_made_is_an_error_not_a_traceback(capsys, tmp_path):
    """--out (or --cache-dir, or a read-only home) that cannot be written: one line naming the
    path and the flags, as for the other errors, not a traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = ["run", "fake-graph", "--seeds", "1", "--out", str(blocker / "out"), *FAST]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert str(blocker) in err and "--out" in err and "--cache-dir" in err


def test_corrupted_results_file_is_reported_and_kept(capsys, tmp_path):
    assert cli.main(["run", "fake-graph", "--seeds", "2", "--out", str(tmp_path), *FAST]) == 0
    capsys.readouterr()
    bad = tmp_path / "fake-graph/gin/seed1/results.json"
    bad.write_text("{ truncated")
    good = (tmp_path / "fake-graph/gin/seed0/results.json").read_bytes()
    assert cli.main(["run", "fake-graph", "--seeds", "2", "--out", str(tmp_path), *FAST]) == 3
    err = capsys.readouterr().err
    assert "seed1/results.json is unreadable" in err and "Delete it to rerun this seed" in err
    assert bad.read_text() == "{ truncated"
    assert (tmp_path / "fake-graph/gin/seed0/results.json").read_bytes() == good


def test_corrupted_checkpoint_is_reported(capsys, tmp_path):
    ckpt = tmp_path / "fake-graph/gin/seed0/checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"\x00" * 100)
    assert cli.main(["run", "fake-graph", "--seeds", "1", "--out", str(tmp_path), *FAST]) == 3
    assert "checkpoint.pt is unreadable" in capsys.readouterr().err
    assert ckpt.read_bytes() == b"\x00" * 100


@pytest.mark.slow
def test_submit_survives_sigkill(tmp_path):
    """A real kill -9 after the first seed; the rerun trains only the remaining seeds."""
    argv = [sys.executable, "-m", "graphseq.cli", "submit", "fake-graph", "--model", "gin",
            "--seeds", "3", "--out", str(tmp_path), "--epochs", "40", "--hidden", "16",
            "--no-progress"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path
    )
    seed0 = tmp_path / "fake-graph/gin/seed0/results.json"
    deadline = time.time() + 240
    while not seed0.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert seed0.exists() and not (tmp_path / "fake-graph/gin/seed2/results.json").exists()
    before = seed0.read_bytes()
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "seed 0: finished earlier, skipped" in out.stdout
    assert "seed 1: done" in out.stdout and "seed 2: done" in out.stdout
    assert seed0.read_bytes() == before


def test_run_schedule_flags_and_a_default_warmup_shortened_to_fit(capsys, tmp_path, monkeypatch):
    argv = ["run", "fake-graph", "--seeds", "1", "--out", str(tmp_path / "a"), *FAST]
    assert cli.main([*argv, "--schedule", "cosine", "--warmup-epochs", "1",
                     "--weight-decay", "1e-4"]) == 0  # fmt: skip
    cfg = json.loads((tmp_path / "a/fake-graph/gin/seed0/results.json").read_text())["config"]
    assert (cfg["schedule"], cfg["warmup_epochs"], cfg["weight_decay"]) == ("cosine", 1, 1e-4)
    assert "(cosine, warm-up 1), weight decay 0.0001" in capsys.readouterr().out
    # a benchmark whose default warm-up (5) does not fit a 2-epoch run gets epochs - 1
    from graphseq.train import get_benchmark

    defaults = get_benchmark("fake-graph").defaults
    monkeypatch.setitem(defaults, "schedule", "cosine")
    monkeypatch.setitem(defaults, "warmup_epochs", 5)
    argv[argv.index(str(tmp_path / "a"))] = str(tmp_path / "b")
    assert cli.main(argv) == 0
    cfg = json.loads((tmp_path / "b/fake-graph/gin/seed0/results.json").read_text())["config"]
    assert (cfg["schedule"], cfg["warmup_epochs"], cfg["epochs"]) == ("cosine", 1, 2)
    # an explicit warm-up that does not fit is an error naming it
    capsys.readouterr()
    assert cli.main([*argv, "--warmup-epochs", "2"]) == 2
    assert "warmup_epochs must be an int in [0, epochs=2), got 2" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, error",
    [
        (["--model-arg", "foo=1"], "unknown hyperparameters ['foo']"),
        (["--dropout", "2"], "dropout must be in [0, 1)"),
        (["--lr", "nan"], "lr must be a finite number"),
        (["--weight-decay", "-1"], "weight_decay must be a finite number >= 0, got -1.0"),
        (["--weight-decay", "nan"], "weight_decay must be a finite number >= 0, got nan"),
    ],
)
def test_a_bad_flag_on_a_rerun_is_named_not_blamed_on_the_results(flags, error, capsys, tmp_path):
    """A finished run in --out: a typo must not read as 'different settings; delete it'."""
    assert cli.main(["run", "fake-graph", "--out", str(tmp_path), *FAST]) == 0
    capsys.readouterr()
    assert cli.main(["run", "fake-graph", "--out", str(tmp_path), *FAST, *flags]) == 2
    err = capsys.readouterr().err
    assert error in err and "different settings" not in err


def test_batch_size_on_a_full_graph_benchmark_is_refused(capsys, tmp_path):
    assert cli.main(["run", "fake-node", "--out", str(tmp_path), "--batch-size", "8"]) == 2
    assert "batch_size: benchmark 'fake-node' trains on its one graph" in capsys.readouterr().err
    assert cli.main(["run", "fake-node", "--out", str(tmp_path), *FAST]) == 0
    assert "full graph" in capsys.readouterr().out


def test_recorded_command_under_torchrun_reproduces_the_run(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(sys, "argv", ["/x/graphseq/cli.py", "submit", "fake-graph", "--seeds", "2"])
    assert runner_module._command() == (
        "torchrun --nproc_per_node=2 -m graphseq.cli submit fake-graph --seeds 2"
    )
    # a script keeps its own path (it used to be replaced by -m graphseq.cli, which fails)
    monkeypatch.setattr(sys, "argv", ["examples/ogb_submit.py", "fake-graph", "--seeds", "2"])
    assert runner_module._command() == (
        "torchrun --nproc_per_node=2 examples/ogb_submit.py fake-graph --seeds 2"
    )
    monkeypatch.setenv("WORLD_SIZE", "1")
    # without torchrun a script runs under the interpreter (examples are not executable)
    assert runner_module._command() == "python examples/ogb_submit.py fake-graph --seeds 2"
    monkeypatch.setattr(sys, "argv", ["/venv/bin/graphseq", "submit", "fake-graph"])
    assert runner_module._command() == "graphseq submit fake-graph"


def _seed0_as_if_from_torchrun(monkeypatch):
    """The runner's fit records world size 2 for seed 0 (as a torchrun run would) and 1 for
    the others."""
    real_fit = runner_module.fit

    def fit(task, cfg, seed_dir, **kw):
        r = dict(real_fit(task, cfg, seed_dir, **kw))
        r["world_size"] = 2 if cfg.seed == 0 else 1
        return r

    monkeypatch.setattr(runner_module, "fit", fit)


def test_a_node_level_submission_under_torchrun_records_no_graph_batch(monkeypatch, tmp_path):
    """fake-node is one graph trained whole (--batch-size is refused for it), yet a 2-process
    submission recorded "32 graphs per process and step (64 in all)"."""
    real_fit = runner_module.fit

    def fit(*args, **kwargs):
        return dict(real_fit(*args, **kwargs), world_size=2)

    monkeypatch.setattr(runner_module, "fit", fit)
    sub = runner_module.submit(
        "fake-node", "sage", seeds=1, out_dir=tmp_path, log=lambda *a: None, epochs=1,
        model_args={"hidden": 8, "layers": 1}, progress=False,
    )  # fmt: skip
    assert "2 processes (torchrun)" in sub["protocol"]
    assert "graphs per process" not in sub["protocol"]
    assert "share of the training nodes" in sub["protocol"]


def test_submit_refuses_seeds_of_different_world_sizes(monkeypatch, tmp_path):
    _seed0_as_if_from_torchrun(monkeypatch)
    with pytest.raises(ValueError, match=r"different numbers of processes \{0: 2, 1: 1\}"):
        runner_module.submit(
            "fake-graph", "gin", seeds=2, out_dir=tmp_path, log=lambda *a: None, epochs=1,
            model_args={"hidden": 8, "layers": 1}, progress=False,
        )  # fmt: skip


def test_run_says_when_its_seeds_ran_with_different_world_sizes(monkeypatch, tmp_path):
    """`graphseq run` rerun under torchrun skipped a seed finished by one process and averaged
    it with the new seeds (twice the effective batch) without a word; summary.json did not
    record the world sizes."""
    _seed0_as_if_from_torchrun(monkeypatch)
    said = []
    _, summary = runner_module.run_benchmark(
        "fake-graph", "gin", seeds=2, out_dir=tmp_path, log=said.append, epochs=1,
        model_args={"hidden": 8, "layers": 1}, progress=False,
    )  # fmt: skip
    assert summary["world_sizes"] == {0: 2, 1: 1}
    assert any("different numbers of processes {0: 2, 1: 1}" in line for line in said)
    stored = json.loads((tmp_path / "fake-graph/gin/summary.json").read_text())
    assert stored["summary"]["world_sizes"] == {"0": 2, "1": 1}


def test_a_model_argument_given_twice_with_two_values_is_refused(capsys, tmp_path):
    """--model-arg hidden=8 was silently replaced by --hidden 32."""
    argv = ["run", "fake-graph", "--out", str(tmp_path), "--epochs", "1", "--no-progress"]
    assert cli.main([*argv, "--model-arg", "hidden=8", "--hidden", "32"]) == 2
    assert "--hidden 32 and --model-arg hidden=8 disagree" in capsys.readouterr().err
    assert not (tmp_path / "fake-graph").exists()
    assert cli.main([*argv, "--model-arg", "hidden=8", "--hidden", "8"]) == 0  # the same value


@pytest.mark.parametrize(
    "argv, msg",
    [(["fake-graph", "--seeds", "0"], "--seeds must be >= 1, got 0"),
     (["fake-graph", "--epochs", "0"], "--epochs must be >= 1, got 0"),
     (["fake-graph", "--threads", "0"], "--threads must be >= 1, got 0"),
     (["no-such-benchmark"], "unknown benchmark 'no-such-benchmark'")],
)  # fmt: skip
def test_ogb_submit_example_reports_bad_values_without_a_traceback(
    argv, msg, tmp_path, load_example, capsys
):
    """examples/ogb_submit.py ('the same as graphseq submit') let these escape as tracebacks,
    --epochs and --threads only after the dataset had been loaded."""
    mod = load_example("ogb_submit")
    with pytest.raises(SystemExit) as exc:
        mod.main([*argv, "--out", str(tmp_path)])
    assert exc.value.code == 2 and msg in capsys.readouterr().err


def test_a_stray_rank_variable_does_not_drop_the_submission(capsys, tmp_path, monkeypatch):
    """RANK left in the environment without WORLD_SIZE: the trainer ran as the one process
    (rank 0, results written), but the CLI and submit read RANK themselves, so no submission
    files and no final line were written, with exit status 0."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["submit", "fake-graph", "--seeds", "1", "--out", str(tmp_path), *FAST]
    assert cli.main(argv) == 0
    assert (tmp_path / "fake-graph/gin/submission.json").exists()
    assert (tmp_path / "fake-graph/gin/submission.md").exists()
    assert "wrote " in capsys.readouterr().out


def test_ogb_submit_example_prints_its_line_on_rank_0_only(
    tmp_path, load_example, capsys, monkeypatch
):
    mod = load_example("ogb_submit")
    monkeypatch.setattr(mod, "submit", lambda *a, **k: {"dataset": "x"} | dict.fromkeys(
        ("method", "metric", "test_mean", "test_std", "valid_mean", "valid_std",
         "num_parameters"), 0))  # fmt: skip
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; the group is not initialised
    for rank, lines in (("1", 0), ("0", 1)):
        monkeypatch.setenv("RANK", rank)
        mod.main(["fake-graph", "--out", str(tmp_path)])
        assert len(capsys.readouterr().out.splitlines()) == lines, rank
