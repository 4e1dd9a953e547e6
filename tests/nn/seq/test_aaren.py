import pytest
import torch
import torch.nn.functional as F

from graphseq.nn.seq import Aaren, AarenState


def _sdpa(layer, x):
    """Causal softmax attention with the layer's query repeated at every position."""
    B, T, _ = x.shape
    H, Dh = layer.heads, layer.head_channels
    k = layer.key(x).view(B, T, H, Dh).transpose(1, 2)
    v = layer.value(x).view(B, T, H, Dh).transpose(1, 2)
    q = layer.query[None, :, None, :].expand(B, H, T, Dh)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return layer.out_proj(o.transpose(1, 2).reshape(B, T, H * Dh))


def test_repr_and_bad_arguments():
    assert repr(Aaren(16, heads=4)) == "Aaren(16, heads=4)"
    with pytest.raises(ValueError, match="Aaren: heads"):
        Aaren(10, heads=3)
    with pytest.raises(ValueError, match="Aaren: channels"):
        Aaren(-1)
    with pytest.raises(TypeError, match="Aaren: heads"):
        Aaren(8, heads=None)


def test_reset_parameters_redoes_init():
    layer = Aaren(8, heads=2)
    for p in layer.parameters():
        torch.nn.init.constant_(p, 3.0)
    layer.reset_parameters()
    assert all(not torch.all(p == 3.0) for p in layer.parameters())


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("T", [1, 63, 300])
def test_equals_causal_softmax_attention_float32(heads, T):
    layer = Aaren(16, heads=heads)
    with torch.no_grad():
        layer.query.mul_(3.0)  # sharper attention than at init
    x = torch.randn(3, T, 16)
    torch.testing.assert_close(layer(x), _sdpa(layer, x), atol=1e-5, rtol=1e-5)


def test_gradients_equal_attention_float64():
    layer = Aaren(8, heads=2).double()
    x = torch.randn(2, 40, 8, dtype=torch.double, requires_grad=True)
    w = torch.randn(2, 40, 8, dtype=torch.double)
    params = [x, *layer.parameters()]
    g = torch.autograd.grad((layer(x) * w).sum(), params)
    g_ref = torch.autograd.grad((_sdpa(layer, x) * w).sum(), params)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_gradcheck_float64():
    layer = Aaren(4, heads=2).double()
    x = torch.randn(2, 6, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_step_after_prefix_equals_parallel_at_every_position():
    layer = Aaren(8, heads=2)
    x = torch.randn(3, 50, 8)
    y = layer(x)
    # from the empty prefix
    state = None
    for t in range(50):
        y_t, state = layer.step(x[:, t], state)
        torch.testing.assert_close(y_t, y[:, t], atol=1e-5, rtol=1e-5)
    # after a parallel prefix
    _, state = layer(x[:, :23], return_state=True)
    for t in range(23, 50):
        y_t, state = layer.step(x[:, t], state)
        torch.testing.assert_close(y_t, y[:, t], atol=1e-5, rtol=1e-5)


def test_chunked_forward_with_state_equals_whole():
    layer = Aaren(8, heads=4)
    x = torch.randn(2, 41, 8)
    y, st = layer(x, return_state=True)
    y1, s = layer(x[:, :10], return_state=True)
    y2, st2 = layer(x[:, 10:], state=s, return_state=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-5, rtol=1e-5)
    for a, b in zip(st2, st):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_packed_equals_dense_one_sequence_at_a_time():
    layer = Aaren(6, heads=3)
    lengths = [4, 0, 29, 1, 13]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    x = torch.randn(1, sum(lengths), 6)
    # a carried state per sequence: the result of a prefix of 5 random tokens
    _, st = layer(torch.randn(len(lengths), 5, 6), return_state=True)
    y, st_last = layer(x, state=st, cu_seqlens=cu, return_state=True)
    y0 = layer(x, cu_seqlens=cu)
    for n in range(len(lengths)):
        s, e = int(cu[n]), int(cu[n + 1])
        st_n = AarenState(*(t[n : n + 1] for t in st))
        y_n, last_n = layer(x[:, s:e], state=st_n, return_state=True)
        torch.testing.assert_close(y[:, s:e], y_n, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y0[:, s:e], layer(x[:, s:e]), atol=1e-5, rtol=1e-5)
        for a, b in zip(st_last, last_n):
            torch.testing.assert_close(a[n : n + 1], b, atol=1e-5, rtol=1e-5)


def test_extreme_scores_stay_finite():
    layer = Aaren(4, heads=1)
    T = 64
    x = torch.randn(2, T, 4)
    with torch.no_grad():
        # scores s_t = +-1e4 alternating in blocks, far outside exp's range
        layer.query.copy_(torch.tensor([[2.0, 0.0, 0.0, 0.0]]))
        layer.key.weight.zero_()
        layer.key.bias.zero_()
    sign = torch.where(torch.arange(T) % 7 < 3, 1.0, -1.0)
    x.requires_grad_(True)

    def scores_hook(module, inputs, output):
        out = output.clone()
        out[..., 0] = sign * 1e4
        return out

    handle = layer.key.register_forward_hook(scores_hook)
    y = layer(x)
    y.sum().backward()
    handle.remove()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
    # with these scores attention is uniform over the +1e4 positions seen so far
    v = layer.value(x.detach())
    top = (sign > 0).float()
    ref = (top.cumsum(0)[:, None] ** -1) * (v * top[:, None]).cumsum(1)
    torch.testing.assert_close(y.detach(), layer.out_proj(ref), atol=1e-5, rtol=1e-5)
    # streaming stays finite too, and equals the parallel output, with the same scores (a
    # constant score would not exercise the running max: the drops from +1e4 to -1e4 do)
    state, at = None, [0]

    def step_hook(module, inputs, output):
        out = output.clone()
        out[..., 0] = sign[at[0]] * 1e4
        return out

    handle = layer.key.register_forward_hook(step_hook)
    for t in range(T):
        at[0] = t
        y_t, state = layer.step(x[:, t].detach(), state)
        assert torch.isfinite(y_t).all()
        torch.testing.assert_close(y_t, y[:, t].detach(), atol=1e-5, rtol=1e-5)
    handle.remove()


def test_float16_denominator_beyond_float16_range():
    """u_t grows like t; in float16 it must not be rounded to inf before o_t = w_t / u_t
    (here: a carried prefix of 65,472 tokens, then 64 more, uniform attention)."""
    torch.manual_seed(0)
    layer = Aaren(4, heads=1)
    with torch.no_grad():
        layer.query.zero_()  # every score 0: u grows by exactly 1 per token
    x = torch.randn(2, 64, 4)
    c = 1.8 * torch.rand(2, 1, 4) - 0.9  # the prefix's mean value, |w| < 65,504
    state = AarenState(torch.zeros(2, 1), torch.full((2, 1), 65472.0), 65472.0 * c)
    want = layer(x, state=state)  # float32
    got = layer.half()(x.half(), state=AarenState(*(t.half() for t in state)))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, atol=1e-2, rtol=1e-2)


def test_float16_stream_carries_its_state_beyond_float16_range():
    """The state returned in float16 held u = inf after ~65.5k tokens, so continuing the
    stream (forward with state=, or step) collapsed the outputs to out_proj.bias."""
    torch.manual_seed(0)
    layer = Aaren(4, heads=1)
    with torch.no_grad():
        layer.query.zero_()  # every score 0: u grows by exactly 1 per token
    x = torch.randn(2, 70, 4)
    c = 1.8 * torch.rand(2, 1, 4) - 0.9
    state = AarenState(torch.zeros(2, 1), torch.full((2, 1), 65472.0), 65472.0 * c)
    want = layer(x, state=state)  # float32, in one call
    half = layer.half()
    _, st = half(x[:, :64].half(), state=AarenState(*(t.half() for t in state)),
                 return_state=True)  # fmt: skip
    assert torch.isfinite(st.u).all() and torch.isfinite(st.w).all()
    got = half(x[:, 64:].half(), state=st)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want[:, 64:], atol=1e-2, rtol=1e-2)
    y_t, st2 = half.step(x[:, 64].half(), st)
    assert y_t.dtype == torch.float16 and torch.isfinite(st2.u).all()
    torch.testing.assert_close(y_t.float(), want[:, 64], atol=1e-2, rtol=1e-2)


def test_empty_inputs_and_bad_state():
    layer = Aaren(4, heads=2)
    y, st = layer(torch.randn(2, 0, 4), return_state=True)
    assert y.shape == (2, 0, 4) and torch.isinf(st.m).all() and (st.u == 0).all()
    with pytest.raises(TypeError, match="Aaren: state must be an AarenState"):
        layer(torch.randn(2, 3, 4), state=torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"state.w must have shape \(2, 2, 2\)"):
        layer(
            torch.randn(2, 3, 4),
            state=AarenState(torch.zeros(2, 2), torch.ones(2, 2), torch.zeros(2, 4)),
        )


def test_half_precision_state_is_float32_from_the_first_step():
    """AarenState: u and w are carried in float32 for half inputs; step() without a state
    started from init_state's half-precision zeros and returned a bfloat16 carry."""
    torch.manual_seed(0)
    layer = Aaren(8, heads=2).to(torch.bfloat16)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    _, state = layer.step(x)
    assert state.u.dtype == torch.float32 and state.w.dtype == torch.float32
    assert layer.init_state(3).u.dtype == torch.float32
    _, ref = layer(x[:, None], return_state=True)
    torch.testing.assert_close(state.u, ref.u)
    torch.testing.assert_close(state.w, ref.w)
