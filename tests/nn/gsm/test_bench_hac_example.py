"""examples/bench_hac.py: --repeats 0 died with UnboundLocalError; bad counts name the flag."""

from __future__ import annotations

import pytest


def test_bench_hac_refuses_bad_counts(load_example, capsys):
    mod = load_example("bench_hac")
    for argv, flag in ((["--sizes", "100", "--repeats", "0"], "--repeats"),
                       (["--sizes", "0"], "--sizes"),
                       (["--sizes", "100", "--avg-degree", "-1"], "--avg-degree")):  # fmt: skip
        with pytest.raises(SystemExit):
            mod.main(argv)
        assert f"error: {flag} must" in capsys.readouterr().err


def test_bench_hac_names_levels(load_example, capsys):
    """--levels 0, or fewer levels than a graph's HAC tree, were HACTokenizer tracebacks."""
    mod = load_example("bench_hac")
    for argv, msg in (
        (["--sizes", "50", "--levels", "0"], "--levels must be >= 1"),
        (["--sizes", "2000", "--levels", "1", "--repeats", "1"], "--levels 1: "),
    ):
        with pytest.raises(SystemExit):
            mod.main(argv)
        assert msg in capsys.readouterr().err
