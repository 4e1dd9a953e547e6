"""The public API of graphseq.nn.aggr: locked names, docstrings that run."""

from __future__ import annotations

import doctest

import pytest

import graphseq.nn.aggr as A
from graphseq.datasets import sets


def test_public_api_is_locked():
    assert sorted(A.__all__) == [
        "AGGREGATIONS",
        "LCMAggregation",
        "RecurrentAggregation",
        "aggregation_resolver",
    ]
    for name in A.__all__:
        assert hasattr(A, name), name


@pytest.mark.parametrize("obj", [A.LCMAggregation, A.RecurrentAggregation])
def test_layer_docstrings(obj):
    doc = obj.__doc__
    for part in ("arxiv.org", ".. math::", "Args:", "Shapes:", "(default:"):
        assert part in doc, part


@pytest.mark.parametrize(
    "obj", [A.LCMAggregation, A.RecurrentAggregation, A.aggregation_resolver, sets.second_minimum]
)
def test_docstring_examples_run(obj):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    globs = {"aggregation_resolver": A.aggregation_resolver, "second_minimum": sets.second_minimum}
    for test in doctest.DocTestFinder().find(obj, obj.__name__, globs=globs):
        runner.run(test)
    assert runner.tries > 0 and runner.failures == 0
