"""The installed package: layout, curated public API, optional dependencies."""

import importlib
import subprocess
import sys
import tempfile

import graphseq
import graphseq.datasets
import graphseq.kernels


def test_subpackages_are_installed_under_one_namespace():
    assert graphseq.kernels.__name__ == "graphseq.kernels"
    assert graphseq.datasets.__name__ == "graphseq.datasets"
    for name in ("linear_scan", "chunked_matrix_scan", "segment"):
        importlib.import_module(f"graphseq.kernels.{name}")


def test_kernels_public_api_is_locked():
    assert sorted(graphseq.kernels.__all__) == sorted(
        [
            "BACKENDS",
            "DagAttentionPlan",
            "DagCycleError",
            "DagScanPlan",
            "HAS_TRITON",
            "NAMED_COMBINES",
            "SegmentPlan",
            "SegmentScanPlan",
            "chunked_matrix_scan",
            "dag_attention",
            "dag_scan",
            "grid_scan_2d",
            "linear_scan",
            "segment_scan",
            "segment_tree_reduce",
        ]
    )
    for name in graphseq.kernels.__all__:
        assert hasattr(graphseq.kernels, name), name


def test_import_does_not_need_triton_or_load_kernels():
    # importing graphseq must not import triton (it is optional) nor any Triton kernel module
    code = (
        "import sys, graphseq, graphseq.kernels; "
        "bad = [m for m in sys.modules if m == 'triton' "
        "or (m.startswith('graphseq') and m.endswith('.triton'))]; "
        "print(','.join(bad))"
    )
    # run outside the checkout: there `python -c` would import the source folder graphseq/
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    assert out.stdout.strip() == "", out.stdout


def test_version():
    assert isinstance(graphseq.__version__, str) and graphseq.__version__


def test_every_subpackage_is_listed_in_pyproject():
    """A folder missing from pyproject's explicit package list would vanish from `pip install .`."""
    import pathlib

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    root = pathlib.Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for package, folder in mapping.items():
        base = root / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            found.add(".".join((package, *rel)))
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_no_patch_leftovers_in_the_tests():
    """A ``.orig``/``.rej`` file left by ``patch`` is a stale copy nobody runs (one of
    test_aaren.py was committed with the fix it predates)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    leftovers = [p for ext in ("*.orig", "*.rej") for p in (root / "tests").rglob(ext)]
    assert not leftovers, f"patch leftovers: {leftovers}"


def test_gpu_checks_runs_without_the_editable_install(tmp_path):
    """scripts/gpu_checks.sh on a machine whose setuptools is older than pyproject needs (the
    offline editable install fails) imports graphseq from the working tree instead of stopping
    before any check, which would waste the device session."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    fake = tmp_path / "python"
    # the install fails as it does with setuptools < 77; everything else is this interpreter
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -m ] && [ "$2" = pip ]; then echo "metadata-generation-failed"; exit 1; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), DEVICE="cpu", OUT=str(tmp_path / "out"),
               TEST_S="1", BENCH_S="1", ARROW_S="1")  # fmt: skip
    proc = subprocess.run(["bash", "scripts/gpu_checks.sh"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"graphseq \d", (tmp_path / "out" / "gpu.txt").read_text())
    # the checks ran from this working tree, not from an installed copy elsewhere
    assert "== done" in proc.stdout
