"""Monoid and recurrent aggregations, drop-in :class:`torch_geometric.nn.aggr.Aggregation` s.

* :class:`LCMAggregation`: a learnable commutative monoid reduced by a balanced tree per
  neighbourhood (:func:`graphseq.kernels.segment_tree_reduce`), exact commutativity, an
  associativity loss, a true identity for empty neighbourhoods, no padding.
* :class:`RecurrentAggregation`: a GRU/LSTM over each neighbourhood's own elements (packed,
  no padding), given/random/learned-score order, the Cohen-Karlik et al. permutation loss.
* :func:`aggregation_resolver`: ``"lcm"``, ``"recurrent"``, ... by name, PyG's names otherwise.
"""

from .lcm import LCMAggregation
from .recurrent import RecurrentAggregation
from .resolver import AGGREGATIONS, aggregation_resolver

__all__ = [
    "AGGREGATIONS",
    "LCMAggregation",
    "RecurrentAggregation",
    "aggregation_resolver",
]
