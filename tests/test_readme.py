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


def test_the_main_jobs_metric_is_credited_to_the_code_that_computes_it():
    """OGB's Evaluator refuses names other than OGB's, so chembl2321810 is scored by
    graphseq.train.metrics.rmse; the README used to credit OGB's Evaluator."""
    ogb = pytest.importorskip("ogb.graphproppred")
    with pytest.raises(ValueError, match="Invalid dataset name chembl2321810"):
        ogb.Evaluator("chembl2321810")
    text = " ".join(README.read_text().split())
    main_job = text.split("It trains GIN on CHEMBL2321810", 1)[1].split(" for 3 seeds", 1)[0]
    assert "`graphseq.train.metrics.rmse`" in main_job
    assert "RMSE by OGB's `Evaluator`" not in main_job
