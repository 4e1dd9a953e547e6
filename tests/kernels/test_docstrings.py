"""The examples in the public kernels' docstrings run and print what they claim."""

import doctest

import pytest
import torch

import graphseq.kernels as K

PUBLIC_FUNCTIONS = [
    "linear_scan",
    "chunked_matrix_scan",
    "segment_tree_reduce",
    "segment_scan",
    "dag_scan",
    "grid_scan_2d",
]


@pytest.mark.parametrize("name", PUBLIC_FUNCTIONS)
def test_docstring_examples(name):
    fn = getattr(K, name)
    assert fn.__doc__ and "Args:" in fn.__doc__ and "Returns:" in fn.__doc__
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(fn, name, globs={"torch": torch, name: fn}):
        runner.run(test)
    assert runner.tries > 0, f"{name} has no runnable example"
    assert runner.failures == 0
