"""Continual-learning methods behind one interface, so all run in the same loop.

A :class:`ContinualMethod` owns the trainable state for a target network and answers
``weights(task)`` (the flat weights to use for a task). The loop in
:mod:`graphseq.continual.loop` calls, per task ``t``::

    method.begin_task(t)                  # add an embedding / network, snapshot old state
    opt = Adam(method.trainable(t))       # a fresh optimiser per task
    for each step:
        w, reg = method.weights_and_penalty(t)    # = (method.weights(t), method.penalty(t))
        loss = CE(target.head(target(x, w), t), y) + reg
        loss.backward(); method.before_step(); opt.step(); method.after_step()
    method.end_task(t, task)              # Fisher, SI importance, ...

``weights_and_penalty`` lets a method compute both from shared work: the hypernetwork
generates the current and the old tasks' weights in one batched call.

Methods:

* :class:`HypernetworkMethod`: a task-conditioned hypernetwork with von Oswald et al.'s output
  regulariser, :math:`\\frac{\\beta}{|S|}\\sum_{t' \\in S}\\lVert h(e^{(t')},\\theta) -
  h(e^{(t')},\\theta^*)\\rVert^2` over old tasks ``S`` (all, or a random ``reg_batch_size`` of
  them), targets taken when the task starts, by default over the numbers each old task's head
  reads and unweighted; options: a hidden-state regulariser for the RNN
  hypernetwork (``hidden_beta``) and network growth (``growth_units``).
* :class:`FineTune`: one set of weights trained on every task in turn (lower bound).
* :class:`EWC`: elastic weight consolidation (Kirkpatrick et al., 2017), online variant
  (Schwarz et al., 2018) with ``gamma``.
* :class:`SI`: synaptic intelligence (Zenke et al., 2017).
* :class:`SeparateNetworks`: one independently trained network per task (upper reference,
  ``T`` times the parameters).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphseq.continual.hnets import HyperNetwork, RNNHyperNetwork, hypernetwork_from_config
from graphseq.continual.targets import TargetNetwork, target_from_config
from graphseq.kernels._autograd import first_order_only

__all__ = [
    "EWC",
    "SI",
    "ContinualMethod",
    "FineTune",
    "HypernetworkMethod",
    "SeparateNetworks",
    "method_from_config",
]


def _scaled_squared_distance_reference(raw: Tensor, scale: Tensor, target: Tensor) -> Tensor:
    """``[S]``: ``sum_q (raw[k, q] * scale[q] - target[k, q])^2`` for each row ``k`` (the
    readable definition; :func:`_scaled_squared_distance` is the same with a hand-written
    backward)."""
    return (raw * scale - target).pow(2).sum(dim=1)


class _ScaledSquaredDistance(torch.autograd.Function):
    # Autograd would keep raw * scale and its difference and spend about six passes over the
    # [S, Q] tensors; here the forward keeps d = target - raw * scale (one fused pass) and the
    # backward writes -2 g d * scale (two passes). Q is about 10^5 per old task.

    @staticmethod
    def forward(ctx, raw: Tensor, scale: Tensor, target: Tensor) -> Tensor:
        d = torch.addcmul(target, raw, scale, value=-1.0)  # target - raw * scale, [S, Q]
        ctx.save_for_backward(d, raw, scale)
        return torch.linalg.vecdot(d, d, dim=1)

    @staticmethod
    @first_order_only("the output regulariser's fused distance")
    def backward(ctx, grad: Tensor):
        d, raw, scale = ctx.saved_tensors
        g = grad.unsqueeze(1)  # [S, 1]
        grad_raw = grad_scale = grad_target = None
        if ctx.needs_input_grad[0]:
            grad_raw = (d * scale).mul_(-2.0 * g)
        if ctx.needs_input_grad[1]:
            grad_scale = (-2.0 * g) * d * raw
            if scale.dim() == 1:
                grad_scale = grad_scale.sum(dim=0)
        if ctx.needs_input_grad[2]:
            grad_target = 2.0 * g * d
        return grad_raw, grad_scale, grad_target


def _scaled_squared_distance(raw: Tensor, scale: Tensor, target: Tensor) -> Tensor:
    """``[S]``: ``||raw[k] * scale[k] - target[k]||^2`` for raw ``[S, Q]``, scale ``[Q]``
    (shared by the rows) or ``[S, Q]``, target ``[S, Q]`` (same dtype and device),
    differentiable in all three."""
    return _ScaledSquaredDistance.apply(raw, scale, target)


def _empirical_fisher(
    target: TargetNetwork, weights: Tensor, head: int, data, samples: int, seed: int
) -> Tensor:
    """``[P]``: the diagonal empirical Fisher of ``target`` at flat ``weights`` for one head,
    the mean over ``samples`` random training examples of ``data`` (a task with a ``train``
    split; drawn with ``seed``) of the squared gradient of the true label's cross-entropy."""
    g = torch.Generator().manual_seed(seed)
    n = min(samples, len(data.train))
    idx = torch.randperm(len(data.train), generator=g)[:n]
    w = weights.detach().requires_grad_(True)
    fisher = torch.zeros_like(w)
    for i in idx:
        x, y = data.train.batch(i.view(1))
        logits = target.head(target(x, w), head)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), w)
        fisher += grad.pow(2)
    return fisher / n


def _nonneg(cls: str, name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (value >= 0 and math.isfinite(value))
    ):
        raise ValueError(f"{cls}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


class ContinualMethod(nn.Module):
    """Base class; see the module docstring for the call order."""

    name: str = "method"

    def __init__(self, target: TargetNetwork) -> None:
        super().__init__()
        if not isinstance(target, TargetNetwork):
            raise TypeError(f"target must be a TargetNetwork, got {type(target).__name__}")
        self.target = target

    @property
    def num_tasks(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def begin_task(self, task: int) -> None:
        pass

    def weights(self, task: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def trainable(self, task: int) -> list[nn.Parameter]:  # pragma: no cover - abstract
        raise NotImplementedError

    def param_groups(self, task: int) -> list[dict]:
        """The optimiser's parameter groups for ``task``: dicts with ``"params"`` (together
        exactly :meth:`trainable`) and ``"lr_scale"``, the group's multiple of the loop's
        learning rate. One group at scale 1 unless a method says otherwise."""
        return [{"params": self.trainable(task), "lr_scale": 1.0}]

    def penalty(self, task: int) -> Tensor | None:
        return None

    def weights_and_penalty(self, task: int) -> tuple[Tensor, Tensor | None]:
        """``(weights(task), penalty(task))`` for one training step; a method may compute both
        from shared work (the hypernetwork does)."""
        return self.weights(task), self.penalty(task)

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def end_task(self, task: int, data) -> None:
        pass

    def maybe_grow(self, accuracy: float) -> bool:
        """Network growth hook: return True if the method grew and wants more training."""
        return False

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        # the hyper-parameters of config(); nested configs (the hypernetwork's) are printed
        # by the child modules themselves
        items = self.config().items()
        return ", ".join(f"{k}={v!r}" for k, v in items if k != "kind" and not isinstance(v, dict))

    def prepare_tasks(self, num_tasks: int) -> None:
        """Create the per-task state for ``num_tasks`` tasks (before loading a checkpoint)."""
        for t in range(num_tasks):
            if t >= self.num_tasks:
                self.begin_task(t)

    def _check_task(self, task: int) -> None:
        if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < self.num_tasks:
            raise ValueError(
                f"{self.name}: unknown task {task!r} ({self.num_tasks} task(s) so far)"
            )


class HypernetworkMethod(ContinualMethod):
    """Task-conditioned hypernetwork with the output regulariser (von Oswald et al., 2020).

    Args:
        target: the target network (its ``param_spec`` must equal ``hnet.spec``).
        hnet: a :class:`~graphseq.continual.hnets.HyperNetwork`.
        beta: output-regulariser strength :math:`\\beta`.
        reg_batch_size: regularise a random subset of this many old tasks per step (all if
            ``None``).
        reg_outputs: ``"used"`` (default) compares, for old task :math:`t'`, only the numbers
            its head reads (:meth:`TargetNetwork.used_by_head`: everything but the other heads'
            output rows, as hypnettorch's ``inds_of_out_heads``); ``"all"`` compares every
            generated number. The same for a single-head target.
        reg_weighting: ``"uniform"`` (default): every compared number counts the same.
            ``"fisher"``: number :math:`p` of old task :math:`t'` counts
            :math:`\\omega_{t'p} = \\hat F_{t'p} + \\text{fisher\\_floor}`, with
            :math:`\\hat F_{t'}` the diagonal empirical Fisher of the target's weights for
            task :math:`t'` (squared per-example gradients of the cross-entropy on
            ``fisher_samples`` training examples, at the weights generated when the task
            ended) divided by its mean over the compared numbers (hypnettorch's
            ``calc_fix_target_reg(fisher_estimates=...)``). Weights a task's loss does not
            depend on (pixels that are always zero, dead units) are then nearly free.
        fisher_samples: examples per task for the Fisher (``"fisher"`` only).
        fisher_floor: added to the normalised Fisher, so no compared number is entirely free.
        hidden_beta: strength of the additional hidden-state regulariser
            :math:`\\frac{1}{|S|}\\sum_{t'}\\lVert H^{(t')} - H^{(t')*}\\rVert^2` on the RNN
            hypernetwork's LSTM states (only for :class:`RNNHyperNetwork`; ``0`` = off).
        growth_units: LSTM units added when a task ends below ``growth_threshold`` training
            accuracy (only for :class:`RNNHyperNetwork`; ``0`` = no growth).
        growth_threshold: accuracy in ``[0, 1]`` under which the hypernetwork grows.
        max_growths: growth steps allowed per task.
        seed: seeds the task-embedding draws and the regulariser's task subsets.
        train_old_embeddings: also train the old tasks' own parameters (embeddings, per-task
            chunk or step embeddings) while a new task is learned, as posterior-replay-cl's
            deterministic hypernetwork runs do (its optimiser holds every ``hnet`` parameter):
            the regulariser then pins each old task's *generated weights*, and its embedding is
            free to move so that they stay put while the shared parameters change. ``False``
            (default, von Oswald et al.'s code): old embeddings are frozen.
        output_lr_scale: the learning rate of the hypernetwork's output layer (``W_o``,
            ``b_o``, :meth:`HyperNetwork.output_parameters`) as a multiple of the loop's
            (:meth:`param_groups`). The output scale ``s`` and the calibration that gives the
            generated weights their initial std make ``W_o`` large and multiply its read-out by
            ``1/sqrt(fan_in)``, so under Adam (steps of about ``lr`` per parameter) a step moves
            a generated weight far less than a step moves a directly trained one; ``1``
            (default) keeps that. On Split-MNIST, ``10`` helped one digit pair learned alone
            but not the five-task stream (``BENCHMARKS.md``, seventeenth session).
        target_weight_decay: strength :math:`\\lambda` of an L2 penalty
            :math:`\\lambda \\lVert \\Theta^{(t)} \\rVert^2` on the weights generated for the
            task being trained (every number of the target's flat weight vector), added to
            :meth:`penalty` on every step, the first task's included; ``0`` (default) = off.
            Weight decay acts on the trained parameters; this acts on the network the
            hypernetwork puts out. On Split-MNIST ``1e-4`` helped the digit pair {2, 3}
            learned alone (validation) and the whole stream (test, 5 seeds: 99.718 against
            99.616 without) (``BENCHMARKS.md``, twenty-fifth session).

    :meth:`weights_and_penalty` generates the current and the regularised old tasks' weights
    in one batched hypernetwork call (``hnet.generate_with_old``) and compares the old ones
    with their targets in the hypernetwork's padded layout; the result equals
    ``(weights(task), penalty(task))`` up to float rounding.
    """

    name = "hnet"

    def __init__(
        self,
        target: TargetNetwork,
        hnet: HyperNetwork,
        beta: float = 0.01,
        reg_batch_size: int | None = None,
        reg_outputs: str = "used",
        reg_weighting: str = "uniform",
        fisher_samples: int = 500,
        fisher_floor: float = 0.1,
        hidden_beta: float = 0.0,
        growth_units: int = 0,
        growth_threshold: float = 0.0,
        max_growths: int = 1,
        seed: int = 0,
        train_old_embeddings: bool = False,
        output_lr_scale: float = 1.0,
        target_weight_decay: float = 0.0,
    ) -> None:
        super().__init__(target)
        if not isinstance(hnet, HyperNetwork):
            raise TypeError(f"hnet must be a HyperNetwork, got {type(hnet).__name__}")
        if hnet.spec != target.param_spec:
            raise ValueError("hnet.spec must equal target.param_spec (built for another target)")
        self.hnet = hnet
        self.beta = _nonneg("HypernetworkMethod", "beta", beta)
        if reg_batch_size is not None and (
            isinstance(reg_batch_size, bool)
            or not isinstance(reg_batch_size, int)
            or reg_batch_size < 1
        ):
            raise ValueError(
                f"reg_batch_size must be None or a positive int, got {reg_batch_size!r}"
            )
        self.reg_batch_size = reg_batch_size
        if reg_outputs not in ("used", "all"):
            raise ValueError(f"reg_outputs must be 'used' or 'all', got {reg_outputs!r}")
        self.reg_outputs = reg_outputs
        if reg_weighting not in ("uniform", "fisher"):
            raise ValueError(f"reg_weighting must be 'uniform' or 'fisher', got {reg_weighting!r}")
        self.reg_weighting = reg_weighting
        if isinstance(fisher_samples, bool) or not isinstance(fisher_samples, int):
            raise ValueError(f"fisher_samples must be a positive int, got {fisher_samples!r}")
        if fisher_samples < 1:
            raise ValueError(f"fisher_samples must be a positive int, got {fisher_samples!r}")
        self.fisher_samples = fisher_samples
        self.fisher_floor = _nonneg("HypernetworkMethod", "fisher_floor", fisher_floor)
        self._fisher: dict[int, Tensor] = {}  # task -> normalised Fisher [P] ("fisher" only)
        self.hidden_beta = _nonneg("HypernetworkMethod", "hidden_beta", hidden_beta)
        is_rnn = isinstance(hnet, RNNHyperNetwork)
        if (self.hidden_beta > 0 or growth_units) and not is_rnn:
            raise ValueError("hidden_beta and growth_units need an RNNHyperNetwork")
        if isinstance(growth_units, bool) or not isinstance(growth_units, int) or growth_units < 0:
            raise ValueError(f"growth_units must be an int >= 0, got {growth_units!r}")
        self.growth_units = growth_units
        if (
            isinstance(growth_threshold, bool)
            or not isinstance(growth_threshold, (int, float))
            or not 0.0 <= growth_threshold <= 1.0
        ):
            raise ValueError(f"growth_threshold must be in [0, 1], got {growth_threshold!r}")
        self.growth_threshold = float(growth_threshold)
        if isinstance(max_growths, bool) or not isinstance(max_growths, int) or max_growths < 0:
            raise ValueError(f"max_growths must be an int >= 0, got {max_growths!r}")
        self.max_growths = max_growths
        if growth_units and (self.growth_threshold == 0 or max_growths == 0):
            # the accuracy is never below 0, and max_growths=0 allows no growth: either would
            # keep growth_units silently unused
            raise ValueError(
                f"growth_units={growth_units} needs growth_threshold > 0 and max_growths >= 1 "
                f"(got growth_threshold={growth_threshold!r}, max_growths={max_growths!r}); "
                "with either at 0 the hypernetwork never grows"
            )
        if not isinstance(train_old_embeddings, bool):
            raise ValueError(
                f"train_old_embeddings must be a bool, got {type(train_old_embeddings).__name__}"
            )
        self.train_old_embeddings = train_old_embeddings
        if (
            isinstance(output_lr_scale, bool)
            or not isinstance(output_lr_scale, (int, float))
            or not (math.isfinite(output_lr_scale) and output_lr_scale > 0)
        ):
            raise ValueError(f"output_lr_scale must be a positive number, got {output_lr_scale!r}")
        self.output_lr_scale = float(output_lr_scale)
        self.target_weight_decay = _nonneg(
            "HypernetworkMethod", "target_weight_decay", target_weight_decay
        )
        self.seed = int(seed)
        self._gen = torch.Generator().manual_seed(self.seed)
        self._targets: Tensor | None = None
        self._reg_scale: Tensor | None = None  # [T, Q] per old task, or None: padded_scale
        self._hidden_targets: Tensor | None = None
        self._growths = 0

    @property
    def num_tasks(self) -> int:
        return self.hnet.num_tasks

    def begin_task(self, task: int) -> None:
        while self.hnet.num_tasks <= task:
            self.hnet.add_task(self._gen)
        self._growths = 0
        self._targets = self._hidden_targets = self._reg_scale = None
        if task == 0 or (self.beta == 0 and self.hidden_beta == 0):
            return
        # targets in the padded layout of generate_padded (zero where nothing is read out)
        weights, features = self.hnet.snapshot(list(range(task)))
        if self.reg_outputs == "used" and self.target.num_heads > 1:
            used = torch.stack([self.target.used_by_head(t) for t in range(task)])
            used = self.hnet.padded(used.to(weights))  # [T, Q], 1 where task t reads
            self._reg_scale = used * self.hnet.padded_scale
            weights = weights * used
        if self.reg_weighting == "fisher" and self.beta > 0:
            # sum_p omega_p (w_p - w*_p)^2 = || sqrt(omega) w - sqrt(omega) w* ||^2
            missing = [t for t in range(task) if t not in self._fisher]
            if missing:
                raise RuntimeError(
                    f"reg_weighting='fisher' has no Fisher estimate for old task(s) {missing}: "
                    "end_task(task, data) must run after each task (train_continual does)"
                )
            omega = torch.stack([self._omega(t) for t in range(task)]).to(weights)
            root = self.hnet.padded(omega.sqrt())
            base = self.hnet.padded_scale if self._reg_scale is None else self._reg_scale
            self._reg_scale = base * root
            weights = weights * root
        self._targets = weights
        if self.hidden_beta > 0:
            self._hidden_targets = features

    def weights(self, task: int) -> Tensor:
        return self.hnet(task)

    def prepare_tasks(self, num_tasks: int) -> None:
        # only the task parameters: the regulariser's targets are taken by begin_task when a
        # task is trained, after the checkpoint (and its Fisher estimates) are loaded
        while self.hnet.num_tasks < num_tasks:
            self.hnet.add_task(self._gen)

    def _omega(self, task: int) -> Tensor:
        """``[P]``: the regulariser's weight of each number of old task ``task``."""
        omega = self._fisher[task] + self.fisher_floor
        if self.reg_outputs == "used":
            omega = omega * self.target.used_by_head(min(task, self.target.num_heads - 1))
        return omega

    def end_task(self, task: int, data) -> None:
        if self.reg_weighting != "fisher" or self.beta == 0:
            return
        head = min(task, self.target.num_heads - 1)
        with torch.no_grad():
            w = self.hnet(task)
        fisher = _empirical_fisher(
            self.target, w, head, data, self.fisher_samples, self.seed + 7919 * (task + 1)
        )
        if not torch.isfinite(fisher).all():
            raise RuntimeError(f"the Fisher estimate of task {task} is not finite (NaN loss?)")
        used = self.target.used_by_head(head) if self.reg_outputs == "used" else None
        mean = (fisher if used is None else fisher[used]).mean()
        self._fisher[task] = (fisher / mean if mean > 0 else fisher).detach().cpu()

    def get_extra_state(self) -> dict:
        return {"fisher": {int(t): f for t, f in self._fisher.items()}}

    def set_extra_state(self, state: dict) -> None:
        fisher = {}
        for t, f in state.get("fisher", {}).items():
            if not isinstance(f, Tensor) or f.shape != (self.target.param_spec.numel,):
                raise ValueError(
                    f"checkpoint: the Fisher estimate of task {t} must be a tensor of shape "
                    f"[{self.target.param_spec.numel}], got "
                    f"{list(f.shape) if isinstance(f, Tensor) else type(f).__name__}"
                )
            fisher[int(t)] = f.detach().cpu()
        self._fisher = fisher

    def trainable(self, task: int) -> list[nn.Parameter]:
        # the shared hypernetwork and this task's own parameters (and, with
        # train_old_embeddings, the older tasks' too; otherwise those stay fixed)
        own = range(task + 1) if self.train_old_embeddings else (task,)
        return self.hnet.shared_parameters() + [
            p for t in own for p in self.hnet.task_parameters(t)
        ]

    def param_groups(self, task: int) -> list[dict]:
        params = self.trainable(task)
        if self.output_lr_scale == 1.0:
            return [{"params": params, "lr_scale": 1.0}]
        out = {id(p) for p in self.hnet.output_parameters()}
        return [
            {"params": [p for p in params if id(p) not in out], "lr_scale": 1.0},
            {"params": [p for p in params if id(p) in out], "lr_scale": self.output_lr_scale},
        ]

    def penalty(self, task: int) -> Tensor | None:
        reg = None
        if self._targets is not None:
            old = self._regularised_tasks()
            raw, features = self.hnet.generate_padded(old)
            reg = self._regulariser(old, raw, features)
        if self.target_weight_decay:
            reg = self._add_weight_decay(reg, self.weights(task))
        return reg

    def weights_and_penalty(self, task: int) -> tuple[Tensor, Tensor | None]:
        if self._targets is None:
            weights, reg = self.weights(task), None
        else:
            old = self._regularised_tasks()
            weights, raw, features = self.hnet.generate_with_old(task, old)
            reg = self._regulariser(old, raw, features)
        if self.target_weight_decay:
            reg = self._add_weight_decay(reg, weights)
        return weights, reg

    def _add_weight_decay(self, reg: Tensor | None, weights: Tensor) -> Tensor:
        decay = self.target_weight_decay * weights.pow(2).sum()
        return decay if reg is None else reg + decay

    def _regularised_tasks(self) -> list[int]:
        """All old tasks, or a random ``reg_batch_size`` of them (one draw per call)."""
        n = self._targets.shape[0]
        if self.reg_batch_size is not None and self.reg_batch_size < n:
            return torch.randperm(n, generator=self._gen)[: self.reg_batch_size].tolist()
        return list(range(n))

    def _regulariser(self, old: list[int], raw: Tensor, features: Tensor) -> Tensor:
        # beta / |S| sum_t ||h(e_t) - h*(e_t)||^2 (+ the hidden-state term), with raw [S, Q] the
        # old tasks' outputs in the padded layout of their targets
        everything = old == list(range(self._targets.shape[0]))
        targets = self._targets if everything else self._targets[old]
        scale = self.hnet.padded_scale
        if self._reg_scale is not None:
            scale = self._reg_scale if everything else self._reg_scale[old]
        dist = _scaled_squared_distance(raw, scale, targets)
        loss = self.beta * dist.mean()
        if self._hidden_targets is not None:
            width = self._hidden_targets.shape[-1]
            hidden = self._hidden_targets if everything else self._hidden_targets[old]
            dh = features[..., :width] - hidden
            loss = loss + self.hidden_beta * dh.pow(2).sum(dim=(1, 2)).mean()
        return loss

    def maybe_grow(self, accuracy: float) -> bool:
        if (
            self.growth_units > 0
            and accuracy < self.growth_threshold
            and self._growths < self.max_growths
        ):
            self.hnet.grow(self.growth_units)
            self._growths += 1
            return True
        return False

    def num_trainable_parameters(self) -> int:
        return self.hnet.num_parameters()

    def config(self) -> dict:
        return {
            "kind": "hnet",
            "hnet": self.hnet.config(),
            "beta": self.beta,
            "reg_batch_size": self.reg_batch_size,
            "reg_outputs": self.reg_outputs,
            "reg_weighting": self.reg_weighting,
            "fisher_samples": self.fisher_samples,
            "fisher_floor": self.fisher_floor,
            "hidden_beta": self.hidden_beta,
            "growth_units": self.growth_units,
            "growth_threshold": self.growth_threshold,
            "max_growths": self.max_growths,
            "seed": self.seed,
            "train_old_embeddings": self.train_old_embeddings,
            "output_lr_scale": self.output_lr_scale,
            "target_weight_decay": self.target_weight_decay,
        }


class _SingleNetwork(ContinualMethod):
    """One flat weight vector shared by all tasks (heads selected per task)."""

    def __init__(self, target: TargetNetwork, seed: int = 0) -> None:
        super().__init__(target)
        self.seed = int(seed)
        g = torch.Generator().manual_seed(self.seed)
        self.flat = nn.Parameter(target.param_spec.init_weights(g))
        self._seen = 0

    @property
    def num_tasks(self) -> int:
        return self._seen

    def begin_task(self, task: int) -> None:
        self._seen = max(self._seen, task + 1)

    def weights(self, task: int) -> Tensor:
        self._check_task(task)
        return self.flat

    def trainable(self, task: int) -> list[nn.Parameter]:
        return [self.flat]

    def get_extra_state(self) -> dict:
        return {"seen": self._seen}

    def set_extra_state(self, state: dict) -> None:
        self._seen = int(state["seen"])


class FineTune(_SingleNetwork):
    """Plain sequential training of one network (no protection against forgetting)."""

    name = "finetune"

    def config(self) -> dict:
        return {"kind": "finetune", "seed": self.seed}


class EWC(_SingleNetwork):
    """Elastic weight consolidation, online variant.

    .. math::
        \\mathcal{L} = \\mathcal{L}_t + \\frac{\\lambda}{2}\\sum_k F_k (w_k - w^*_k)^2,\\qquad
        F \\leftarrow \\gamma F + F^{(t)}

    :math:`F^{(t)}` is the diagonal empirical Fisher on ``fisher_samples`` training examples of
    task ``t`` (squared per-example gradients of the log-likelihood of the true label), and
    :math:`w^*` the weights at the end of the last task. ``gamma = 1`` sums the Fishers.

    Args:
        target: target network.
        lam: :math:`\\lambda`.
        gamma: decay of older Fishers, in ``[0, 1]``.
        fisher_samples: examples per task for the Fisher.
        seed: initial weights and Fisher sample.
    """

    name = "ewc"

    def __init__(
        self,
        target: TargetNetwork,
        lam: float = 100.0,
        gamma: float = 1.0,
        fisher_samples: int = 200,
        seed: int = 0,
    ) -> None:
        super().__init__(target, seed)
        self.lam = _nonneg("EWC", "lam", lam)
        self.gamma = _nonneg("EWC", "gamma", gamma)
        if self.gamma > 1:  # a decay: above 1 the older tasks' Fishers would grow every task
            raise ValueError(f"EWC: gamma must be in [0, 1], got {gamma!r}")
        if (
            isinstance(fisher_samples, bool)
            or not isinstance(fisher_samples, int)
            or fisher_samples < 1
        ):
            raise ValueError(f"EWC: fisher_samples must be a positive int, got {fisher_samples!r}")
        self.fisher_samples = fisher_samples
        p = target.param_spec.numel
        self.register_buffer("fisher", torch.zeros(p))
        self.register_buffer("anchor", torch.zeros(p))

    def penalty(self, task: int) -> Tensor | None:
        if task == 0 or self.lam == 0:
            return None
        return 0.5 * self.lam * (self.fisher * (self.flat - self.anchor).pow(2)).sum()

    def end_task(self, task: int, data) -> None:
        fisher = _empirical_fisher(
            self.target, self.flat, task, data, self.fisher_samples, self.seed + 7919 * (task + 1)
        )
        with torch.no_grad():
            self.fisher.mul_(self.gamma).add_(fisher)
            self.anchor.copy_(self.flat)

    def config(self) -> dict:
        return {
            "kind": "ewc",
            "lam": self.lam,
            "gamma": self.gamma,
            "fisher_samples": self.fisher_samples,
            "seed": self.seed,
        }


class SI(_SingleNetwork):
    """Synaptic intelligence (Zenke et al., 2017).

    During task ``t`` the path integral :math:`\\omega_k \\mathrel{+}= -g_k \\Delta w_k`
    accumulates over optimiser steps (``g`` is the gradient of the training loss the step
    used, as in van de Ven et al.'s reference code). At the end of the task
    :math:`\\Omega_k \\mathrel{+}= \\omega_k / ((\\Delta_k)^2 + \\xi)` with
    :math:`\\Delta_k` the weight's total change over the task; the penalty is
    :math:`c \\sum_k \\Omega_k (w_k - w^*_k)^2`.

    Args:
        target: target network.
        c: penalty strength.
        xi: damping :math:`\\xi`.
        seed: initial weights.
    """

    name = "si"

    def __init__(
        self, target: TargetNetwork, c: float = 0.1, xi: float = 0.1, seed: int = 0
    ) -> None:
        super().__init__(target, seed)
        self.c = _nonneg("SI", "c", c)
        self.xi = _nonneg("SI", "xi", xi)
        if self.xi == 0:
            raise ValueError("SI: xi must be > 0")
        p = target.param_spec.numel
        self.register_buffer("omega", torch.zeros(p))
        self.register_buffer("anchor", torch.zeros(p))
        self._path = torch.zeros(p)
        self._start = torch.zeros(p)
        self._prev = torch.zeros(p)
        self._grad: Tensor | None = None

    def begin_task(self, task: int) -> None:
        super().begin_task(task)
        self._path = torch.zeros_like(self.flat)
        self._start = self.flat.detach().clone()

    def penalty(self, task: int) -> Tensor | None:
        if task == 0 or self.c == 0:
            return None
        return self.c * (self.omega * (self.flat - self.anchor).pow(2)).sum()

    def before_step(self) -> None:
        self._grad = None if self.flat.grad is None else self.flat.grad.detach().clone()
        self._prev = self.flat.detach().clone()

    def after_step(self) -> None:
        if self._grad is not None:
            self._path -= self._grad * (self.flat.detach() - self._prev)

    def end_task(self, task: int, data) -> None:
        with torch.no_grad():
            delta = self.flat - self._start
            self.omega.add_(self._path / (delta.pow(2) + self.xi))
            self.anchor.copy_(self.flat)

    def config(self) -> dict:
        return {"kind": "si", "c": self.c, "xi": self.xi, "seed": self.seed}


class SeparateNetworks(ContinualMethod):
    """One network per task, each trained only on its task (no forgetting, ``T x`` params)."""

    name = "separate"

    def __init__(self, target: TargetNetwork, seed: int = 0) -> None:
        super().__init__(target)
        self.seed = int(seed)
        self.nets = nn.ParameterList()
        # follows .to() / .double(): a task's network is created in the method's dtype and on
        # its device, also for tasks begun after the move (and when a checkpoint is reloaded)
        self.register_buffer("_like", torch.zeros(0), persistent=False)

    @property
    def num_tasks(self) -> int:
        return len(self.nets)

    def begin_task(self, task: int) -> None:
        while len(self.nets) <= task:
            g = torch.Generator().manual_seed(self.seed + 104729 * len(self.nets))
            w = self.target.param_spec.init_weights(g)  # drawn on the CPU generator
            self.nets.append(nn.Parameter(w.to(self._like)))

    def weights(self, task: int) -> Tensor:
        self._check_task(task)
        return self.nets[task]

    def trainable(self, task: int) -> list[nn.Parameter]:
        self._check_task(task)
        return [self.nets[task]]

    def config(self) -> dict:
        return {"kind": "separate", "seed": self.seed}


def method_from_config(target_config: dict, config: dict) -> ContinualMethod:
    """Rebuild a method (with no tasks yet) from target and method configs."""
    target = target_from_config(target_config)
    config = dict(config)
    kind = config.pop("kind", None)
    if kind == "hnet":
        hnet = hypernetwork_from_config(target.param_spec, config.pop("hnet"))
        return HypernetworkMethod(target, hnet, **config)
    classes = {"finetune": FineTune, "ewc": EWC, "si": SI, "separate": SeparateNetworks}
    if kind not in classes:
        raise ValueError(
            f"method config kind must be 'hnet' or one of {sorted(classes)}, got {kind!r}"
        )
    return classes[kind](target, **config)
