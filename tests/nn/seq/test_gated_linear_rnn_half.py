"""GatedLinearRNN in float16/bfloat16: the decay gate is formed in float32."""

import copy

import pytest
import torch

from graphseq.nn.gsm import ScanLayer
from graphseq.nn.seq import GatedLinearRNN


def _long_memory(layer: GatedLinearRNN) -> GatedLinearRNN:
    D = layer.channels
    with torch.no_grad():
        layer.in_proj.bias[2 * D :] = 7.0  # a = sigmoid(7) = 0.99909: bfloat16 rounds it to 1
    return layer


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_long_memory_gate_survives_half_precision(dtype):
    torch.manual_seed(0)
    D, T = 8, 3000
    layer = _long_memory(GatedLinearRNN(D, heads=D, eigenvalue_range=(0.0, 1.0))).to(dtype)
    x = torch.randn(1, T, D).to(dtype)
    ref = copy.deepcopy(layer).float()(x.float())
    y, h_last = layer(x, return_state=True)
    assert y.dtype == dtype and h_last.dtype == dtype
    torch.testing.assert_close(y.float(), ref, rtol=0.0, atol=3e-2 * ref.abs().max().item())
    # step() carries the state in x's dtype but applies the same float32 gate
    state, ys = None, []
    for t in range(200):
        yt, state = layer.step(x[:, t], state)
        ys.append(yt)
    assert state.dtype == dtype
    torch.testing.assert_close(
        torch.stack(ys, 1).float(), y[:, :200].float(), rtol=0.0, atol=5e-2 * ref.abs().max().item()
    )


def test_scan_layer_long_memory_bfloat16():
    torch.manual_seed(0)
    layer = ScanLayer(8, bidirectional=False)
    _long_memory(layer.forward_rnn)
    layer = layer.to(torch.bfloat16)
    x = torch.randn(2, 2000, 8).to(torch.bfloat16)
    ref = copy.deepcopy(layer).float()(x.float())
    out = layer(x).float()
    assert (out - ref).norm() / ref.norm() < 5e-2
