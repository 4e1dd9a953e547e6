"""Dataset generators and loaders, installed as :mod:`graphseq.datasets`.

Nothing here downloads at import time or by default: synthetic benchmarks are generated from a
seed, and real datasets are read from a local directory that the caller names.

* :mod:`.state_tracking`: parity and modular counting (state-tracking sequence tasks).
* :mod:`.sets`: set tasks (``second_minimum``, the learnable-commutative-monoid benchmark).
* :mod:`.molecules`: the OGB molecular datasets built offline from MoleculeNet CSVs.
* :mod:`.graph_tasks`: six algorithmic graph tasks (node degree, cycle check, triangle
  counting, connectivity, colour counting, shortest path), seeded.
* :mod:`.sbm`: PATTERN and CLUSTER with the Benchmarking-GNNs stochastic-block-model parameters.
* :mod:`.heterophilous`: Minesweeper and Tolokers from local npz files, with their 10 splits.
* :mod:`.continual`: continual-learning task streams (Permuted-/Split-MNIST, digits, graphs).
* :mod:`.arrow_pointing`: Arrow Pointing Extrapolation (pLSTM's long-range vision task),
  seeded, any resolution.
"""

from .state_tracking import StateTrackingDataset, modular_counting, parity

__all__ = ["StateTrackingDataset", "modular_counting", "parity"]
