"""Argument validation shared by the ops: every error names the argument at fault."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(op: str, name: str, x: object, *, min_dim: int = 0) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{op}: {name} must have at least {min_dim} dimensions, got shape {tuple(x.shape)}"
        )
    return x


def check_float(op: str, name: str, x: torch.Tensor) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {x.dtype}")


def check_same(op: str, ref_name: str, ref: torch.Tensor, name: str, x: torch.Tensor) -> None:
    """``x`` must live on ``ref``'s device and have its dtype."""
    if x.device != ref.device:
        raise ValueError(
            f"{op}: {name} is on {x.device} but {ref_name} is on {ref.device}; "
            "move them to the same device"
        )
    if x.dtype != ref.dtype:
        raise ValueError(f"{op}: {name} has dtype {x.dtype} but {ref_name} has dtype {ref.dtype}")


def check_shape(op: str, name: str, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(x.shape)}")


def check_boundaries(
    op: str, name: str, ptr: object, total: int, device: torch.device
) -> torch.Tensor:
    """Validate a ``[N + 1]`` boundary tensor (PyG ``ptr`` / FlashAttention ``cu_seqlens``).

    It must be a 1-D integer tensor on ``device`` that starts at 0, never decreases and ends
    at ``total``. Returns it as int64.
    """
    ptr = check_tensor(op, name, ptr)
    if ptr.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: {name} must be an int32 or int64 tensor, got dtype {ptr.dtype}")
    if ptr.dim() != 1 or ptr.numel() < 1:
        raise ValueError(
            f"{op}: {name} must be a 1-D tensor of N + 1 >= 1 boundaries, "
            f"got shape {tuple(ptr.shape)}"
        )
    if ptr.device != device:
        raise ValueError(f"{op}: {name} is on {ptr.device} but the data is on {device}")
    ptr = ptr.long()
    first, last = int(ptr[0]), int(ptr[-1])
    if first != 0:
        raise ValueError(f"{op}: {name} must start at 0, got {first}")
    if last != total:
        raise ValueError(
            f"{op}: {name} must end at the number of packed elements ({total}), got {last}"
        )
    if ptr.numel() > 1 and bool((ptr[1:] < ptr[:-1]).any()):
        bad = int(torch.nonzero(ptr[1:] < ptr[:-1])[0, 0]) + 1
        raise ValueError(
            f"{op}: {name} must be non-decreasing, but {name}[{bad}] = {int(ptr[bad])} < "
            f"{name}[{bad - 1}] = {int(ptr[bad - 1])}"
        )
    return ptr
