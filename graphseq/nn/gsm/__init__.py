"""Graph sequence models (GSM, GSM++): tokenizers, local and global encoders, models.

* tokenizers (PyG transforms): :class:`NodeTokenizer` (degree / random / BFS order),
  :class:`KHopTokenizer`, :class:`RandomWalkTokenizer`, :class:`HACTokenizer` (hierarchical
  affinity clustering by Borůvka rounds, :func:`hac_tree`);
* encoders: :class:`LocalEncoder` (GatedGCN, GINE, GraphSAGE, GAT-sep; :func:`mean_adjacency`),
  :class:`ScanLayer` (selective scan on :func:`graphseq.kernels.linear_scan`),
  :class:`AttentionLayer` (SDPA), :class:`SequenceEncoder` (transformer / ssm / hybrid
  patterns), :class:`HierarchicalPE`;
* models: :class:`GSM` and :class:`GSMPlusPlus` with the :class:`MoTRouter`.
"""

from .encoders import (
    AttentionLayer,
    HierarchicalPE,
    LocalEncoder,
    ScanLayer,
    SequenceEncoder,
    global_pattern,
    mean_adjacency,
)
from .hac import HACTree, hac_tree, hac_tree_reference
from .models import GSM, TOKENIZATIONS, GSMPlusPlus, MoTRouter
from .tokenizers import HACTokenizer, KHopTokenizer, NodeTokenizer, RandomWalkTokenizer

__all__ = [
    "GSM",
    "TOKENIZATIONS",
    "AttentionLayer",
    "GSMPlusPlus",
    "HACTokenizer",
    "HACTree",
    "HierarchicalPE",
    "KHopTokenizer",
    "LocalEncoder",
    "MoTRouter",
    "NodeTokenizer",
    "RandomWalkTokenizer",
    "ScanLayer",
    "SequenceEncoder",
    "global_pattern",
    "hac_tree",
    "hac_tree_reference",
    "mean_adjacency",
]
