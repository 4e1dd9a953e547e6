"""PyG-style layers built on :mod:`graphseq.kernels` (one family per subpackage).

The curated exports below are the public API; ``tests/nn/test_exports.py`` locks them.
"""

from .aggr import LCMAggregation, RecurrentAggregation, aggregation_resolver
from .seq import Aaren, GatedLinearRNN, ParallelGRU, sequence_layer

__all__ = [
    "Aaren",
    "GatedLinearRNN",
    "LCMAggregation",
    "ParallelGRU",
    "RecurrentAggregation",
    "aggregation_resolver",
    "sequence_layer",
]
