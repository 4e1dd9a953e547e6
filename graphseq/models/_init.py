"""Helpers shared by the model zoo: initialisation and reading a batch's graph structure."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["graph_batch", "pool_graphs", "reset_children"]


def graph_batch(batch, num_nodes: int, device: torch.device) -> tuple[Tensor, int]:
    """``(node_batch, num_graphs)`` of a PyG ``Batch`` or a plain ``Data``.

    The batch vector is ``batch.batch`` (zeros when absent: one graph). The graph count is
    ``batch.num_graphs`` when the object has it (a ``Batch``), else one more than the largest
    entry of the batch vector (a ``Data`` carrying its own), else 1.
    """
    node_batch = getattr(batch, "batch", None)
    if node_batch is None:
        node_batch = torch.zeros(num_nodes, dtype=torch.long, device=device)
    if hasattr(batch, "num_graphs"):
        return node_batch, int(batch.num_graphs)
    return node_batch, int(node_batch.max()) + 1 if node_batch.numel() else 1


def pool_graphs(h: Tensor, node_batch: Tensor, num_graphs: int, pool: str) -> Tensor:
    """``[num_graphs, D]`` mean (``pool="mean"``) or sum (``"sum"``) of each graph's rows of
    ``h``, in ``h``'s dtype, the mean summed in float32 at least (the GSM models' pooling)."""
    from graphseq.nn.gsm.models import _pool

    return _pool(h, node_batch, num_graphs, pool)


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
