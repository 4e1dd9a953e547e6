"""Registry models take a plain Data that carries its own batch vector."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data

import graphseq.models.gin
import graphseq.models.plstm  # noqa: F401  (registers "plstm")
from graphseq.models import InputSpec, build_model

MOL = InputSpec("graph", 2, "ogb-atom", edge_features="ogb-bond")


@pytest.mark.parametrize("name", ["gin", "gin-vn", "plstm", "gps", "sage", "gat"])
def test_models_take_a_data_with_its_own_batch_vector(name):
    """A plain Data holding two graphs (a batch vector, no num_graphs) gives one row per
    graph, the same as the Batch of the two graphs."""
    torch.manual_seed(0)
    spec = InputSpec("graph", 1, "dense", 3)
    model = build_model(name, spec, hidden=8, layers=2).eval()
    a = Data(x=torch.randn(3, 3), edge_index=torch.tensor([[0, 1], [1, 2]]))
    b = Data(x=torch.randn(2, 3), edge_index=torch.tensor([[0], [1]]))
    batch = Batch.from_data_list([a, b])
    plain = Data(x=batch.x, edge_index=batch.edge_index, batch=batch.batch)
    assert not hasattr(plain, "num_graphs")
    with torch.no_grad():
        torch.testing.assert_close(model(plain), model(batch))


def test_gps_refuses_an_unsorted_batch_vector():
    """GPS's attention needs each graph's nodes contiguous: an interleaved batch vector is a
    ValueError naming it, not a size mismatch deep inside GPSConv."""
    torch.manual_seed(0)
    spec = InputSpec("graph", 1, "dense", 3)
    model = build_model("gps", spec, hidden=8, layers=2).eval()
    a = Data(x=torch.randn(3, 3), edge_index=torch.tensor([[0, 1], [1, 2]]))
    b = Data(x=torch.randn(2, 3), edge_index=torch.tensor([[0], [1]]))
    batch = Batch.from_data_list([a, b])
    perm = torch.tensor([0, 3, 1, 4, 2])
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(5)
    plain = Data(x=batch.x[perm], edge_index=inv[batch.edge_index], batch=batch.batch[perm])
    with pytest.raises(ValueError, match=r"batch\.batch must be sorted"):
        model(plain)
