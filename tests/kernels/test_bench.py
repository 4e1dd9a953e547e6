"""The kernel benchmark script runs, gates every op on correctness and writes its JSON."""

from __future__ import annotations

import json

from graphseq.kernels import bench


def test_quick_run_of_the_dag_scan_rows(tmp_path):
    out = tmp_path / "kernels.json"
    result = bench.main(
        ["--quick", "--ops", "dag_scan", "--repeats", "1", "--ref-repeats", "1",
         "--no-memory", "--out", str(out)]
    )  # fmt: skip
    assert result["failed"] == {}
    rows = result["rows"]
    assert [r["mode"] for r in rows] == ["fwd", "fwd+bwd"]
    for r in rows:
        assert r["op"] == "dag_scan" and r["fast_ms"] > 0 and r["reference_ms"] > 0
        assert r["speedup_vs_reference"] == r["reference_ms"] / r["fast_ms"]
    assert json.loads(out.read_text())["command"].startswith("python -m graphseq.kernels.bench")


def test_the_gate_catches_a_wrong_fast_path(monkeypatch):
    from graphseq.kernels.dag_scan import wavefront

    real = wavefront.dag_scan
    monkeypatch.setattr(wavefront, "dag_scan", lambda *a: real(*a) * 1.01)
    err = bench._gate("dag_scan", "torch", bench.torch.device("cpu"))
    assert err is not None and "differs from reference" in err
