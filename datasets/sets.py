"""Synthetic set (multiset) tasks for aggregation benchmarks.

:func:`second_minimum` is the first task of "Learnable Commutative Monoids for Graph Neural
Networks" (Ong and Veličković, LoG 2022, https://arxiv.org/abs/2212.08541): a multiset of
``num_bits``-bit integers, presented as bit vectors; the target is the second smallest
element (with duplicates counted, so a repeated minimum is its own second minimum). Sum or max
aggregators cannot express it; a learned monoid (keep the two smallest) can.

Sets are packed in PyG's CSR convention (``ptr``), generated from a seed with a private
``torch.Generator``: the same arguments always give the same tensors, on any machine, and
the global RNG is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_seed

__all__ = ["SetBatch", "second_minimum", "to_bits"]


@dataclass(frozen=True)
class SetBatch:
    """Multisets of integers packed one after the other.

    Attributes:
        values: ``[E]`` int64, the elements of every set, set after set.
        ptr: ``[N + 1]`` int64 boundaries: set ``i`` is ``values[ptr[i]:ptr[i + 1]]``.
        target: ``[N]`` int64, the label of every set.
        num_bits: the bit width of the integers.
    """

    values: Tensor
    ptr: Tensor
    target: Tensor
    num_bits: int

    def __len__(self) -> int:
        return self.target.numel()

    @property
    def index(self) -> Tensor:
        """``[E]`` the set of every element (PyG's ``batch`` / ``index`` vector)."""
        lengths = self.ptr[1:] - self.ptr[:-1]
        return torch.repeat_interleave(torch.arange(len(self)), lengths)

    def select(self, sets: Tensor) -> SetBatch:
        """The sets ``sets`` (``[M]`` integer ids, any order, repeats allowed), repacked.

        Raises:
            TypeError: ``sets`` is a boolean mask or holds non-integer numbers (a mask was
                read as the ids 0 and 1, a float id was truncated).
        """
        sets = torch.as_tensor(sets)
        if sets.numel() and (sets.dtype == torch.bool or not _is_integer(sets.dtype)):
            raise TypeError(
                f"SetBatch.select: sets must be integer set ids, got dtype {sets.dtype} "
                "(for a boolean mask pass mask.nonzero().view(-1))"
            )
        sets = sets.long()
        if sets.dim() != 1:
            raise ValueError(f"SetBatch.select: sets must be one-dimensional, got {sets.dim()}-D")
        if sets.numel() and (int(sets.min()) < 0 or int(sets.max()) >= len(self)):
            raise ValueError(f"SetBatch.select: sets must lie in [0, {len(self)})")
        start, lengths = self.ptr[sets], self.ptr[sets + 1] - self.ptr[sets]
        ptr = torch.zeros(sets.numel() + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=ptr[1:])
        total = int(ptr[-1])
        offset = torch.arange(total) - torch.repeat_interleave(ptr[:-1], lengths, output_size=total)
        rows = torch.repeat_interleave(start, lengths, output_size=total) + offset
        return SetBatch(self.values[rows], ptr, self.target[sets], self.num_bits)

    def bits(self) -> Tensor:
        """``[E, num_bits]`` float bit vectors of the elements (least significant bit first)."""
        return to_bits(self.values, self.num_bits)

    def target_bits(self) -> Tensor:
        """``[N, num_bits]`` float bit vectors of the targets."""
        return to_bits(self.target, self.num_bits)


def _is_integer(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex)


def to_bits(values: Tensor, num_bits: int) -> Tensor:
    """``[..., num_bits]`` float bits of non-negative integers, least significant first."""
    shifts = torch.arange(num_bits, device=values.device)
    return ((values.unsqueeze(-1) >> shifts) & 1).float()


def second_minimum(
    num_sets: int,
    min_size: int = 2,
    max_size: int = 16,
    *,
    num_bits: int = 8,
    seed: int = 0,
) -> SetBatch:
    """Multisets of uniform random ``num_bits``-bit integers labelled with their second minimum.

    Set sizes are uniform in ``[min_size, max_size]``; elements are uniform in
    ``[0, 2**num_bits)``, independently (so duplicates occur). The label is the second
    element of the sorted multiset (``topk(2, largest=False)[1]``): a repeated minimum is
    its own second minimum.

    Args:
        num_sets: number of sets ``N`` (``>= 0``).
        min_size: smallest set size (``>= 2``).
        max_size: largest set size (``>= min_size``).
        num_bits: bit width of the integers, 1 to 62.
        seed: seed of the private generator; equal arguments give equal data.

    Returns:
        A :class:`SetBatch`.

    Example:
        >>> data = second_minimum(4, 2, 5, seed=1)
        >>> len(data), data.bits().shape[1]
        (4, 8)
    """
    for arg, value, low in (("num_sets", num_sets, 0), ("min_size", min_size, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"second_minimum: {arg} must be an int >= {low}, got {value!r}")
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < min_size:
        raise ValueError(
            f"second_minimum: max_size must be an int >= min_size ({min_size}), got {max_size!r}"
        )
    if isinstance(num_bits, bool) or not isinstance(num_bits, int) or not 1 <= num_bits <= 62:
        raise ValueError(f"second_minimum: num_bits must be an int in [1, 62], got {num_bits!r}")
    check_seed("second_minimum", seed, allow_negative=True)  # torch's generator takes any int
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(min_size, max_size + 1, (num_sets,), generator=gen)
    ptr = torch.zeros(num_sets + 1, dtype=torch.long)
    torch.cumsum(sizes, 0, out=ptr[1:])
    values = torch.randint(0, 2**num_bits, (int(ptr[-1]),), generator=gen)
    # second smallest per set: sort by (set, value) and take position 1 of every set
    set_id = torch.repeat_interleave(torch.arange(num_sets), sizes)
    order = torch.sort(values, stable=True)[1]
    order = order[torch.sort(set_id[order], stable=True)[1]]
    target = values[order][ptr[:-1] + 1] if num_sets else values.new_zeros(0)
    return SetBatch(values, ptr, target, num_bits)
