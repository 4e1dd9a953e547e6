"""Helpers for writing Triton kernels that also run in the CPU interpreter.

Import this module only from an op's ``triton.py`` (never at package import time), so that
``import graphseq`` works without Triton and so that ``TRITON_INTERPRET`` is read when the
kernels are defined.
"""

from __future__ import annotations

import triton

from ._backend import triton_interpret


def autotune(configs: list[triton.Config], key: list[str], **kwargs):
    """``triton.autotune`` on a GPU; the first config only under the interpreter.

    The autotuner benchmarks through the GPU driver, which the interpreter does not have, so
    interpreted kernels are built with a single fixed config.
    """
    if triton_interpret():
        configs = configs[:1]
    return triton.autotune(configs=configs, key=key, **kwargs)
