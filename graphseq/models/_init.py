"""Initialisation helper shared by the model zoo."""

from __future__ import annotations

from torch import nn

__all__ = ["reset_children"]


def reset_children(module: nn.Module) -> None:
    """Call ``reset_parameters`` of every child of ``module`` that has one, and descend into the
    children that do not (containers such as ``ModuleList``/``Sequential``).

    Unlike a loop over ``module.modules()``, a layer with its own initialisation (pLSTM's gate
    biases, PyG convolutions) is reset once by its own rule, and its sublayers are not reset
    again on top with PyTorch's defaults.
    """
    for child in module.children():
        if hasattr(child, "reset_parameters"):
            child.reset_parameters()
        else:
            reset_children(child)
