"""The README's Layers table names what the package exports, and its Status note agrees."""

import importlib
import pathlib
import re

import pytest

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
TABLE = README.split("## Layers", 1)[1].strip().split("\n\n", 1)[0].splitlines()[2:]
ROWS = [[c.strip() for c in row.strip("|").split("|")] for row in TABLE]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_layers_table_names_exist(row):
    family, module, classes, _status = row
    mod = importlib.import_module(module.strip("`"))
    names = re.findall(r"`(\w+)`", classes)
    assert names
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"{family}: {module} lacks {missing}"
    if module.startswith("`graphseq.nn."):  # the flat, curated graphseq.nn exports
        flat = importlib.import_module("graphseq.nn")
        assert not [n for n in names if n not in flat.__all__]


def test_status_note_agrees_with_the_table():
    status = re.search(r"^> Status:.*?(?=\n\n)", README, re.S | re.M).group(0)
    status = " ".join(line.lstrip("> ") for line in status.splitlines())
    for family, module, _, state in ROWS:
        if state == "available":
            assert module in status, f"{family} is available but the Status note omits {module}"
    assert "being built" not in status or any(r[3] != "available" for r in ROWS)
