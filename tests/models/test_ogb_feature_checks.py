"""OGB atom and bond features are checked against the model's spec before any embedding."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data

import graphseq.models.gin
import graphseq.models.plstm  # noqa: F401  (registers "plstm")
from graphseq.models import InputSpec, build_model

MOL = InputSpec("graph", 2, "ogb-atom", edge_features="ogb-bond")


@pytest.mark.parametrize("name", ["plstm", "gin"])
def test_molecular_models_check_ogb_features(name):
    """OGB atom / bond features of the wrong width, dtype or vocabulary fail with the
    attribute named, not with an embedding's dtype or index error."""
    model = build_model(name, MOL, hidden=8, layers=1).eval()
    ei = torch.tensor([[0, 1, 2], [1, 2, 3]])
    x = torch.zeros(4, 9, dtype=torch.long)
    ea = torch.zeros(3, 3, dtype=torch.long)
    assert model(Batch.from_data_list([Data(x=x, edge_index=ei, edge_attr=ea)])).shape == (1, 2)
    too_big = x.clone()
    too_big[0, 0] = 119
    negative = ea.clone()
    negative[1, 2] = -1
    for bad_x, bad_ea, match in [
        (x[:, :4], ea, r"batch.x must be the integer OGB atom features \[\*, 9\]"),
        (too_big, ea, r"batch.x column 0 must lie in \[0, 119\)"),
        (x, ea.float(), r"batch.edge_attr must be the integer OGB bond features"),
        (x, ea[:, :2], r"batch.edge_attr must be the integer OGB bond features \[\*, 3\]"),
        (x, negative, r"batch.edge_attr column 2 must lie in \[0, 2\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            model(Batch.from_data_list([Data(x=bad_x, edge_index=ei, edge_attr=bad_ea)]))
