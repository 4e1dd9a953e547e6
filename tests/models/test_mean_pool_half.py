"""Graph-level models in float16: the mean pooling sums in float32 (a 3,000-node graph with
|h| ~ 30 overflowed float16's 65,504 and gave inf/NaN outputs for a finite mean)."""

import pytest
import torch
from torch_geometric.data import Batch, Data

from graphseq.models import InputSpec, build_model
from graphseq.testing import assert_half_matches_float


def _big_graph_batch(n: int = 3000) -> Batch:
    g = torch.Generator().manual_seed(0)
    small = Data(x=torch.randn(5, 4, generator=g), edge_index=torch.tensor([[0, 1], [1, 0]]))
    ei = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    big = Data(x=torch.randn(n, 4, generator=g), edge_index=torch.cat([ei, ei.flip(0)], 1))
    return Batch.from_data_list([small, big])


def test_pool_graphs_mean_float16():
    from graphseq.models._init import pool_graphs

    h = torch.full((3000, 4), 30.0, dtype=torch.float16)
    out = pool_graphs(h, torch.zeros(3000, dtype=torch.long), 1, "mean")
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), torch.full((1, 4), 30.0))


@pytest.mark.parametrize(
    "name, kwargs, scale",
    [("gin", dict(hidden=16, layers=2), 300), ("gps", dict(hidden=16, layers=2, heads=2), 30)],
)
def test_graph_level_models_float16_mean_pool(name, kwargs, scale):
    torch.manual_seed(0)
    batch = _big_graph_batch()
    batch.x = batch.x * scale
    model = build_model(name, InputSpec("graph", 2, node_dim=4), **kwargs).half().eval()
    assert_half_matches_float(model, batch)
