"""The shared parallel-scan ops, installed as :mod:`graphseq.kernels`.

Every op has a readable loop reference, a vectorised PyTorch path (the CPU default) and a
Triton path (the CUDA default) behind one public function; ``backend=`` forces a path and
:mod:`graphseq.kernels._backend` documents how the default is chosen. Packed batches use one
convention throughout: a ``[N + 1]`` boundary tensor (PyG's ``ptr``, FlashAttention's
``cu_seqlens``). Every state-carrying op takes an initial state and returns the final one.

Ops: :func:`linear_scan`, :func:`chunked_matrix_scan`, :func:`segment_tree_reduce`,
:func:`segment_scan`, :func:`dag_scan` (wavefronts over a DAG) and :func:`grid_scan_2d` (the 2D
pLSTM recurrence). ``grid_scan_2d``'s Triton path is not yet timed on a GPU, so it runs
only when asked for (``backend="triton"`` or ``GRAPHSEQ_BACKEND=triton``).

One op departs from that anatomy: :func:`dag_attention` (the path form of pLSTM on graphs)
has a reference and a compiled C kernel for CPUs (``native.c``, built on first use with the
system's C compiler); its PyTorch paths stay in the layers that call it and run on GPUs and
where no compiler is found: dense blocks of graphs of similar size in
:class:`graphseq.nn.plstm.PLSTMGraph`, the dense four-corner gating matrix in
:class:`graphseq.nn.plstm.PLSTM2D` (which hands its small grids to the kernel as four corner
DAGs per image).

This package depends on torch only (Triton optional).
"""

from ._backend import BACKENDS, HAS_TRITON
from .chunked_matrix_scan import chunked_matrix_scan
from .dag_attention import DagAttentionPlan, dag_attention
from .dag_scan import DagCycleError, DagScanPlan, dag_scan
from .grid_scan_2d import grid_scan_2d
from .linear_scan import linear_scan
from .segment import (
    NAMED_COMBINES,
    SegmentPlan,
    SegmentScanPlan,
    segment_scan,
    segment_tree_reduce,
)

__all__ = [
    "BACKENDS",
    "HAS_TRITON",
    "NAMED_COMBINES",
    "DagAttentionPlan",
    "DagCycleError",
    "DagScanPlan",
    "SegmentPlan",
    "SegmentScanPlan",
    "chunked_matrix_scan",
    "dag_attention",
    "dag_scan",
    "grid_scan_2d",
    "linear_scan",
    "segment_scan",
    "segment_tree_reduce",
]
