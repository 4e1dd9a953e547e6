"""examples/minesweeper.py: flags checked before the graph is loaded; the summary records the
command, the settings and the machine."""

from __future__ import annotations

import json

import pytest


def test_minesweeper_example_refuses_bad_flags_before_loading(load_example, tmp_path, capsys):
    mod = load_example("minesweeper")
    # a missing data folder: a check made after loading would fail on the file instead
    base = ["--data-dir", str(tmp_path / "nowhere"), "--models", "sage", "--out", str(tmp_path)]
    for argv, flag in ((["--splits", "0", "10"], "--splits"), (["--splits", "1", "1"], "--splits"),
                       (["--epochs", "0"], "--epochs"), (["--lr", "-1"], "--lr")):  # fmt: skip
        with pytest.raises(SystemExit):
            mod.main([*base, *argv])
        assert f"{flag} must be" in capsys.readouterr().err


def test_minesweeper_example_summary_records_the_run(load_example, tmp_path, monkeypatch):
    """The trainer and the data are stubbed: only the summary file is under test."""
    mod = load_example("minesweeper")
    data = tmp_path / "data"
    monkeypatch.setattr(mod, "fit", lambda task, config, out: {
        "best": {"test": 0.5, "valid": 0.5}, "best_epoch": 1, "num_parameters": 1,
        "mean_epoch_time_s": 0.0})  # fmt: skip
    monkeypatch.setattr(mod, "heterophilous_task", lambda name, split, data_dir: type(
        "T", (), {"name": name})())  # fmt: skip
    mod.main(["--data-dir", str(data), "--models", "sage", "--splits", "0", "--epochs", "3",
              "--out", str(tmp_path)])  # fmt: skip
    summary = json.loads((tmp_path / "minesweeper" / "summary_sage.json").read_text())
    assert summary["sage"]["scores"] == [0.5]
    run = summary["_run"]
    assert run["args"]["epochs"] == 3 and "--epochs" in run["command"] and run["machine"]["torch"]
