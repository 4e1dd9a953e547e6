"""examples/bench_aggr.py's table: ratios only for the LCM rows, and why one is missing."""

from __future__ import annotations

import json

import pytest


def _row(aggr, fwd, fwd_bwd, status="ok"):
    return {"config": "skewed", "aggr": aggr, "status": status, "fwd_ms": fwd,
            "fwd_bwd_ms": fwd_bwd, "fwd_rss_mb": 1.0, "fwd_bwd_rss_mb": 2.0}  # fmt: skip


def _ratio_column(text):
    lines = [line for line in text.splitlines() if line.startswith("| skewed")]
    return {line.split(" | ")[1]: line.split(" | ")[4] for line in lines}


def test_ratio_column(load_example, capsys):
    bench = load_example("bench_aggr")
    bench.print_table([_row("sum", 1.0, 3.0), _row("pyg_lcm", 200.0, 500.0),
                       _row("lcm", 50.0, 100.0)])  # fmt: skip
    col = _ratio_column(capsys.readouterr().out)
    assert col["sum (PyG)"] == "" and col["LCMAggregation (PyG)"] == ""
    assert col["LCMAggregation (graphseq, gru)"] == "0.250x / 0.200x"
    bench.print_table([_row("lcm", 50.0, 100.0)])
    assert _ratio_column(capsys.readouterr().out)["LCMAggregation (graphseq, gru)"] == (
        "PyG LCM not run"
    )
    bench.print_table([_row("pyg_lcm", 0, 0, status="OOM (> 8 GB)"), _row("lcm", 50.0, 100.0)])
    assert _ratio_column(capsys.readouterr().out)["LCMAggregation (graphseq, gru)"] == (
        "PyG LCM failed"
    )


def test_second_minimum_merge_refuses_other_settings_and_records_the_runs_own(
    tmp_path, load_example, capsys
):
    """--merge used to average runs of different settings into one row and to record the
    merge command's own defaults as the settings."""
    mod = load_example("second_minimum")
    curve = [{"epoch": 1, "acc32": 0.5, "acc64": 0.4, "cpu_s": 1.0}]
    settings = {k: 1 for k in mod.MERGE_KEYS}

    def write(name, seed, **override):
        path = tmp_path / f"{name}.json"
        args = {**settings, **override, "seeds": [seed]}
        runs = [{"aggr": "sum", "seed": seed, "curve": curve}]
        path.write_text(json.dumps({"args": args, "runs": runs}))
        return str(path)

    a, b, c = write("a", 0), write("b", 1), write("c", 2, channels=16)
    out = str(tmp_path / "merged")
    mod.main(["--merge", a, b, "--out", out])
    record = json.loads((tmp_path / "merged.json").read_text())["args"]
    assert record["channels"] == 1 and record["seeds"] == [0, 1] and record["merged"] == [a, b]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        mod.main(["--merge", a, c, "--out", out])
    err = capsys.readouterr().err
    assert "was run with other settings" in err and "'channels': (1, 16)" in err


@pytest.mark.parametrize("flag", ["--epochs", "--batch", "--train-sets", "--test-sets"])
def test_second_minimum_refuses_non_positive_counts(flag, tmp_path, load_example, capsys):
    """A zero count used to crash in the scheduler (naming total_steps), divide by zero, or
    (--test-sets 0) report an accuracy of 0 measured on no set at all."""
    mod = load_example("second_minimum")
    small = "--aggrs sum --seeds 0 --workers 1 --epochs 1 --train-sets 64 --test-sets 16".split()
    with pytest.raises(SystemExit):  # the last flag wins
        mod.main([*small, "--channels", "8", flag, "0", "--out", str(tmp_path / "run")])
    assert f"argument {flag}: expected a positive int, got 0" in capsys.readouterr().err


def test_second_minimum_refuses_a_run_counted_twice(tmp_path, load_example, capsys):
    """--merge of two files holding the same (aggregator, seed) run, or --seeds with a repeated
    seed, used to report one run as two seeds (with a spread of 0)."""
    mod = load_example("second_minimum")
    curve = [{"epoch": 1, "acc32": 0.5, "acc64": 0.4, "cpu_s": 1.0}]
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"args": {**{k: 1 for k in mod.MERGE_KEYS}, "seeds": [0]},
                                "runs": [{"aggr": "sum", "seed": 0, "curve": curve}]}))  # fmt: skip
    for argv in (
        ["--merge", str(path), str(path)],
        ["--seeds", "0", "0", "--epochs", "1"],
        [
            "--aggrs",
            "sum",
            "sum",
            "--seeds",
            "0",
            "--epochs",
            "1",
            "--workers",
            "1",
            "--train-sets",
            "8",
            "--test-sets",
            "4",
            "--channels",
            "4",
        ],
    ):
        with pytest.raises(SystemExit):
            mod.main([*argv, "--out", str(tmp_path / "m")])
        err = capsys.readouterr().err
        assert (
            "is in both" in err
            or "--seeds must be distinct" in err
            or "--aggrs must be distinct" in err
        )
    assert not (tmp_path / "m.json").exists()


def test_run_case_never_times_the_warm_up(load_example, monkeypatch):
    """With --repeats 2, or a --budget-s that stops a slow case after one or two runs, the cold
    first call used to be part of the reported median."""
    import time

    import torch

    bench = load_example("bench_aggr")
    calls = []

    class ColdFirst(torch.nn.Module):
        def forward(self, x, index, dim_size):
            calls.append(1)
            if len(calls) == 1:
                t = time.process_time()
                while time.process_time() - t < 0.2:
                    pass
            return torch.zeros(dim_size, x.size(1)).index_add_(0, index, x)

    monkeypatch.setattr(bench, "make_aggr", lambda name, c: ColdFirst())
    for repeats, budget in ((2, 1e9), (7, 0.01)):
        calls.clear()
        assert bench.run_case("skewed", "sum", 4, repeats, budget)["fwd_ms"] < 100


@pytest.mark.parametrize(
    "extra, msg",
    [(["--lr", "-1"], "--lr must be a finite number > 0"),
     (["--lr", "0"], "--lr must be a finite number > 0"),
     (["--lr", "nan"], "--lr must be a finite number > 0"),
     (["--merge", "MISSING"], "--merge: cannot read")],
)  # fmt: skip
def test_second_minimum_refuses_bad_values_by_flag(extra, msg, tmp_path, load_example, capsys):
    """A bad --lr used to be a traceback from inside Adam naming no flag (--lr 0 trained
    nothing and wrote its accuracies), a missing --merge file a bare FileNotFoundError."""
    mod = load_example("second_minimum")
    extra = [str(tmp_path / "missing.json") if a == "MISSING" else a for a in extra]
    small = "--aggrs sum --seeds 0 --workers 1 --epochs 1 --train-sets 8 --test-sets 4".split()
    with pytest.raises(SystemExit):
        mod.main([*small, "--channels", "4", *extra, "--out", str(tmp_path / "run")])
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "run.json").exists()


@pytest.mark.parametrize(
    "flag, value, msg",
    [("--channels", "0", "--channels must be >= 1"), ("--repeats", "0", "--repeats must be >= 1"),
     ("--mem-limit-gb", "-1", "--mem-limit-gb must be a finite number > 0"),
     ("--mem-limit-gb", "0", "--mem-limit-gb must be a finite number > 0"),
     ("--timeout-s", "0", "--timeout-s must be a finite number > 0"),
     ("--budget-s", "nan", "--budget-s must be a finite number > 0")],
)  # fmt: skip
def test_bench_aggr_refuses_bad_numbers_before_launching(
    flag, value, msg, tmp_path, load_example, monkeypatch, capsys
):
    """--mem-limit-gb -1 used to run every case with no address-space limit, 0 reported
    'failed: (no message)', --channels 0 an 'ok' 0.0 ms row, --repeats 0 one timed run."""
    bench = load_example("bench_aggr")
    launched = []
    monkeypatch.setattr(bench, "launch", lambda *a: launched.append(a))
    with pytest.raises(SystemExit):
        bench.main(["--configs", "skewed", "--aggrs", "sum", flag, value,
                    "--out", str(tmp_path / "b.json")])  # fmt: skip
    assert msg in capsys.readouterr().err and launched == []
