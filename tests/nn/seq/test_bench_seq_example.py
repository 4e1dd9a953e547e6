"""examples/bench_seq.py: bad flags refused before anything is timed; the nn.GRU row is checked
against the GRUCell loop like the other pairs (it ran its own random weights, unchecked)."""

from __future__ import annotations

import pytest


def test_bench_seq_refuses_bad_flags_before_timing(load_example, tmp_path, capsys, monkeypatch):
    mod = load_example("bench_seq")
    monkeypatch.setattr(mod, "bench_gru", lambda *a: pytest.fail("timed before the check"))
    for argv, flag in ((["--threads", "0"], "--threads"), (["--gru-shapes", "1,4"], "--gru-shapes"),
                       (["--aaren-shapes", "1,4,3"], "--aaren-shapes")):  # fmt: skip
        with pytest.raises(SystemExit):
            mod.main([*argv, "--out", str(tmp_path / "b.json")])
        assert flag in capsys.readouterr().err


def test_bench_seq_checks_the_nn_gru_row(load_example):
    mod = load_example("bench_seq")
    rows = mod.bench_gru(1, 16, 4, 4, 1, 1)
    gru = next(r for r in rows if r["case"].startswith("torch.nn.GRU"))
    assert "FAILED" not in gru["check"]
    assert float(gru["check"].split("= ")[1]) <= 1e-5


def test_bench_seq_rows_record_their_timed_runs(load_example, monkeypatch):
    """The baselines are timed --seq-repeats times, not --repeats: each row says how often."""
    mod = load_example("bench_seq")
    calls = []
    real = mod.timeit
    monkeypatch.setattr(mod, "timeit", lambda fn, n: calls.append(n) or real(fn, n))
    rows = mod.bench_gru(1, 8, 4, 4, 3, 1) + mod.bench_aaren(1, 8, 4, 2, 2)
    assert sorted(r["runs"] for r in rows) == sorted(calls)
    by_case = {r["case"].split(" (")[0]: r["runs"] for r in rows}
    assert by_case["GRUCell loop"] == by_case["torch.nn.GRU"] == 1
    assert by_case["ParallelGRU diagonal, sequential mode"] == 1
    assert by_case["ParallelGRU full"] == by_case["ParallelGRU diagonal"] == 3
