"""GIN's constructor checks."""

from __future__ import annotations

import pytest

import graphseq.models.gin
import graphseq.models.plstm  # noqa: F401  (registers "plstm")
from graphseq.models import InputSpec

MOL = InputSpec("graph", 2, "ogb-atom", edge_features="ogb-bond")


def test_gin_names_a_dropout_that_is_not_a_number():
    from graphseq.models.gin import GIN

    spec = InputSpec("graph", 1, "dense", 3)
    with pytest.raises(TypeError, match="GIN: dropout must be a real number, got str"):
        GIN(spec, dropout="0.1")
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="GIN: dropout"):
            GIN(spec, dropout=bad)


def test_gin_vn_on_one_graph_names_the_virtual_node():
    """`graphseq run fake-node --model gin-vn` stopped with torch's "Expected more than 1 value
    per channel when training", naming neither the model nor the cause."""
    import torch
    from torch_geometric.data import Data

    from graphseq.models import build_model

    spec = InputSpec("node", 3, "dense", 4)
    graph = Data(x=torch.randn(6, 4), edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]))
    model = build_model("gin-vn", spec, hidden=8, layers=2)
    with pytest.raises(ValueError, match=r"virtual_node=True.*at least 2 of them, got 1"):
        model(graph)
    model.eval()
    assert model(graph).shape == (6, 3)  # scoring uses the running statistics: fine
    build_model("gin-vn", spec, hidden=8, layers=1)(graph)  # no virtual-node MLP: fine
