"""Continual-learning metrics over an accuracy matrix, as defined in the literature.

``R[i, j]`` is the test accuracy on task ``j`` after training on tasks ``0..i`` (``nan`` for
``j > i``, tasks not seen yet). With ``T`` tasks:

* :func:`average_accuracy` (final ACC, Lopez-Paz & Ranzato 2017):
  :math:`\\frac1T \\sum_j R_{T-1,j}`.
* :func:`during_accuracy`: :math:`\\frac1T \\sum_j R_{j,j}` (accuracy right after learning).
* :func:`backward_transfer` (BWT, Lopez-Paz & Ranzato; equal to Avalanche's ``StreamBWT``
  after the last experience): :math:`\\frac1{T-1} \\sum_{j<T-1} (R_{T-1,j} - R_{j,j})`.
* :func:`forgetting` (Avalanche's ``StreamForgetting``, initial minus last):
  :math:`\\frac1{T-1} \\sum_{j<T-1} (R_{j,j} - R_{T-1,j}) = -\\mathrm{BWT}`.
* :func:`max_forgetting` (Chaudhry et al. 2018): :math:`\\frac1{T-1} \\sum_{j<T-1}
  \\max_{l<T-1} (R_{l,j} - R_{T-1,j})`.

Avalanche's ``StreamAccuracy`` weights by samples; these are task averages (all tasks' test
sets here have the same size or the task average is what the cited papers report).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "average_accuracy",
    "backward_transfer",
    "during_accuracy",
    "forgetting",
    "max_forgetting",
    "summarize_matrix",
]


def _check(R) -> Tensor:
    R = torch.as_tensor(R, dtype=torch.float64)
    if R.dim() != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(
            f"R must be a non-empty square [T, T] accuracy matrix, got {list(R.shape)}"
        )
    t = R.shape[0]
    lower = torch.tril(torch.ones(t, t, dtype=torch.bool))
    if torch.isnan(R[lower]).any():
        raise ValueError("R must have a value at every [i, j] with j <= i (seen tasks)")
    return R


def average_accuracy(R) -> float:
    R = _check(R)
    return R[-1].mean().item()


def during_accuracy(R) -> float:
    R = _check(R)
    return R.diagonal().mean().item()


def backward_transfer(R) -> float:
    R = _check(R)
    t = R.shape[0]
    if t == 1:
        return math.nan
    return (R[-1, :-1] - R.diagonal()[:-1]).mean().item()


def forgetting(R) -> float:
    bwt = backward_transfer(R)
    return -bwt if not math.isnan(bwt) else bwt


def max_forgetting(R) -> float:
    R = _check(R)
    t = R.shape[0]
    if t == 1:
        return math.nan
    best = torch.stack([R[j:-1, j].max() for j in range(t - 1)])
    return (best - R[-1, :-1]).mean().item()


def summarize_matrix(R) -> dict[str, float]:
    """All of the above in one dict (keys ``acc``, ``during``, ``bwt``, ``forgetting``,
    ``max_forgetting``)."""
    return {
        "acc": average_accuracy(R),
        "during": during_accuracy(R),
        "bwt": backward_transfer(R),
        "forgetting": forgetting(R),
        "max_forgetting": max_forgetting(R),
    }
