"""examples/bench_plstm.py: counts it cannot honour are refused, naming the flag."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "argv, flag",
    [(["--reps", "0"], "--reps"), (["--paths", "--reps", "0"], "--reps"),
     (["--batch", "0"], "--batch"), (["--ref-reps", "0"], "--ref-reps")],
)  # fmt: skip
def test_counts_below_one_are_refused(argv, flag, load_example, tmp_path, capsys):
    """--reps 0 ran the model, then died in min()/median() of nothing; --batch 0 timed an
    empty batch and wrote the number to the results file."""
    out = tmp_path / "run"
    small = ["--dim", "8", "--heads", "2", "--depth", "1", "--batch", "2", "--out", str(out)]
    with pytest.raises(SystemExit):
        load_example("bench_plstm").main([*small, *argv])
    assert f"{flag} must be >= 1" in capsys.readouterr().err
    assert not out.exists()
