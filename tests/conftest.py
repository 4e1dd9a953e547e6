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
