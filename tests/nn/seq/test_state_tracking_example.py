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


@pytest.mark.parametrize("seeds", [["-1"], ["0", "-2"]])
def test_state_tracking_refuses_negative_seeds_before_training(
    seeds, load_example, tmp_path, capsys
):
    """Seed -1 used to train on batch 6 of the seed its in-distribution test set is drawn
    with; a seed <= -2 crashed in the generator (naming seed -1000000) after the runs before
    it had trained, and no JSON was written."""
    mod = load_example("state_tracking")
    trained = []
    mod.run_one = lambda *a: trained.append(a)
    with pytest.raises(SystemExit):
        mod.main(
            [
                "--models",
                "lstm",
                "--steps",
                "2",
                "--tasks",
                "parity",
                "--seeds",
                *seeds,
                "--out",
                str(tmp_path),
            ]
        )
    assert "--seeds must all be >= 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, values",
    [("--tasks", ["parity", "parity"]), ("--models", ["lstm", "lstm"]),
     ("--test-lengths", ["8", "8"])],
)  # fmt: skip
def test_state_tracking_refuses_repeated_values(flag, values, load_example, tmp_path, capsys):
    """A repeated task, model or length was one run counted again: the summary's n doubled
    (and the table repeated a row or column), as a repeated seed would."""
    mod = load_example("state_tracking")
    trained = []
    mod.run_one = lambda *a: trained.append(a)
    with pytest.raises(SystemExit):  # the last value of a flag wins over TINY's
        mod.main([*TINY, "--tasks", "parity", flag, *values, "--out", str(tmp_path)])
    assert f"{flag} must be distinct" in capsys.readouterr().err
    assert trained == []
