"""Task-conditioned hypernetworks: task embedding -> all weights of a target network.

Three generators of the flat weight vector ``Theta^(t) = h(e^(t), theta)`` of a
:class:`~graphseq.continual.targets.ParamSpec`:

* :class:`FullHyperNetwork`: an MLP on the task embedding with one output unit per target
  weight (von Oswald et al., 2020, `arXiv:1906.00695 <https://arxiv.org/abs/1906.00695>`_).
* :class:`ChunkedHyperNetwork`: the same MLP called once per chunk of ``chunk_size`` weights
  on ``[e^(t), c_i]`` with a learned chunk embedding ``c_i``; chunks cut across layers and are
  generated independently of each other (von Oswald et al.).
* :class:`RNNHyperNetwork`: an LSTM unrolled over the target's layers, chunk by chunk, whose
  state is carried across layers, so later layers' weights depend on earlier ones (the
  dependency-preserving hypernetwork of Chandra et al., WACV 2023,
  `arXiv:2209.07712 <https://arxiv.org/abs/2209.07712>`_, as reconstructed in
  ``README.md``). It has no chunk embeddings: with the default step signals its size does
  not grow with the number of chunks (``step_signal="onehot"`` adds ``4H`` per chunk).

Common to all (:class:`HyperNetwork`): one learned embedding per task (:meth:`add_task`),
``forward(task)`` returns ``[P]`` (or ``[B, P]`` for a list of tasks) and is deterministic
(no dropout, no sampling). Every generated number is multiplied by a fixed per-tensor scale
``1/sqrt(fan_in)`` (``output_scale=True``) and the output layer is rescaled at
initialisation so that, for a standard-normal embedding, the generated weights start with
std ``1/sqrt(fan_in)`` (LeCun initialisation; the role hyperfan-in init plays in
hypnettorch). :meth:`~HyperNetwork.num_shared_parameters` excludes task-specific parameters,
as von Oswald et al. report compression ratios.

Training with the output regulariser needs the current task's weights and every old task's
weights at each step. :meth:`HyperNetwork.generate_with_old` produces both from one batched
generator call (one LSTM unroll for all tasks instead of two), and returns the old tasks' outputs
in the generator's own *padded layout* (``[S, Q]``, ``Q >= P``; for the RNN hypernetwork the
``[N, c]`` step outputs, including the unread tail of each layer's last chunk) so the
regulariser never gathers them into the flat order. :meth:`HyperNetwork.snapshot` gives the
regulariser targets in the same layout; ``raw * padded_scale`` are the weights, exactly zero at
the positions that are not read out, so squared distances are the same as in the flat order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphseq.continual.targets import ParamSpec, int_sequence

__all__ = [
    "CHUNKINGS",
    "STEP_SIGNALS",
    "ChunkedHyperNetwork",
    "FullHyperNetwork",
    "HyperNetwork",
    "RNNHyperNetwork",
    "hypernetwork_from_config",
]

STEP_SIGNALS = ("sinusoidal", "onehot", "learned", "none")
CHUNKINGS = ("rows", "flat")


def _check_int(cls: str, name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{cls}: {name} must be an int >= {minimum}, got {value!r}")
    return value


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _task_id(t: object) -> object:
    """A task id given as a one-element integer tensor -> ``int``; anything else unchanged (for
    :meth:`HyperNetwork._check_task`). A float or bool tensor is refused, as a float or bool
    id is, instead of being truncated."""
    if not isinstance(t, Tensor):
        return t
    if t.numel() != 1 or t.dtype not in _INT_DTYPES:
        raise TypeError(f"task ids must be ints, got a {t.dtype} tensor of shape {list(t.shape)}")
    return int(t.item())


def _draw_normal(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """A standard normal draw in ``like``'s dtype and on its device. The draw is made on the
    generator's device and then moved, so a CPU generator (the methods' seeded one) also
    serves a hypernetwork on a GPU, and a task's embedding does not depend on the device."""
    where = like.device if generator is None else generator.device
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=where).to(like.device)


def _mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    acts = {"relu": nn.ReLU, "elu": nn.ELU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
    if activation not in acts:
        raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), acts[activation]()]
    return nn.Sequential(*layers)


def _step_layout(spec: ParamSpec, chunk: int, chunking: str) -> tuple[list[int], Tensor]:
    """Which layer each generator step belongs to, and where each target number is read.

    Returns ``(step_layers, index)``: ``index[p]`` is the position of flat target number ``p``
    in the ``[N * chunk]`` concatenation of the step outputs. Layers never share a step.

    * ``"flat"``: a layer's numbers, flattened in spec order, fill consecutive steps.
    * ``"rows"``: a layer of a weight ``[out, ...]`` plus a bias ``[out]`` is seen as the
      matrix ``[out, fan + 1]`` (bias last); a step holds ``chunk // (fan + 1)`` whole rows,
      each at the same offsets, or a long row is spread over ``ceil((fan + 1) / chunk)``
      steps. An output unit of the generator then always feeds the same input feature of a
      layer. Layers of another structure fall back to ``"flat"``.
    """
    steps_layer: list[int] = []
    index: list[Tensor] = []
    by_layer: dict[int, list[int]] = {}
    for k, s in enumerate(spec):
        by_layer.setdefault(s.layer, []).append(k)
    for layer in range(spec.num_layers):
        members = [spec[k] for k in by_layer.get(layer, [])]
        base = len(steps_layer) * chunk
        n = sum(m.numel for m in members)
        rows = (
            chunking == "rows"
            and len(members) == 2
            and len(members[0].shape) >= 2
            and members[1].shape == (members[0].shape[0],)
        )
        if not rows:
            k = math.ceil(n / chunk)
            steps_layer += [layer] * k
            index.append(torch.arange(n) + base)
            continue
        out = members[0].shape[0]
        fan = members[0].numel // out
        row_len = fan + 1
        r = torch.arange(out).unsqueeze(1)  # [out, 1]
        col = torch.arange(row_len).unsqueeze(0)  # [1, fan + 1]
        if row_len <= chunk:
            per_step = chunk // row_len
            pos = (r // per_step) * chunk + (r % per_step) * row_len + col
            k = math.ceil(out / per_step)
        else:
            per_row = math.ceil(row_len / chunk)
            pos = (r * per_row + col // chunk) * chunk + col % chunk
            k = out * per_row
        pos = pos + base  # [out, fan + 1]
        index.append(torch.cat([pos[:, :fan].reshape(-1), pos[:, fan]]))
        steps_layer += [layer] * k
    return steps_layer, torch.cat(index)


class HyperNetwork(nn.Module):
    """Base class: task embeddings, output scaling, the ``forward(task)`` contract.

    Subclasses implement :meth:`_features` (``[B, d]`` embeddings -> batch-first features
    ``[B, ..., h]``) and :meth:`_output_layer` (the last linear layer, ``h -> c``, rescaled by
    :meth:`reset_parameters`), and call :meth:`_set_layout`. The output layer applied to the
    features, flattened, is the *raw* output ``[B, Q]`` in the generator's padded layout; flat
    target number ``p`` is read at ``index[p]`` (at ``p`` when ``index`` is ``None``) and
    multiplied by ``scale[p]``.

    Args:
        spec: the target's parameter spec (``target.param_spec``).
        embedding_dim: size ``d`` of each task embedding.
        output_scale: multiply each generated tensor by ``1/sqrt(fan_in)``.
    """

    def __init__(self, spec: ParamSpec, embedding_dim: int, output_scale: bool = True) -> None:
        super().__init__()
        if not isinstance(spec, ParamSpec):
            raise TypeError(
                f"{type(self).__name__}: spec must be a ParamSpec, got {type(spec).__name__}"
            )
        self.spec = spec
        self.embedding_dim = _check_int(type(self).__name__, "embedding_dim", embedding_dim)
        self.output_scale = bool(output_scale)
        scale = spec.init_scale() if self.output_scale else torch.ones(spec.numel)
        # rounded to float32 whatever the default dtype: the buffer is not saved, and a
        # checkpoint is rebuilt in float32 and then cast, so a hypernetwork built under
        # torch.set_default_dtype(torch.float64) must hold the same numbers to reload exactly
        scale = scale.float().to(torch.get_default_dtype())
        self.register_buffer("scale", scale, persistent=False)
        self.task_embeddings = nn.ParameterList()

    # -- tasks -------------------------------------------------------------------------------

    @property
    def num_tasks(self) -> int:
        return len(self.task_embeddings)

    def add_task(self, generator: torch.Generator | None = None) -> int:
        """Append a new task embedding (standard normal draw, in the hypernetwork's dtype);
        returns its task id."""
        e = _draw_normal((self.embedding_dim,), generator, self.scale)
        self.task_embeddings.append(nn.Parameter(e))
        return self.num_tasks - 1

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """The parameters owned by one task (its embedding, plus per-task chunk embeddings)."""
        self._check_task(task)
        return [self.task_embeddings[task]]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters shared by all tasks (everything except per-task ones)."""
        own = {id(p) for t in range(self.num_tasks) for p in self.task_parameters(t)}
        return [p for p in self.parameters() if id(p) not in own]

    def output_parameters(self) -> list[nn.Parameter]:
        """The output layer's weight and bias (``W_o``, ``b_o``): every generated number is a
        linear read-out of them, scaled by ``scale``."""
        return list(self._output_layer().parameters())

    def num_shared_parameters(self) -> int:
        """Hypernetwork size without task-specific parameters (von Oswald's convention)."""
        return sum(p.numel() for p in self.shared_parameters())

    def num_parameters(self) -> int:
        """All parameters, including every task's embedding (grows with the number of tasks)."""
        return sum(p.numel() for p in self.parameters())

    def compression_ratio(self) -> float:
        """:meth:`num_shared_parameters` / ``P``."""
        return self.num_shared_parameters() / self.spec.numel

    def _check_task(self, task: object) -> int:
        if isinstance(task, bool) or not isinstance(task, int):
            raise TypeError(f"task ids must be ints, got {type(task).__name__}")
        if not 0 <= task < self.num_tasks:
            raise ValueError(
                f"task id {task} is unknown: this hypernetwork has {self.num_tasks} task "
                "embedding(s); call add_task() first"
            )
        return task

    # -- generation --------------------------------------------------------------------------

    def forward(
        self, task: int | Sequence[int] | None = None, *, embedding: Tensor | None = None
    ) -> Tensor:
        """Generate the target's flat weights.

        Args:
            task: a task id (returns ``[P]``) or a list of ids (returns ``[B, P]``).
            embedding: instead of ``task``, external embeddings ``[d]`` or ``[B, d]``.
        """
        emb, squeeze = self._embeddings(task, embedding)
        return self._finish(self._generate(emb, self._task_list(task)), squeeze)

    def _finish(self, raw: Tensor, squeeze: bool) -> Tensor:
        out = raw * self.scale
        return out[0] if squeeze else out

    def _task_list(self, task) -> list[int] | None:
        if task is None:
            return None
        if isinstance(task, Tensor) and task.dim() == 0:
            task = _task_id(task)
        return [task] if isinstance(task, int) else [_task_id(t) for t in task]

    def _embeddings(self, task, embedding) -> tuple[Tensor, bool]:
        if (task is None) == (embedding is None):
            raise ValueError("pass exactly one of task and embedding")
        if embedding is not None:
            if not isinstance(embedding, Tensor) or embedding.dim() not in (1, 2):
                raise ValueError("embedding must be a tensor of shape [d] or [B, d]")
            if embedding.shape[-1] != self.embedding_dim:
                raise ValueError(
                    f"embedding must have {self.embedding_dim} features, got {embedding.shape[-1]}"
                )
            return embedding.reshape(-1, self.embedding_dim), embedding.dim() == 1
        if isinstance(task, Tensor) and task.dim() == 0:
            task = _task_id(task)  # a single id given as a 0-d tensor
        if isinstance(task, int) and not isinstance(task, bool):
            return self.task_embeddings[self._check_task(task)].unsqueeze(0), True
        if not isinstance(task, (list, tuple, range, Tensor)):
            raise TypeError(f"task must be an int or a list of ints, got {type(task).__name__}")
        tasks = [self._check_task(_task_id(t)) for t in task]
        if not tasks:
            raise ValueError("task list must not be empty")
        return torch.stack([self.task_embeddings[t] for t in tasks]), False

    def _features(self, emb: Tensor, tasks: list[int] | None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def _output_layer(self) -> nn.Linear:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set_layout(self, size: int, index: Tensor | None) -> None:
        """Declare the padded layout: raw outputs ``[B, size]``, flat number ``p`` at
        ``index[p]`` (``None``: at ``p``). Registers ``index`` (``None`` when it is the
        identity, so the read-out is a slice) and ``padded_scale`` ``[size]``: ``scale`` at the
        positions read out, zero elsewhere."""
        P = self.spec.numel
        if index is not None and torch.equal(index, torch.arange(P)):
            index = None
        positions = torch.arange(P) if index is None else index
        padded = torch.zeros(size, dtype=self.scale.dtype, device=self.scale.device)
        padded[positions.to(self.scale.device)] = self.scale
        self.register_buffer("padded_scale", padded, persistent=False)
        if index is not None:
            index = index.to(self.scale.device)
        self.register_buffer("index", index, persistent=False)

    def padded(self, values: Tensor) -> Tensor:
        """``[..., P]`` numbers in the target's flat order -> ``[..., Q]`` in the padded layout
        (zero where nothing is read out); the inverse of the read-out."""
        if not isinstance(values, Tensor):
            raise TypeError(f"values must be a Tensor, got {type(values).__name__}")
        P, Q = self.spec.numel, self.padded_scale.numel()
        if values.dim() == 0 or values.shape[-1] != P:
            raise ValueError(f"values must have shape [..., {P}], got {list(values.shape)}")
        out = values.new_zeros(*values.shape[:-1], Q)
        if self.index is None:
            out[..., :P] = values
        else:
            out[..., self.index] = values
        return out

    def _raw(self, features: Tensor) -> Tensor:
        """Batch-first features -> raw outputs ``[B, Q]`` in the padded layout."""
        out = self._output_layer()(features)
        return out.reshape(out.shape[0], self.padded_scale.numel())

    def _read_out(self, raw: Tensor) -> Tensor:
        """Raw outputs ``[B, Q]`` -> the ``[B, P]`` target numbers (before ``scale``)."""
        if self.index is None:
            return raw[:, : self.spec.numel]
        return raw.index_select(1, self.index)

    def _generate(self, emb: Tensor, tasks: list[int] | None) -> Tensor:
        return self._read_out(self._raw(self._features(emb, tasks)))

    # -- training with the output regulariser ------------------------------------------------

    def generate_padded(self, tasks: Sequence[int]) -> tuple[Tensor, Tensor]:
        """``(raw [B, Q], features [B, ...])`` for a list of tasks, in the padded layout:
        ``raw * padded_scale`` are the tasks' weights (zero where nothing is read out)."""
        features = self._task_features(self._id_list("tasks", tasks))
        return self._raw(features), features

    def generate_with_old(self, task: int, old: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        """One batched generator call for a training step with the output regulariser.

        Args:
            task: the task being learned.
            old: the old tasks to regularise (may be empty).

        Returns:
            ``(weights, old_raw, old_features)``: ``forward(task)`` ``[P]``, and for the old
            tasks what :meth:`generate_padded` returns (``[S, Q]``, ``[S, ...]``). The features
            are split before the output layer, so no gradient flows through a slice of the
            large raw outputs.
        """
        if isinstance(task, bool) or not isinstance(task, int):
            raise TypeError(f"task must be an int, got {type(task).__name__}")
        features = self._task_features([task, *self._id_list("old", old)])
        weights = self._finish(self._read_out(self._raw(features[:1])), squeeze=True)
        return weights, self._raw(features[1:]), features[1:]

    def _task_features(self, tasks: list) -> Tensor:
        """Batch-first features of a list of task ids (checked by :meth:`_embeddings`)."""
        emb, _ = self._embeddings(tasks, None)
        return self._features(emb, self._task_list(tasks))

    @staticmethod
    def _id_list(name: str, tasks: object) -> list:
        if not isinstance(tasks, (list, tuple, range)):
            raise TypeError(f"{name} must be a list of task ids, got {type(tasks).__name__}")
        return list(tasks)

    @torch.no_grad()
    def snapshot(self, tasks: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Regulariser targets, detached: ``(weights [B, Q]`` in the padded layout (``raw *
        padded_scale``), ``features [B, ...])``."""
        raw, features = self.generate_padded(tasks)
        return raw * self.padded_scale, features

    def _reset_task_parameters(self) -> None:
        """Re-draw every task-owned parameter, standard normal as :meth:`add_task` draws it
        (called by ``reset_parameters`` before the calibration that may read them)."""
        with torch.no_grad():
            for e in self.task_embeddings:
                e.normal_()

    @torch.no_grad()
    def _calibrate(self) -> None:
        # rescale the output layer so raw outputs have unit std for N(0, I) embeddings: with the
        # output scale the generated weights then start at std 1/sqrt(fan_in)
        g = torch.Generator().manual_seed(0)
        emb = torch.randn(8, self.embedding_dim, generator=g).to(self.scale)
        tasks = [0] * 8 if self._needs_task_ids() and self.num_tasks > 0 else None
        if self._needs_task_ids() and tasks is None:
            return
        raw = self._generate(emb, tasks)
        std = raw.std().item()
        if std > 0 and math.isfinite(std):
            out = self._output_layer()
            out.weight.div_(std)
            out.bias.div_(std)

    def _needs_task_ids(self) -> bool:
        return False

    def config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


class FullHyperNetwork(HyperNetwork):
    r"""MLP hypernetwork with one output per target weight (von Oswald et al., 2020).

    .. math::
        \Theta^{(t)} = s \odot \big(W_o\, \mathrm{MLP}(e^{(t)}) + b_o\big)

    Args:
        spec: target parameter spec.
        embedding_dim: task embedding size.
        hidden: MLP widths, e.g. ``(100, 100)``.
        activation: ``"relu"``, ``"elu"``, ``"sigmoid"`` or ``"tanh"``.
        output_scale: see :class:`HyperNetwork`.

    Shapes:
        output ``[P]`` for one task, ``[B, P]`` for ``B`` tasks. Size about
        ``hidden[-1] * P``: never compressive for large targets.
    """

    def __init__(
        self,
        spec: ParamSpec,
        embedding_dim: int = 32,
        hidden: Sequence[int] = (100, 100),
        activation: str = "relu",
        output_scale: bool = True,
    ) -> None:
        super().__init__(spec, embedding_dim, output_scale)
        self.hidden = int_sequence("FullHyperNetwork", "hidden", hidden, _check_int)
        self.activation = activation
        self.body = _mlp([embedding_dim, *self.hidden], activation)
        self.out = nn.Linear(([embedding_dim, *self.hidden])[-1], spec.numel)
        self._set_layout(spec.numel, None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.body:
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        self.out.reset_parameters()
        self._reset_task_parameters()
        self._calibrate()

    def _output_layer(self) -> nn.Linear:
        return self.out

    def _features(self, emb: Tensor, tasks) -> Tensor:
        return self.body(emb)  # [B, hidden[-1]]

    def config(self) -> dict:
        return {
            "kind": "full",
            "embedding_dim": self.embedding_dim,
            "hidden": list(self.hidden),
            "activation": self.activation,
            "output_scale": self.output_scale,
        }

    def extra_repr(self) -> str:
        return f"P={self.spec.numel}, embedding_dim={self.embedding_dim}, hidden={self.hidden}"


class ChunkedHyperNetwork(HyperNetwork):
    r"""Chunked MLP hypernetwork (von Oswald et al., 2020).

    The flat target vector is cut into :math:`N_C = \lceil P / c \rceil` chunks of ``c``
    numbers (cutting across layers; the last chunk's remainder is dropped). Chunk ``i`` is
    generated from its own learned chunk embedding :math:`c_i`, independently of the others:

    .. math::
        \Theta^{(t)}_i = s_i \odot \big(W_o\,\mathrm{MLP}([e^{(t)}; c_i]) + b_o\big)

    Args:
        spec: target parameter spec.
        chunk_size: ``c``.
        embedding_dim: task embedding size.
        chunk_embedding_dim: chunk embedding size.
        hidden: MLP widths.
        activation: hidden activation.
        conditional_chunk_embeddings: one set of chunk embeddings per task (task parameters,
            as hypnettorch's ``cond_chunk_embs=True``) instead of one shared set.
        output_scale: see :class:`HyperNetwork`.

    Shapes:
        output ``[P]`` or ``[B, P]``.
    """

    def __init__(
        self,
        spec: ParamSpec,
        chunk_size: int,
        embedding_dim: int = 32,
        chunk_embedding_dim: int = 16,
        hidden: Sequence[int] = (100, 100),
        activation: str = "relu",
        conditional_chunk_embeddings: bool = False,
        output_scale: bool = True,
    ) -> None:
        super().__init__(spec, embedding_dim, output_scale)
        self.chunk_size = _check_int("ChunkedHyperNetwork", "chunk_size", chunk_size)
        self.chunk_embedding_dim = _check_int(
            "ChunkedHyperNetwork", "chunk_embedding_dim", chunk_embedding_dim
        )
        self.hidden = int_sequence("ChunkedHyperNetwork", "hidden", hidden, _check_int)
        self.activation = activation
        self.conditional_chunk_embeddings = bool(conditional_chunk_embeddings)
        self.num_chunks = math.ceil(spec.numel / self.chunk_size)
        self.body = _mlp([embedding_dim + chunk_embedding_dim, *self.hidden], activation)
        self.out = nn.Linear(([embedding_dim + chunk_embedding_dim, *self.hidden])[-1], chunk_size)
        self.chunk_embeddings = nn.ParameterList()
        if not self.conditional_chunk_embeddings:
            self.chunk_embeddings.append(
                nn.Parameter(torch.empty(self.num_chunks, chunk_embedding_dim))
            )
        # the last chunk's remainder beyond P is padding
        self._set_layout(self.num_chunks * self.chunk_size, None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.body:
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        self.out.reset_parameters()
        for c in self.chunk_embeddings:  # shared, or one per task
            nn.init.normal_(c)
        self._reset_task_parameters()
        self._calibrate()

    def _needs_task_ids(self) -> bool:
        return self.conditional_chunk_embeddings

    def add_task(self, generator: torch.Generator | None = None) -> int:
        t = super().add_task(generator)
        if self.conditional_chunk_embeddings:
            c = _draw_normal((self.num_chunks, self.chunk_embedding_dim), generator, self.scale)
            self.chunk_embeddings.append(nn.Parameter(c))
            if t == 0:
                self._calibrate()
        return t

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        own = super().task_parameters(task)
        if self.conditional_chunk_embeddings:
            own.append(self.chunk_embeddings[task])
        return own

    def _output_layer(self) -> nn.Linear:
        return self.out

    def _features(self, emb: Tensor, tasks: list[int] | None) -> Tensor:
        b = emb.shape[0]
        if self.conditional_chunk_embeddings:
            if tasks is None:
                raise ValueError(
                    "ChunkedHyperNetwork with conditional chunk embeddings needs task ids, not "
                    "external embeddings"
                )
            chunks = torch.stack([self.chunk_embeddings[t] for t in tasks])  # [B, N, ce]
        else:
            chunks = self.chunk_embeddings[0].expand(b, -1, -1)  # [B, N, ce]
        inp = torch.cat([emb.unsqueeze(1).expand(-1, self.num_chunks, -1), chunks], dim=-1)
        return self.body(inp)  # [B, N, hidden[-1]]

    def config(self) -> dict:
        return {
            "kind": "chunked",
            "chunk_size": self.chunk_size,
            "embedding_dim": self.embedding_dim,
            "chunk_embedding_dim": self.chunk_embedding_dim,
            "hidden": list(self.hidden),
            "activation": self.activation,
            "conditional_chunk_embeddings": self.conditional_chunk_embeddings,
            "output_scale": self.output_scale,
        }

    def extra_repr(self) -> str:
        return (
            f"P={self.spec.numel}, chunk_size={self.chunk_size}, chunks={self.num_chunks}, "
            f"embedding_dim={self.embedding_dim}, chunk_embedding_dim={self.chunk_embedding_dim}, "
            f"hidden={self.hidden}, conditional={self.conditional_chunk_embeddings}"
        )


class RNNHyperNetwork(HyperNetwork):
    r"""LSTM hypernetwork that generates the target layer by layer, chunk by chunk.

    Each layer of the target (its weight and bias) is cut into chunks of at most ``c``
    numbers, by whole rows (``chunking="rows"``: a step holds one or more output units'
    incoming weights and bias, always at the same offsets) or contiguously
    (``chunking="flat"``); no chunk spans two layers. The LSTM takes one step per chunk, in
    layer order, carrying its state across layer boundaries:

    .. math::
        x_i = [e^{(t)};\ \sigma_i],\qquad (h_i, c_i) = \mathrm{LSTM}(x_i, h_{i-1}, c_{i-1}),
        \qquad \Theta^{(t)}_i = s_i \odot (W_o h_i + b_o)

    so chunk :math:`i` depends on every earlier chunk through :math:`h_{i-1}`. The step
    signal :math:`\sigma_i` says where the LSTM is (an LSTM fed only :math:`e^{(t)}` gets
    the same input at every step and fails to learn; see ``README.md``):

    * ``"sinusoidal"`` (default, no parameters): sin/cos features of the step index
      (``step_dim`` numbers) and a one-hot of the layer index;
    * ``"onehot"``: one-hot of the step index (``N`` numbers);
    * ``"learned"``: a learned ``step_dim`` vector per step, shared by all tasks, or one set
      per task with ``conditional_step_embeddings=True`` (task parameters, the counterpart
      of the chunked hypernetwork's conditional chunk embeddings);
    * ``"none"``: the task embedding only.

    Size: :math:`4H(d_{in} + H + 2) + (H + 1)c` plus ``N * step_dim`` for shared
    ``"learned"`` vectors, with :math:`d_{in} = d` plus the step signal's width: ``step_dim``
    for ``"learned"``, ``step_dim`` plus the number of target layers for ``"sinusoidal"``,
    ``N`` for ``"onehot"`` (so that one grows by ``4H`` per chunk), 0 for ``"none"``.

    Network growth (:meth:`grow`) adds hidden units whose outgoing weights (into the output
    layer and into the old units' gates) are zero, so every old task's weights are reproduced
    exactly at the moment of growth.

    Args:
        spec: target parameter spec.
        chunk_size: ``c``, numbers per step.
        embedding_dim: task embedding size ``d``.
        hidden_size: LSTM width ``H``.
        step_signal: one of :data:`STEP_SIGNALS`.
        step_dim: size of the sinusoidal or learned step features.
        chunking: ``"rows"`` or ``"flat"`` (see above).
        conditional_step_embeddings: per-task learned step embeddings (``"learned"`` only).
        output_scale: see :class:`HyperNetwork`.

    Shapes:
        output ``[P]`` or ``[B, P]``; :meth:`generate_with_states` also returns the hidden
        states ``[B, N, H]``.
    """

    def __init__(
        self,
        spec: ParamSpec,
        chunk_size: int,
        embedding_dim: int = 32,
        hidden_size: int = 64,
        step_signal: str = "sinusoidal",
        step_dim: int = 16,
        chunking: str = "flat",
        conditional_step_embeddings: bool = False,
        output_scale: bool = True,
    ) -> None:
        super().__init__(spec, embedding_dim, output_scale)
        cls = "RNNHyperNetwork"
        self.chunk_size = _check_int(cls, "chunk_size", chunk_size)
        self.hidden_size = _check_int(cls, "hidden_size", hidden_size)
        if step_signal not in STEP_SIGNALS:
            raise ValueError(
                f"{cls}: step_signal must be one of {STEP_SIGNALS}, got {step_signal!r}"
            )
        self.step_signal = step_signal
        self.step_dim = _check_int(cls, "step_dim", step_dim)
        if step_signal == "sinusoidal" and step_dim % 2:
            raise ValueError(
                f"{cls}: step_dim must be even for sinusoidal features, got {step_dim}"
            )

        if chunking not in CHUNKINGS:
            raise ValueError(f"{cls}: chunking must be one of {CHUNKINGS}, got {chunking!r}")
        self.chunking = chunking
        steps_layer, index = _step_layout(spec, self.chunk_size, chunking)
        self.num_steps = len(steps_layer)
        # flat position p of the target <- position index[p] of the [N * c] step outputs
        self._set_layout(self.num_steps * self.chunk_size, index)
        layer_ids = torch.tensor(steps_layer)
        self.register_buffer(
            "signal", self._fixed_signal(layer_ids, spec.num_layers), persistent=False
        )
        self.conditional_step_embeddings = bool(conditional_step_embeddings)
        if self.conditional_step_embeddings and step_signal != "learned":
            raise ValueError(f"{cls}: conditional_step_embeddings needs step_signal='learned'")
        if step_signal == "learned" and not self.conditional_step_embeddings:
            self.step_embeddings = nn.Parameter(torch.empty(self.num_steps, step_dim))
        else:
            self.register_parameter("step_embeddings", None)
        # per-task step embeddings (task parameters), one [N, step_dim] tensor per task
        self.task_step_embeddings = nn.ParameterList()
        self.input_size = embedding_dim + self._signal_dim(spec.num_layers)
        self.lstm = nn.LSTM(self.input_size, hidden_size)
        self.out = nn.Linear(hidden_size, self.chunk_size)
        self.reset_parameters()

    def _signal_dim(self, num_layers: int) -> int:
        return {
            "sinusoidal": self.step_dim + num_layers,
            "onehot": self.num_steps,
            "learned": self.step_dim,
            "none": 0,
        }[self.step_signal]

    def _fixed_signal(self, layer_ids: Tensor, num_layers: int) -> Tensor:
        n = layer_ids.numel()
        if self.step_signal == "sinusoidal":
            pos = torch.arange(n, dtype=torch.float32).unsqueeze(1)
            freq = torch.exp(
                -math.log(1000.0) * torch.arange(0, self.step_dim, 2, dtype=torch.float32)
                / self.step_dim
            )  # fmt: skip
            return torch.cat(
                [torch.sin(pos * freq), torch.cos(pos * freq), F.one_hot(layer_ids, num_layers)],
                dim=1,
            ).float()
        if self.step_signal == "onehot":
            return torch.eye(n)
        return torch.zeros(n, 0)

    def reset_parameters(self) -> None:
        self.lstm.reset_parameters()
        self.out.reset_parameters()
        if self.step_embeddings is not None:
            nn.init.normal_(self.step_embeddings)
        self._reset_task_parameters()
        self._calibrate()

    def _reset_task_parameters(self) -> None:
        super()._reset_task_parameters()
        with torch.no_grad():
            for e in self.task_step_embeddings:
                e.normal_()

    def _output_layer(self) -> nn.Linear:
        return self.out

    def _needs_task_ids(self) -> bool:
        return self.conditional_step_embeddings

    def add_task(self, generator: torch.Generator | None = None) -> int:
        t = super().add_task(generator)
        if self.conditional_step_embeddings:
            e = _draw_normal((self.num_steps, self.step_dim), generator, self.scale)
            self.task_step_embeddings.append(nn.Parameter(e))
            if t == 0:
                self._calibrate()
        return t

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        own = super().task_parameters(task)
        if self.conditional_step_embeddings:
            own.append(self.task_step_embeddings[task])
        return own

    def _inputs(self, emb: Tensor, tasks: list[int] | None) -> Tensor:
        b = emb.shape[0]
        if self.conditional_step_embeddings:
            if tasks is None:
                raise ValueError(
                    "RNNHyperNetwork with conditional step embeddings needs task ids, not "
                    "external embeddings"
                )
            sig = torch.stack([self.task_step_embeddings[t] for t in tasks], dim=1)  # [N, B, s]
        else:
            fixed = self.step_embeddings if self.step_embeddings is not None else self.signal
            sig = fixed.unsqueeze(1).expand(-1, b, -1)  # [N, B, s]
        return torch.cat([emb.unsqueeze(0).expand(self.num_steps, -1, -1), sig], dim=-1)

    def generate_with_states(self, task: int | Sequence[int]) -> tuple[Tensor, Tensor]:
        """``(weights [B, P], hidden states [B, N, H])`` for a list of tasks (``[P], [N, H]``
        for one task)."""
        emb, squeeze = self._embeddings(task, None)
        states = self._features(emb, self._task_list(task))  # [B, N, H]
        raw = self._read_out(self._raw(states))
        return self._finish(raw, squeeze), (states[0] if squeeze else states)

    def _features(self, emb: Tensor, tasks) -> Tensor:
        h, _ = self.lstm(self._inputs(emb, tasks))  # [N, B, H]
        # batch-first: the output layer then writes [B, N, c], each task's outputs contiguous
        return h.transpose(0, 1)

    @torch.no_grad()
    def grow(self, units: int) -> None:
        """Add ``units`` LSTM hidden units without changing any generated weight.

        The new units get PyTorch's default random incoming weights; their outgoing weights
        (output layer columns and the old units' recurrent weights from them) are zero, so
        ``forward`` is unchanged for every task at the moment of growth.
        """
        units = _check_int("RNNHyperNetwork.grow", "units", units)
        old, new = self.hidden_size, self.hidden_size + units
        like = {"device": self.scale.device, "dtype": self.scale.dtype}  # a .double() hnet stays so
        lstm = nn.LSTM(self.input_size, new).to(**like)
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            src, dst = getattr(self.lstm, name), getattr(lstm, name)
            for g in range(4):  # gate blocks i, f, g, o
                rows_new = slice(g * new, g * new + old)
                rows_old = slice(g * old, (g + 1) * old)
                if name == "weight_hh_l0":
                    dst[rows_new, :old] = src[rows_old]
                    dst[rows_new, old:] = 0.0  # new units do not feed the old ones
                else:
                    dst[rows_new] = src[rows_old]
        out = nn.Linear(new, self.chunk_size).to(**like)
        out.weight[:, :old] = self.out.weight
        out.weight[:, old:] = 0.0
        out.bias.copy_(self.out.bias)
        self.lstm, self.out, self.hidden_size = lstm, out, new

    def config(self) -> dict:
        return {
            "kind": "rnn",
            "chunk_size": self.chunk_size,
            "embedding_dim": self.embedding_dim,
            "hidden_size": self.hidden_size,
            "step_signal": self.step_signal,
            "step_dim": self.step_dim,
            "chunking": self.chunking,
            "conditional_step_embeddings": self.conditional_step_embeddings,
            "output_scale": self.output_scale,
        }

    def extra_repr(self) -> str:
        return (
            f"P={self.spec.numel}, chunk_size={self.chunk_size}, chunking={self.chunking!r}, "
            f"steps={self.num_steps}, "
            f"embedding_dim={self.embedding_dim}, hidden_size={self.hidden_size}, "
            f"step_signal={self.step_signal!r}"
        )


def hypernetwork_from_config(spec: ParamSpec, config: dict) -> HyperNetwork:
    """Rebuild a hypernetwork (no tasks yet) from its :meth:`~HyperNetwork.config`."""
    config = dict(config)
    kind = config.pop("kind", None)
    classes = {"full": FullHyperNetwork, "chunked": ChunkedHyperNetwork, "rnn": RNNHyperNetwork}
    if kind not in classes:
        raise ValueError(f"hypernetwork config kind must be one of {sorted(classes)}, got {kind!r}")
    return classes[kind](spec, **config)
