"""Every constructor argument that changes a layer's parameters or outputs shows in its repr
when it is not the default, and the repr rebuilds an equivalent layer (same parameters)."""

import pytest
import torch

from graphseq.nn import (
    PLSTM1D,
    PLSTM2D,
    Aaren,
    GatedLinearRNN,
    ParallelGRU,
    PLSTMGraph,
    PLSTMVision,
    RecurrentAggregation,
)
from graphseq.nn.plstm import MultiHeadRMSNorm

CASES = [
    (GatedLinearRNN, dict(channels=8), dict(bias=False)),
    (Aaren, dict(channels=8), dict(bias=False)),
    (ParallelGRU, dict(in_channels=4, hidden_channels=6), dict(bias=False, tol=1e-2, max_iter=3)),
    (PLSTM1D, dict(channels=8), dict(gate_weight_std=0.1, chunk_size=4)),
    (PLSTM2D, dict(channels=8), dict(gate_weight_std=0.1)),
    (PLSTMGraph, dict(in_channels=4, out_channels=8),
     dict(gate_weight_std=0.1, gate_bias={"direct": 0.0}, algorithm="paths")),
    (PLSTMVision, dict(image_size=8, patch_size=2, num_classes=3),
     dict(in_channels=1, mlp_ratio=2, use_pos_embed=False, gate_weight_std=0.1)),
    (MultiHeadRMSNorm, dict(heads=2, head_channels=4), dict(eps=0.5)),
    (RecurrentAggregation, dict(in_channels=4, out_channels=6), dict(bias=False)),
]  # fmt: skip


@pytest.mark.parametrize("cls, base, extra", CASES, ids=[c[0].__name__ for c in CASES])
def test_repr_shows_every_non_default_argument(cls, base, extra):
    default = repr(cls(**base))
    for name, value in extra.items():
        assert repr(cls(**base, **{name: value})) != default, name
    torch.manual_seed(0)
    layer = cls(**base, **extra)
    rebuilt = eval(repr(layer), {cls.__name__: cls})
    rebuilt.load_state_dict(layer.state_dict())  # strict: the same parameters
    assert repr(rebuilt) == repr(layer)
