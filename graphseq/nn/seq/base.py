"""Shared base class of the 1D sequence layers: argument and input validation, packing helpers.

Every layer maps ``[B, T, in_channels]`` to ``[B, T, out_channels]`` and accepts packed batches
``[1, ΣT, in_channels]`` with ``cu_seqlens`` (the ``[N + 1]`` boundary tensor, PyG's ``ptr``).
The state a layer carries between calls is explicit: ``forward(..., state=...,
return_state=True)`` and ``step(x_t, state)`` take and return it, so streaming and chunked use
come from one API.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_positive_int(cls: str, name: str, value: object) -> int:
    """A constructor argument that must be a positive ``int`` (``bool`` is refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{cls}: {name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{cls}: {name} must be positive, got {value}")
    return value


def check_real(cls: str, name: str, value: object, minimum: float | None = None) -> float:
    """A constructor argument that must be a finite real number (``bool`` is refused),
    at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{cls}: {name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{cls}: {name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{cls}: {name} must be >= {minimum}, got {value}")
    return float(value)


def check_matches_parameters(cls: str, name: str, x: torch.Tensor, p: torch.Tensor) -> None:
    """``x`` must be on the device of the layer's parameter ``p`` and share its dtype, except
    under autocast, where a layer's input may be the previous layer's lower-precision output."""
    if x.device != p.device:
        raise ValueError(
            f"{cls}: {name} is on {x.device} but the layer's parameters are on {p.device}"
        )
    if x.dtype != p.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(
            f"{cls}: {name} has dtype {x.dtype} but the layer's parameters are {p.dtype}; "
            f"convert one of them (e.g. layer.to({x.dtype}))"
        )


def check_choice(cls: str, name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{cls}: {name} must be one of {choices}, got {value!r}")
    return value  # type: ignore[return-value]


class SequenceLayer(torch.nn.Module):
    """Base class of :mod:`graphseq.nn.seq`: validates inputs so subclasses only compute.

    Subclasses set ``in_channels`` and ``out_channels`` and implement :meth:`forward`,
    :meth:`step` and :meth:`init_state`.
    """

    in_channels: int
    out_channels: int

    # --- validation ----------------------------------------------------------------------------

    def _param_like(self) -> torch.Tensor:
        return next(self.parameters())

    def _check_x(self, x: object, name: str, dim: int) -> torch.Tensor:
        cls = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{cls}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{cls}: {name} must be a floating-point tensor, got dtype {x.dtype}")
        shape = "[B, T, in_channels]" if dim == 3 else "[B, in_channels]"
        if x.dim() != dim or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"{cls}: {name} must have shape {shape} with in_channels = {self.in_channels}, "
                f"got {tuple(x.shape)}"
            )
        check_matches_parameters(cls, name, x, self._param_like())
        return x

    def _check_cu_seqlens(self, cu_seqlens: object, x: torch.Tensor) -> torch.Tensor | None:
        """Validate a ``[N + 1]`` boundary tensor for packed ``x`` and return it as int64."""
        if cu_seqlens is None:
            return None
        cls = type(self).__name__
        if not isinstance(cu_seqlens, torch.Tensor):
            raise TypeError(
                f"{cls}: cu_seqlens must be a torch.Tensor, got {type(cu_seqlens).__name__}"
            )
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError(
                f"{cls}: cu_seqlens must be an int32 or int64 tensor, got {cu_seqlens.dtype}"
            )
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
            raise ValueError(
                f"{cls}: cu_seqlens must be a 1-D tensor of N + 1 >= 1 boundaries, "
                f"got shape {tuple(cu_seqlens.shape)}"
            )
        if x.shape[0] != 1:
            raise ValueError(
                f"{cls}: with cu_seqlens the sequences are packed along time, so x must have "
                f"batch size 1, got x.shape = {tuple(x.shape)}"
            )
        if cu_seqlens.device != x.device:
            raise ValueError(f"{cls}: cu_seqlens is on {cu_seqlens.device} but x is on {x.device}")
        cu = cu_seqlens.long()
        if int(cu[0]) != 0 or int(cu[-1]) != x.shape[1]:
            raise ValueError(
                f"{cls}: cu_seqlens must start at 0 and end at x.shape[1] = {x.shape[1]}, "
                f"got {int(cu[0])} and {int(cu[-1])}"
            )
        if bool((cu[1:] < cu[:-1]).any()):
            raise ValueError(f"{cls}: cu_seqlens must be non-decreasing")
        return cu

    def _check_state_tensor(
        self, state: object, name: str, shape: tuple[int, ...], ref: torch.Tensor
    ) -> torch.Tensor:
        cls = type(self).__name__
        if not isinstance(state, torch.Tensor):
            raise TypeError(f"{cls}: {name} must be a torch.Tensor, got {type(state).__name__}")
        if tuple(state.shape) != tuple(shape):
            raise ValueError(
                f"{cls}: {name} must have shape {tuple(shape)}, got {tuple(state.shape)}"
            )
        if state.device != ref.device:
            raise ValueError(f"{cls}: {name} is on {state.device} but x is on {ref.device}")
        if state.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{cls}: {name} must be floating point, got dtype {state.dtype}")
        return state

    @staticmethod
    def _num_states(x: torch.Tensor, cu_seqlens: torch.Tensor | None) -> int:
        return x.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1

    def _check_batch_size(self, batch_size: object) -> int:
        """``init_state``'s ``batch_size``: a non-negative integer (``bool`` is refused)."""
        cls = type(self).__name__
        try:
            if isinstance(batch_size, bool):
                raise TypeError
            size = operator.index(batch_size)
        except TypeError:
            raise TypeError(
                f"{cls}: batch_size must be an int, got {type(batch_size).__name__}"
            ) from None
        if size < 0:
            raise ValueError(f"{cls}: batch_size must be >= 0, got {size}")
        return size

    # --- interface -----------------------------------------------------------------------------

    def init_state(self, batch_size: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError  # pragma: no cover - abstract


# --- packing helpers (shared by the layers) --------------------------------------------------


def first_steps(cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of every non-empty sequence's first step, and the mask of non-empty sequences."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    nonempty = lengths > 0
    return cu_seqlens[:-1][nonempty], nonempty


def last_steps(cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of every non-empty sequence's last step, and the mask of non-empty sequences."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    nonempty = lengths > 0
    return (cu_seqlens[1:] - 1)[nonempty], nonempty


def sequence_index(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``[ΣT]`` index of the sequence each packed step belongs to."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
