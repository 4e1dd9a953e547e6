"""PyG-style layers built on :mod:`graphseq.kernels` (one family per subpackage).

The curated exports below are the public API; ``tests/nn/test_exports.py`` locks them.
"""

from .aggr import LCMAggregation, RecurrentAggregation, aggregation_resolver
from .gsm import (
    GSM,
    GSMPlusPlus,
    HACTokenizer,
    HierarchicalPE,
    KHopTokenizer,
    MoTRouter,
    NodeTokenizer,
    RandomWalkTokenizer,
)
from .plstm import PLSTM1D, PLSTM2D, PLSTMGraph, PLSTMVision
from .seq import Aaren, GatedLinearRNN, ParallelGRU, sequence_layer

__all__ = [
    "GSM",
    "PLSTM1D",
    "PLSTM2D",
    "Aaren",
    "GSMPlusPlus",
    "GatedLinearRNN",
    "HACTokenizer",
    "HierarchicalPE",
    "KHopTokenizer",
    "LCMAggregation",
    "MoTRouter",
    "NodeTokenizer",
    "PLSTMGraph",
    "PLSTMVision",
    "ParallelGRU",
    "RandomWalkTokenizer",
    "RecurrentAggregation",
    "aggregation_resolver",
    "sequence_layer",
]
