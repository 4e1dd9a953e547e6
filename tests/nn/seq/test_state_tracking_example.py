"""examples/state_tracking.py: flags checked before any run trains; the JSON records the
command and the machine."""

from __future__ import annotations

import json

import pytest

TINY = ["--models", "lstm", "--seeds", "0", "--steps", "2", "--batch", "4",
        "--train-length", "8", "--test-lengths", "8", "--test-samples", "8", "--dim", "8",
        "--layers", "1"]  # fmt: skip


def test_state_tracking_refuses_bad_flags_before_training(load_example, tmp_path, capsys):
    mod = load_example("state_tracking")
    trained = []
    real = mod.run_one
    mod.run_one = lambda *a: trained.append(a) or real(*a)
    for argv, flag in ((["--tasks", "parity", "mod1"], "--tasks"),
                       (["--test-lengths", "8", "0"], "--test-lengths"),
                       (["--steps", "0"], "--steps"), (["--threads", "0"], "--threads"),
                       (["--seeds", "0", "0"], "--seeds")):  # fmt: skip
        with pytest.raises(SystemExit):
            mod.main([*TINY, *argv, "--out", str(tmp_path)])
        assert flag in capsys.readouterr().err
    assert trained == []


def test_state_tracking_json_records_command_and_machine(load_example, tmp_path):
    mod = load_example("state_tracking")
    mod.main([*TINY, "--tasks", "parity", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "state_tracking.json").read_text())
    assert "--steps" in data["command"] and data["machine"]["torch_threads"] >= 1
    assert (tmp_path / "state_tracking.png").exists()
