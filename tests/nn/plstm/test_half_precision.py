"""float16 pLSTM layers: a large un-normalised h must neither zero the output nor make NaN."""

import copy

import pytest
import torch

from graphseq.nn.plstm import PLSTM1D, PLSTM2D, PLSTMGraph
from graphseq.nn.plstm.gates import MultiHeadRMSNorm

pytestmark = pytest.mark.usefixtures("one_thread")


def test_head_norm_of_large_float16_values():
    norm = MultiHeadRMSNorm(1, 4).half()
    h = torch.tensor([[[300.0, -300.0, 300.0, -300.0]]], dtype=torch.float16)
    y = norm(h)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), torch.tensor([[[1.0, -1.0, 1.0, -1.0]]]))


def _path(n):
    ei = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    return torch.cat([ei, ei.flip(0)], 1)


@pytest.mark.parametrize("scale", [30.0, 100.0])
@pytest.mark.parametrize("kind", ["1d", "2d-P", "2d-D", "graph"])
def test_float16_follows_float32_when_h_is_large(kind, scale):
    torch.manual_seed(0)
    if kind == "1d":
        layer, x, args = PLSTM1D(16, heads=2), torch.randn(1, 200, 16), ()
    elif kind == "graph":
        layer, x, args = (
            PLSTMGraph(8, 8, heads=2, gate_weight_std=0.5),
            torch.randn(10, 8),
            (_path(10),),
        )
    else:
        layer, x, args = PLSTM2D(16, heads=2, mode=kind[-1]), torch.randn(1, 6, 7, 16), ()
    x = x * scale  # un-normalised h of order 1e3..1e5: its mean square overflows float16
    with torch.no_grad():
        y32 = layer(x, *args)
        y16 = copy.deepcopy(layer).half()(x.half(), *args)
    assert y16.dtype == torch.float16
    assert torch.isfinite(y16).all()
    torch.testing.assert_close(y16.float(), y32, atol=0.1, rtol=0.05)
