"""Test configuration.

The Triton kernels are checked on CPU through the Triton interpreter. The interpreter flag is
read when a kernel is *defined*, so it is set here, before anything imports graphseq.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
