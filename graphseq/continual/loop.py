"""The continual-learning loop, evaluation and checkpoints.

A task stream is a sequence of tasks; task ``t`` uses output head ``t``. Each task has
``name``, ``train`` and ``test`` splits, and each split has ``len()`` and
``batch(index) -> (inputs, labels)`` with labels local to the head (``0..classes-1``).
:mod:`graphseq.datasets.continual` builds such streams.

* :func:`train_continual`: trains a :class:`~graphseq.continual.methods.ContinualMethod`
  task after task (a fresh Adam per task), fills the accuracy matrix ``R`` and, at the end,
  the task-inferred accuracies; saves a checkpoint after every task if asked.
* :func:`evaluate_task_incremental`: accuracy with the task id given (CL1).
* :func:`evaluate_task_inferred`: the task id is inferred from predictive entropy (HNET+ENT,
  von Oswald et al.): every seen task's weights and head are tried, the one whose softmax has
  the lowest entropy wins; a prediction counts only if both task and class are right.
* :func:`save_method` / :func:`load_method`: checkpoints with tensors and plain containers
  only, read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from graphseq.continual.methods import ContinualMethod, HypernetworkMethod, method_from_config
from graphseq.continual.metrics import summarize_matrix
from graphseq.train.io import load_checkpoint, save_checkpoint

__all__ = [
    "CHECKPOINT_FORMAT",
    "ContinualConfig",
    "ContinualResult",
    "evaluate_task_incremental",
    "evaluate_task_inferred",
    "load_method",
    "save_method",
    "train_continual",
]

CHECKPOINT_FORMAT = "graphseq.continual/1"


@dataclass
class ContinualConfig:
    """Optimisation settings shared by every method.

    Args:
        iterations: optimiser steps per task.
        batch_size: training examples per step (drawn with replacement).
        lr: Adam learning rate (the peak rate under ``schedule="cosine"``).
        clip_grad_norm: clip the gradient norm of the trainable parameters (``None`` = off).
        eval_batch_size: examples per evaluation batch.
        growth_iterations: extra steps after a network-growth event.
        seed: seeds the batch draws.
        schedule: ``"constant"``, or ``"cosine"``: within each task (and each growth phase,
            over its own steps) step ``s`` of ``S`` uses ``lr * (1 + cos(pi * s / S)) / 2``,
            from ``lr`` down towards 0; a fresh Adam starts every task either way.
    """

    iterations: int = 500
    batch_size: int = 32
    lr: float = 1e-3
    clip_grad_norm: float | None = None
    eval_batch_size: int = 1000
    growth_iterations: int = 0
    seed: int = 0
    schedule: str = "constant"  # last, so positional calls written before it keep working

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "eval_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ContinualConfig: {name} must be a positive int, got {v!r}")
        v = self.growth_iterations
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"ContinualConfig: growth_iterations must be an int >= 0, got {v!r}")
        if (
            isinstance(self.lr, bool)
            or not isinstance(self.lr, (int, float))
            or not (math.isfinite(self.lr) and self.lr > 0)
        ):
            raise ValueError(f"ContinualConfig: lr must be a finite number > 0, got {self.lr!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(
                f"ContinualConfig: schedule must be 'constant' or 'cosine', got {self.schedule!r}"
            )
        if self.clip_grad_norm is not None and (
            isinstance(self.clip_grad_norm, bool)
            or not isinstance(self.clip_grad_norm, (int, float))
            or not (math.isfinite(self.clip_grad_norm) and self.clip_grad_norm > 0)
        ):
            raise ValueError(
                "ContinualConfig: clip_grad_norm must be None or a finite number > 0, got "
                f"{self.clip_grad_norm!r}"
            )

    def lr_at(self, step: int, steps: int) -> float:
        """The learning rate of optimiser step ``step`` (0-based) of a phase of ``steps``."""
        if not 0 <= step < steps:
            raise ValueError(f"step must be in [0, steps={steps}), got {step}")
        if self.schedule == "constant":
            return self.lr
        return self.lr * (1 + math.cos(math.pi * step / steps)) / 2


@dataclass
class ContinualResult:
    """What :func:`train_continual` measured.

    Attributes:
        R: ``[T][T]`` task-incremental test accuracies (``nan`` above the diagonal and for
            rows not trained in this call).
        inferred: task-inferred test accuracy per task after the last trained task.
        task_inference: fraction of test examples whose task was inferred correctly.
        metrics: :func:`~graphseq.continual.metrics.summarize_matrix` of ``R`` plus
            ``inferred_acc``.
        seconds: wall-clock training seconds per task.
        growths: growth events per task.
    """

    R: list[list[float]]
    inferred: list[float] = field(default_factory=list)
    task_inference: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    growths: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _batches(n: int, size: int):
    for a in range(0, n, size):
        yield torch.arange(a, min(a + size, n))


@contextlib.contextmanager
def _evaluation_mode(method: ContinualMethod):
    """Run the block with ``method`` in evaluation mode (no dropout), then restore the mode of
    every submodule (a caller may have put parts of it in evaluation mode on purpose)."""
    modes = [(m, m.training) for m in method.modules()]
    method.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _check_labels(target, split, what: str) -> None:
    """The labels of ``split`` must be local to one head: ``0 .. classes_per_head - 1``."""
    y = getattr(split, "y", None)
    if not isinstance(y, Tensor) or y.numel() == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= target.classes_per_head:
        raise ValueError(
            f"{what}: labels in [{lo}, {hi}] do not fit the target's heads of "
            f"classes_per_head={target.classes_per_head} logits (labels are local to a head: "
            f"0 .. {target.classes_per_head - 1})"
        )


@torch.no_grad()
def evaluate_task_incremental(
    method: ContinualMethod, task: int, split, batch_size: int = 1000
) -> float:
    """Accuracy on ``split`` with task ``task``'s weights and head, in evaluation mode (the
    method's mode is restored afterwards)."""
    if len(split) == 0:
        raise ValueError("evaluation split is empty")
    _check_batch_size(batch_size)
    _check_labels(method.target, split, "split")
    correct = 0
    with _evaluation_mode(method):
        target, w = method.target, method.weights(task)
        for idx in _batches(len(split), batch_size):
            x, y = split.batch(idx)
            correct += (target.head(target(x, w), task).argmax(1) == y).sum().item()
    return correct / len(split)


@torch.no_grad()
def evaluate_task_inferred(
    method: ContinualMethod, task: int, split, seen: int, batch_size: int = 1000
) -> tuple[float, float]:
    """``(accuracy, task-inference accuracy)`` on ``split`` (of task ``task``) when the task
    is chosen among ``seen`` tasks by minimum predictive entropy. Runs in evaluation mode
    (the method's mode is restored afterwards)."""
    if len(split) == 0:
        raise ValueError("evaluation split is empty")
    _check_batch_size(batch_size)
    if isinstance(seen, bool) or not isinstance(seen, int) or not 1 <= seen <= method.num_tasks:
        raise ValueError(
            f"seen must be an int in [1, method.num_tasks = {method.num_tasks}], got {seen!r}"
        )
    if not 0 <= task < seen:
        raise ValueError(f"task {task} must be one of the {seen} seen tasks")
    _check_labels(method.target, split, "split")
    target = method.target
    correct = right_task = 0
    with _evaluation_mode(method):
        weights = [method.weights(k) for k in range(seen)]
        for idx in _batches(len(split), batch_size):
            x, y = split.batch(idx)
            ent, pred = [], []
            for k, w in enumerate(weights):
                logp = F.log_softmax(target.head(target(x, w), k), dim=1)
                ent.append(-(logp.exp() * logp).sum(1))
                pred.append(logp.argmax(1))
            chosen = torch.stack(ent).argmin(0)  # [B]
            guess = torch.stack(pred).gather(0, chosen.unsqueeze(0))[0]
            ok_task = chosen == task
            right_task += ok_task.sum().item()
            correct += (ok_task & (guess == y)).sum().item()
    return correct / len(split), right_task / len(split)


def _train_steps(method, task_id, task, config, steps, gen, log) -> None:
    target = method.target
    groups = [dict(g) for g in method.param_groups(task_id) if g["params"]]
    params = [p for g in groups for p in g["params"]]
    for g in groups:  # each group's rate is its lr_scale times the loop's (scheduled) rate
        g["lr"] = config.lr * g.setdefault("lr_scale", 1.0)
    opt = torch.optim.Adam(groups, lr=config.lr)
    n = len(task.train)
    for step in range(steps):
        if config.schedule != "constant":
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step, steps) * group["lr_scale"]
        idx = torch.randint(n, (config.batch_size,), generator=gen)
        x, y = task.train.batch(idx)
        weights, reg = method.weights_and_penalty(task_id)
        loss = F.cross_entropy(target.head(target(x, weights), task_id), y)
        total = loss if reg is None else loss + reg
        opt.zero_grad(set_to_none=True)
        total.backward()
        method.before_step()
        if config.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
        opt.step()
        method.after_step()
        if log is not None and (step + 1) % max(1, steps // 5) == 0:
            r = 0.0 if reg is None else reg.item()
            log(f"  task {task_id} step {step + 1}/{steps} loss {loss.item():.4f} reg {r:.4g}")


def _train_accuracy(method, task_id, task, config, gen) -> float:
    """Accuracy on up to 2,000 training examples, in evaluation mode (no dropout)."""
    n = min(len(task.train), 2000)
    idx = torch.randperm(len(task.train), generator=gen)[:n]

    class _Sub:
        def __len__(self):
            return n

        def batch(self, i):
            return task.train.batch(idx[i])

    return evaluate_task_incremental(method, task_id, _Sub(), config.eval_batch_size)


def train_continual(
    method: ContinualMethod,
    stream: Sequence,
    config: ContinualConfig | None = None,
    *,
    start_task: int = 0,
    previous: ContinualResult | None = None,
    task_inferred: bool = True,
    checkpoint: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> ContinualResult:
    """Train ``method`` on ``stream[start_task:]`` one task after another.

    Args:
        method: the continual-learning method (holds the target network).
        stream: the tasks; task ``t`` uses head ``t`` of the target.
        config: optimisation settings.
        start_task: first task to train (to continue a reloaded model on new tasks:
            ``method.num_tasks``); a start at a task this loop already trained on the method,
            or before its last begun task, is refused.
        previous: the result of an earlier call whose rows of ``R`` are kept.
        task_inferred: also measure task-inferred accuracy after the last task.
        checkpoint: save :func:`save_method` here after every task.
        log: called with progress lines.

    Returns:
        a :class:`ContinualResult`; ``metrics`` are computed when every row of ``R`` is filled.
    """
    config = config or ContinualConfig()
    T = len(stream)
    if T == 0:
        raise ValueError("stream must hold at least one task")
    if method.target.num_heads < T:
        raise ValueError(
            f"the target has {method.target.num_heads} head(s) but the stream has {T} tasks"
        )
    if not 0 <= start_task < T:
        raise ValueError(f"start_task must be in [0, {T}), got {start_task}")
    if getattr(method, "growth_units", 0) and config.growth_iterations == 0:
        raise ValueError(
            f"the method grows by growth_units={method.growth_units} but "
            "config.growth_iterations is 0: growth is only checked when it is followed by "
            "growth_iterations > 0 training steps"
        )
    if start_task > method.num_tasks:
        raise ValueError(
            f"start_task {start_task} skips tasks: the method has seen {method.num_tasks}"
        )
    # tasks train_continual has ended on this method (kept by save_method/load_method): a
    # begun task is not necessarily trained (begin_task(t) to read trainable(t) first)
    ended = int(getattr(method, "_trained_tasks", 0))
    if start_task < max(method.num_tasks - 1, ended):
        # the method has begun later tasks than start_task, or trained start_task itself (a
        # trained or reloaded method, with start_task left at 0 or at num_tasks - 1): training
        # task start_task again would leave the later tasks out of the regulariser (a
        # hypernetwork protects only earlier tasks) and count EWC/SI's importances twice,
        # under an R that looks like a fresh run's. (A task begun but not trained, the last
        # one, may still be trained.)
        raise ValueError(
            f"start_task {start_task} would train again tasks the method has seen (it has seen "
            f"{method.num_tasks}); continue a trained or reloaded method with "
            f"start_task=method.num_tasks={method.num_tasks}"
        )
    if previous is not None:
        # checked before training: a longer row made R ragged, and the metrics then failed in
        # torch.tensor after every task had trained
        for i, row in enumerate(previous.R[:start_task]):
            if len(row) > T:
                raise ValueError(
                    f"previous.R[{i}] has {len(row)} entries but the stream has {T} tasks: "
                    "previous must come from a stream of at most this many tasks"
                )
    for t in range(start_task, T):
        for part in ("train", "test"):
            split = getattr(stream[t], part, None)
            if split is not None and len(split) == 0:
                # refused here, not after the earlier tasks have trained (an empty train split
                # failed inside torch.randint, an empty test split after its task had trained)
                raise ValueError(f"stream[{t}].{part} is empty: every task needs examples")
            _check_labels(method.target, split, f"stream[{t}].{part}")
    R = [[math.nan] * T for _ in range(T)]
    seconds, growths = [math.nan] * T, [0] * T
    if previous is not None:
        for i, row in enumerate(previous.R[:start_task]):
            R[i][: len(row)] = row
        seconds[: len(previous.seconds[:start_task])] = previous.seconds[:start_task]
        growths[: len(previous.growths[:start_task])] = previous.growths[:start_task]
    gen = torch.Generator().manual_seed(config.seed)
    # the growth check's training subsample has its own generator: drawn from ``gen`` it moved
    # every later batch, so growth settings changed the results of runs that never grew (and
    # of methods that cannot grow)
    check_gen = torch.Generator().manual_seed(config.seed + 1)
    for t in range(start_task, T):
        task = stream[t]
        t0 = time.perf_counter()
        method.begin_task(t)
        method.train()
        _train_steps(method, t, task, config, config.iterations, gen, log)
        while config.growth_iterations > 0 and method.maybe_grow(
            _train_accuracy(method, t, task, config, check_gen)
        ):
            growths[t] += 1
            if log is not None:
                log(f"  task {t}: grew the hypernetwork ({growths[t]})")
            _train_steps(method, t, task, config, config.growth_iterations, gen, log)
        method.eval()  # Fisher estimates and consolidation see the deterministic network
        method.end_task(t, task)
        method._trained_tasks = t + 1
        seconds[t] = time.perf_counter() - t0
        for j in range(t + 1):
            R[t][j] = evaluate_task_incremental(method, j, stream[j].test, config.eval_batch_size)
        if log is not None:
            row = " ".join(f"{100 * a:.1f}" for a in R[t][: t + 1])
            log(f"after task {t} ({seconds[t]:.0f}s): {row}")
        if checkpoint is not None:
            save_method(checkpoint, method, extra={"R": R, "trained_tasks": t + 1})
    result = ContinualResult(R=R, seconds=seconds, growths=growths)
    if task_inferred:
        for j in range(T):
            acc, ti = evaluate_task_inferred(method, j, stream[j].test, T, config.eval_batch_size)
            result.inferred.append(acc)
            result.task_inference.append(ti)
    if not any(math.isnan(R[i][j]) for i in range(T) for j in range(i + 1)):
        result.metrics = summarize_matrix(torch.tensor(R, dtype=torch.float64))
    if result.inferred:
        result.metrics["inferred_acc"] = sum(result.inferred) / T
        result.metrics["task_inference"] = sum(result.task_inference) / T
    return result


def save_method(path: str | Path, method: ContinualMethod, extra: dict | None = None) -> None:
    """Save a method: its target and method configs, state (hypernetwork, task embeddings,
    EWC/SI buffers, ...) and the number of tasks; atomically, loadable with
    ``torch.load(weights_only=True)``."""
    dtypes = {p.dtype for p in method.parameters() if p.is_floating_point()}
    state = {
        "format": CHECKPOINT_FORMAT,
        "target": method.target.config(),
        "method": method.config(),
        "num_tasks": method.num_tasks,
        # tasks train_continual has trained (num_tasks counts begun ones); absent: unknown
        "trained_tasks": getattr(method, "_trained_tasks", None),
        # the parameters' dtype (a .double() model reloads as one); None: mixed or none
        "dtype": str(dtypes.pop()).removeprefix("torch.") if len(dtypes) == 1 else None,
        "model": {
            k: v.detach().cpu() if isinstance(v, Tensor) else v
            for k, v in method.state_dict().items()
        },
    }
    if extra:
        state["extra"] = extra
    save_checkpoint(path, state)


def load_method(path: str | Path) -> tuple[ContinualMethod, dict]:
    """Rebuild a saved method; returns ``(method, extra)``. New tasks can then be trained with
    :func:`train_continual` (``start_task=method.num_tasks``)."""
    state = load_checkpoint(path, hint="It is not a graphseq.continual checkpoint.")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: format {state.get('format')!r} is not {CHECKPOINT_FORMAT!r}")
    config = dict(state["method"])
    if config.get("kind") == "hnet":
        # written before reg_outputs existed: those runs compared every generated number
        config.setdefault("reg_outputs", "all")
    method = method_from_config(state["target"], config)
    dtype = state.get("dtype")  # absent in checkpoints written before it was recorded
    if dtype is not None:
        if dtype not in ("float16", "bfloat16", "float32", "float64"):
            raise ValueError(f"{path}: unknown parameter dtype {dtype!r}")
        method.to(getattr(torch, dtype))
    method.prepare_tasks(int(state["num_tasks"]))
    model = dict(state["model"])
    if isinstance(method, HypernetworkMethod):
        # written before the method had extra state (Fisher estimates): there are none
        model.setdefault("_extra_state", {"fisher": {}})
    method.load_state_dict(model)
    trained = state.get("trained_tasks", (state.get("extra") or {}).get("trained_tasks"))
    if trained is not None:
        method._trained_tasks = int(trained)
    method.eval()
    return method, state.get("extra", {})
