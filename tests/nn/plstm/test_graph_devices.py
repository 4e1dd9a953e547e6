"""PLSTMGraph names an argument on another device than x (checked on the meta device, so no GPU
is needed: the checks run before any value is read)."""

import pytest
import torch

from graphseq.nn import PLSTMGraph

EDGES = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])


def _layer(**kw):
    return PLSTMGraph(8, 8, heads=2, **kw).to("meta")


@pytest.mark.parametrize("mode", ["P", "D"])
def test_edge_index_on_another_device_is_named(mode):
    x = torch.empty(4, 8, device="meta")
    with pytest.raises(ValueError, match="edge_index is on cpu but x is on meta"):
        _layer(mode=mode)(x, EDGES)


def test_batch_on_another_device_is_named():
    x = torch.empty(4, 8, device="meta")
    with pytest.raises(ValueError, match="batch is on cpu but x is on meta"):
        _layer()(x, EDGES.to("meta"), batch=torch.zeros(4, dtype=torch.long))


def test_edge_attr_on_another_device_is_named():
    x = torch.empty(4, 8, device="meta")
    with pytest.raises(ValueError, match="edge_attr is on cpu but x is on meta"):
        _layer(edge_dim=3)(x, EDGES.to("meta"), edge_attr=torch.randn(6, 3))


def test_structure_on_another_device_is_named():
    layer = _layer()
    structure = layer.prepare(EDGES, 4)  # built on the CPU
    x = torch.empty(4, 8, device="meta")
    with pytest.raises(ValueError, match="structure is on cpu but x is on meta"):
        layer(x, EDGES.to("meta"), structure=structure)
