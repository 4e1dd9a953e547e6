"""The pLSTM layers name a bad gate-initialisation argument and the layer it was given to."""

from __future__ import annotations

import pytest

from graphseq.nn import PLSTMGraph
from graphseq.nn.plstm import PLSTM2D
from graphseq.nn.seq import PLSTM1D

MAKERS = {
    "PLSTM1D": lambda **kw: PLSTM1D(8, **kw),
    "PLSTM2D": lambda **kw: PLSTM2D(8, **kw),
    "PLSTMGraph": lambda **kw: PLSTMGraph(4, 4, **kw),
}


BAD = [("a", TypeError), (True, TypeError), (-1.0, ValueError), (float("nan"), ValueError)]


@pytest.mark.parametrize("layer", sorted(MAKERS))
@pytest.mark.parametrize("value, error", BAD)
def test_gate_weight_std_is_checked(layer, value, error):
    with pytest.raises(error, match=rf"{layer}: gate_weight_std"):
        MAKERS[layer](gate_weight_std=value)
    assert MAKERS[layer](gate_weight_std=0.5).gate_weight_std == 0.5


def test_graph_gate_bias_values_are_checked():
    with pytest.raises(TypeError, match=r"gate_bias\['source'\]"):
        PLSTMGraph(4, 4, gate_bias={"source": "x"})
    with pytest.raises(ValueError, match=r"gate_bias\['mark'\]"):
        PLSTMGraph(4, 4, gate_bias={"mark": float("inf")})
    assert PLSTMGraph(4, 4, gate_bias={"mark": 1}).gate_bias["mark"] == 1.0


@pytest.mark.parametrize("name", ["weight_std", "factor"])
@pytest.mark.parametrize("value, error", [("a", TypeError), (float("nan"), ValueError)])
def test_head_gate_reals_are_checked(name, value, error):
    from graphseq.nn.plstm.gates import HeadGate

    with pytest.raises(error, match=rf"HeadGate: {name}"):
        HeadGate(4, 2, "sigmoid", 0.0, **{name: value})
