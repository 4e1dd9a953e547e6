"""graphseq.continual loop, methods, task-inferred evaluation and checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from graphseq.continual import (
    EWC,
    SI,
    ChunkedHyperNetwork,
    ContinualConfig,
    FineTune,
    GNNTarget,
    HypernetworkMethod,
    MLPTarget,
    RNNHyperNetwork,
    SeparateNetworks,
    evaluate_task_incremental,
    evaluate_task_inferred,
    load_method,
    method_from_config,
    save_method,
    train_continual,
)
from graphseq.datasets.continual import TensorSplit, graph_tasks, split_digits
from graphseq.train.io import CheckpointError


@pytest.fixture(scope="module")
def stream():
    return split_digits(3)


def small_target(tasks=3):
    return MLPTarget(64, (16,), 2, num_heads=tasks)


def rnn_method(target, **kw):
    torch.manual_seed(0)
    hnet = RNNHyperNetwork(target.param_spec, 60, 8, 16, step_signal="learned", step_dim=8)
    return HypernetworkMethod(target, hnet, **kw)


CFG = ContinualConfig(iterations=60, batch_size=32, lr=3e-3)


def test_output_regulariser_by_hand():
    target = small_target()
    m = rnn_method(target, beta=0.5)
    m.begin_task(0)
    assert m.penalty(0) is None
    m.begin_task(1)
    old = m.hnet(0).detach()
    assert m.penalty(1).item() == pytest.approx(0.0, abs=1e-10)  # targets taken at task start
    with torch.no_grad():
        m.hnet.out.bias += 0.1
    new = m.hnet(0).detach()
    # old task 0 is compared on what its head (head 0) reads
    used = target.used_by_head(0)
    expected = 0.5 * (new - old)[used].pow(2).sum()
    assert m.penalty(1).item() == pytest.approx(expected.item(), rel=1e-5)
    # only shared parameters and the current task's own are trained
    names = {id(p) for p in m.trainable(1)}
    assert id(m.hnet.task_embeddings[1]) in names and id(m.hnet.task_embeddings[0]) not in names


def test_train_old_embeddings_moves_them_under_the_regulariser(stream, tmp_path):
    target = small_target()
    frozen = rnn_method(target, beta=0.5)
    free = rnn_method(small_target(), beta=0.5, train_old_embeddings=True)
    for m in (frozen, free):
        for t in range(3):
            m.begin_task(t)
    ids = lambda m, t: {id(p) for p in m.trainable(t)}  # noqa: E731
    own = lambda m, t: {id(p) for p in m.hnet.task_parameters(t)}  # noqa: E731
    shared = {id(p) for p in free.hnet.shared_parameters()}
    assert ids(free, 2) == shared | own(free, 0) | own(free, 1) | own(free, 2)
    assert ids(frozen, 2) == {id(p) for p in frozen.hnet.shared_parameters()} | own(frozen, 2)
    # in the loop: task 0's embedding moves after task 0 only with the option; both keep
    # task 0 learned
    results = {}
    for name, kw in (("frozen", {}), ("free", {"train_old_embeddings": True})):
        m = rnn_method(small_target(), beta=0.05, **kw)
        first = train_continual(m, list(stream)[:1], CFG, task_inferred=False)
        e0 = m.hnet.task_embeddings[0].detach().clone()
        res = train_continual(m, stream, CFG, start_task=1, previous=first)
        moved = (m.hnet.task_embeddings[0].detach() - e0).abs().max().item()
        results[name] = (m, res, moved)
    assert results["frozen"][2] == 0.0 and results["free"][2] > 1e-4
    for name, (_, res, _) in results.items():
        assert res.R[-1][0] > 0.8, (name, res.R)
    # the option survives a checkpoint
    save_method(tmp_path / "m.pt", results["free"][0])
    back, _ = load_method(tmp_path / "m.pt")
    assert back.train_old_embeddings and back.config()["train_old_embeddings"] is True
    with pytest.raises(ValueError, match="train_old_embeddings"):
        rnn_method(small_target(), train_old_embeddings=1)


def test_hidden_regulariser_and_subsets():
    target = small_target()
    # beta = 0: only the hidden-state term is left to catch the change below
    m = rnn_method(target, beta=0.0, hidden_beta=2.0, reg_batch_size=1)
    for t in range(3):
        m.begin_task(t)
    assert m.penalty(2).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        m.hnet.lstm.bias_hh_l0 += 0.05
    state = m._gen.get_state()
    penalty = m.penalty(2)
    m._gen.set_state(state)  # the same draw of old tasks, to rebuild the penalty by hand
    old = m._regularised_tasks()
    assert len(old) == 1 and old[0] in (0, 1)  # reg_batch_size = 1 of the 2 old tasks
    with torch.no_grad():
        _, features = m.hnet.generate_padded(old)
        width = m._hidden_targets.shape[-1]
        expected = 2.0 * (features[..., :width] - m._hidden_targets[old]).pow(2).sum()
    assert expected > 0
    torch.testing.assert_close(penalty.detach(), expected)
    with pytest.raises(ValueError, match="RNNHyperNetwork"):
        HypernetworkMethod(target, ChunkedHyperNetwork(target.param_spec, 50), hidden_beta=1.0)
    with pytest.raises(ValueError, match="spec"):
        HypernetworkMethod(small_target(2), rnn_method(target).hnet)


@pytest.mark.parametrize(
    "make",
    [
        lambda t: rnn_method(t, beta=0.05),
        lambda t: HypernetworkMethod(t, ChunkedHyperNetwork(t.param_spec, 100, 8, 8, (16,))),
        lambda t: FineTune(t),
        lambda t: EWC(t, lam=100.0, fisher_samples=20),
        lambda t: SI(t, c=0.1),
        lambda t: SeparateNetworks(t),
    ],
    ids=["rnn", "chunked", "finetune", "ewc", "si", "separate"],
)
def test_every_method_learns_in_the_loop(stream, make):
    m = make(small_target())
    res = train_continual(m, stream, CFG)
    R = torch.tensor(res.R)
    assert torch.isnan(R.triu(1)[R.triu(1) != 0]).all()
    assert (R.diagonal() > 0.9).all(), res.R  # every task is learned
    assert set(res.metrics) >= {"acc", "bwt", "max_forgetting", "inferred_acc"}
    assert len(res.inferred) == 3 and all(0 <= a <= 1 for a in res.inferred)
    assert res.metrics["acc"] == pytest.approx(R[-1].mean().item())


def test_hypernetwork_protects_old_tasks_better_than_finetuning(stream):
    # same target, data and budget: the regularised hypernetwork forgets less
    ft = train_continual(FineTune(small_target()), stream, CFG)
    hn = train_continual(rnn_method(small_target(), beta=0.05), stream, CFG)
    assert hn.metrics["bwt"] >= -0.02
    assert hn.metrics["bwt"] > ft.metrics["bwt"]


def test_ewc_fisher_and_si_importance(stream):
    target = small_target()
    ewc = EWC(target, lam=10.0, fisher_samples=10)
    train_continual(ewc, stream[:1], ContinualConfig(iterations=20), task_inferred=False)
    assert (ewc.fisher >= 0).all() and ewc.fisher.sum() > 0
    assert torch.equal(ewc.anchor, ewc.flat.detach())
    assert ewc.penalty(1).item() == pytest.approx(0.0)
    si = SI(target, c=1.0)
    train_continual(si, stream[:1], ContinualConfig(iterations=20), task_inferred=False)
    assert si.omega.sum() > 0  # loss went down along the path
    with pytest.raises(ValueError, match="xi"):
        SI(target, xi=0.0)


class _Const:
    """A split whose inputs are given rows and labels."""

    def __init__(self, x, y):
        self.split = TensorSplit(x, y)

    def __len__(self):
        return len(self.split)

    def batch(self, i):
        return self.split.batch(i)


def test_task_inferred_by_hand():
    # linear target, 2 heads of 2 classes; task 0 is confident on feature 0, task 1 on
    # feature 1: entropy picks the task whose feature is large
    target = MLPTarget(2, (), 2, num_heads=2)
    m = SeparateNetworks(target)
    m.begin_task(0)
    m.begin_task(1)
    with torch.no_grad():
        # weight [4, 2] rows: head0 class0, head0 class1, head1 class0, head1 class1; bias [4]
        m.nets[0].copy_(torch.tensor([5.0, 0, -5, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
        m.nets[1].copy_(torch.tensor([0.0, 0, 0, 0, 0, 5, 0, -5, 0, 0, 0, 0]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    split = _Const(x, y)
    # rows 0, 2, 3 pick task 0 (feature 0 large), row 1 picks task 1;
    # predictions under task 0: class 0, -, class 0, class 1
    acc, ti = evaluate_task_inferred(m, 0, split, seen=2)
    assert ti == pytest.approx(3 / 4)
    assert acc == pytest.approx(2 / 4)  # rows 0 (right) and 3 (right); row 2 wrong class
    # task given: row 1's tied logits (0, 0) give class 0, which is right
    assert evaluate_task_incremental(m, 0, split) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="seen"):
        evaluate_task_inferred(m, 2, split, seen=2)


def test_checkpoint_reload_and_add_a_task(stream, tmp_path):
    target = small_target()
    m = rnn_method(target, beta=0.05)
    ckpt = tmp_path / "cl.pt"
    first = train_continual(m, stream[:2], CFG, checkpoint=ckpt, task_inferred=False)
    raw = torch.load(ckpt, weights_only=True)  # plain tensors and containers only
    assert raw["num_tasks"] == 2 and raw["format"] == "graphseq.continual/1"
    again, extra = load_method(ckpt)
    assert extra["trained_tasks"] == 2
    for t in range(2):
        assert torch.equal(again.weights(t), m.weights(t))  # generation is deterministic
    before = again.hnet([0, 1]).detach()
    res = train_continual(again, stream, CFG, start_task=2, previous=first)
    assert again.num_tasks == 3
    assert res.R[0][0] == first.R[0][0] and not math.isnan(res.R[2][2])
    assert res.R[2][2] > 0.9
    drift = (again.hnet([0, 1]).detach() - before).norm() / before.norm()
    assert drift < 0.1  # the regulariser kept the old tasks' weights
    assert res.metrics["acc"] > 0.85


@pytest.mark.parametrize(
    "make",
    [
        lambda t: EWC(t, fisher_samples=5),
        lambda t: SI(t),
        lambda t: SeparateNetworks(t),
        lambda t: FineTune(t),
        lambda t: HypernetworkMethod(
            t,
            ChunkedHyperNetwork(t.param_spec, 100, 8, 8, (16,), conditional_chunk_embeddings=True),
        ),
        lambda t: HypernetworkMethod(
            t,
            RNNHyperNetwork(
                t.param_spec, 60, 8, 16, step_signal="learned", conditional_step_embeddings=True
            ),
        ),
    ],
)
def test_checkpoint_round_trip_every_method(stream, tmp_path, make):
    m = make(small_target())
    train_continual(m, stream[:2], ContinualConfig(iterations=5), task_inferred=False)
    save_method(tmp_path / "m.pt", m)
    again, _ = load_method(tmp_path / "m.pt")
    assert type(again) is type(m) and again.num_tasks == 2
    for t in range(2):
        assert torch.equal(again.weights(t), m.weights(t))
    sd, sd2 = m.state_dict(), again.state_dict()
    for k in sd:
        if isinstance(sd[k], torch.Tensor):
            assert torch.equal(sd[k], sd2[k]), k


def test_growth_in_the_loop(stream):
    target = small_target()
    torch.manual_seed(0)
    hnet = RNNHyperNetwork(target.param_spec, 60, 8, 4, step_signal="learned", step_dim=8)
    m = HypernetworkMethod(target, hnet, beta=0.05, growth_units=4, growth_threshold=1.0)
    cfg = ContinualConfig(iterations=20, growth_iterations=10)
    res = train_continual(m, stream[:2], cfg, task_inferred=False)
    assert res.growths == [1, 1] and m.hnet.hidden_size == 12
    assert m.config()["hnet"]["hidden_size"] == 12


def test_growth_options_that_could_never_grow_are_refused(stream):
    # growth_threshold 0 (the default): the accuracy is never below it; max_growths 0 forbids it
    for kw in ({}, {"growth_threshold": 0.0}, {"growth_threshold": 0.9, "max_growths": 0}):
        with pytest.raises(ValueError, match="never grows"):
            rnn_method(small_target(), growth_units=4, **kw)
    # without growth_iterations the loop never checks for growth
    m = rnn_method(small_target(), growth_units=4, growth_threshold=1.0)
    with pytest.raises(ValueError, match="growth_iterations"):
        train_continual(m, stream[:2], ContinualConfig(iterations=2), task_inferred=False)
    assert m.num_tasks == 0  # refused before training
    # growth_units 0 keeps every other option as it was
    assert rnn_method(small_target(), growth_threshold=0.0).growth_units == 0


def test_gnn_target_in_the_loop():
    stream = graph_tasks(2, num_train=120, num_test=60)
    target = GNNTarget(4, hidden=16, num_layers=2, classes_per_head=2, num_heads=2)
    torch.manual_seed(0)
    hnet = RNNHyperNetwork(target.param_spec, 64, 8, 16, step_signal="learned", step_dim=8)
    m = HypernetworkMethod(target, hnet, beta=0.05)
    res = train_continual(m, stream, ContinualConfig(iterations=40, lr=3e-3))
    assert all(0 <= a <= 1 for a in res.R[1][:2])
    assert res.R[1][1] > 0.6  # better than the balanced-class chance level


def test_loop_checks(stream, tmp_path):
    with pytest.raises(ValueError, match="head"):
        train_continual(FineTune(small_target(2)), stream, CFG)
    with pytest.raises(ValueError, match="skips"):
        train_continual(FineTune(small_target()), stream, CFG, start_task=2)
    # a method that has seen tasks is not trained on them again (the default start_task 0
    # after load_method): EWC would count their Fishers twice, a hypernetwork would leave the
    # later tasks unregularised
    seen = EWC(small_target(), fisher_samples=5)
    train_continual(seen, stream[:2], CFG, task_inferred=False)
    fisher = seen.fisher.clone()
    with pytest.raises(ValueError, match=r"start_task=method\.num_tasks=2"):
        train_continual(seen, stream, CFG)
    assert torch.equal(seen.fisher, fisher)
    with pytest.raises(ValueError, match="iterations"):
        ContinualConfig(iterations=0)
    with pytest.raises(ValueError, match="lr"):
        ContinualConfig(lr=0.0)
    with pytest.raises(ValueError, match="schedule"):
        ContinualConfig(schedule="linear")
    with pytest.raises(ValueError, match="step"):
        ContinualConfig().lr_at(5, 5)
    for bad in (-5, 2.5, True):  # a negative one would silently never grow
        with pytest.raises(ValueError, match="growth_iterations"):
            ContinualConfig(growth_iterations=bad)
    for bad in (float("inf"), float("nan"), True, "1e-3"):
        with pytest.raises(ValueError, match="lr"):
            ContinualConfig(lr=bad)
    method = FineTune(small_target())
    method.begin_task(0)
    for evaluate, extra in ((evaluate_task_incremental, ()), (evaluate_task_inferred, (1,))):
        for bad in (0, -1, 2.0):
            with pytest.raises(ValueError, match="batch_size"):
                evaluate(method, 0, stream[0].test, *extra, batch_size=bad)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.pt"):
        load_method(bad)


def test_cosine_schedule_within_each_task(stream, monkeypatch):
    cfg = ContinualConfig(iterations=8, batch_size=8, lr=0.2, schedule="cosine")
    assert cfg.lr_at(0, 8) == pytest.approx(0.2)
    assert cfg.lr_at(4, 8) == pytest.approx(0.1)
    assert ContinualConfig(lr=0.2).lr_at(7, 8) == 0.2
    seen = []

    class Spy(torch.optim.Adam):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adam", Spy)
    train_continual(FineTune(small_target()), stream[:2], cfg, task_inferred=False)
    # a fresh decay per task: 0.2 at each task's first step, falling to near 0 at its last
    expected = [0.1 * (1 + math.cos(math.pi * s / 8)) for s in range(8)]
    assert seen == pytest.approx(expected * 2)


@pytest.mark.parametrize("growth_units", [0, 4])
def test_dropout_trains_in_training_mode_and_consolidates_in_evaluation_mode(stream, growth_units):
    """With a dropout target: training steps see training mode, while end-of-task work
    (Fisher estimates, growth checks, evaluation) sees the deterministic network."""
    modes: dict[str, list[bool]] = {"step": [], "end": [], "eval": []}

    class Spy(HypernetworkMethod):
        in_step = False

        def weights_and_penalty(self, task):
            modes["step"].append(self.target.training)
            self.in_step = True
            try:
                return super().weights_and_penalty(task)
            finally:
                self.in_step = False

        def weights(self, task):
            if not self.in_step:  # growth checks and evaluations
                modes["eval"].append(self.target.training)
            return super().weights(task)

        def end_task(self, task, data):
            modes["end"].append(self.target.training)
            super().end_task(task, data)

    target = MLPTarget(64, (16,), 2, num_heads=3, dropout=0.5)
    torch.manual_seed(0)
    hnet = RNNHyperNetwork(target.param_spec, 60, 8, 16, step_signal="learned", step_dim=8)
    m = Spy(target, hnet, beta=0.05, reg_weighting="fisher", fisher_samples=20,
            growth_units=growth_units, growth_threshold=1.0)  # fmt: skip
    cfg = ContinualConfig(iterations=30, growth_iterations=5)
    result = train_continual(m, stream[:2], cfg, task_inferred=False)
    if not growth_units:
        assert result.growths == [0, 0]
    else:  # 30 steps leave the training accuracy below 1, the threshold
        assert sum(result.growths) >= 1
    assert modes["step"] and all(modes["step"])
    assert modes["end"] == [False, False]
    # per task: one growth check, one more after each growth, then the evaluation of every
    # task so far
    checks = 2 + sum(result.growths)
    assert len(modes["eval"]) == checks + 1 + 2 and not any(modes["eval"])
    # the last task's Fisher is that of the deterministic network: recomputing it at the same
    # weights with another global generator state gives the same numbers
    last = m._fisher[1].clone()
    torch.manual_seed(123)
    m.end_task(1, stream[1])
    torch.testing.assert_close(m._fisher[1], last, rtol=0, atol=0)
    assert m.training is False and not target.training


@pytest.mark.parametrize("mode", [True, False])
def test_evaluation_runs_in_evaluation_mode_and_restores_the_mode(stream, mode):
    """Both evaluations switch dropout off (so they are deterministic) and leave the method in
    the mode they found it in."""
    target = MLPTarget(64, (16,), 2, num_heads=2, dropout=0.5)
    torch.manual_seed(0)
    m = FineTune(target)
    m.begin_task(0)
    m.begin_task(1)
    m.train(mode)
    split = stream[0].test
    first = evaluate_task_incremental(m, 0, split)
    assert m.training is mode and target.training is mode
    inferred = evaluate_task_inferred(m, 0, split, 2)
    assert m.training is mode and target.training is mode
    torch.manual_seed(1)
    assert evaluate_task_incremental(m, 0, split) == first
    assert evaluate_task_inferred(m, 0, split, 2) == inferred
    m.eval()
    assert evaluate_task_incremental(m, 0, split) == first
    # mixed modes (a part frozen in evaluation mode by the caller) come back as they were
    m.train()
    target.eval()
    evaluate_task_inferred(m, 0, split, 2)
    assert m.training and not target.training


def test_output_lr_scale_groups_cover_the_trainable_parameters():
    target = small_target()
    m = rnn_method(target, output_lr_scale=10.0)
    m.begin_task(0)
    groups = m.param_groups(0)
    assert [g["lr_scale"] for g in groups] == [1.0, 10.0]
    assert [id(p) for p in groups[1]["params"]] == [id(m.hnet.out.weight), id(m.hnet.out.bias)]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in m.trainable(0))  # each exactly once
    # the default, and every other method: one group at the loop's rate
    plain = rnn_method(target)
    plain.begin_task(0)
    assert [g["lr_scale"] for g in plain.param_groups(0)] == [1.0]
    assert FineTune(target).param_groups(0)[0]["lr_scale"] == 1.0
    chunked = HypernetworkMethod(
        target, ChunkedHyperNetwork(target.param_spec, 100, 8, 8, (16,)), output_lr_scale=3.0
    )
    assert chunked.hnet.output_parameters() == list(chunked.hnet.out.parameters())
    assert chunked.config()["output_lr_scale"] == 3.0


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), True, "10"])
def test_output_lr_scale_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="output_lr_scale"):
        rnn_method(small_target(), output_lr_scale=bad)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_output_lr_scale_sets_the_output_layer_step(stream, schedule):
    """Adam's first step moves every parameter with a gradient by its group's rate (the
    update is lr * g / |g|): the output layer by k * lr, everything else by lr."""
    lr, k = 1e-3, 10.0
    m = rnn_method(small_target(), output_lr_scale=k)
    out = {id(p) for p in m.hnet.output_parameters()}
    m.begin_task(0)  # the loop's begin_task again is a no-op for task 0
    before = {id(p): p.detach().clone() for p in m.trainable(0)}
    cfg = ContinualConfig(iterations=1, batch_size=16, lr=lr, schedule=schedule)
    train_continual(m, stream[:1], cfg, task_inferred=False)
    for p in m.trainable(0):
        step = (p.detach() - before[id(p)]).abs()
        moved = step[step > 0]
        assert moved.numel() > 0.9 * p.numel()
        expected = k * lr if id(p) in out else lr
        assert moved.max().item() == pytest.approx(expected, rel=1e-3)
        # all but the numbers with a gradient near Adam's eps take the full step
        assert ((moved - expected).abs() < 0.01 * expected).float().mean() > 0.9
    # the whole method round-trips through its config
    again = method_from_config(m.target.config(), m.config())
    assert again.output_lr_scale == k
    legacy = {key: v for key, v in m.config().items() if key != "output_lr_scale"}
    assert method_from_config(m.target.config(), legacy).output_lr_scale == 1.0


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"max_growths": -1}, "max_growths"),
        ({"max_growths": 2.7}, "max_growths"),
        ({"max_growths": "two"}, "max_growths"),
        ({"growth_threshold": "0.5"}, "growth_threshold"),
        ({"growth_threshold": 1.5}, "growth_threshold"),
        ({"beta": float("inf")}, "beta"),
        ({"hidden_beta": float("nan")}, "hidden_beta"),
        ({"fisher_floor": float("inf")}, "fisher_floor"),
    ],
)
def test_hypernetwork_method_rejects_bad_options(kw, name):
    with pytest.raises(ValueError, match=name):
        rnn_method(small_target(), **kw)


def test_ewc_gamma_is_a_decay():
    assert EWC(small_target(), gamma=0.0).gamma == 0.0
    for bad in (1.5, -0.1, float("inf")):
        with pytest.raises(ValueError, match="gamma"):
            EWC(small_target(), gamma=bad)


def test_methods_repr_shows_their_settings():
    assert "lam=5.0, gamma=0.9" in repr(EWC(small_target(), lam=5.0, gamma=0.9))
    text = repr(rnn_method(small_target(), beta=0.25, output_lr_scale=3.0))
    assert "beta=0.25" in text and "output_lr_scale=3.0" in text
    assert "RNNHyperNetwork(" in text  # the nested hypernetwork prints itself
    assert "c=0.1" in repr(SI(small_target(), c=0.1))


def test_double_precision_method_reloads_in_double(tmp_path):
    target = small_target(2)
    m = HypernetworkMethod(target, RNNHyperNetwork(target.param_spec, 7, 4, 5)).double()
    m.begin_task(0)
    save_method(tmp_path / "m.pt", m)
    back, _ = load_method(tmp_path / "m.pt")
    assert all(p.dtype == torch.float64 for p in back.parameters())
    assert torch.equal(back.weights(0), m.weights(0))


def test_separate_networks_follow_the_methods_dtype_and_reload_in_it(tmp_path):
    target = small_target(2)
    m = SeparateNetworks(target).double()
    m.begin_task(0)  # a task begun after .double()
    assert m.weights(0).dtype == torch.float64
    m.begin_task(1)
    with torch.no_grad():
        m.nets[1].add_(1e-12)  # below float32's resolution
    save_method(tmp_path / "m.pt", m)
    back, _ = load_method(tmp_path / "m.pt")
    assert all(back.weights(t).dtype == torch.float64 for t in range(2))
    for t in range(2):
        assert torch.equal(back.weights(t), m.weights(t))


def test_a_hypernetwork_built_under_a_double_default_reloads_exactly(tmp_path):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        target = MLPTarget(64, (17,), 2, num_heads=2)  # fan-ins 64 and 17
        m = HypernetworkMethod(target, RNNHyperNetwork(target.param_spec, 40, 8, 10))
        m.begin_task(0)
        w = m.weights(0).detach()
        save_method(tmp_path / "m.pt", m)
    finally:
        torch.set_default_dtype(old)
    back, _ = load_method(tmp_path / "m.pt")  # rebuilt under the float32 default
    assert back.weights(0).dtype == torch.float64
    assert torch.equal(back.weights(0), w)


def test_labels_must_fit_the_heads(stream):
    from graphseq.datasets.continual import permuted_digits

    ten_way = permuted_digits(2)  # labels 0..9
    m = FineTune(small_target(2))
    with pytest.raises(ValueError, match=r"stream\[0\].train: labels in \[0, 9\].*=2"):
        train_continual(m, ten_way)
    m.begin_task(0)
    with pytest.raises(ValueError, match=r"split: labels in \[0, 9\]"):
        evaluate_task_incremental(m, 0, ten_way[0].test)
    with pytest.raises(ValueError, match=r"split: labels in \[0, 9\]"):
        evaluate_task_inferred(m, 0, ten_way[0].test, seen=1)
    with pytest.raises(ValueError, match=r"seen must be an int in \[1, method.num_tasks = 1\]"):
        evaluate_task_inferred(m, 0, stream[0].test, seen=5)


@pytest.mark.parametrize("bad", ["1.0", True, float("nan"), 0.0, -1.0])
def test_clip_grad_norm_is_checked(bad):
    with pytest.raises(ValueError, match="clip_grad_norm must be None or a finite number"):
        ContinualConfig(clip_grad_norm=bad)


@pytest.mark.parametrize("part", ["train", "test"])
def test_an_empty_split_is_refused_before_training(stream, part):
    from graphseq.datasets.continual import ContinualTask

    empty = TensorSplit(torch.zeros(0, 64), torch.zeros(0, dtype=torch.long))
    tasks = list(stream[:2])
    splits = {"train": tasks[1].train, "test": tasks[1].test, part: empty}
    tasks[1] = ContinualTask("empty", (0, 1), splits["train"], splits["test"])
    m = FineTune(small_target(2))
    with pytest.raises(ValueError, match=rf"stream\[1\]\.{part} is empty"):
        train_continual(m, tasks, ContinualConfig(iterations=2), task_inferred=False)
    assert m.num_tasks == 0  # nothing was trained


def test_previous_from_a_longer_stream_is_refused_before_training(stream):
    from graphseq.continual.loop import ContinualResult

    longer = ContinualResult(R=[[0.9, math.nan, math.nan, math.nan]] + [[math.nan] * 4] * 3)
    m = FineTune(small_target())
    m.begin_task(0)
    before = m.flat.detach().clone()
    with pytest.raises(ValueError, match=r"previous.R\[0\] has 4 entries but the stream has 3"):
        train_continual(m, stream, CFG, start_task=1, previous=longer, task_inferred=False)
    assert torch.equal(m.flat.detach(), before)  # nothing trained


def test_growth_settings_do_not_move_the_batches_of_runs_that_never_grow(stream):
    """The growth check draws its subsample from its own generator: a method that cannot grow,
    or a hypernetwork that never grew, gets the same R with growth settings as without."""
    cfg = dict(iterations=10, batch_size=16, lr=3e-3)
    rows = []
    for gi in (0, 5):
        m = FineTune(small_target(), seed=0)
        res = train_continual(m, stream, ContinualConfig(**cfg, growth_iterations=gi),
                              task_inferred=False)  # fmt: skip
        rows.append(res.R)
    assert rows[0] == rows[1]
    rows = []
    for kw, gi in (({}, 0), ({"growth_units": 2, "growth_threshold": 0.01}, 5)):
        torch.manual_seed(0)
        m = rnn_method(small_target(), beta=0.05, **kw)
        res = train_continual(m, stream, ContinualConfig(**cfg, growth_iterations=gi),
                              task_inferred=False)  # fmt: skip
        assert res.growths == [0, 0, 0]
        rows.append(res.R)
    assert rows[0] == rows[1]


def test_target_weight_decay_is_the_l2_of_the_generated_weights(stream):
    """lambda * ||Theta_t||^2 on the trained task's generated weights: alone on the first task,
    added to the output regulariser afterwards; penalty(t) agrees with weights_and_penalty."""
    lam = 1e-3
    target = small_target()
    m = rnn_method(target, beta=0.5, target_weight_decay=lam)
    plain = rnn_method(target, beta=0.5)
    plain.load_state_dict(m.state_dict())
    m.begin_task(0)
    plain.begin_task(0)
    w, reg = m.weights_and_penalty(0)
    torch.testing.assert_close(reg, lam * w.pow(2).sum(), rtol=1e-6, atol=0)
    torch.testing.assert_close(m.penalty(0), reg, rtol=1e-6, atol=0)
    # penalty(t) is the same differentiable term, not only the same number
    params = [p for p in m.parameters() if p.requires_grad]
    want = torch.autograd.grad(reg, params, allow_unused=True)
    got = torch.autograd.grad(m.penalty(0), params, allow_unused=True)
    assert any(g is not None for g in want)
    for g, h in zip(got, want):
        assert (g is None) == (h is None)
        if h is not None:
            torch.testing.assert_close(g, h, rtol=1e-6, atol=1e-12)
    assert plain.weights_and_penalty(0)[1] is None
    train_continual(m, stream[:1], ContinualConfig(iterations=2, batch_size=8),
                    task_inferred=False)  # fmt: skip
    plain.load_state_dict(m.state_dict())
    m.begin_task(1)
    plain.begin_task(1)
    w, reg = m.weights_and_penalty(1)
    expected = plain.penalty(1) + lam * w.pow(2).sum()
    torch.testing.assert_close(reg, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(m.penalty(1), expected, rtol=1e-6, atol=0)


def test_target_weight_decay_shrinks_the_generated_weights(stream):
    """Trained with a strong decay, the generated network is smaller than without it."""
    norms = []
    for lam in (0.0, 0.05):
        m = rnn_method(small_target(), target_weight_decay=lam)
        cfg = ContinualConfig(iterations=40, batch_size=16, lr=3e-3)
        train_continual(m, stream[:1], cfg, task_inferred=False)
        norms.append(m.weights(0).detach().norm().item())
    assert norms[1] < 0.8 * norms[0], norms


@pytest.mark.parametrize("bad", [-1e-4, float("nan"), float("inf"), True, "1e-4"])
def test_target_weight_decay_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="target_weight_decay"):
        rnn_method(small_target(), target_weight_decay=bad)


def test_target_weight_decay_round_trips_through_the_config():
    m = rnn_method(small_target(), target_weight_decay=1e-4)
    assert m.config()["target_weight_decay"] == 1e-4
    again = method_from_config(m.target.config(), m.config())
    assert again.target_weight_decay == 1e-4
    legacy = {key: v for key, v in m.config().items() if key != "target_weight_decay"}
    assert method_from_config(m.target.config(), legacy).target_weight_decay == 0.0


def test_the_last_trained_task_is_not_trained_again(stream, tmp_path):
    """start_task = num_tasks - 1 on a trained method, or the default start_task=0 on a
    reloaded one-task checkpoint, trained that task a second time (EWC's Fisher counted twice);
    a task begun but not trained may still be trained."""
    m = EWC(small_target(), fisher_samples=5)
    train_continual(m, stream[:2], ContinualConfig(iterations=2), task_inferred=False)
    fisher = m.fisher.clone()
    with pytest.raises(ValueError, match=r"start_task=method\.num_tasks=2"):
        train_continual(m, stream, CFG, start_task=1)
    assert torch.equal(m.fisher, fisher)
    one = EWC(small_target(), fisher_samples=5)
    train_continual(one, stream[:1], ContinualConfig(iterations=2), task_inferred=False)
    save_method(tmp_path / "one.pt", one)
    again, _ = load_method(tmp_path / "one.pt")
    with pytest.raises(ValueError, match=r"start_task=method\.num_tasks=1"):
        train_continual(again, stream, CFG)
    train_continual(again, stream, ContinualConfig(iterations=2), start_task=1,
                    task_inferred=False)  # fmt: skip
    begun = EWC(small_target(), fisher_samples=5)
    begun.begin_task(0)
    train_continual(begun, stream[:1], ContinualConfig(iterations=2), task_inferred=False)
