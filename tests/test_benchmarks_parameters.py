"""The parameter counts BENCHMARKS.md gives its own molecular runs are this code's."""

import pathlib
import re

from graphseq.models import InputSpec, build_model
from graphseq.train.benchmarks import OGB_SETTINGS

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def _plstm_on_molecules_rows():
    text = BENCHMARKS.read_text()
    section = text.split("**pLSTM on molecules**", 1)[1].split("\n\n", 2)[1]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 2 and re.fullmatch(r"[\d,]+", cells[2]):
            rows.append((cells[0], cells[1], int(cells[2].replace(",", ""))))
    return rows


def test_plstm_on_molecules_table_counts_are_this_codes():
    rows = _plstm_on_molecules_rows()
    assert len(rows) >= 6
    spec = InputSpec("graph", 1, node_features="ogb-atom", edge_features="ogb-bond")
    counts = {
        "GIN": build_model("gin", spec, **OGB_SETTINGS["model"]),
        "pLSTM": build_model("plstm", spec, hidden=128, layers=4, dropout=0.1),
    }
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in counts.items()}
    for dataset, model, params in rows:
        kind = "GIN" if "GIN" in model else "pLSTM"
        assert params == counts[kind], (
            f"{dataset} / {model}: table {params:,}, code {counts[kind]:,}"
        )
