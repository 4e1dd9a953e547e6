"""Every Python block in the README runs as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_a_quickstart():
    section = README.read_text().split("## Quickstart", 1)[1]
    assert "```python" in section.split("\n## ", 1)[0]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    exec(compile(BLOCKS[index], f"README-block-{index}", "exec"), {})


def test_markdown_tables_are_not_cut_by_blank_lines():
    """A blank line ends a Markdown table: a row after one renders as stray text unless it
    starts a new table (a header followed by its |---| separator)."""
    root = README.parent
    docs = [README, root / "BENCHMARKS.md", *sorted(root.glob("kernels/*/README.md"))]
    orphans = []
    for doc in docs:
        lines = doc.read_text().splitlines()
        for i, line in enumerate(lines[1:], 1):
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if line.startswith("|") and not lines[i - 1].strip() and not nxt.startswith("|-"):
                orphans.append(f"{doc.relative_to(root)}:{i + 1}")
    assert orphans == []
