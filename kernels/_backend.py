"""Backend selection for every op in :mod:`graphseq.kernels` -- the one place it happens.

Each op has three implementations behind one signature:

``"reference"``
    A readable loop over the recurrence in float32/float64. The ground truth in tests;
    slow by design.
``"torch"``
    The vectorised PyTorch path (log-depth or chunkwise). The default on CPU and for any
    tensor when Triton is not installed.
``"triton"``
    The GPU kernel. The default for CUDA tensors when Triton is importable, unless the op
    passes ``triton_default=False`` (``grid_scan_2d``, not yet timed on a GPU). On a CPU-only
    machine it runs under the Triton interpreter when ``TRITON_INTERPRET=1`` is set before
    graphseq is imported (that is how the test-suite checks it).

Resolution order: the ``backend=`` argument of the call, then the ``GRAPHSEQ_BACKEND``
environment variable, then the device rule above. An op may declare that it has no Triton
path for some arguments (for example a user-supplied Python ``combine``); asking for
``backend="triton"`` there raises a :class:`ValueError` rather than silently falling back.
``GRAPHSEQ_BACKEND=triton`` is a process-wide preference instead: the ops and arguments
without a Triton kernel run the PyTorch path, so one setting covers a whole model. Errors
about a value that came from the environment name the variable.
"""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("reference", "torch", "triton")

HAS_TRITON: bool = importlib.util.find_spec("triton") is not None


def triton_interpret() -> bool:
    """Whether the Triton interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_usable(device: torch.device) -> bool:
    """Whether a Triton kernel can run on tensors of ``device``."""
    if not HAS_TRITON:
        return False
    return device.type == "cuda" or triton_interpret()


def resolve_backend(
    backend: str | None,
    device: torch.device,
    *,
    op: str,
    triton_supported: bool = True,
    triton_default: bool = True,
) -> str:
    """Choose the implementation an op runs.

    Args:
        backend: the caller's ``backend=`` argument, or ``None`` for automatic selection.
        device: the device of the op's inputs.
        op: the op's name, used in error messages.
        triton_supported: ``False`` when the op has no Triton path for these arguments.
        triton_default: ``False`` when the op's Triton path is not the automatic choice for
            CUDA tensors (not yet shown faster than its PyTorch path there); ``backend="triton"``
            and ``GRAPHSEQ_BACKEND=triton`` still select it.

    Returns:
        One of :data:`BACKENDS`.
    """
    where = "backend"  # where the value came from, for error messages
    if backend is None:
        backend = os.environ.get("GRAPHSEQ_BACKEND") or None
        where = "GRAPHSEQ_BACKEND"
    if backend is None:
        # Triton only pays off on a GPU; on CPU the vectorised PyTorch path is the fast one
        # (the interpreter is a correctness tool, never a default).
        if device.type == "cuda" and HAS_TRITON and triton_supported and triton_default:
            return "triton"
        return "torch"
    if backend not in BACKENDS:
        unset = "None" if where == "backend" else "unset"
        raise ValueError(f"{op}: {where} must be one of {BACKENDS} or {unset}, got {backend!r}")
    if backend == "triton":
        if not triton_supported:
            if where == "GRAPHSEQ_BACKEND":
                return "torch"  # a process-wide preference: ops without a kernel run PyTorch
            raise ValueError(
                f"{op}: backend='triton' is not available for these arguments (this op or "
                "argument combination has no Triton kernel); use backend='torch' or 'reference'"
            )
        if not HAS_TRITON:
            raise ValueError(
                f"{op}: {where}='triton' needs the 'triton' package "
                "(pip install 'graphseq[triton]')"
            )
        if not triton_usable(device):
            raise ValueError(
                f"{op}: {where}='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                f"graphseq is imported to run the kernel in the interpreter; got device {device}"
            )
    return backend
