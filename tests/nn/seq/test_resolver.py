import doctest

import pytest
import torch

import graphseq.nn.seq as seq
from graphseq.nn.seq import (
    PLSTM1D,
    SEQUENCE_LAYERS,
    Aaren,
    GatedLinearRNN,
    ParallelGRU,
    sequence_layer,
)


def test_public_api_is_locked():
    assert sorted(seq.__all__) == sorted(
        [
            "SEQUENCE_LAYERS",
            "Aaren",
            "AarenState",
            "GatedLinearRNN",
            "PLSTM1D",
            "ParallelGRU",
            "SequenceLayer",
            "sequence_layer",
        ]
    )


@pytest.mark.parametrize(
    "name, cls",
    [
        ("gated_linear_rnn", GatedLinearRNN),
        ("GatedLinearRNN", GatedLinearRNN),
        ("gated-linear-rnn", GatedLinearRNN),
        ("aaren", Aaren),
        ("parallel_gru", ParallelGRU),
        ("ParallelGRU", ParallelGRU),
        ("plstm1d", PLSTM1D),
        ("PLSTM1D", PLSTM1D),
    ],
)
def test_resolve_by_name(name, cls):
    layer = sequence_layer(name, channels=8)
    assert type(layer) is cls
    assert layer.in_channels == layer.out_channels == 8


@pytest.mark.parametrize("name", sorted(SEQUENCE_LAYERS))
def test_every_registered_layer_maps_channels_to_channels(name):
    layer = sequence_layer(name, channels=8)
    x = torch.randn(2, 9, 8)
    assert layer(x).shape == (2, 9, 8)
    y = layer(x.reshape(1, 18, 8), cu_seqlens=torch.tensor([0, 9, 18]))
    torch.testing.assert_close(y.reshape(2, 9, 8), layer(x), atol=1e-5, rtol=1e-5)
    y_t, _ = layer.step(x[:, 0])
    torch.testing.assert_close(y_t, layer(x)[:, 0], atol=1e-5, rtol=1e-5)


def test_kwargs_instances_and_errors():
    assert sequence_layer("aaren", 8, heads=4).heads == 4
    layer = Aaren(8)
    assert sequence_layer(layer, 8) is layer
    with pytest.raises(ValueError, match="channels = 4"):
        sequence_layer(layer, 4)
    with pytest.raises(ValueError, match="unknown layer 'mamba'"):
        sequence_layer("mamba", 8)
    with pytest.raises(TypeError, match="query must be"):
        sequence_layer(3, 8)


def test_docstring_example_runs():
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(
        sequence_layer, globs={"sequence_layer": sequence_layer}
    ):
        runner.run(test)
    assert runner.tries > 0 and runner.failures == 0


@pytest.mark.parametrize("name", sorted(SEQUENCE_LAYERS))
def test_step_carries_a_state_of_another_float_dtype_in_x_dtype(name):
    """``forward`` casts a given state to x's dtype; ``step`` must too, not fail inside."""
    torch.manual_seed(0)
    layer = sequence_layer(name, 8)
    x = torch.randn(2, 5, 8)
    _, state = layer(x, return_state=True)
    x1 = torch.randn(2, 8)
    y, new = layer.step(x1, state)
    if isinstance(state, torch.Tensor):
        y64, new64 = layer.step(x1, state.double())
    else:  # a named tuple of tensors
        y64, new64 = layer.step(x1, type(state)(*(t.double() for t in state)))
    assert y64.dtype == torch.float32
    torch.testing.assert_close(y64, y)
    for a, b in zip(torch.utils._pytree.tree_leaves(new64), torch.utils._pytree.tree_leaves(new)):
        assert a.dtype == torch.float32  # the state goes on in x's dtype
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["aaren", "gated_linear_rnn", "parallel_gru", "plstm1d"])
def test_stacked_layers_run_under_autocast_and_name_a_dtype_mismatch_outside_it(name):
    """Under autocast the second layer's input may be the first's bfloat16 output while its
    parameters stay float32, and the result stays close to the float32 one; outside autocast
    that mismatch is an error naming x. The tolerance follows the output's scale: two stacked
    plstm1d layers give outputs of order 1e-4, where a fixed atol=0.1 let an all-zero output
    pass."""
    torch.manual_seed(0)
    first, second = sequence_layer(name, 8), sequence_layer(name, 8)
    x = torch.randn(2, 6, 8)
    want = second(first(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = second(first(x))
    assert torch.isfinite(out.float()).all()
    scale = want.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(out.float(), want, atol=0.05 * scale, rtol=0.05)
    with pytest.raises(ValueError, match=r"x has dtype torch\.bfloat16 but the layer's parameters"):
        second(torch.randn(2, 6, 8, dtype=torch.bfloat16))


@pytest.mark.parametrize("name", sorted(SEQUENCE_LAYERS))
def test_init_state_checks_batch_size(name):
    """init_state(-1) raised torch's RuntimeError and init_state(2.0) an unrelated TypeError
    about new_zeros()/new_full(); neither named batch_size."""
    layer = sequence_layer(name, channels=4)
    with pytest.raises(ValueError, match="batch_size must be >= 0, got -1"):
        layer.init_state(-1)
    for bad in (2.0, True, "2"):
        with pytest.raises(TypeError, match="batch_size must be an int"):
            layer.init_state(bad)
    for ok in (0, 3, torch.tensor(3)):
        state = layer.init_state(ok)
        first = state[0] if isinstance(state, tuple) else state
        assert first.shape[0] == int(ok)
