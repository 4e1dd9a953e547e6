"""examples/continual.py end to end on a tiny budget: table, JSON and PNG are written."""

from __future__ import annotations

import json
import math

import pytest


def test_example_writes_table_json_and_png(tmp_path, load_example, capsys):
    mod = load_example("continual")
    out = tmp_path / "run"
    argv = ["--stream", "split-digits", "--num-tasks", "2", "--methods", "rnn,ewc"]
    argv += ["--seeds", "0,1", "--iterations", "5", "--out", str(out)]
    assert mod.main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in data["runs"]} == {"rnn", "ewc"}
    assert len(data["runs"]) == 4 and "machine" in data and "command" in data
    rnn = data["summary"]["rnn"]
    assert rnn["seeds"] == [0, 1] and rnn["sizes"]["hnet_shared"] < rnn["sizes"]["target_weights"]
    table = (out / "results.md").read_text()
    assert "| rnn |" in table and "| ewc |" in table and "±" in table
    for m in ("rnn", "ewc"):
        assert (out / f"accuracy_matrix_{m}.png").stat().st_size > 1000
    assert all(r["target"]["dropout"] == 0.0 for r in data["runs"])
    merged = tmp_path / "merged"
    assert mod.main(["--merge", str(out / "results.json"), "--out", str(merged)]) == 0
    assert (merged / "results.md").read_text().count("| rnn | 2 |") == 1
    for m in ("rnn", "ewc"):  # BENCHMARKS.md: --merge combines into a table and the PNGs
        assert (merged / f"accuracy_matrix_{m}.png").stat().st_size > 1000
    # runs of another setting (here target dropout) are not averaged in silently
    other = tmp_path / "dropout"
    argv = ["--stream", "split-digits", "--num-tasks", "2", "--methods", "rnn", "--seeds", "2"]
    assert mod.main([*argv, "--iterations", "5", "--dropout", "0.1", "--out", str(other)]) == 0
    assert json.loads((other / "results.json").read_text())["runs"][0]["target"]["dropout"] == 0.1
    paths = [str(out / "results.json"), str(other / "results.json")]
    with pytest.raises(SystemExit):
        mod.main(["--merge", *paths, "--out", str(merged)])
    assert "differ in target.dropout: 0.0 vs 0.1" in capsys.readouterr().err
    # nor are validation-split runs averaged with test-set runs
    val = tmp_path / "val"
    argv[-1] = "1"  # seed 1
    assert mod.main([*argv, "--iterations", "5", "--validation", "0.2", "--out", str(val)]) == 0
    with pytest.raises(SystemExit):
        mod.main(
            ["--merge", str(out / "results.json"), str(val / "results.json"), "--out", str(merged)]
        )
    assert "data.validation: None vs 0.2" in capsys.readouterr().err
    # records from before the target and data settings were stored: merged, with a warning
    legacy = [{k: v for k, v in r.items() if k not in ("target", "data")} for r in data["runs"]]
    assert mod.summarize_runs(legacy)["rnn"]["seeds"] == [0, 1]
    assert "cannot be checked" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an unreadable file is named
        mod.main(["--merge", str(tmp_path / "missing.json"), "--out", str(merged)])
    assert "missing.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dropout", "1.0"], "--dropout must be in"),
        (["--dropout", "-0.1"], "--dropout must be in"),
        (["--dropout", "0.2", "--stream", "graphs"], "MLP targets only"),
        (["--rnn-hidden-size", "0"], "--rnn-hidden-size must be"),
        (["--rnn-hidden-size", "8", "--methods", "ewc"], "applies to the rnn methods"),
        (["--rnn-chunk-size", "0"], "--rnn-chunk-size must be"),
        (["--output-lr-scale", "0"], "--output-lr-scale must be"),
        (["--output-lr-scale", "nan"], "--output-lr-scale must be"),
        (["--output-lr-scale", "10", "--methods", "ewc,si"], "--output-lr-scale applies"),
        (["--target-weight-decay", "-1"], "--target-weight-decay must be"),
        (["--target-weight-decay", "nan"], "--target-weight-decay must be"),
        (["--target-weight-decay", "1e-4", "--methods", "ewc"], "--target-weight-decay applies"),
        (["--rnn-chunking", "rows", "--methods", "chunked"], "--rnn-chunking applies"),
        (["--num-tasks", "0"], "--num-tasks must be"),
        (["--num-tasks", "6"], "stream 'split-digits' has at most 5 tasks"),
        # the largest number of tasks, and a decay of 0, pass on to the next check
        (["--num-tasks", "5", "--lr", "0"], "--lr must be a positive number"),
        (["--num-tasks", "10", "--stream", "graphs", "--lr", "0"], "--lr must be a positive"),
        (["--target-weight-decay", "0", "--lr", "0"], "--lr must be a positive number"),
        (["--num-tasks", "11", "--stream", "graphs"], "stream 'graphs' has at most 10 tasks"),
        (["--data-dir", "/nowhere"], "--data-dir applies to the MNIST streams"),
        (["--data-dir", "/nowhere", "--stream", "graphs"], "--data-dir applies to the MNIST"),
        # numbers the methods would refuse only after the data is loaded (and after the
        # methods listed before theirs have trained)
        (["--methods", "ewc,rnn", "--beta", "-1"], "--beta must be a finite number >= 0"),
        (["--hidden-beta", "-1"], "--hidden-beta must be a finite number >= 0"),
        (["--chunked-beta", "nan"], "--chunked-beta must be a finite number >= 0"),
        (["--fisher-floor", "-1", "--reg-weighting", "fisher"], "--fisher-floor must be"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--iterations", "0"], "--iterations must be a positive integer"),
        (["--lr", "0"], "--lr must be a positive number"),
        (["--lr", "inf"], "--lr must be a positive number"),
        (["--seeds", "0,x"], "--seeds must be comma-separated integers"),
        (["--seeds", "0,1,0"], "--seeds repeats a seed"),
        (["--methods", "ewc,si,ewc"], "--methods repeats a method"),
        (["--task-step-embeddings", "-2"], "--task-step-embeddings must be"),
        (["--task-step-embeddings", "4", "--methods", "ewc"], "applies to the rnn methods"),
        (["--hidden-beta", "5", "--methods", "chunked"], "applies to the rnn methods"),
        (["--beta", "0.1", "--methods", "chunked"], "applies to the rnn methods"),
        (
            [
                "--growth-units",
                "3",
                "--growth-threshold",
                "0.9",
                "--growth-iterations",
                "5",
                "--methods",
                "ewc",
            ],
            "applies to the rnn methods",
        ),
        (["--chunked-beta", "0.1", "--methods", "rnn"], "--chunked-beta applies"),
        (["--threads", "0"], "--threads must be a positive integer"),
        (["--fisher-floor", "5", "--methods", "finetune"], "--fisher-floor applies to the hyp"),
        (["--reg-weighting", "fisher", "--methods", "ewc"], "--reg-weighting applies"),
        (["--train-old-embeddings", "--methods", "si"], "--train-old-embeddings applies"),
        (["--fisher-floor", "5", "--reg-weighting", "uniform"], "with Fisher weighting"),
        # flags that would be accepted and then do nothing
        (["--reg-outputs", "all", "--methods", "ewc"], "--reg-outputs applies"),
        (["--fisher-floor", "5", "--methods", "rnn,chunked"], "with Fisher weighting"),
        (["--task-step-embeddings", "4", "--methods", "rnn-nostep"], "--task-step-embeddings"),
        (["--growth-units", "2"], "--growth-units needs"),
        (["--growth-units", "2", "--growth-threshold", "0.9"], "--growth-units needs"),
        (["--growth-units", "-1"], "must be >= 0"),
        (["--growth-threshold", "0.9"], "apply with --growth-units > 0"),
        (["--growth-iterations", "5"], "apply with --growth-units > 0"),
        (["--growth-threshold", "0.9", "--growth-iterations", "5"], "apply with --growth-units"),
        (["--growth-threshold", "0.5", "--methods", "ewc"], "apply with --growth-units > 0"),
        (
            ["--growth-units", "2", "--growth-threshold", "1.5", "--growth-iterations", "3"],
            "--growth-threshold must be in [0, 1]",
        ),
        (
            ["--growth-units", "2", "--growth-threshold", "nan", "--growth-iterations", "3"],
            "--growth-threshold must be in [0, 1]",
        ),
    ],
)
def test_example_rejects_bad_flags_before_loading_data(
    flags, message, load_example, capsys, monkeypatch
):
    mod = load_example("continual")

    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before the flags were checked")

    monkeypatch.setattr(mod, "load_stream", no_data)
    with pytest.raises(SystemExit):
        mod.main(flags)
    assert message in capsys.readouterr().err


def test_example_validation_split_and_regulariser_flags(tmp_path, load_example):
    mod = load_example("continual")
    out = tmp_path / "val"
    argv = ["--stream", "permuted-digits", "--num-tasks", "2", "--methods", "rnn,chunked"]
    argv += ["--seeds", "0", "--iterations", "3", "--validation", "0.2", "--out", str(out)]
    argv += ["--reg-weighting", "fisher", "--fisher-floor", "0.5", "--reg-outputs", "all"]
    argv += ["--train-old-embeddings", "--task-step-embeddings", "4"]
    assert mod.main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    for run in data["runs"]:
        cfg = run["config"]
        assert (cfg["reg_weighting"], cfg["fisher_floor"], cfg["reg_outputs"]) == (
            "fisher",
            0.5,
            "all",
        )
        assert cfg["train_old_embeddings"] is True
        # per-task step vectors of 4 numbers for the RNN only (the chunked one has none)
        rnn = run["method"] == "rnn"
        assert cfg["hnet"].get("conditional_step_embeddings", False) is rnn
        assert cfg["hnet"].get("step_dim", 4) == 4
    assert "Validation split" in (out / "results.md").read_text()
    # a method's preset may set its own learning rate; --lr overrides it
    preset = {"train": {"lr": 5e-4}, "rnn": {"lr": 1e-3}}
    assert mod.method_lr(preset, "rnn", None) == 1e-3
    assert mod.method_lr(preset, "rnn-nostep", None) == 1e-3
    assert mod.method_lr(preset, "ewc", None) == 5e-4
    assert mod.method_lr(preset, "rnn", 2e-3) == 2e-3


def test_split_mnist_rnn_preset_trains_longer_than_the_published_methods(load_example):
    mod = load_example("continual")
    preset = mod.PRESETS["split-mnist"]
    assert mod.method_iterations(preset, "rnn", None) == 10_000
    assert mod.method_iterations(preset, "chunked", None) == 5000  # PR-CL's published setting
    assert mod.method_iterations(preset, "rnn", 300) == 300  # --iterations wins
    assert mod.method_lr(preset, "rnn", None) == 1e-3 and mod.method_lr(preset, "ewc", None) == 5e-4


def test_split_mnist_rnn_preset_decays_the_generated_weights(load_example):
    """The twenty-fifth session's choice: target_weight_decay 1e-4 for Split-MNIST's RNN
    hypernetwork only (the chunked baseline keeps PR-CL's setting); the flag overrides it."""
    from argparse import Namespace

    mod = load_example("continual")

    def built(method, stream="split-mnist", **kw):
        args = Namespace(
            reg_outputs="used", reg_weighting=None, fisher_floor=None, beta=None,
            chunked_beta=None, hidden_beta=0.0, growth_units=0, growth_threshold=0.0,
            train_old_embeddings=None, task_step_embeddings=None, dropout=None,
            rnn_hidden_size=None, rnn_chunk_size=None, rnn_chunking=None, output_lr_scale=None,
            target_weight_decay=None,
        )  # fmt: skip
        for k, v in kw.items():
            setattr(args, k, v)
        return mod.build(method, mod.PRESETS[stream], 5, 0, args)

    assert built("rnn").target_weight_decay == 1e-4
    assert built("rnn", target_weight_decay=0.0).target_weight_decay == 0.0
    assert built("chunked").target_weight_decay == 0.0
    assert built("rnn", "permuted-mnist").target_weight_decay == 0.0


def test_permuted_mnist_rnn_preset_and_its_overrides(load_example):
    from argparse import Namespace

    mod = load_example("continual")
    preset = mod.PRESETS["permuted-mnist"]
    base = {"reg_outputs": "used", "reg_weighting": None, "fisher_floor": None, "beta": None,
            "hidden_beta": 0.0, "growth_units": 0, "growth_threshold": 0.0}  # fmt: skip

    def method(**kw):
        args = Namespace(**base, train_old_embeddings=None, task_step_embeddings=None,
                         dropout=None, rnn_hidden_size=None)  # fmt: skip
        for k, v in kw.items():
            setattr(args, k, v)
        return mod.build("rnn", preset, 10, 0, args)

    def config(**kw):
        return method(**kw).config()

    cfg = config()  # the preset chosen on the validation split
    assert cfg["train_old_embeddings"] is True and cfg["reg_weighting"] == "fisher"
    assert cfg["hnet"]["conditional_step_embeddings"] and cfg["hnet"]["step_dim"] == 23
    assert mod.method_iterations(preset, "rnn", None) == 10_000
    assert mod.method_iterations(preset, "chunked", None) == 5000
    cfg = config(train_old_embeddings=False, task_step_embeddings=0)  # the flags turn both off
    assert cfg["train_old_embeddings"] is False
    assert not cfg["hnet"]["conditional_step_embeddings"] and cfg["hnet"]["step_dim"] == 32
    assert method().target.dropout == 0.0 and method(dropout=0.2).target.dropout == 0.2
    with pytest.raises(ValueError, match="--dropout"):  # not silently ignored on a GNN target
        mod.build("rnn", mod.PRESETS["graphs"], 2, 0,
                  Namespace(**base, dropout=0.2, rnn_hidden_size=None))  # fmt: skip
    assert method(rnn_hidden_size=40).config()["hnet"]["hidden_size"] == 40
    assert cfg["hnet"]["chunking"] == "flat" and cfg["hnet"]["chunk_size"] == 750
    assert cfg["output_lr_scale"] == 1.0 and config(output_lr_scale=10.0)["output_lr_scale"] == 10
    assert cfg["target_weight_decay"] == 0.0
    assert config(target_weight_decay=1e-4)["target_weight_decay"] == 1e-4
    rows = method(rnn_chunking="rows", rnn_chunk_size=785).hnet
    assert rows.config()["chunking"] == "rows" and rows.chunk_size == 785
    heads = rows.spec.layer_sizes()[-1] // 101  # output units of the last layer
    # one first-layer unit (784 weights and a bias) per step, then 7 units of 101 per step
    assert rows.num_steps == 100 + math.ceil(100 / 7) + math.ceil(heads / 7)


@pytest.mark.parametrize("stream", ["permuted-mnist", "split-mnist"])
def test_rnn_preset_has_no_more_hypernetwork_parameters_than_the_chunked_baseline(
    stream, load_example
):
    """The issue's bar compares at "no more hypernetwork parameters than that chunked
    hypernetwork": shared parameters and shared plus every task's embeddings."""
    from argparse import Namespace

    mod = load_example("continual")
    preset = mod.PRESETS[stream]
    num_tasks = 10 if stream == "permuted-mnist" else 5
    args = Namespace(
        reg_outputs="used", reg_weighting=None, fisher_floor=None, beta=None, chunked_beta=None,
        hidden_beta=0.0, growth_units=0, growth_threshold=0.0, train_old_embeddings=None,
        task_step_embeddings=None, dropout=None, rnn_hidden_size=None,
    )  # fmt: skip

    def sizes(method):
        m = mod.build(method, preset, num_tasks, 0, args)
        for _ in range(num_tasks):  # every task's embeddings, as after the stream
            m.hnet.add_task()
        return mod.sizes(m)

    rnn, chunked = sizes("rnn"), sizes("chunked")
    assert rnn["hnet_shared"] <= chunked["hnet_shared"]
    assert rnn["hnet_total"] <= chunked["hnet_total"]
    if stream == "permuted-mnist":  # the figures BENCHMARKS.md reports
        assert (rnn["hnet_shared"], rnn["hnet_total"]) == (79_726, 110_636)
        assert (chunked["hnet_shared"], chunked["hnet_total"]) == (90_750, 112_190)


def test_example_merges_seeds_that_grew_differently(tmp_path, load_example):
    """Growth changes the hypernetwork by a seed-dependent amount; the runs are one setting
    (the config they started from) and the table reports the largest grown size."""
    mod = load_example("continual")
    out = tmp_path / "grow"
    argv = ["--stream", "split-digits", "--num-tasks", "2", "--methods", "rnn"]
    argv += ["--seeds", "0,1,2,3", "--iterations", "40", "--out", str(out)]
    argv += ["--growth-units", "2", "--growth-threshold", "0.995", "--growth-iterations", "5"]
    assert mod.main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    grown = {r["final_config"]["hnet"]["hidden_size"] for r in data["runs"]}
    assert len(grown) > 1  # else this test no longer exercises what it names
    assert {r["config"]["hnet"]["hidden_size"] for r in data["runs"]} == {24}
    largest = max(r["sizes"]["trainable"] for r in data["runs"])
    assert data["summary"]["rnn"]["sizes"]["trainable"] == largest
    merged = tmp_path / "merged"
    assert mod.main(["--merge", str(out / "results.json"), "--out", str(merged)]) == 0


def test_growth_flags_leave_the_methods_that_cannot_grow_as_they_were(tmp_path, load_example):
    """Only the rnn methods grow: the other methods' runs record growth_iterations 0, so
    they merge with the same methods' runs of an invocation without growth flags."""
    mod = load_example("continual")
    base = ["--stream", "split-digits", "--num-tasks", "2", "--iterations", "3"]
    grow = ["--growth-units", "2", "--growth-threshold", "0.5", "--growth-iterations", "2"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert mod.main([*base, *grow, "--methods", "rnn,ewc", "--seeds", "0", "--out", str(a)]) == 0
    runs = json.loads((a / "results.json").read_text())["runs"]
    assert {r["method"]: r["train"]["growth_iterations"] for r in runs} == {"rnn": 2, "ewc": 0}
    assert mod.main([*base, "--methods", "ewc", "--seeds", "1", "--out", str(b)]) == 0
    merged = tmp_path / "merged"
    paths = [str(a / "results.json"), str(b / "results.json")]
    assert mod.main(["--merge", *paths, "--out", str(merged)]) == 0
    assert "| ewc | 2 |" in (merged / "results.md").read_text()


@pytest.mark.parametrize(
    "stream, method, scale",
    [
        ("split-mnist", "chunked", 30.0),
        ("permuted-mnist", "chunked", 30.0),
        ("permuted-digits", "rnn", 30.0),
        ("permuted-digits", "chunked-eq", 30.0),
        ("split-mnist", "rnn", 1.0),  # tried at 10 on this stream, not taken
        ("permuted-mnist", "rnn", 1.0),
        ("permuted-digits", "full", 1.0),  # not tuned; the README says so
    ],
)
def test_presets_output_lr_scale_and_its_override(stream, method, scale, load_example):
    from argparse import Namespace

    mod = load_example("continual")
    preset = mod.PRESETS[stream]

    def built(**kw):
        args = Namespace(
            reg_outputs="used", reg_weighting=None, fisher_floor=None, beta=None,
            chunked_beta=None, hidden_beta=0.0, growth_units=0, growth_threshold=0.0,
            train_old_embeddings=None, task_step_embeddings=None, dropout=None,
            rnn_hidden_size=None, rnn_chunk_size=None, rnn_chunking=None, output_lr_scale=None,
        )  # fmt: skip
        for k, v in kw.items():
            setattr(args, k, v)
        return mod.build(method, preset, 2, 0, args)

    assert built().output_lr_scale == scale
    assert built(output_lr_scale=1.0).output_lr_scale == 1.0  # the flag wins


@pytest.mark.parametrize(
    "stream, tasks, match",
    [("permuted-digits", 10, True), ("split-digits", 5, True), ("graphs", 4, True),
     ("permuted-mnist", 10, False), ("split-mnist", 5, False)],
)  # fmt: skip
def test_chunked_eq_size_is_as_documented(stream, tasks, match, load_example):
    """The docstring says where chunked-eq matches the RNN preset's shared parameter count."""
    from argparse import Namespace

    mod = load_example("continual")
    args = Namespace(
        reg_outputs=None, reg_weighting=None, fisher_floor=None, beta=None, chunked_beta=None,
        hidden_beta=0.0, growth_units=0, growth_threshold=0.0, train_old_embeddings=None,
        task_step_embeddings=None, dropout=None, rnn_hidden_size=None, rnn_chunk_size=None,
        rnn_chunking=None, output_lr_scale=None,
    )  # fmt: skip
    rnn, eq = (mod.build(m, mod.PRESETS[stream], tasks, 0, args) for m in ("rnn", "chunked-eq"))
    ratio = eq.hnet.num_shared_parameters() / rnn.hnet.num_shared_parameters()
    assert (abs(ratio - 1) < 0.01) == match, ratio
    if not match:
        assert f"{eq.hnet.num_shared_parameters():,}" in mod.__doc__


def test_merge_refuses_a_run_counted_twice(tmp_path, load_example, capsys):
    """One results.json given twice would be averaged as twice the seeds, with a std of 0."""
    mod = load_example("continual")
    out = tmp_path / "run"
    argv = ["--stream", "split-digits", "--num-tasks", "2", "--methods", "finetune"]
    assert mod.main([*argv, "--seeds", "0", "--iterations", "2", "--out", str(out)]) == 0
    path = str(out / "results.json")
    with pytest.raises(SystemExit):
        mod.main(["--merge", path, path, "--out", str(tmp_path / "merged")])
    assert "repeat seed(s) [0]" in capsys.readouterr().err


def test_max_tasks_are_the_loaders_limits(load_example):
    mod = load_example("continual")
    for name, most in mod.MAX_TASKS.items():
        if name not in ("split-digits", "graphs"):
            continue  # MNIST needs its file; 1,000 permutations are slow to build
        assert len(mod.load_stream(name, None, most)) == most
        with pytest.raises(ValueError):
            mod.load_stream(name, None, most + 1)


@pytest.mark.parametrize(
    "flags", [["--stream", "permuted-digits"], ["--seeds", "7"], ["--validation", "0.2"]]
)
def test_merge_refuses_run_flags_it_would_ignore(flags, tmp_path, load_example, capsys):
    mod = load_example("continual")
    with pytest.raises(SystemExit):
        mod.main(["--merge", str(tmp_path / "a.json"), *flags, "--out", str(tmp_path / "m")])
    assert f"{flags[0]} would be ignored" in capsys.readouterr().err


def test_merge_accepts_records_written_before_target_weight_decay(load_example):
    """A results.json written before the option existed has no config.target_weight_decay;
    those runs trained without it, so they merge with runs at the default 0.0."""
    mod = load_example("continual")

    def run(seed, **extra):
        return {"method": "rnn", "seed": seed, "config": {"kind": "hnet", "beta": 0.1, **extra},
                "target": {}, "train": {"iterations": 2}, "data": {}, "wall_s": 1.0,
                "sizes": {"trainable": 1}, "metrics": {"acc": 0.9}}  # fmt: skip

    summary = mod.summarize_runs([run(0), run(1, target_weight_decay=0.0)])
    assert summary["rnn"]["seeds"] == [0, 1]
    with pytest.raises(ValueError, match="target_weight_decay"):
        mod.summarize_runs([run(0), run(1, target_weight_decay=1e-4)])


def test_docstrings_cite_benchmark_sessions_that_exist():
    """A docstring's "(``BENCHMARKS.md``, <n>th session)" names a section BENCHMARKS.md has."""
    import re
    from pathlib import Path

    import graphseq.continual.methods as methods

    root = Path(__file__).resolve().parents[2]
    headings = " ".join(
        line.lower() for line in (root / "BENCHMARKS.md").read_text().splitlines()
        if line.startswith("#")
    )  # fmt: skip
    cited = re.findall(r"BENCHMARKS\.md``, ([a-z-]+) session", Path(methods.__file__).read_text())
    assert cited
    missing = [c for c in cited if f"{c} session" not in headings]
    assert not missing, missing
    readme = (root / "graphseq/continual/README.md").read_text()
    assert (
        "target_weight_decay" in readme
        and "target_weight_decay" in (root / "CHANGELOG.md").read_text()
    )
