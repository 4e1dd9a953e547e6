"""``first_order_only``: the guard for hand-written backward passes.

A backward written with tensor ops under ``no_grad`` (a fused kernel, a Triton or C kernel)
records no graph, so it has no second derivative. PyTorch's ``once_differentiable`` is not
enough of a guard: it raises on a second backward only when the incoming gradient requires
grad, and ``torch.autograd.grad(..., create_graph=True)`` followed by a derivative with respect
to other inputs (the weights, for a gradient penalty) silently drops the kernel's share of
the second derivative. The engine runs a backward with grad mode on exactly when it records a
graph (``create_graph=True``), so this decorator refuses that case up front.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch


def first_order_only(what: str, hint: str = "") -> Callable:
    """Decorate an ``autograd.Function.backward`` that records no graph.

    Args:
        what: the op or path, named in the error.
        hint: what to use instead for second derivatives (appended to the error).

    The decorated backward raises ``RuntimeError`` when called while a graph is being
    recorded (``create_graph=True``, double backward), and otherwise runs as given.
    """

    def wrap(backward: Callable) -> Callable:
        @functools.wraps(backward)
        def guarded(ctx, *grads):
            if torch.is_grad_enabled():
                raise RuntimeError(
                    f"{what}: the backward is once_differentiable: it cannot differentiate "
                    "its gradient (create_graph=True, double backward), and a silent "
                    "partial second derivative would be wrong" + (f"; {hint}" if hint else "")
                )
            return backward(ctx, *grads)

        return guarded

    return wrap
