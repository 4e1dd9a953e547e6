"""Packed (cu_seqlens) batches of the 1D sequence layers: float64 gradcheck of the input and
the per-sequence initial state, with an empty sequence in the batch, and gradient parity with
running each sequence alone. The existing layer tests check the packed path's forward only
(GatedLinearRNN, Aaren, PLSTM1D); ParallelGRU's packed gradients are already checked."""

import pytest
import torch

from graphseq.nn import PLSTM1D, Aaren, GatedLinearRNN
from graphseq.nn.seq import AarenState

F64 = torch.float64
LENGTHS = [3, 0, 5, 1]


def _cu():
    return torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()])


def _layer_and_state(name):
    torch.manual_seed(0)
    N = len(LENGTHS)
    if name == "gated_linear_rnn":
        layer = GatedLinearRNN(4, heads=2).double()
        state = torch.randn(N, 2, 2, dtype=F64)
    elif name == "plstm1d":
        layer = PLSTM1D(4, heads=2, gate_weight_std=0.5).double()
        state = torch.randn(N, 2, 2, 2, dtype=F64)
    else:
        layer = Aaren(4, heads=2).double()
        _, st = layer(torch.randn(N, 3, 4, dtype=F64), return_state=True)
        state = tuple(t.detach() for t in st)
    return layer, state


def _as_state(name, s):
    return AarenState(*s) if name == "aaren" else s


@pytest.mark.parametrize("name", ["gated_linear_rnn", "plstm1d", "aaren"])
def test_packed_gradcheck_float64(name):
    layer, state = _layer_and_state(name)
    cu = _cu()
    x = torch.randn(1, sum(LENGTHS), 4, dtype=F64, requires_grad=True)
    # Aaren's running max m carries no gradient by design (the output is invariant to it)
    diff = list(state[1:]) if name == "aaren" else [state]
    diff = [t.clone().requires_grad_() for t in diff]

    def f(x, *s):
        st = (state[0], *s) if name == "aaren" else s[0]
        y, last = layer(x, state=_as_state(name, st), cu_seqlens=cu, return_state=True)
        # Aaren's state (m, u, w) is defined up to the detached running max m: only y is
        # a differentiable function of the inputs there
        return y if name == "aaren" else (y, last)

    assert torch.autograd.gradcheck(f, (x, *diff))


@pytest.mark.parametrize("name", ["gated_linear_rnn", "plstm1d", "aaren"])
def test_packed_gradients_equal_one_sequence_at_a_time(name):
    layer, state = _layer_and_state(name)
    cu = _cu()
    x = torch.randn(1, sum(LENGTHS), 4, dtype=F64, requires_grad=True)
    w = torch.randn(1, sum(LENGTHS), 4, dtype=F64)
    params = [x, *layer.parameters()]
    y = layer(x, state=_as_state(name, state), cu_seqlens=cu)
    got = torch.autograd.grad((y * w).sum(), params, allow_unused=True, materialize_grads=True)
    total = 0.0
    for n in range(len(LENGTHS)):
        s, e = int(cu[n]), int(cu[n + 1])
        if e == s:
            continue
        st = tuple(t[n : n + 1] for t in state) if name == "aaren" else state[n : n + 1]
        total = total + (layer(x[:, s:e], state=_as_state(name, st)) * w[:, s:e]).sum()
    want = torch.autograd.grad(total, params, allow_unused=True, materialize_grads=True)
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, atol=1e-10, rtol=1e-8)
