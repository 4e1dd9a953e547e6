"""Argument checks shared by the generators (errors name the function and the argument)."""

from __future__ import annotations

import numpy as np


def check_seed(fn: str, seed: object, name: str = "seed", *, allow_negative: bool = False) -> None:
    """Raise ``TypeError`` unless ``seed`` is an int (not a bool), ``ValueError`` if it is
    negative and ``allow_negative`` is false (numpy's generators refuse negative seeds)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{fn}: {name} must be an int, got {type(seed).__name__}")
    if seed < 0 and not allow_negative:
        raise ValueError(f"{fn}: {name} must be >= 0, got {seed}")
