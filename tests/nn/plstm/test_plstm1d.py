"""PLSTM1D: the chunked recurrence against the float64 loop, mLSTM/GLA equivalence, the layer."""

import pytest
import torch

from graphseq.kernels import chunked_matrix_scan
from graphseq.nn.plstm import PLSTM1D, PLSTM2D
from graphseq.nn.plstm.plstm1d import plstm1d_recurrence, plstm1d_reference
from graphseq.testing import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")


def make(B, T, H, K, V, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, K, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    S, M, D = (torch.rand(B, T, H, generator=g, dtype=dtype) for _ in range(3))
    Tr = torch.rand(B, T, H, generator=g, dtype=dtype) * 2 - 1  # negative transitions
    Tr[torch.rand(Tr.shape, generator=g) < 0.05] = 0.0  # and exact resets
    return q, k, v, S, Tr, M, D


def mlstm_loop(q, k, v, f, i):
    """mLSTM/GLA with scalar gates (no normaliser): C_t = f C_{t-1} + i k v^T, h_t = q^T C_t."""
    B, T, H, K = q.shape
    C = q.new_zeros(B, H, K, v.shape[-1])
    out = []
    for t in range(T):
        C = f[:, t, :, None, None] * C + i[:, t, :, None, None] * (
            k[:, t, :, :, None] * v[:, t, :, None, :]
        )
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t], C))
    return torch.stack(out, 1)


@pytest.mark.parametrize("T,chunk", [(1, 4), (37, 8), (64, 16), (100, 64)])
def test_recurrence_matches_reference(T, chunk):
    q, k, v, S, Tr, M, D = make(2, T, 3, 5, 4)
    h0 = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    h_ref, last_ref = plstm1d_reference(q, k, v, S, Tr, M, D, h0)
    h, last = plstm1d_recurrence(q, k, v, S, Tr, M, D, h0, chunk_size=chunk)
    assert_close(h, h_ref)
    assert_close(last, last_ref)


def test_recurrence_packed_sequences():
    q, k, v, S, Tr, M, D = make(1, 30, 2, 3, 3)
    cu = torch.tensor([0, 7, 7, 19, 30])
    h, last = plstm1d_recurrence(q, k, v, S, Tr, M, D, cu_seqlens=cu, chunk_size=4)
    for n in range(4):
        sl = slice(int(cu[n]), int(cu[n + 1]))
        h_ref, last_ref = plstm1d_reference(*(t[:, sl] for t in (q, k, v, S, Tr, M, D)))
        assert_close(h[:, sl], h_ref)
        assert_close(last[n : n + 1], last_ref)


def test_equals_mlstm_gla_when_mark_is_transition_and_source_is_direct():
    q, k, v, S, Tr, _, _ = make(2, 45, 2, 4, 6)
    f = Tr.abs()  # mLSTM/GLA forget gates are positive; i any
    expected = mlstm_loop(q, k, v, f, S)
    h_ref, _ = plstm1d_reference(q, k, v, S, f, f, S)
    h, _ = plstm1d_recurrence(q, k, v, S, f, f, S, chunk_size=8)
    assert_close(h_ref, expected)
    assert_close(h, expected)
    # and the kernel's own inclusive (mLSTM/GLA) readout agrees
    y, _ = chunked_matrix_scan(q, k, v, f.log(), S, chunk_size=8)
    assert_close(h, y)


def test_recurrence_gradcheck():
    q, k, v, S, Tr, M, D = make(1, 7, 2, 2, 2)
    Tr = Tr.clamp(-0.9, 0.9) + 0.05  # log|T| needs T != 0 for a finite derivative
    inputs = [t.requires_grad_() for t in (q, k, v, S, Tr, M, D)]
    assert torch.autograd.gradcheck(
        lambda *a: plstm1d_recurrence(*a, chunk_size=3), inputs, atol=1e-8
    )


def test_zero_transition_is_an_exact_reset_with_finite_gradients():
    q, k, v, S, Tr, M, D = make(1, 12, 1, 2, 2)
    Tr = Tr.clone()
    Tr[0, 5, 0] = 0.0
    Tr.requires_grad_()
    h, _ = plstm1d_recurrence(q, k, v, S, Tr, M, D, chunk_size=4)
    h_ref, _ = plstm1d_reference(q, k, v, S, Tr, M, D)
    assert_close(h, h_ref)
    (grad,) = torch.autograd.grad(h.sum(), Tr)
    (grad_ref,) = torch.autograd.grad(h_ref.sum(), Tr)
    assert torch.isfinite(grad).all()
    assert_close(grad[0, :5], grad_ref[0, :5])
    assert_close(grad[0, 6:], grad_ref[0, 6:])


def layer_reference(layer, x, state=None):
    """The layer's forward with the float64 loop in place of the chunked scan."""
    q, k, v, S, T, M, D = layer.project(x)
    h, last = plstm1d_reference(q, k, v, S, T, M, D, state)
    return layer.output(h), last


def test_layer_matches_loop_and_step():
    torch.manual_seed(0)
    layer = PLSTM1D(12, heads=3, gate_weight_std=0.5, chunk_size=8).double()
    x = torch.randn(2, 21, 12, dtype=torch.float64)
    y, last = layer(x, return_state=True)
    y_ref, last_ref = layer_reference(layer, x)
    assert y.shape == (2, 21, 12) and last.shape == (2, 3, 4, 4)
    assert_close(y, y_ref)
    assert_close(last, last_ref)
    state, outs = None, []
    for t in range(21):
        y_t, state = layer.step(x[:, t], state)
        outs.append(y_t)
    assert_close(torch.stack(outs, 1), y)
    assert_close(state, last)


def test_layer_streaming_and_packed():
    layer = PLSTM1D(8, heads=2, gate_weight_std=0.3).double()
    x = torch.randn(1, 30, 8, dtype=torch.float64)
    y, last = layer(x, return_state=True)
    y1, s1 = layer(x[:, :13], return_state=True)
    y2, s2 = layer(x[:, 13:], state=s1, return_state=True)
    assert_close(torch.cat([y1, y2], 1), y)
    assert_close(s2, last)
    cu = torch.tensor([0, 13, 30])
    yp, sp = layer(x, cu_seqlens=cu, return_state=True)
    assert_close(yp[:, :13], y1)
    assert_close(yp[:, 13:], layer(x[:, 13:]))
    assert_close(sp[0], s1[0])


def test_layer_init_and_repr():
    layer = PLSTM1D(16, heads=4)
    assert repr(layer) == "PLSTM1D(16, heads=4)"
    x = torch.randn(3, 16)
    _, _, _, S, T, M, D = layer.project(x)
    # the paper's init: sigmoid(-4), tanh(5 * 1), sigmoid(-6), input-independent
    torch.testing.assert_close(S, torch.full_like(S, torch.sigmoid(torch.tensor(-4.0)).item()))
    torch.testing.assert_close(M, S)
    torch.testing.assert_close(T, torch.full_like(T, torch.tanh(torch.tensor(5.0)).item()))
    torch.testing.assert_close(D, torch.full_like(D, torch.sigmoid(torch.tensor(-6.0)).item()))
    w = layer.qkv.weight.detach().clone()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(1.0)
    layer.reset_parameters()
    assert not torch.equal(layer.qkv.weight, w + 1)
    _, _, _, S2, *_ = layer.project(x)
    torch.testing.assert_close(S2, S)


def test_layer_trains():
    torch.manual_seed(0)
    layer = PLSTM1D(8, heads=2)
    x = torch.randn(4, 20, 8)
    target = torch.roll(x, 1, dims=1)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = (layer(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_layer_bad_input():
    with pytest.raises(ValueError, match="heads"):
        PLSTM1D(10, heads=3)
    with pytest.raises(TypeError, match="channels"):
        PLSTM1D(8.0)
    layer = PLSTM1D(8, heads=2)
    with pytest.raises(ValueError, match="x must have shape"):
        layer(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="dtype"):
        layer(torch.randn(2, 5, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="state must have shape"):
        layer(torch.randn(2, 5, 8), state=torch.zeros(2, 2, 4, 3))
    with pytest.raises(ValueError, match="cu_seqlens"):
        layer(torch.randn(1, 5, 8), cu_seqlens=torch.tensor([0, 4]))


def test_empty_sequence():
    layer = PLSTM1D(8, heads=2)
    y, last = layer(torch.randn(2, 0, 8), return_state=True)
    assert y.shape == (2, 0, 8) and torch.equal(last, torch.zeros(2, 2, 4, 4))


def test_gate_modules():
    from graphseq.nn.plstm import HeadGate, MultiHeadRMSNorm

    gate = HeadGate(6, 3, "tanh", torch.full((2, 3), 0.5), weight_std=0.1, factor=2.0, groups=2)
    assert repr(gate) == "HeadGate(6, heads=3, activation='tanh', factor=2, groups=2)"
    x = torch.randn(4, 6)
    expected = torch.tanh(2.0 * (x @ gate.linear.weight.T + gate.linear.bias)).view(4, 2, 3)
    torch.testing.assert_close(gate(x), expected)
    with torch.no_grad():
        gate.linear.bias.zero_()
    gate.reset_parameters()
    assert torch.equal(gate.linear.bias, torch.full((6,), 0.5))
    with pytest.raises(ValueError, match="activation"):
        HeadGate(6, 3, "relu", 0.0)
    with pytest.raises(ValueError, match="bias_init"):
        HeadGate(6, 3, "sigmoid", torch.zeros(4))
    norm = MultiHeadRMSNorm(2, 4)
    y = norm(torch.randn(5, 2, 4) * 10)
    torch.testing.assert_close(y.square().mean(-1), torch.ones(5, 2), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: PLSTM1D(8, heads=2),
        lambda: PLSTM2D(8, heads=2, mode="P"),
        lambda: PLSTM2D(8, heads=2, mode="D"),
    ],
)
def test_deferred_init_resets_to_the_documented_gate_biases(make):
    """Built on the meta device, materialised with to_empty() and reset: the gate biases are
    the documented ones, not the uninitialised memory to_empty() hands out."""
    with torch.device("meta"):
        layer = make()
    layer = layer.to_empty(device="cpu")
    for t in layer.buffers():  # stand for arbitrary uninitialised memory
        t.fill_(7.0)
    layer.reset_parameters()
    fresh = make()
    for (name, got), (_, want) in zip(layer.named_parameters(), fresh.named_parameters()):
        if name.endswith("linear.bias"):
            assert torch.equal(got, want), name


def test_nan_behaviour_is_the_documented_one():
    """A NaN at step t reaches forward's outputs from the start of t's chunk on (the chunked
    kernel), step's from t on, never another sequence; the docstring said nothing about it."""
    assert "NaN" in PLSTM1D.__doc__ and "chunk" in PLSTM1D.__doc__.split("NaN", 1)[1]
    torch.manual_seed(0)
    layer = PLSTM1D(6, heads=2, chunk_size=4, gate_weight_std=0.5).double()
    x = torch.randn(1, 20, 6, dtype=torch.float64)
    x[0, 5, 2] = float("nan")
    with torch.no_grad():
        y = layer(x, cu_seqlens=torch.tensor([0, 10, 20]))
        bad = ~torch.isfinite(y[0]).all(-1)
        assert bad[4:10].all() and not bad[:4].any() and not bad[10:].any()
        state, outs = None, []
        for t in range(10):
            y_t, state = layer.step(x[:, t], state)
            outs.append(y_t)
        bad_step = ~torch.isfinite(torch.stack(outs, 1)[0]).all(-1)
        assert bad_step[5:].all() and not bad_step[:5].any()
