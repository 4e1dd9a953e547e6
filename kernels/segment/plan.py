"""Level schedules of the segmented tree reduction and the segmented scan.

A schedule depends only on the segment boundaries ``ptr``, never on the data, so it is built
once per graph (``SegmentPlan.from_ptr(ptr)``) and reused by every layer that reduces or scans
over the same segments. The objects are explicit and immutable: keep them next to the graph
(for example as an attribute of a PyG ``Data`` object); nothing here caches anything behind
the caller's back.

Building a plan is vectorised over segments: a Python loop runs over the ``ceil(log2 L_max)``
levels only, each level a handful of whole-tensor integer ops on ``ptr``'s device. The schedule
itself is derived in ``README.md`` next to this file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_boundaries
from .._index import exclusive_cumsum as _exclusive_cumsum
from .._index import ranges as _ranges


def _segment_ptr(op: str, ptr: object) -> torch.Tensor:
    if not isinstance(ptr, torch.Tensor):
        raise TypeError(f"{op}: ptr must be a torch.Tensor, got {type(ptr).__name__}")
    if ptr.dim() != 1 or ptr.numel() < 1:
        raise ValueError(
            f"{op}: ptr must be a 1-D tensor of N + 1 >= 1 boundaries, got shape {tuple(ptr.shape)}"
        )
    total = int(ptr[-1]) if ptr.dtype in (torch.int32, torch.int64) else 0
    checked = check_boundaries(op, "ptr", ptr, total, ptr.device)
    # a plan owns its ptr: an alias of the caller's int64 tensor would follow in-place edits of
    # it, and the plan-vs-ptr check of every call would then compare the tensor with itself
    return checked.clone() if checked is ptr else checked


@dataclass(frozen=True)
class TreeLevel:
    """One level of the balanced tree.

    ``left``, ``right`` and ``carry`` index the level's input buffer (level 0: ``x`` itself;
    later levels: ``cat([pairs of the previous level after its first num_finished rows,
    carried rows of the previous level])``). The level computes
    ``c = combine(buf[left], buf[right])``; the first ``num_finished`` rows of ``c`` are the
    results of the segments that finish at this level (in segment order).
    """

    left: torch.Tensor  # [P] int64
    right: torch.Tensor  # [P] int64
    carry: torch.Tensor  # [K] int64, the odd last element of each continuing segment
    num_finished: int


class _Plan:
    """What every schedule knows from the ``ptr`` it was built for."""

    ptr: torch.Tensor

    @property
    def num_segments(self) -> int:
        return self.ptr.numel() - 1

    @property
    def num_elements(self) -> int:
        return int(self.ptr[-1])

    @property
    def device(self) -> torch.device:
        return self.ptr.device


class SegmentPlan(_Plan):
    """Schedule of :func:`~graphseq.kernels.segment_tree_reduce` for one ``ptr``.

    At every level the active segments pair their elements ``(0, 1), (2, 3), ...``; an odd
    last element is carried up unchanged; a segment that is down to one element leaves the
    active set and its result is written. The tree shape of a segment depends only on its
    length, so the reduction of a segment never depends on the rest of the batch.

    Build it with :meth:`from_ptr` and pass it as ``plan=`` to reuse it across layers on the
    same graph. Move it with :meth:`to`.

    Attributes:
        ptr: the ``[N + 1]`` int64 boundaries the plan was built for.
        num_segments: ``N``.
        num_elements: ``E = ptr[-1]``.
        max_length: the largest segment length (0 when there are no elements).
        has_empty: whether some segment is empty (it then gets the identity).
        levels: the :class:`TreeLevel` s, ``depth = len(levels) = ceil(log2 max_length)``.
        leaf_index: ``[N_1]`` indices into ``x`` of the single element of length-1 segments.
        out_index: ``[N_nonempty]`` the segment of each row of
            ``cat([x[leaf_index], c_0[:f_0], c_1[:f_1], ...])``.

    Example:
        >>> import torch
        >>> plan = SegmentPlan.from_ptr(torch.tensor([0, 3, 3, 4, 9]))
        >>> plan.depth, plan.num_pairs
        (3, 6)
    """

    def __init__(
        self,
        *,
        ptr: torch.Tensor,
        levels: tuple[TreeLevel, ...],
        leaf_index: torch.Tensor,
        out_index: torch.Tensor,
        max_length: int,
        has_empty: bool,
    ) -> None:
        self.ptr = ptr
        self.levels = levels
        self.leaf_index = leaf_index
        self.out_index = out_index
        self.max_length = max_length
        self.has_empty = has_empty

    @property
    def depth(self) -> int:
        """Number of levels, i.e. of ``combine`` calls: ``ceil(log2 max_length)``."""
        return len(self.levels)

    @property
    def num_pairs(self) -> int:
        """Total rows passed to ``combine``: ``E - (number of non-empty segments) <= E``."""
        return sum(level.left.numel() for level in self.levels)

    @classmethod
    def from_ptr(cls, ptr: torch.Tensor) -> SegmentPlan:
        """Build the schedule for the segments ``[ptr[i], ptr[i + 1])``.

        Args:
            ptr: ``[N + 1]`` int32/int64 boundaries starting at 0, non-decreasing.
        """
        ptr = _segment_ptr("SegmentPlan.from_ptr", ptr)
        lengths = ptr[1:] - ptr[:-1]  # [N]
        leaf_seg = torch.nonzero(lengths == 1).flatten()
        leaf_index = ptr[:-1][leaf_seg]
        out_pieces = [leaf_seg]

        active = torch.nonzero(lengths >= 2).flatten()  # segment ids, ascending
        count = lengths[active]  # current number of elements of each active segment
        elem = _ranges(ptr[:-1][active], count)  # their positions in the level's buffer
        levels: list[TreeLevel] = []
        while active.numel() > 0:
            start = _exclusive_cumsum(count)  # where each segment's elements start in elem
            finished = count == 2
            cont = ~finished
            # finishing pairs first, so that their results are a prefix of the level's output
            fin_start = start[finished]
            cont_pairs = count[cont] // 2
            pair_pos = _ranges(start[cont], cont_pairs, step=2)
            left = torch.cat([elem[fin_start], elem[pair_pos]])
            right = torch.cat([elem[fin_start + 1], elem[pair_pos + 1]])
            odd = (count[cont] % 2).bool()
            carry = elem[(start[cont] + count[cont] - 1)[odd]]
            num_finished = fin_start.numel()
            levels.append(TreeLevel(left, right, carry, num_finished))
            out_pieces.append(active[finished])

            # next level: buffer = cat([continuing pairs, carried]); each continuing segment
            # holds its pairs in order, then its carried element
            active = active[cont]
            num_cont_pairs = left.numel() - num_finished
            new_count = cont_pairs + odd.long()
            new_start = _exclusive_cumsum(new_count)
            elem = torch.empty(int(new_count.sum()), dtype=torch.long, device=ptr.device)
            elem[_ranges(new_start, cont_pairs)] = torch.arange(num_cont_pairs, device=ptr.device)
            elem[(new_start + cont_pairs)[odd]] = num_cont_pairs + torch.arange(
                carry.numel(), device=ptr.device
            )
            count = new_count

        return cls(
            ptr=ptr,
            levels=tuple(levels),
            leaf_index=leaf_index,
            out_index=torch.cat(out_pieces),
            max_length=int(lengths.max()) if lengths.numel() else 0,
            has_empty=bool((lengths == 0).any()),
        )

    def to(self, device: torch.device | str) -> SegmentPlan:
        """A copy of the plan with every index tensor on ``device``."""
        return SegmentPlan(
            ptr=self.ptr.to(device),
            levels=tuple(
                TreeLevel(
                    lv.left.to(device), lv.right.to(device), lv.carry.to(device), lv.num_finished
                )
                for lv in self.levels
            ),
            leaf_index=self.leaf_index.to(device),
            out_index=self.out_index.to(device),
            max_length=self.max_length,
            has_empty=self.has_empty,
        )

    def __repr__(self) -> str:
        return (
            f"SegmentPlan(num_segments={self.num_segments}, num_elements={self.num_elements}, "
            f"max_length={self.max_length}, depth={self.depth}, device={self.device})"
        )


@dataclass(frozen=True)
class ScanLevel:
    """One level of the even/odd scan, indices into that level's packed buffer ``b``.

    Up-sweep: ``pairs = combine(b[pair_left], b[pair_right])`` is the next level's buffer.
    Down-sweep, with ``p`` the scanned pairs:
    ``fix = combine(p[fix_pair], b[fix_elem])`` and
    ``y = cat([p, fix, b[first]])[order]``.
    """

    pair_left: torch.Tensor  # [P]
    pair_right: torch.Tensor  # [P]
    fix_pair: torch.Tensor  # [F]
    fix_elem: torch.Tensor  # [F]
    first: torch.Tensor  # [S] first element of each segment of this level
    order: torch.Tensor  # [P + F + S] permutation


class SegmentScanPlan(_Plan):
    """Schedule of :func:`~graphseq.kernels.segment_scan` for one ``ptr``.

    The recursive even/odd (Blelloch-style) scan: pair ``p_j = x_{2j} ⊕ x_{2j+1}`` inside every
    segment, scan the pairs (segment lengths ``L // 2``), then
    ``y_{2j+1} = P_j``, ``y_0 = x_0``, ``y_{2j} = P_{j-1} ⊕ x_{2j}``. Each level is stored as
    index tensors (:class:`ScanLevel`), so running the scan is ``2 * floor(log2 L_max)``
    vectorised ``combine`` calls at most and O(E) rows in all.

    Example:
        >>> import torch
        >>> plan = SegmentScanPlan.from_ptr(torch.tensor([0, 3, 3, 4, 9]))
        >>> plan.depth
        2
    """

    def __init__(self, *, ptr: torch.Tensor, levels: tuple[ScanLevel, ...], max_length: int):
        self.ptr = ptr
        self.levels = levels
        self.max_length = max_length

    @property
    def depth(self) -> int:
        """Number of up-sweep levels: ``floor(log2 max_length)`` (0 if ``max_length <= 1``)."""
        return len(self.levels)

    @property
    def num_combined(self) -> int:
        """Total rows passed to ``combine`` (up-sweep pairs and down-sweep fix-ups), <= 2E."""
        return sum(lv.pair_left.numel() + lv.fix_pair.numel() for lv in self.levels)

    @classmethod
    def from_ptr(cls, ptr: torch.Tensor) -> SegmentScanPlan:
        """Build the schedule for the segments ``[ptr[i], ptr[i + 1])``.

        Args:
            ptr: ``[N + 1]`` int32/int64 boundaries starting at 0, non-decreasing.
        """
        ptr = _segment_ptr("SegmentScanPlan.from_ptr", ptr)
        lengths = ptr[1:] - ptr[:-1]
        count = lengths[lengths > 0]  # segments that own elements at this level
        levels: list[ScanLevel] = []
        dev = ptr.device
        while count.numel() > 0 and bool((count >= 2).any()):
            start = _exclusive_cumsum(count)
            pairs = count // 2
            pair_left = _ranges(start, pairs, step=2)
            pair_start = _exclusive_cumsum(pairs)  # where each segment's pairs start
            fixes = (count - 1) // 2  # even positions 2, 4, ... < count
            fix_pair = _ranges(pair_start, fixes)  # pair j - 1 for position 2j
            fix_elem = _ranges(start + 2, fixes, step=2)
            num_p, num_f, num_s = pair_left.numel(), fix_pair.numel(), count.numel()
            order = torch.empty(int(start[-1] + count[-1]), dtype=torch.long, device=dev)
            order[pair_left + 1] = torch.arange(num_p, device=dev)
            order[fix_elem] = num_p + torch.arange(num_f, device=dev)
            order[start] = num_p + num_f + torch.arange(num_s, device=dev)
            levels.append(ScanLevel(pair_left, pair_left + 1, fix_pair, fix_elem, start, order))
            count = pairs[pairs > 0]
        return cls(
            ptr=ptr,
            levels=tuple(levels),
            max_length=int(lengths.max()) if lengths.numel() else 0,
        )

    def to(self, device: torch.device | str) -> SegmentScanPlan:
        """A copy of the plan with every index tensor on ``device``."""
        return SegmentScanPlan(
            ptr=self.ptr.to(device),
            levels=tuple(
                ScanLevel(*(getattr(lv, f).to(device) for f in ScanLevel.__dataclass_fields__))
                for lv in self.levels
            ),
            max_length=self.max_length,
        )

    def __repr__(self) -> str:
        return (
            f"SegmentScanPlan(num_segments={self.num_segments}, "
            f"num_elements={self.num_elements}, max_length={self.max_length}, "
            f"depth={self.depth}, device={self.device})"
        )
