"""The public API of graphseq.nn.aggr: locked names, docstrings that run."""

from __future__ import annotations

import doctest

import pytest
import torch

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


class _OtherDeviceGenerator(torch.Generator):
    """A CPU generator that reports another device type (no GPU needed for the check)."""

    @property
    def device(self):
        return torch.device("cuda")


@pytest.mark.parametrize(
    "call",
    [
        lambda g: A.LCMAggregation(4, 4).associativity_loss(_X, _INDEX, generator=g),
        lambda g: A.LCMAggregation(4, 4).identity_loss(_X, generator=g),
        lambda g: A.RecurrentAggregation(4, 4, order="random").permutation_loss(
            _X, _INDEX, generator=g
        ),
    ],
    ids=["associativity_loss", "identity_loss", "permutation_loss"],
)
def test_sampling_losses_check_the_generator(call):
    """A generator that is not a torch.Generator, or one of another device type than x, is
    named (torch's own errors spoke of randint()/randperm()); a CPU generator still works."""
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator"):
        call(0)
    with pytest.raises(ValueError, match="generator is on cuda but x is on cpu"):
        call(_OtherDeviceGenerator())
    assert torch.isfinite(call(torch.Generator().manual_seed(0)))


_X = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
_INDEX = torch.tensor([0, 0, 1, 1, 1, 2])
