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
