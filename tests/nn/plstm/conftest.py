"""Shared fixtures of the pLSTM tests."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Many small ops: on a shared, loaded CPU, extra intra-op threads only spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
