"""The kernel benchmark script runs, gates every op on correctness and writes its JSON."""

from __future__ import annotations

import json

from graphseq.kernels import bench


def test_quick_run_of_the_graph_scan_rows(tmp_path):
    out = tmp_path / "kernels.json"
    result = bench.main(
        ["--quick", "--ops", "dag_scan", "grid_scan_2d", "--repeats", "1", "--ref-repeats", "1",
         "--no-memory", "--out", str(out)]
    )  # fmt: skip
    assert result["failed"] == {}
    rows = result["rows"]
    assert [(r["op"], r["mode"]) for r in rows] == [
        ("dag_scan", "fwd"), ("dag_scan", "fwd+bwd"),
        ("grid_scan_2d", "fwd"), ("grid_scan_2d", "fwd+bwd"),
    ]  # fmt: skip
    for r in rows:
        assert r["fast_ms"] > 0 and r["reference_ms"] > 0
        assert r["speedup_vs_reference"] == r["reference_ms"] / r["fast_ms"]
    assert json.loads(out.read_text())["command"].startswith("python -m graphseq.kernels.bench")


def test_the_gate_catches_a_wrong_fast_path(monkeypatch):
    from graphseq.kernels.dag_scan import wavefront

    cpu = bench.torch.device("cpu")
    assert bench._gate("dag_scan", "torch", cpu) is None
    assert bench._gate("grid_scan_2d", "torch", cpu) is None
    real = wavefront.dag_scan
    monkeypatch.setattr(wavefront, "dag_scan", lambda *a: real(*a) * 1.01)
    err = bench._gate("dag_scan", "torch", cpu)
    assert err is not None and "differs from reference" in err
