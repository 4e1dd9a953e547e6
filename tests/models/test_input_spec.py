"""InputSpec and build_model check their arguments."""

from __future__ import annotations

import pytest

import graphseq.models.gin
import graphseq.models.plstm  # noqa: F401  (registers "plstm")
from graphseq.models import InputSpec, build_model

MOL = InputSpec("graph", 2, "ogb-atom", edge_features="ogb-bond")


def test_input_spec_and_build_model_check_their_arguments():
    """Sizes that are not ints, or negative, fail in InputSpec naming the field, not later
    inside a layer's constructor; build_model names a spec that is not an InputSpec."""
    import numpy as np

    for kwargs, error, match in [
        ({"out_dim": "3"}, TypeError, "out_dim must be an int, got str"),
        ({"out_dim": 2.5}, TypeError, "out_dim must be an int, got float"),
        ({"out_dim": True}, TypeError, "out_dim must be an int, got bool"),
        ({"out_dim": 0}, ValueError, "out_dim must be >= 1"),
        ({"out_dim": 1, "node_dim": -1}, ValueError, "node_dim must be >= 0"),
        ({"out_dim": 1, "edge_dim": 2.0}, TypeError, "edge_dim must be an int"),
    ]:
        with pytest.raises(error, match=match):
            InputSpec("graph", **kwargs)
    assert InputSpec("graph", np.int64(2), "dense", np.int64(4)).out_dim == 2
    with pytest.raises(TypeError, match="spec must be an InputSpec, got dict"):
        build_model("plstm", {"level": "graph"}, hidden=8)
