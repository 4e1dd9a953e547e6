"""Segmented reductions and scans over CSR-packed rows (``ptr`` / ``cu_seqlens``).

* :func:`segment_tree_reduce`: reduce every segment with a binary ``combine`` (a named monoid
  or a learned ``nn.Module``) by a balanced binary tree of depth ``ceil(log2 L)``, O(E) work,
  no padding to the largest segment.
* :func:`segment_scan`: inclusive scan inside every segment with an associative, possibly
  non-commutative ``combine``.
* :class:`SegmentPlan` / :class:`SegmentScanPlan`: the precomputed level schedules, explicit
  objects to build once per graph and pass as ``plan=``.

See ``README.md`` in this folder for the schedules and their bounds.
"""

from .ops import NAMED_COMBINES, segment_scan, segment_tree_reduce
from .plan import SegmentPlan, SegmentScanPlan

__all__ = [
    "NAMED_COMBINES",
    "SegmentPlan",
    "SegmentScanPlan",
    "segment_scan",
    "segment_tree_reduce",
]
