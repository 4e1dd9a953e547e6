"""Test configuration.

The Triton kernels are checked on CPU through the Triton interpreter. The interpreter flag is
read when a kernel is *defined*, so it is set here, before anything imports graphseq.
"""

import os

import pytest
import torch
from hypothesis import settings

# the same examples on every run: a CI failure must reproduce
settings.register_profile("graphseq", derandomize=True, deadline=None)
settings.load_profile("graphseq")

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def load_example():
    """``load_example("pattern")``: the module ``examples/pattern.py``, loaded from its file
    (the examples are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"{name}_example", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
