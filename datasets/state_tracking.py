"""Seeded generators for state-tracking tasks: parity and modular counting.

A sequence of binary tokens ``x_1 .. x_T`` is labelled at every position with the running count
of ones modulo ``m``: ``y_t = (x_1 + ... + x_t) mod m``. Parity is ``m = 2``. A model that
reads the label at position ``t`` solves the task for every prefix length ``<= T``, so one
batch of length 64 trains on all lengths up to 64, and the label at the last position of a
length-1,024 sequence tests extrapolation. Tracking this state exactly needs a recurrence that
can flip or rotate its state (a finite automaton), which is what the negative-eigenvalue
experiment measures (Grazzi et al., ICLR 2025, https://arxiv.org/abs/2411.12537).

Everything is generated from a seed on the CPU with a private :class:`torch.Generator`; the
global random state is never touched, and the same arguments always give the same tensors.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._checks import check_seed

__all__ = [
    "StateTrackingBatch",
    "StateTrackingDataset",
    "modular_counting",
    "parity",
    "task_modulus",
]


class StateTrackingBatch(NamedTuple):
    """``tokens`` ``[N, T]`` int64 in ``{0, 1}``; ``labels`` ``[N, T]`` int64 in ``[0, m)``."""

    tokens: torch.Tensor
    labels: torch.Tensor


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"state_tracking: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"state_tracking: {name} must be >= {minimum}, got {value}")
    return value


def modular_counting(
    num_samples: int, length: int, modulus: int, *, seed: int = 0, p_one: float = 0.5
) -> StateTrackingBatch:
    """Binary sequences labelled with the running number of ones modulo ``modulus``.

    Args:
        num_samples: number of sequences ``N``.
        length: sequence length ``T``.
        modulus: ``m >= 2``; ``m = 2`` is parity.
        seed: seed of the private generator. (default: ``0``)
        p_one: probability of a one at each position, in ``(0, 1)``. (default: ``0.5``)

    Returns:
        A :class:`StateTrackingBatch` of ``[N, T]`` int64 tensors.

    Example:
        >>> tokens, labels = modular_counting(2, 6, 3, seed=1)
        >>> bool(((tokens.cumsum(1) % 3) == labels).all())
        True
    """
    _check_int("num_samples", num_samples, 0)
    _check_int("length", length, 0)
    _check_int("modulus", modulus, 2)
    check_seed("state_tracking", seed)  # an int or a numpy integer, as every generator's
    if not isinstance(p_one, (int, float)) or isinstance(p_one, bool) or not 0 < p_one < 1:
        raise ValueError(f"state_tracking: p_one must be a float in (0, 1), got {p_one!r}")
    gen = torch.Generator().manual_seed(int(seed))
    tokens = (torch.rand(num_samples, length, generator=gen) < p_one).long()
    labels = tokens.cumsum(dim=1) % modulus
    return StateTrackingBatch(tokens, labels)


def parity(num_samples: int, length: int, *, seed: int = 0) -> StateTrackingBatch:
    """Binary sequences labelled with the running parity (:func:`modular_counting` with 2).

    Example:
        >>> tokens, labels = parity(1, 5, seed=0)
        >>> labels.shape
        torch.Size([1, 5])
    """
    return modular_counting(num_samples, length, 2, seed=seed)


class StateTrackingDataset(torch.utils.data.Dataset):
    """A fixed, seeded set of state-tracking sequences as a map-style dataset.

    ``dataset[i]`` is ``(tokens[i], labels[i])``, both ``[T]`` int64.

    Args:
        task: ``"parity"`` or ``"mod<m>"`` (e.g. ``"mod3"``, ``"mod5"``).
        num_samples: number of sequences.
        length: sequence length.
        seed: seed of the private generator. (default: ``0``)
    """

    def __init__(self, task: str, num_samples: int, length: int, seed: int = 0) -> None:
        self.task = task
        self.modulus = task_modulus(task)
        self.num_samples = num_samples
        self.length = length
        self.seed = seed
        self.tokens, self.labels = modular_counting(num_samples, length, self.modulus, seed=seed)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[index], self.labels[index]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.task!r}, num_samples={self.num_samples}, "
            f"length={self.length}, seed={self.seed})"
        )


def task_modulus(task: str) -> int:
    """``"parity"`` -> 2, ``"mod<m>"`` -> ``m``; anything else is a ``ValueError``."""
    if task == "parity":
        return 2
    if isinstance(task, str) and task.startswith("mod") and task[3:].isdigit():
        m = int(task[3:])
        if m >= 2:
            return m
    raise ValueError(f"state_tracking: task must be 'parity' or 'mod<m>' with m >= 2, got {task!r}")
