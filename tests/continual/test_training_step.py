"""The batched training step of the hypernetwork method: the padded layout, one generator call
for the current and the old tasks, and the hand-written regulariser backward, each compared in
float64 with the plain computation (``forward(task)`` and the regulariser in the flat order)."""

from __future__ import annotations

import pytest
import torch

from graphseq.continual import (
    EWC,
    SI,
    ChunkedHyperNetwork,
    FullHyperNetwork,
    HypernetworkMethod,
    MLPTarget,
    RNNHyperNetwork,
)
from graphseq.continual.methods import (
    _scaled_squared_distance,
    _scaled_squared_distance_reference,
)
from graphseq.datasets.continual import TensorSplit

TARGET = MLPTarget(7, (5, 4), classes_per_head=3, num_heads=4)  # P = 40 + 24 + 60 = 124
SPEC = TARGET.param_spec


def make(kind: str, spec=SPEC):
    torch.manual_seed(0)
    if kind == "full":
        return FullHyperNetwork(spec, 4, (6,))
    if kind == "chunked":
        return ChunkedHyperNetwork(spec, 13, 4, 3, (6,))
    if kind == "chunked-cond":
        return ChunkedHyperNetwork(spec, 13, 4, 3, (6,), conditional_chunk_embeddings=True)
    if kind == "rnn-rows":
        return RNNHyperNetwork(spec, 11, 4, 6, step_signal="learned", chunking="rows")
    return RNNHyperNetwork(spec, 11, 4, 6, step_signal="learned")


KINDS = ["full", "chunked", "chunked-cond", "rnn", "rnn-rows"]


def with_tasks(kind: str, n: int):
    h = make(kind)
    for _ in range(n):
        h.add_task()
    return h.double()


def perturb(module: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in module.parameters()]


# -- the regulariser's squared distance -------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (4, 130), (0, 5)])
def test_scaled_squared_distance_matches_reference(shape):
    g = torch.Generator().manual_seed(0)
    S, Q = shape
    raw = torch.randn(S, Q, generator=g, dtype=torch.float64)
    scale = torch.rand(Q, generator=g, dtype=torch.float64)
    scale[::3] = 0.0  # padding positions
    target = torch.randn(S, Q, generator=g, dtype=torch.float64) * (scale > 0)
    fast = _scaled_squared_distance(raw, scale, target)
    assert fast.shape == (S,)
    torch.testing.assert_close(fast, _scaled_squared_distance_reference(raw, scale, target))


def test_scaled_squared_distance_gradients():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(7, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_scaled_squared_distance, (raw, scale, target))
    # only raw needs a gradient in training; the others get none
    out_w = torch.randn(3, generator=g, dtype=torch.float64)
    r = raw.detach().requires_grad_()
    (_scaled_squared_distance(r, scale.detach(), target.detach()) * out_w).sum().backward()
    ref = raw.detach().requires_grad_()
    (
        _scaled_squared_distance_reference(ref, scale.detach(), target.detach()) * out_w
    ).sum().backward()
    torch.testing.assert_close(r.grad, ref.grad)
    # a second backward through a retained graph gives the same gradient again
    r2 = raw.detach().requires_grad_()
    loss = _scaled_squared_distance(r2, scale.detach(), target.detach()).sum()
    (first,) = torch.autograd.grad(loss, r2, retain_graph=True)
    (second,) = torch.autograd.grad(loss, r2)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_scaled_squared_distance_with_a_scale_per_row():
    g = torch.Generator().manual_seed(3)
    raw = torch.randn(3, 9, generator=g, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(3, 9, generator=g, dtype=torch.float64)
    scale[1, ::2] = 0.0
    scale.requires_grad_()
    target = torch.randn(3, 9, generator=g, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(
        _scaled_squared_distance(raw, scale, target),
        _scaled_squared_distance_reference(raw, scale, target),
    )
    assert torch.autograd.gradcheck(_scaled_squared_distance, (raw, scale, target))


# -- the padded layout ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_padded_places_flat_numbers_where_they_are_read(kind):
    h = with_tasks(kind, 1)
    v = torch.randn(2, SPEC.numel, dtype=torch.float64)
    pad = h.padded(v)
    assert pad.shape == (2, h.padded_scale.numel())
    torch.testing.assert_close(h._read_out(pad), v, rtol=0, atol=0)
    assert (pad[:, h.padded_scale == 0] == 0).all()
    with pytest.raises(ValueError, match="values must have shape"):
        h.padded(torch.zeros(SPEC.numel + 1))
    with pytest.raises(TypeError, match="values must be a Tensor"):
        h.padded([0.0] * SPEC.numel)


@pytest.mark.parametrize("kind", KINDS)
def test_padded_layout_reads_out_to_forward(kind):
    h = with_tasks(kind, 3)
    raw, features = h.generate_padded([2, 0])
    Q = h.padded_scale.numel()
    assert raw.shape == (2, Q) and Q >= SPEC.numel and features.shape[0] == 2
    torch.testing.assert_close(h._read_out(raw) * h.scale, h([2, 0]))
    # the weights in the padded layout are zero exactly where nothing is read out
    read = torch.zeros(Q, dtype=torch.bool)
    read[torch.arange(SPEC.numel) if h.index is None else h.index] = True
    weights, _ = h.snapshot([2, 0])
    assert not weights.requires_grad
    torch.testing.assert_close(weights, raw * h.padded_scale)
    assert (weights[:, ~read] == 0).all() and (h.padded_scale[read] > 0).all()
    # so squared distances are the same in the padded and in the flat order
    other, _ = h.snapshot([1, 1])
    torch.testing.assert_close(
        (weights - other).pow(2).sum(1), (h([2, 0]) - h([1, 1])).pow(2).sum(1)
    )


def test_identity_read_out_is_a_slice():
    # layers of 16 and 10 numbers, chunks of 2: every chunk is full, the read-out is the
    # identity and no index is kept
    spec = MLPTarget(3, (4,), 2).param_spec
    h = RNNHyperNetwork(spec, 2, 4, 6)
    assert h.index is None and h.padded_scale.numel() == spec.numel
    h.add_task()
    raw, _ = h.generate_padded([0])
    torch.testing.assert_close(raw[0] * h.scale, h(0))
    assert make("rnn").index is not None  # the 11-number chunks leave padding


@pytest.mark.parametrize("kind", KINDS)
def test_generate_with_old_equals_separate_calls(kind):
    h = with_tasks(kind, 4)
    perturb(h)
    out_w = torch.randn(3, h.padded_scale.numel(), dtype=torch.float64)
    w, raw, feats = h.generate_with_old(3, [0, 2, 1])
    assert w.shape == (SPEC.numel,) and raw.shape == out_w.shape and feats.shape[0] == 3
    (w.pow(2).sum() + (raw * out_w).sum() + feats.sum()).backward()
    fast = grads(h)
    h.zero_grad()
    w_ref = h(3)
    raw_ref, feats_ref = h.generate_padded([0, 2, 1])
    (w_ref.pow(2).sum() + (raw_ref * out_w).sum() + feats_ref.sum()).backward()
    torch.testing.assert_close(w, w_ref)
    torch.testing.assert_close(raw, raw_ref)
    torch.testing.assert_close(feats, feats_ref)
    for a, b in zip(fast, grads(h), strict=True):
        torch.testing.assert_close(a, b)
    # no old task: the current task alone
    w0, raw0, feats0 = h.generate_with_old(1, [])
    torch.testing.assert_close(w0, h(1))
    assert raw0.shape == (0, h.padded_scale.numel()) and feats0.shape[0] == 0


# -- the method's training step ---------------------------------------------------------------


def flat_penalty(m: HypernetworkMethod, old, flat_targets, state_targets):
    """The regulariser written in the flat order (the definition in methods.py's docstring):
    with ``reg_outputs="used"`` only the numbers old task t's head t reads are compared."""
    if m.reg_outputs == "used":
        keep = torch.stack([m.target.used_by_head(t) for t in old]).double()
    else:
        keep = torch.ones(len(old), m.target.param_spec.numel, dtype=torch.float64)
    if state_targets is None:
        w = m.hnet(old)
        return m.beta * ((w - flat_targets[old]) * keep).pow(2).sum(1).mean()
    w, h = m.hnet.generate_with_states(old)
    dh = h[..., : state_targets.shape[-1]] - state_targets[old]
    loss = m.beta * ((w - flat_targets[old]) * keep).pow(2).sum(1).mean()
    return loss + m.hidden_beta * dh.pow(2).sum(dim=(1, 2)).mean()


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("rnn", {}),
        ("rnn", {"reg_outputs": "all"}),
        ("rnn-rows", {}),
        ("rnn-rows", {"reg_outputs": "all", "reg_batch_size": 2}),
        ("rnn", {"hidden_beta": 0.3}),
        ("rnn", {"reg_batch_size": 2}),
        ("rnn", {"hidden_beta": 0.3, "reg_batch_size": 2}),
        ("chunked", {}),
        ("chunked", {"reg_outputs": "all"}),
        ("chunked-cond", {"reg_batch_size": 2}),
        ("full", {}),
    ],
)
def test_weights_and_penalty_equals_flat_computation(kind, options):
    m = HypernetworkMethod(TARGET, make(kind), beta=0.7, **options).double()
    for t in range(4):
        m.begin_task(t)
    old = list(range(3))
    with torch.no_grad():
        flat_targets = m.hnet(old)
        states = m.hnet.generate_with_states(old)[1] if options.get("hidden_beta") else None
    perturb(m.hnet)  # move away from the targets: the regulariser and its gradient are not zero
    x = torch.randn(5, 7, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0])

    def step(weights, reg):
        logits = TARGET.head(TARGET(x, weights), 3)
        return torch.nn.functional.cross_entropy(logits, y) + reg

    rng = m._gen.get_state()
    w, reg = m.weights_and_penalty(3)
    step(w, reg).backward()
    fast = grads(m)
    m.zero_grad()

    m._gen.set_state(rng)  # the same random subset of old tasks
    subset = old
    if options.get("reg_batch_size"):
        subset = torch.randperm(3, generator=m._gen)[: options["reg_batch_size"]].tolist()
    reg_ref = flat_penalty(m, subset, flat_targets, states)
    w_ref = m.weights(3)
    step(w_ref, reg_ref).backward()
    assert reg_ref.item() > 1e-3
    torch.testing.assert_close(w, w_ref)
    torch.testing.assert_close(reg, reg_ref, rtol=1e-12, atol=0)
    for a, b in zip(fast, grads(m), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # penalty() alone gives the same number (and draws the same subset)
    m._gen.set_state(rng)
    torch.testing.assert_close(m.penalty(3), reg_ref, rtol=1e-12, atol=0)


def test_first_task_has_no_penalty_and_other_methods_use_the_default():
    m = HypernetworkMethod(TARGET, make("rnn"), beta=0.5)
    m.begin_task(0)
    w, reg = m.weights_and_penalty(0)
    assert reg is None and torch.equal(w, m.weights(0))
    ewc = EWC(TARGET, lam=10.0)
    ewc.begin_task(0)
    ewc.begin_task(1)
    w, reg = ewc.weights_and_penalty(1)
    assert w is ewc.flat and torch.equal(reg, ewc.penalty(1))


def test_used_outputs_leave_other_heads_free():
    # old task t reads head t only: with reg_outputs="used" the regulariser does not pull on
    # the other heads' rows generated for it (zero gradient there), with "all" it does; one
    # head: no difference
    used = TARGET.used_by_head(0)
    c, fan_in = TARGET.classes_per_head, 4
    assert int((~used).sum()) == 3 * c * (fan_in + 1)
    assert TARGET.used_by_head(2)[~used].sum() == c * (fan_in + 1)
    single = MLPTarget(7, (5, 4), classes_per_head=3)
    assert single.used_by_head(0).all()
    for target in (TARGET, single):
        for mode in ("used", "all"):
            torch.manual_seed(0)
            hnet = RNNHyperNetwork(target.param_spec, 11, 4, 6, step_signal="learned")
            m = HypernetworkMethod(target, hnet, beta=1.0, reg_outputs=mode).double()
            for t in range(3):
                m.begin_task(t)
            perturb(m.hnet)
            raw, features = m.hnet.generate_padded([0, 1])
            raw = raw.detach().requires_grad_()
            m._regulariser([0, 1], raw, features).backward()
            for row, task in enumerate((0, 1)):
                if target.num_heads == 1:  # everything is used: nothing to leave free
                    assert (raw.grad[row][m.hnet.padded_scale > 0] != 0).all()
                    continue
                unused = m.hnet.padded(~target.used_by_head(task))
                assert (raw.grad[row][unused] == 0).all().item() == (mode == "used")
                assert (raw.grad[row][m.hnet.padded(target.used_by_head(task))] != 0).all()
    with pytest.raises(ValueError, match="reg_outputs must be"):
        HypernetworkMethod(TARGET, make("rnn"), reg_outputs="some")
    with pytest.raises(ValueError, match="head must be in"):
        TARGET.used_by_head(4)
    with pytest.raises(TypeError, match="head must be an int"):
        TARGET.used_by_head(True)


def test_bad_task_lists():
    h = with_tasks("rnn", 2)
    with pytest.raises(TypeError, match="tasks must be a list"):
        h.generate_padded(1)
    with pytest.raises(TypeError, match="old must be a list"):
        h.generate_with_old(1, 0)
    with pytest.raises(TypeError, match="task must be an int"):
        h.generate_with_old([1], [0])
    with pytest.raises(ValueError, match="unknown"):
        h.generate_with_old(1, [0, 5])
    with pytest.raises(ValueError, match="empty"):
        h.snapshot([])


def test_tensor_task_ids_are_accepted_in_lists():
    h = with_tasks("chunked-cond", 2)  # per-task chunk embeddings are looked up by id
    raw, _ = h.generate_padded([torch.tensor(1), 0])
    torch.testing.assert_close(raw, h.generate_padded([1, 0])[0])
    _, old_raw, _ = h.generate_with_old(0, [torch.tensor(1)])
    torch.testing.assert_close(old_raw, h.generate_padded([1])[0])


def test_tensor_task_ids_must_be_integer_tensors():
    h = with_tasks("chunked-cond", 2)
    torch.testing.assert_close(h(torch.tensor(1)), h(1))  # a 0-d tensor is one id
    for bad in (torch.tensor(1.9), torch.tensor(0.99), torch.tensor(True)):
        with pytest.raises(TypeError, match="task ids must be ints"):
            h([bad])  # was truncated to an id
        with pytest.raises(TypeError, match="task ids must be ints"):
            h.generate_padded([bad])
    with pytest.raises(TypeError, match="task ids must be ints"):
        h(torch.tensor([[0, 1]]))


# -- the Fisher-weighted output regulariser ---------------------------------------------------


class _Task:
    """A task of random examples for TARGET (7 inputs, 3 classes per head)."""

    def __init__(self, seed: int, n: int = 9, dtype: torch.dtype = torch.float64) -> None:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 7, generator=g, dtype=dtype)
        self.train = TensorSplit(x, torch.randint(0, 3, (n,), generator=g))


def fisher_by_hand(m: HypernetworkMethod, task: int, data: _Task) -> torch.Tensor:
    """Diagonal empirical Fisher with torch.func per-example gradients (independent of the
    loop in end_task), normalised by its mean over the compared numbers."""
    w = m.hnet(task).detach()
    x, y = data.train.x, data.train.y

    def loss(w, xi, yi):
        logits = TARGET.head(TARGET(xi[None], w), task)
        return torch.nn.functional.cross_entropy(logits, yi[None])

    per_example = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(w, x, y)
    fisher = per_example.pow(2).mean(0)
    if m.reg_outputs == "used":
        return fisher / fisher[TARGET.used_by_head(task)].mean()
    return fisher / fisher.mean()


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("rnn", {}),
        ("rnn-rows", {"reg_outputs": "all"}),
        ("rnn", {"reg_batch_size": 2}),
        ("chunked-cond", {}),
        ("full", {"reg_outputs": "all", "reg_batch_size": 2}),
    ],
)
def test_fisher_weighted_penalty_equals_its_definition(kind, options):
    m = HypernetworkMethod(
        TARGET, make(kind), beta=0.7, reg_weighting="fisher", fisher_samples=9,
        fisher_floor=0.2, **options,
    ).double()  # fmt: skip
    tasks = [_Task(t) for t in range(3)]
    omegas = []
    for t in range(3):
        m.begin_task(t)
        perturb(m.hnet, seed=10 + t)  # "training"
        m.end_task(t, tasks[t])
        compared = TARGET.used_by_head(t) if m.reg_outputs == "used" else torch.ones(SPEC.numel)
        omega = (fisher_by_hand(m, t, tasks[t]) + 0.2) * compared
        torch.testing.assert_close(m._omega(t).double(), omega)
        omegas.append(omega)
    m.begin_task(3)
    with torch.no_grad():
        flat_targets = m.hnet([0, 1, 2])
    perturb(m.hnet, seed=20)
    rng = m._gen.get_state()
    subset = [0, 1, 2]
    if options.get("reg_batch_size"):
        subset = torch.randperm(3, generator=m._gen)[: options["reg_batch_size"]].tolist()
    omega = torch.stack(omegas)[subset]
    diff = m.hnet(subset) - flat_targets[subset]
    expected = 0.7 * (omega * diff.pow(2)).sum(1).mean()
    m._gen.set_state(rng)
    torch.testing.assert_close(m.penalty(3), expected, rtol=1e-12, atol=0)
    m._gen.set_state(rng)
    _, reg = m.weights_and_penalty(3)
    torch.testing.assert_close(reg, expected, rtol=1e-12, atol=0)


def test_fisher_is_zero_where_the_loss_does_not_depend_on_a_weight():
    # an input that is always zero: the first layer's weights from it get the floor only
    m = HypernetworkMethod(TARGET, make("rnn"), reg_weighting="fisher", fisher_floor=0.2).double()
    m.begin_task(0)
    data = _Task(0)
    data.train.x[:, 0] = 0.0
    m.end_task(0, data)
    first_col = torch.arange(0, 5 * 7, 7)  # fc0.weight[:, 0]
    assert (m._fisher[0][first_col] == 0).all() and (m._omega(0)[first_col] == 0.2).all()
    assert (m._fisher[0][TARGET.used_by_head(0)] > 0).float().mean() > 0.5
    # beta = 0: nothing to weight, no Fisher is computed
    off = HypernetworkMethod(TARGET, make("rnn"), beta=0.0, reg_weighting="fisher").double()
    off.begin_task(0)
    off.end_task(0, data)
    off.begin_task(1)
    assert off._fisher == {}


def test_train_continual_with_the_fisher_weighted_regulariser():
    from graphseq.continual import ContinualConfig, train_continual
    from graphseq.datasets.continual import split_digits

    stream = split_digits(2)
    target = MLPTarget(64, (16,), classes_per_head=2, num_heads=2)
    hnet = RNNHyperNetwork(target.param_spec, 100, 8, 12, step_signal="learned")
    m = HypernetworkMethod(target, hnet, beta=0.1, reg_weighting="fisher", fisher_samples=20)
    res = train_continual(m, stream, ContinualConfig(iterations=5, batch_size=8), log=None)
    assert sorted(m._fisher) == [0, 1] and all(0.0 <= a <= 1.0 for a in res.R[1])
    assert m._reg_scale is not None and m._reg_scale.shape[0] == 1


def test_fisher_state_survives_a_checkpoint(tmp_path):
    from graphseq.continual import load_method, save_method

    m = HypernetworkMethod(TARGET, make("rnn"), reg_weighting="fisher", fisher_samples=5)
    for t in range(2):
        m.begin_task(t)
        m.end_task(t, _Task(t, dtype=torch.float32))
    save_method(tmp_path / "m.pt", m)
    again, _ = load_method(tmp_path / "m.pt")
    assert again.reg_weighting == "fisher" and sorted(again._fisher) == [0, 1]
    for t in range(2):
        torch.testing.assert_close(again._fisher[t], m._fisher[t])
    again.begin_task(2)  # targets and weights of the two old tasks
    m.begin_task(2)
    torch.testing.assert_close(again._reg_scale, m._reg_scale)


def test_fisher_weighting_bad_input():
    with pytest.raises(ValueError, match="reg_weighting must be"):
        HypernetworkMethod(TARGET, make("rnn"), reg_weighting="ewc")
    with pytest.raises(ValueError, match="fisher_samples must be"):
        HypernetworkMethod(TARGET, make("rnn"), reg_weighting="fisher", fisher_samples=0)
    with pytest.raises(ValueError, match="fisher_floor"):
        HypernetworkMethod(TARGET, make("rnn"), reg_weighting="fisher", fisher_floor=-1.0)
    m = HypernetworkMethod(TARGET, make("rnn"), reg_weighting="fisher")
    m.begin_task(0)  # no end_task: no Fisher for task 0
    with pytest.raises(RuntimeError, match=r"no Fisher estimate for old task\(s\) \[0\]"):
        m.begin_task(1)


def test_checkpoint_written_before_the_extra_state_still_loads(tmp_path):
    from graphseq.continual import load_method, save_method
    from graphseq.train.io import load_checkpoint, save_checkpoint

    m = HypernetworkMethod(TARGET, make("rnn"))
    m.begin_task(0)
    save_method(tmp_path / "m.pt", m)
    state = load_checkpoint(tmp_path / "m.pt")
    del state["model"]["_extra_state"]  # as an older graphseq wrote it
    for key in ("reg_outputs", "reg_weighting", "fisher_samples", "fisher_floor"):
        del state["method"][key]
    save_checkpoint(tmp_path / "old.pt", state)
    again, _ = load_method(tmp_path / "old.pt")
    torch.testing.assert_close(again.weights(0), m.weights(0))
    # it keeps training with the regulariser it was trained with (every generated number)
    assert again._fisher == {} and again.reg_outputs == "all"
    assert again.reg_weighting == "uniform"
    with pytest.raises(ValueError, match="Fisher estimate of task 0 must be a tensor of shape"):
        again.set_extra_state({"fisher": {0: torch.zeros(3)}})


# -- the single-network baselines: EWC and SI against their definitions -----------------------


def per_example_fisher(w: torch.Tensor, head: int, data: _Task) -> torch.Tensor:
    """Mean squared per-example gradient of the true label's cross-entropy (torch.func, not
    the loop in ``_empirical_fisher``), over every example of the split."""

    def loss(w, xi, yi):
        return torch.nn.functional.cross_entropy(TARGET.head(TARGET(xi[None], w), head), yi[None])

    x, y = data.train.x, data.train.y
    return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(w, x, y).pow(2).mean(0)


def test_ewc_online_fisher_and_penalty_equal_their_definition():
    # F <- gamma F + F(t), penalty lam / 2 sum_k F_k (w_k - w*_k)^2; fisher_samples is above
    # the split's size, so every example enters F(t)
    ewc = EWC(TARGET, lam=3.0, gamma=0.5, fisher_samples=50).double()
    tasks = [_Task(21), _Task(22)]
    ewc.begin_task(0)
    f0 = per_example_fisher(ewc.flat.detach(), 0, tasks[0])
    ewc.end_task(0, tasks[0])
    torch.testing.assert_close(ewc.fisher, f0)
    torch.testing.assert_close(ewc.anchor, ewc.flat.detach())
    ewc.begin_task(1)
    with torch.no_grad():
        ewc.flat.add_(0.1 * torch.randn(ewc.flat.shape, dtype=torch.float64))
    expected = 0.5 * 3.0 * (f0 * (ewc.flat - ewc.anchor).pow(2)).sum()
    torch.testing.assert_close(ewc.penalty(1), expected)
    f1 = per_example_fisher(ewc.flat.detach(), 1, tasks[1])
    ewc.end_task(1, tasks[1])
    torch.testing.assert_close(ewc.fisher, 0.5 * f0 + f1)


def test_si_importance_and_penalty_equal_their_definition():
    # omega = -sum_steps g * dw, Omega += omega / (Delta^2 + xi), penalty c sum Omega (w - w*)^2
    si = SI(TARGET, c=0.7, xi=0.3).double()
    si.begin_task(0)
    start = si.flat.detach().clone()
    g = torch.Generator().manual_seed(3)
    path = torch.zeros_like(start)
    for _ in range(3):
        grad = torch.randn(start.shape, generator=g, dtype=torch.float64)
        step = 0.5 * torch.randn(start.shape, generator=g, dtype=torch.float64)
        si.flat.grad = grad.clone()
        si.before_step()
        with torch.no_grad():
            si.flat.add_(step)  # what the optimiser step would do
        si.after_step()
        path -= grad * step
    si.end_task(0, None)
    omega = path / ((si.flat.detach() - start).pow(2) + 0.3)
    torch.testing.assert_close(si.omega, omega)
    si.begin_task(1)
    with torch.no_grad():
        si.flat.add_(0.2)
    torch.testing.assert_close(si.penalty(1), 0.7 * (omega * (si.flat - si.anchor).pow(2)).sum())
