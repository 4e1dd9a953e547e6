"""Vectorised PyTorch path of the segment ops (the CPU default, and the path of every
callable ``combine`` on any device).

Both ops run a precomputed level schedule (:mod:`.plan`): each level is two or three
``index_select`` gathers, one ``combine`` call on all pairs of all segments at once, and a
``cat``. Every gather index is used at most once per level, so the backward scatter-adds never
collide and the path is deterministic on every device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .plan import SegmentPlan, SegmentScanPlan

Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def call_combine(op: str, combine: Combine, left: torch.Tensor, right: torch.Tensor):
    """``combine(left, right)``, checked to return a tensor of ``left``'s shape and dtype."""
    out = combine(left, right)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{op}: combine must return a torch.Tensor, got {type(out).__name__}")
    if out.shape != left.shape:
        raise ValueError(
            f"{op}: combine must map two [P, *] tensors to one of the same shape; called on "
            f"two tensors of shape {tuple(left.shape)} it returned shape {tuple(out.shape)}"
        )
    if out.dtype != left.dtype:
        raise ValueError(
            f"{op}: combine must keep the dtype of its inputs ({left.dtype}), returned {out.dtype}"
        )
    return out


def tree_reduce(
    op: str,
    x: torch.Tensor,
    plan: SegmentPlan,
    combine: Combine,
    identity: torch.Tensor | None,
) -> torch.Tensor:
    """Run the balanced-tree schedule; ``identity`` ([*]) fills empty segments."""
    feat = x.shape[1:]
    pieces = [x.index_select(0, plan.leaf_index)]  # results of length-1 segments
    buf = x
    for level in plan.levels:
        pairs = call_combine(
            op, combine, buf.index_select(0, level.left), buf.index_select(0, level.right)
        )  # [P, *]
        nf = level.num_finished
        pieces.append(pairs[:nf])
        buf = torch.cat([pairs[nf:], buf.index_select(0, level.carry)])
    values = torch.cat(pieces)  # [N_nonempty, *], one row per non-empty segment
    if plan.has_empty:
        base = identity.to(x.dtype).expand(plan.num_segments, *feat)
    else:
        base = x.new_empty((plan.num_segments, *feat))  # every row is written below
    return base.index_copy(0, plan.out_index, values)


def scan(op: str, x: torch.Tensor, plan: SegmentScanPlan, combine: Combine) -> torch.Tensor:
    """Run the even/odd scan schedule: up-sweep pairs, then down-sweep fix-ups."""
    bufs = [x]
    for level in plan.levels:  # up-sweep: b_{k+1} = b_k[2j] ⊕ b_k[2j + 1]
        b = bufs[-1]
        bufs.append(
            call_combine(
                op, combine, b.index_select(0, level.pair_left), b.index_select(0, level.pair_right)
            )
        )
    y = bufs[-1]  # the deepest level has segments of length <= 1: its scan is itself
    for level, b in zip(reversed(plan.levels), reversed(bufs[:-1])):  # down-sweep
        parts = [y]  # y_{2j+1} = P_j
        if level.fix_pair.numel():  # y_{2j} = P_{j-1} ⊕ x_{2j}
            parts.append(
                call_combine(
                    op,
                    combine,
                    y.index_select(0, level.fix_pair),
                    b.index_select(0, level.fix_elem),
                )
            )
        parts.append(b.index_select(0, level.first))  # y_0 = x_0
        y = torch.cat(parts).index_select(0, level.order)
    return y
