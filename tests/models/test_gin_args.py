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
