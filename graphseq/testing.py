"""Test utilities shared by graphseq's own tests and by users testing code built on it.

Import this module only after ``TRITON_INTERPRET`` has been decided (graphseq's
``tests/conftest.py`` sets it to 1 on machines without CUDA).
"""

from __future__ import annotations

import pytest
import torch

from graphseq.kernels._backend import HAS_TRITON, triton_usable

#: The device the test-suite runs on: CUDA when present, else CPU.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

#: Backends that can run on :data:`DEVICE` in this environment.
FAST_BACKENDS: tuple[str, ...] = (
    ("torch", "triton") if (HAS_TRITON and triton_usable(DEVICE)) else ("torch",)
)

#: Mark a test that needs a runnable Triton (CUDA, or the interpreter on CPU).
requires_triton = pytest.mark.skipif(
    not (HAS_TRITON and triton_usable(DEVICE)),
    reason="needs the triton package and CUDA or TRITON_INTERPRET=1",
)

#: (atol, rtol) of a fast path against a float64 reference, by input dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (5e-2, 5e-2),
    torch.float16: (1e-2, 1e-2),
}


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, *, dtype=None, msg: str = ""
) -> None:
    """Compare ``actual`` against a (usually float64) reference at the tolerance of ``dtype``.

    ``dtype`` defaults to ``actual.dtype``. NaNs never compare equal, so an unwritten output
    that was poisoned with NaN fails.
    """
    dtype = dtype or actual.dtype
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(
        actual.to(expected.dtype),
        expected,
        atol=atol,
        rtol=rtol,
        equal_nan=False,
        msg=(lambda m: f"{msg}\n{m}") if msg else None,
    )
