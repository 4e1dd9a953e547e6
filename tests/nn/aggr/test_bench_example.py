"""examples/bench_aggr.py's table: ratios only for the LCM rows, and why one is missing."""

from __future__ import annotations


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
