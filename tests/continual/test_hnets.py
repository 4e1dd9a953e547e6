"""graphseq.continual.hnets: shapes, determinism, parameter counts, dependency, growth."""

from __future__ import annotations

import pytest
import torch

from graphseq.continual import (
    ChunkedHyperNetwork,
    CNNTarget,
    FullHyperNetwork,
    MLPTarget,
    RNNHyperNetwork,
    hypernetwork_from_config,
)
from graphseq.continual.hnets import _step_layout

SPEC = MLPTarget(7, (5, 4), classes_per_head=3, num_heads=2).param_spec  # P = 40+24+30 = 94


def make(kind: str, spec=SPEC, **kw):
    torch.manual_seed(0)
    if kind == "full":
        return FullHyperNetwork(spec, 4, (6,), **kw)
    if kind == "chunked":
        return ChunkedHyperNetwork(spec, 13, 4, 3, (6,), **kw)
    if kind == "chunked-cond":
        return ChunkedHyperNetwork(spec, 13, 4, 3, (6,), conditional_chunk_embeddings=True, **kw)
    return RNNHyperNetwork(spec, 11, 4, 6, **kw)


KINDS = ["full", "chunked", "chunked-cond", "rnn"]


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_and_determinism(kind):
    h = make(kind)
    for _ in range(3):
        h.add_task()
    w = h(1)
    assert w.shape == (SPEC.numel,) and torch.isfinite(w).all()
    assert torch.equal(h(1), w)  # same call, same weights
    batch = h([2, 1, 0])
    assert batch.shape == (3, SPEC.numel)
    torch.testing.assert_close(batch[1], w)
    assert not torch.allclose(h(0), h(2))  # tasks differ
    # a rebuilt hypernetwork with the same seed and state generates the same weights
    again = make(kind)
    for _ in range(3):
        again.add_task()
    again.load_state_dict(h.state_dict())
    assert torch.equal(again(1), w)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_task_ids(kind):
    h = make(kind)
    h.add_task()
    with pytest.raises(ValueError, match="unknown"):
        h(1)
    with pytest.raises(TypeError, match="int"):
        h(1.0)
    with pytest.raises(TypeError, match="int"):
        h([0.0])
    with pytest.raises(ValueError, match="exactly one"):
        h()
    with pytest.raises(ValueError, match="empty"):
        h([])
    # tensor ids: integer tensors (0-d or in a list) work; float and bool tensors are refused,
    # not truncated to a task (torch.tensor(0.7) would silently be task 0)
    torch.testing.assert_close(h(torch.tensor(0)), h(0))
    torch.testing.assert_close(h([torch.tensor(0)]), h([0]))
    for bad in (torch.tensor(0.7), torch.tensor([0.0]), torch.tensor(False), [torch.tensor(0.0)]):
        with pytest.raises(TypeError, match="task ids must be ints"):
            h(bad)


@pytest.mark.parametrize("kind", ["full", "chunked", "rnn"])
def test_external_embedding_equals_task(kind):
    h = make(kind)
    h.add_task()
    torch.testing.assert_close(h(embedding=h.task_embeddings[0].detach()), h(0).detach())
    with pytest.raises(ValueError, match="features"):
        h(embedding=torch.zeros(5))


def test_initial_weights_have_lecun_scale():
    spec = MLPTarget(100, (30,), 10).param_spec
    for kind in ["full", "chunked", "rnn"]:
        h = make(kind, spec)
        g = torch.Generator().manual_seed(1)
        w = h(embedding=torch.randn(16, 4, generator=g))
        first = w[:, : 30 * 100] * 100**0.5
        assert 0.5 < first.std().item() < 2.0, kind


def test_parameter_counts():
    d, H, c = 4, 6, 11
    h = RNNHyperNetwork(SPEC, c, d, H, step_signal="sinusoidal", step_dim=4)
    d_in = d + 4 + SPEC.num_layers
    assert h.num_shared_parameters() == 4 * H * (d_in + H + 2) + (H + 1) * c
    learned = RNNHyperNetwork(SPEC, c, d, H, step_signal="learned", step_dim=4)
    assert (
        learned.num_shared_parameters()
        == 4 * H * (d + 4 + H + 2) + (H + 1) * c + 4 * learned.num_steps
    )
    # the documented input widths: "onehot" is N wide (4H parameters per chunk), "none" 0
    onehot = RNNHyperNetwork(SPEC, c, d, H, step_signal="onehot", step_dim=4)
    assert onehot.num_shared_parameters() == 4 * H * (d + onehot.num_steps + H + 2) + (H + 1) * c
    none = RNNHyperNetwork(SPEC, c, d, H, step_signal="none", step_dim=4)
    assert none.num_shared_parameters() == 4 * H * (d + H + 2) + (H + 1) * c
    ch = ChunkedHyperNetwork(SPEC, 13, 4, 3, (6,))
    n_chunks = -(-SPEC.numel // 13)
    assert ch.num_chunks == n_chunks
    assert ch.num_shared_parameters() == (7 * 6 + 6) + (6 * 13 + 13) + n_chunks * 3
    cond = ChunkedHyperNetwork(SPEC, 13, 4, 3, (6,), conditional_chunk_embeddings=True)
    cond.add_task()
    cond.add_task()
    assert cond.num_shared_parameters() == (7 * 6 + 6) + (6 * 13 + 13)
    assert cond.num_parameters() == cond.num_shared_parameters() + 2 * (4 + n_chunks * 3)
    full = FullHyperNetwork(SPEC, 4, (6,))
    assert full.num_shared_parameters() == (4 * 6 + 6) + (6 * SPEC.numel + SPEC.numel)
    assert full.compression_ratio() == full.num_shared_parameters() / SPEC.numel


@pytest.mark.parametrize("chunking", ["flat", "rows"])
@pytest.mark.parametrize("chunk", [1, 5, 8, 9, 40])
def test_step_layout_is_a_layer_respecting_injection(chunking, chunk):
    spec = CNNTarget(2, 6, (3,), 3, (4,), 2, 2).param_spec
    layers, index = _step_layout(spec, chunk, chunking)
    assert index.numel() == spec.numel
    assert index.unique().numel() == spec.numel  # no two numbers share an output
    assert int(index.max()) < len(layers) * chunk
    # every number is read from a step of its own layer
    owner = torch.cat([torch.full((s.numel,), s.layer) for s in spec])
    step_layer = torch.tensor(layers)[index // chunk]
    assert torch.equal(step_layer, owner)
    assert layers == sorted(layers)


def test_rows_chunking_puts_a_row_at_fixed_offsets():
    spec = MLPTarget(3, (4,), 2).param_spec  # layer 0: W [4, 3], b [4]: rows of 4
    _, index = _step_layout(spec, 9, "rows")  # two rows per step
    w_idx, b_idx = index[:12].view(4, 3), index[12:16]
    assert w_idx[0].tolist() == [0, 1, 2] and b_idx[0] == 3
    assert w_idx[1].tolist() == [4, 5, 6] and b_idx[1] == 7
    assert w_idx[2].tolist() == [9, 10, 11] and b_idx[2] == 12  # second step


@pytest.mark.parametrize("chunking", ["flat", "rows"])
def test_rnn_later_layers_depend_on_earlier_steps(chunking):
    # perturbing the generator's input at step k changes chunk k and every later chunk
    # (including later layers) but no earlier one; the chunked hypernetwork's chunks do not
    # depend on each other
    h = RNNHyperNetwork(SPEC, 11, 4, 6, step_signal="learned", chunking=chunking)
    h.add_task()
    layers, index = _step_layout(SPEC, 11, chunking)
    step_of = index // 11
    k = layers.index(1)  # first step of layer 1
    before = h(0).detach()
    with torch.no_grad():
        h.step_embeddings[k] += 1.0
    after = h(0).detach()
    changed = (after - before).abs() > 1e-7
    assert not changed[step_of < k].any()
    last_layer = torch.tensor(layers)[step_of] == SPEC.num_layers - 1
    assert changed[last_layer].all()

    ch = ChunkedHyperNetwork(SPEC, 11, 4, 3, (6,))
    ch.add_task()
    before = ch(0).detach()
    with torch.no_grad():
        ch.chunk_embeddings[0][k] += 1.0
    changed = (ch(0).detach() - before).abs() > 1e-7
    owner = torch.arange(SPEC.numel) // 11
    assert changed[owner == k].any() and not changed[owner != k].any()


def test_rnn_gradient_of_last_layer_reaches_first_step():
    h = RNNHyperNetwork(SPEC, 11, 4, 6, step_signal="learned")
    h.add_task()
    w = h(0)
    w[-30:].sum().backward()  # the output layer's weights only
    assert h.step_embeddings.grad[0].abs().sum() > 0


@pytest.mark.parametrize("signal", ["sinusoidal", "onehot", "learned", "none"])
def test_step_signals(signal):
    h = RNNHyperNetwork(SPEC, 11, 4, 6, step_signal=signal, step_dim=4)
    h.add_task()
    assert h(0).shape == (SPEC.numel,)
    if signal == "none":
        assert h.input_size == 4
    with pytest.raises(ValueError, match="step_signal"):
        RNNHyperNetwork(SPEC, 11, 4, 6, step_signal="position")


def test_growth_keeps_every_task_exact():
    h = RNNHyperNetwork(SPEC, 11, 4, 6)
    for _ in range(3):
        h.add_task()
    before = h([0, 1, 2]).detach()
    n = h.num_shared_parameters()
    h.grow(5)
    assert h.hidden_size == 11 and h.num_shared_parameters() > n
    torch.testing.assert_close(h([0, 1, 2]).detach(), before, rtol=0, atol=1e-6)
    # the new units are trainable: their outgoing weights get gradients at once; their
    # incoming weights (zero gradient while the outgoing ones are zero) once those have moved
    new_rows = torch.cat([torch.arange(g * 11 + 6, (g + 1) * 11) for g in range(4)])
    h(0).pow(2).sum().backward()
    assert h.out.weight.grad[:, 6:].abs().sum() > 0
    assert h.lstm.weight_ih_l0.grad[new_rows].abs().sum() == 0
    with torch.no_grad():
        h.out.weight -= 0.1 * h.out.weight.grad
    h.zero_grad()
    h(0).pow(2).sum().backward()
    assert h.lstm.weight_ih_l0.grad[new_rows].abs().sum() > 0
    assert h.lstm.weight_hh_l0.grad[new_rows].abs().sum() > 0
    again = hypernetwork_from_config(SPEC, h.config())
    assert again.hidden_size == 11


def test_growth_keeps_a_double_hypernetwork_double_and_exact():
    h = RNNHyperNetwork(SPEC, 11, 4, 6).double()
    for _ in range(2):
        h.add_task()
    before = h([0, 1]).detach()
    h.grow(3)
    assert all(p.dtype == torch.float64 for p in h.parameters())
    # in float64 the old tasks' weights survive growth to rounding, not to float32's 1e-6
    torch.testing.assert_close(h([0, 1]).detach(), before, rtol=0, atol=1e-13)


def test_a_float64_hypernetwork_reloads_exactly_through_a_float32_build():
    """A checkpoint is rebuilt from its config in float32 and then cast: the (unsaved) scale
    buffer of a hypernetwork built under a float64 default must hold the same numbers."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        h64 = make("full", spec=SPEC)
        h64.add_task()
    finally:
        torch.set_default_dtype(old)
    rebuilt = hypernetwork_from_config(SPEC, h64.config())
    rebuilt.add_task()
    rebuilt = rebuilt.double()
    rebuilt.load_state_dict(h64.state_dict())
    assert torch.equal(rebuilt(0), h64(0))


@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trip_and_repr(kind):
    h = make(kind)
    again = hypernetwork_from_config(SPEC, h.config())
    assert type(again) is type(h) and again.config() == h.config()
    assert f"P={SPEC.numel}" in repr(h)


def test_constructor_checks():
    with pytest.raises(ValueError, match="chunk_size"):
        RNNHyperNetwork(SPEC, 0)
    with pytest.raises(ValueError, match="chunking"):
        RNNHyperNetwork(SPEC, 4, chunking="cols")
    with pytest.raises(ValueError, match="even"):
        RNNHyperNetwork(SPEC, 4, step_dim=3)
    with pytest.raises(TypeError, match="ParamSpec"):
        FullHyperNetwork([1, 2])
    with pytest.raises(ValueError, match="activation"):
        FullHyperNetwork(SPEC, activation="gelu")
    with pytest.raises(ValueError, match="kind"):
        hypernetwork_from_config(SPEC, {"kind": "lstm"})


@pytest.mark.parametrize("kind", [*KINDS, "rnn-cond"])
def test_reset_parameters_redraws_every_parameter_task_ones_included(kind):
    if kind == "rnn-cond":
        torch.manual_seed(0)
        h = RNNHyperNetwork(SPEC, 11, 4, 6, step_signal="learned", conditional_step_embeddings=True)
    else:
        h = make(kind)
    h.add_task(), h.add_task()
    before = {n: p.detach().clone() for n, p in h.named_parameters()}
    h.reset_parameters()
    kept = [n for n, p in h.named_parameters() if torch.equal(before[n], p)]
    assert kept == []
    assert any(n.startswith("task_embeddings") for n in before)
    # the output calibration still holds for the new draws: unit-std raw outputs
    assert h(0).isfinite().all()


@pytest.mark.parametrize("make_h", [
    lambda: FullHyperNetwork(SPEC, 4, hidden=6),
    lambda: ChunkedHyperNetwork(SPEC, 13, 4, 3, hidden=6),
])  # fmt: skip
def test_hidden_must_be_a_sequence(make_h):
    with pytest.raises(TypeError, match=r"hidden must be a sequence of ints .* write \(6,\)"):
        make_h()


@pytest.mark.parametrize(
    "kind, kw",
    [(k, {}) for k in KINDS]
    + [("rnn", dict(step_signal="learned", conditional_step_embeddings=True))],
)
def test_add_task_draws_on_the_generators_device(kind, kw, monkeypatch):
    """The methods seed task embeddings with a CPU generator. On a GPU, torch.randn refuses a
    generator of another device, so the draw must happen on the generator's device and move.
    The meta device stands in for the GPU; the patched randn enforces CUDA's rule."""
    h = make(kind, **kw)
    h.add_task()  # the first task calibrates, which needs values
    h = h.to("meta")
    real = torch.randn

    def strict(*args, generator=None, device=None, **kwargs):
        if generator is not None and torch.device(device or "cpu") != generator.device:
            raise RuntimeError(f"generator on {generator.device}, draw on {device}")
        return real(*args, generator=generator, device=device, **kwargs)

    monkeypatch.setattr(torch, "randn", strict)
    t = h.add_task(torch.Generator().manual_seed(1))
    assert all(p.device.type == "meta" for p in h.task_parameters(t))


def test_readme_size_claim_names_only_signals_that_do_not_grow():
    """graphseq/continual/README.md lists the step signals whose size does not grow with the
    number of chunks; shared learned step vectors grow by step_dim per chunk."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / "graphseq" / "continual" / "README.md").read_text()
    claim = re.search(
        r"With\s+((?:(?!With\s).)*?)\s+it does\s+not grow with the number of chunks", text, re.S
    )
    assert claim is not None
    claim = " ".join(claim.group(1).split())
    spec_small = MLPTarget(7, (5, 4), classes_per_head=3, num_heads=2).param_spec
    d, H = 4, 6

    def body(c, **kw):  # shared size without the output layer (H + 1) c
        h = RNNHyperNetwork(spec_small, c, d, H, step_dim=4, **kw)
        if kw.get("conditional_step_embeddings"):
            h.add_task()
        return h.num_shared_parameters() - (H + 1) * c, h.num_steps

    claimed = []
    if "sinusoidal" in claim:
        claimed.append({"step_signal": "sinusoidal"})
    if "no step signal" in claim:
        claimed.append({"step_signal": "none"})
    if re.search(r"per-task learned", claim):
        claimed.append({"step_signal": "learned", "conditional_step_embeddings": True})
    if re.search(r"(?<!per-task )\blearned\b", claim):
        claimed.append({"step_signal": "learned"})
    assert claimed
    for kw in claimed:
        (a, n_a), (b, n_b) = body(11, **kw), body(3, **kw)
        assert n_a != n_b
        assert a == b, f"README says {kw} does not grow with the chunks: {a} -> {b}"


@pytest.mark.parametrize("kind", KINDS)
def test_config_round_trip_keeps_non_default_settings(kind):
    # a default-valued config round-trips even when a key is dropped: use output_scale=False
    h = make(kind, output_scale=False)
    again = hypernetwork_from_config(SPEC, h.config())
    assert again.output_scale is False and again.config() == h.config()
    assert torch.equal(again.scale, h.scale)
