"""examples/continual.py end to end on a tiny budget: table, JSON and PNG are written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "continual.py"


def test_example_writes_table_json_and_png(tmp_path):
    spec = importlib.util.spec_from_file_location("continual_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "run"
    argv = ["--stream", "split-digits", "--num-tasks", "2", "--methods", "rnn,ewc"]
    argv += ["--seeds", "0,1", "--iterations", "5", "--out", str(out)]
    assert mod.main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in data["runs"]} == {"rnn", "ewc"}
    assert len(data["runs"]) == 4 and "machine" in data and "command" in data
    rnn = data["summary"]["rnn"]
    assert rnn["seeds"] == [0, 1] and rnn["sizes"]["hnet_shared"] < rnn["sizes"]["target_weights"]
    table = (out / "results.md").read_text()
    assert "| rnn |" in table and "| ewc |" in table and "±" in table
    for m in ("rnn", "ewc"):
        assert (out / f"accuracy_matrix_{m}.png").stat().st_size > 1000
    merged = tmp_path / "merged"
    assert mod.main(["--merge", str(out / "results.json"), "--out", str(merged)]) == 0
    assert (merged / "results.md").read_text().count("| rnn | 2 |") == 1
