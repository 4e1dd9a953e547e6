"""One torch thread for the continual-learning tests: their ops are tiny, and extra threads
only contend with each other (and with other jobs) on a shared CPU."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
