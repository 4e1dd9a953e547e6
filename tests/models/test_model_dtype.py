"""Registry models follow their parameters' dtype: ``model.double()`` takes a float64 batch
(gradcheck, precision studies) and agrees with the float32 model."""

import pytest
import torch
from torch_geometric.data import Batch, Data

import graphseq.models  # noqa: F401  (registers every model)
from graphseq.models import InputSpec, build_model


def _batch() -> Batch:
    gen = torch.Generator().manual_seed(0)
    graphs = []
    for n in (5, 4):
        ei = torch.randint(0, n, (2, 2 * n), generator=gen)
        graphs.append(Data(x=torch.randn(n, 4, generator=gen), edge_index=ei,
                           edge_attr=torch.randn(2 * n, 2, generator=gen)))  # fmt: skip
    return Batch.from_data_list(graphs)


@pytest.mark.parametrize(
    ("name", "edges", "kwargs"),
    [
        ("gin", "dense", {}),
        ("gin-vn", "dense", {}),
        ("gps", "dense", {"heads": 2}),
        ("gat", None, {"heads": 2}),
        ("sage", None, {}),
        ("plstm", "dense", {"heads": 2}),
    ],
)
def test_double_model_takes_float64_batch(name, edges, kwargs):
    spec = InputSpec("graph", 2, "dense", 4, edges, 2 if edges else 0)
    torch.manual_seed(0)
    model = build_model(name, spec, hidden=8, **kwargs).eval()
    batch = _batch()
    with torch.no_grad():
        ref = model(batch)
        b64 = batch.clone()
        b64.x, b64.edge_attr = b64.x.double(), b64.edge_attr.double()
        out = model.double()(b64)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref.double(), atol=1e-5, rtol=1e-5)
