"""Readable references of the segment ops: a Python loop over segments, one ``combine`` call
per pair. They are the ground truth in tests, slow by design.

Two kinds of reference:

* :func:`segment_tree_reduce_reference` and :func:`segment_scan_reference` bracket exactly like
  the fast paths (balanced tree; even/odd scan), so the fast paths can be compared to them
  tightly even for a learned, non-associative ``combine``. They are what ``backend="reference"``
  runs.
* :func:`segment_fold_reference` and :func:`segment_scan_sequential_reference` are the plain
  left folds ``((x_0 ⊕ x_1) ⊕ x_2) ⊕ ...``: for an associative ``combine`` every bracketing
  agrees with them up to rounding.

``combine`` here is a callable on ``[1, *]`` rows. The public functions pass the named
combines upcast to float64 (see ``_reference_inputs`` in ``ops.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _split_rows(x: torch.Tensor) -> list[torch.Tensor]:
    """All elements as ``[1, *]`` rows. One ``split`` rather than a slice per row: autograd
    through per-row slicing materialises a full-size zero gradient for every row (O(E^2))."""
    return list(x.split(1)) if x.shape[0] > 0 else []


def _rows(rows: list[torch.Tensor], ptr: torch.Tensor, s: int) -> list[torch.Tensor]:
    """The elements of segment ``s``."""
    return rows[int(ptr[s]) : int(ptr[s + 1])]


def _tree(items: list[torch.Tensor], combine: Combine) -> torch.Tensor:
    """Pair (0, 1), (2, 3), ... level by level; an odd last element moves up unchanged."""
    while len(items) > 1:
        paired = [combine(items[i], items[i + 1]) for i in range(0, len(items) - 1, 2)]
        if len(items) % 2 == 1:
            paired.append(items[-1])
        items = paired
    return items[0]


def _fold(items: list[torch.Tensor], combine: Combine) -> torch.Tensor:
    acc = items[0]
    for item in items[1:]:
        acc = combine(acc, item)
    return acc


def _reduce(x, ptr, combine, identity, reduce_segment) -> torch.Tensor:
    out = []
    rows = _split_rows(x)
    for s in range(ptr.numel() - 1):
        items = _rows(rows, ptr, s)
        if items:
            out.append(reduce_segment(items, combine))
        else:
            out.append(identity.to(x.dtype).expand(1, *x.shape[1:]))
    # x[:0] adds no rows but keeps the autograd link to x, as the fast paths do, also when
    # every row is an identity (no elements, N > 0 empty segments)
    return torch.cat([*out, x[:0]])


def segment_tree_reduce_reference(
    x: torch.Tensor, ptr: torch.Tensor, combine: Combine, identity: torch.Tensor | None
) -> torch.Tensor:
    """Balanced-tree reduction of every segment, one pair at a time. ``[E, *] -> [N, *]``."""
    return _reduce(x, ptr, combine, identity, _tree)


def segment_fold_reference(
    x: torch.Tensor, ptr: torch.Tensor, combine: Combine, identity: torch.Tensor | None
) -> torch.Tensor:
    """Left fold of every segment, one element at a time. ``[E, *] -> [N, *]``."""
    return _reduce(x, ptr, combine, identity, _fold)


def _even_odd_scan(items: list[torch.Tensor], combine: Combine) -> list[torch.Tensor]:
    """The paper listing of the even/odd scan, on one segment."""
    if len(items) <= 1:
        return list(items)
    pairs = [combine(items[2 * j], items[2 * j + 1]) for j in range(len(items) // 2)]
    scanned = _even_odd_scan(pairs, combine)  # scanned[j] = x_0 ⊕ ... ⊕ x_{2j+1}
    out = [items[0]]
    for i in range(1, len(items)):
        if i % 2 == 1:
            out.append(scanned[(i - 1) // 2])
        else:
            out.append(combine(scanned[i // 2 - 1], items[i]))
    return out


def _sequential_scan(items: list[torch.Tensor], combine: Combine) -> list[torch.Tensor]:
    out = items[:1]
    for item in items[1:]:
        out.append(combine(out[-1], item))
    return out


def _scan(x, ptr, combine, scan_segment) -> torch.Tensor:
    out = []
    rows = _split_rows(x)
    for s in range(ptr.numel() - 1):
        out.extend(scan_segment(_rows(rows, ptr, s), combine))
    if not out:  # no rows to return: a view of x keeps the autograd link, as the fast paths do
        return x[:0]
    return torch.cat(out)


def segment_scan_reference(x: torch.Tensor, ptr: torch.Tensor, combine: Combine) -> torch.Tensor:
    """Inclusive scan of every segment, bracketed like the even/odd fast path. ``[E, *]``."""
    return _scan(x, ptr, combine, _even_odd_scan)


def segment_scan_sequential_reference(
    x: torch.Tensor, ptr: torch.Tensor, combine: Combine
) -> torch.Tensor:
    """Inclusive scan of every segment as a left fold, ``y_j = y_{j-1} ⊕ x_j``. ``[E, *]``."""
    return _scan(x, ptr, combine, _sequential_scan)
