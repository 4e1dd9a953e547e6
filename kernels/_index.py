"""Index arithmetic shared by the ops' plans and the layers' preprocessing (CSR ranges)."""

from __future__ import annotations

import torch

__all__ = ["exclusive_cumsum", "ranges"]


def exclusive_cumsum(counts: torch.Tensor) -> torch.Tensor:
    """``[0, c_0, c_0 + c_1, ...]`` without the total: the start of each group, ``[n]``."""
    return torch.cumsum(counts, 0) - counts


def ranges(starts: torch.Tensor, counts: torch.Tensor, step: int = 1) -> torch.Tensor:
    """Concatenate ``starts[i] + step * arange(counts[i])`` over ``i`` (counts may be 0).

    One ``repeat_interleave`` pair instead of a Python loop over the groups.
    """
    total = int(counts.sum()) if counts.numel() else 0
    if total == 0:
        return starts.new_zeros(0)
    first = torch.repeat_interleave(starts, counts, output_size=total)  # [total]
    base = torch.repeat_interleave(exclusive_cumsum(counts), counts, output_size=total)
    offset = torch.arange(total, device=starts.device) - base  # position inside its range
    return first + step * offset
