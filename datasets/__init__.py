"""Dataset generators and loaders, installed as :mod:`graphseq.datasets`.

Nothing here downloads at import time or by default: synthetic benchmarks are generated from a
seed, and real datasets are read from a local directory that the caller names.

* :mod:`.state_tracking`: parity and modular counting (state-tracking sequence tasks).
* :mod:`.sets`: set tasks (``second_minimum``, the learnable-commutative-monoid benchmark).
"""

from .state_tracking import StateTrackingDataset, modular_counting, parity

__all__ = ["StateTrackingDataset", "modular_counting", "parity"]
