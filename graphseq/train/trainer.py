"""One training loop for graph- and node-level benchmarks.

:func:`fit` trains one model with one seed: seeding, device selection, DDP when launched by
``torchrun`` (gloo on CPU, nccl on GPU; ``DistributedSampler`` for the training set; evaluation
sharded over ranks and gathered), a tqdm progress bar, early stopping on the validation metric,
a checkpoint after every epoch that a rerun resumes from, and on rank 0 only: ``results.json``,
``curves.png`` and optionally TensorBoard logs.

Model selection follows OGB's examples: every epoch is scored on valid and test, and the test
score reported is the one at the epoch with the best validation score.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from graphseq.models import build_model
from graphseq.train.benchmarks import Task
from graphseq.train.distributed import DistEnv, init_distributed
from graphseq.train.io import (
    CheckpointError,
    ResultsFileError,
    git_commit,
    load_checkpoint,
    machine_info,
    plot_curves,
    read_json,
    save_checkpoint,
    write_json,
)

__all__ = ["TrainConfig", "count_parameters", "fit", "seed_everything"]

_CKPT_FORMAT = 1
#: what a finished results file must hold for run_benchmark / summarize / submit
_RESULT_KEYS = ("seed", "best_epoch", "best", "config")


@dataclass
class TrainConfig:
    """Settings of one training run (one model, one seed).

    Args:
        benchmark: benchmark name (recorded; the data comes in as a :class:`Task`).
        model: registered model name (see :mod:`graphseq.models`).
        model_args: hyperparameters passed to the model factory.
        epochs: maximum number of epochs.
        batch_size: graphs per batch and per process (graph-level tasks).
        lr, weight_decay: Adam settings.
        patience: stop after this many epochs without a better validation score (None: never).
        seed: the run's seed (model init, shuffling, dropout).
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ...
        threads: ``torch.set_num_threads`` for this process (None: leave torch's default).
        progress: show a tqdm progress bar (rank 0 only).
        tensorboard: also write TensorBoard logs to ``<out_dir>/tensorboard``.
        eval_train: also score the training set each epoch (slower; OGB's examples do).
        schedule: learning-rate schedule over epochs: ``"constant"`` (``lr`` throughout) or
            ``"cosine"`` (GraphGPS-like cosine decay after a linear warm-up): epoch ``e``
            (1-based) uses ``lr * e / (warmup_epochs + 1)`` for ``e <= warmup_epochs``, then
            ``lr * (1 + cos(pi * (e - 1 - warmup_epochs) / (epochs - warmup_epochs))) / 2``.
            The rate is a function of the epoch alone, so a resumed run continues it exactly.
        warmup_epochs: linear warm-up epochs of the cosine schedule (``< epochs``).
    """

    benchmark: str
    model: str = "gin"
    model_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    tensorboard: bool = False
    eval_train: bool = False
    schedule: str = "constant"
    warmup_epochs: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            # training skips one-graph batches (batch norm over graphs needs two, as in OGB's
            # loop), so batch_size 1 would train on nothing
            raise ValueError(
                f"TrainConfig: batch_size must be >= 2 (one-graph batches are skipped in "
                f"training, as in OGB's loop), got {self.batch_size}"
            )
        t = self.threads
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 1):
            raise ValueError(f"TrainConfig: threads must be an int >= 1 or None, got {t!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(
                f"TrainConfig: schedule must be 'constant' or 'cosine', got {self.schedule!r}"
            )
        w = self.warmup_epochs
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w < self.epochs:
            raise ValueError(
                f"TrainConfig: warmup_epochs must be an int in [0, epochs={self.epochs}), got {w!r}"
            )
        if w and self.schedule == "constant":
            raise ValueError("TrainConfig: warmup_epochs needs schedule='cosine'")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig: lr must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(
                f"TrainConfig: weight_decay must be a finite number >= 0, got {self.weight_decay}"
            )
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"TrainConfig: patience must be >= 1 or None, got {self.patience}")

    def identity(self) -> dict[str, Any]:
        """The settings that determine the result (what a resumed run must match)."""
        keep = ("benchmark", "model", "model_args", "epochs", "batch_size", "lr", "weight_decay",
                "patience", "seed", "eval_train")  # fmt: skip
        if self.schedule != "constant":  # older results (constant rate) keep their digest
            keep += ("schedule", "warmup_epochs")
        return {k: getattr(self, k) for k in keep}

    def lr_at(self, epoch: int) -> float:
        """The learning rate of (1-based) ``epoch`` under ``schedule``."""
        if not 1 <= epoch <= self.epochs:
            raise ValueError(f"lr_at: epoch must be in [1, {self.epochs}], got {epoch}")
        if self.schedule == "constant":
            return self.lr
        if epoch <= self.warmup_epochs:
            return self.lr * epoch / (self.warmup_epochs + 1)
        progress = (epoch - 1 - self.warmup_epochs) / (self.epochs - self.warmup_epochs)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def digest(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - user code may use the legacy global RNG
    torch.manual_seed(seed)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------
# losses and one epoch


def _loss(task: Task, out: Tensor, y: Tensor) -> Tensor:
    if task.loss is not None:
        return task.loss(out, y)
    if task.task_type == "multiclass classification":
        return nn.functional.cross_entropy(out, y.reshape(-1).long())
    y = y.reshape(out.shape).to(out.dtype)
    labelled = ~torch.isnan(y)  # OGB: NaN marks a missing label
    if task.task_type == "binary classification":
        return nn.functional.binary_cross_entropy_with_logits(out[labelled], y[labelled])
    return nn.functional.mse_loss(out[labelled], y[labelled])


def _shard(n: int, env: DistEnv) -> list[int]:
    return list(range(env.rank, n, env.world_size))


@torch.no_grad()
def _predict_graph(
    model, dataset, idx: list[int], batch_size: int, device
) -> tuple[Tensor, Tensor, list[int]]:
    """Labels and predictions of the graphs ``idx``, in that order, and how many rows each
    graph has: one for a graph-level output, one per node for a node-level one (PATTERN)."""
    from torch_geometric.loader import DataLoader

    model.eval()
    ys, preds, rows = [], [], []
    subset = [dataset[i] for i in idx]
    for batch in DataLoader(subset, batch_size=batch_size, shuffle=False):
        batch = batch.to(device)
        preds.append(model(batch).float().cpu())
        ys.append(batch.y.float().cpu().reshape(preds[-1].shape[0], -1))
        G = batch.num_graphs
        if preds[-1].shape[0] == G:
            rows += [1] * G
        elif preds[-1].shape[0] == batch.num_nodes:
            rows += torch.bincount(batch.batch.cpu(), minlength=G).tolist()
        else:
            raise ValueError(
                f"the model returned {preds[-1].shape[0]} rows for a batch of {G} graphs and "
                f"{batch.num_nodes} nodes: one per graph or one per node was expected"
            )
    if not preds:
        return torch.empty(0), torch.empty(0), rows
    return torch.cat(ys), torch.cat(preds), rows


def _evaluate_graph(task: Task, model, split: str, config: TrainConfig, env: DistEnv) -> float:
    dataset = task.splits[split]
    idx = _shard(len(dataset), env)
    y, p, rows = _predict_graph(model, dataset, idx, config.batch_size, env.device)
    parts = env.all_gather_object((idx, y, p, rows))
    # every graph's rows, put back in dataset order whole (a node-level task has many rows
    # per graph, so the rows cannot be reordered by graph index directly)
    per_graph = {}
    for part_idx, part_y, part_p, part_rows in parts:
        if not part_idx:
            continue
        for i, gy, gp in zip(
            part_idx, part_y.split(part_rows), part_p.split(part_rows), strict=True
        ):
            per_graph[i] = (gy, gp)
    order = sorted(per_graph)
    if not order:
        return _score(task, split, torch.empty(0), torch.empty(0))
    y = torch.cat([per_graph[i][0] for i in order])
    p = torch.cat([per_graph[i][1] for i in order])
    return _score(task, split, y, p)


def _score(task: Task, split: str, y: Tensor, p: Tensor) -> float:
    """``task.evaluate``; a split it cannot score (one class only) is named in the error."""
    try:
        return task.evaluate(y, p)
    except ValueError as err:
        raise ValueError(f"{task.name}: cannot score the {split} split: {err}") from err


def _train_epoch_graph(task, model, optimizer, sampler, config, env, epoch) -> float:
    from torch_geometric.loader import DataLoader

    sampler.set_epoch(epoch)
    loader = DataLoader(task.splits["train"], batch_size=config.batch_size, sampler=sampler)
    model.train()
    total, count = 0.0, 0
    for batch in loader:
        if batch.num_graphs < 2:
            continue  # BatchNorm over graphs (virtual node) needs 2+ graphs; OGB hits this never
        batch = batch.to(env.device)
        optimizer.zero_grad(set_to_none=True)
        loss = _loss(task, model(batch), batch.y)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * batch.num_graphs
        count += batch.num_graphs
    return env.all_reduce_mean(total / max(count, 1))


def _train_epoch_node(task, model, optimizer, config, env, epoch) -> float:
    graph = task.graph.to(env.device)
    train_idx = task.splits["train"].to(env.device)[env.rank :: env.world_size]
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = _loss(task, model(graph)[train_idx], graph.y[train_idx])
    loss.backward()
    optimizer.step()
    return env.all_reduce_mean(float(loss.detach()))


@torch.no_grad()
def _evaluate_node(task, model, splits, env) -> dict[str, float]:
    """Score ``splits`` of a node-level task from one forward pass over the graph."""
    model.eval()
    graph = task.graph.to(env.device)
    out = model(graph)
    scores = {}
    for split in splits:
        idx = task.splits[split].to(env.device)
        scores[split] = _score(task, split, graph.y[idx].cpu(), out[idx].float().cpu())
    return scores


# --------------------------------------------------------------------------------------------
# fit


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _share_buffers(model: nn.Module, env: DistEnv) -> nn.Module:
    """Rank 0's buffers (BatchNorm running statistics, which each rank updated with its own last
    batch) on every rank, and the bare module for scoring: the checkpoint holds rank 0's, so the
    scores are those of the saved model. Scoring through the DDP wrapper left this broadcast to
    its first forward, which a rank without graphs in a split (fewer graphs than processes)
    never calls: the other ranks then waited for it forever."""
    module = _unwrap(model)
    if env.distributed:
        import torch.distributed as dist

        for buf in module.buffers():
            dist.broadcast(buf, 0)
    return module


def _better(a: float, b: float | None, higher: bool) -> bool:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return not math.isnan(a)
    return a > b if higher else a < b


def fit(
    task: Task,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    env: DistEnv | None = None,
    model_factory: Callable[[], nn.Module] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``config.model`` on ``task`` with ``config.seed``; return the results dict.

    With ``out_dir``, the run is resumable: a finished run (``results.json`` with the same
    settings) is returned without training, an unfinished one continues from
    ``checkpoint.pt`` (loaded with ``torch.load(weights_only=True)``). Only rank 0 writes.

    Args:
        task: from ``get_benchmark(name).load(...)``.
        config: the run's settings.
        out_dir: folder for ``checkpoint.pt``, ``results.json``, ``curves.png``,
            ``tensorboard/``; None keeps everything in memory.
        env: distributed environment (default: :func:`init_distributed` from torchrun's
            variables, or a single CPU/GPU process).
        model_factory: build the model yourself instead of from the registry.
        extra: more entries for the results JSON (e.g. the exact command).

    Returns:
        The results: ``best_epoch``, ``best`` (``{"valid", "test"}`` at the best valid epoch),
        ``history`` (per-epoch loss and metrics), ``num_parameters``, ``wall_time_s``, ``config``,
        ``git_commit``, ``machine``, ``task``, ``status`` (``"finished"``), ...

    Raises:
        CheckpointError, ResultsFileError: an existing checkpoint/results file is unreadable or
            belongs to different settings; the message names the file, which is left untouched.
    """
    own_env = env is None
    env = env if env is not None else init_distributed(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    out = Path(out_dir) if out_dir is not None else None
    results_path = out / "results.json" if out else None
    ckpt_path = out / "checkpoint.pt" if out else None
    digest = config.digest()
    try:
        if results_path is not None and results_path.exists():
            done = read_json(
                results_path,
                hint="Delete it to rerun this seed; other seeds' results are separate files.",
            )
            if not isinstance(done, dict) or "config_digest" not in done:
                raise ResultsFileError(
                    f"{results_path} is not a graphseq results file (a JSON object with "
                    "'config_digest' was expected). It was left untouched. Delete it to rerun "
                    "this seed; other seeds' results are separate files."
                )
            if done.get("config_digest") != digest:
                if model_factory is None:  # a bad model argument is named, not blamed on the file
                    build_model(config.model, task.spec, **config.model_args)
                raise ResultsFileError(
                    f"{results_path} holds a run with different settings "
                    f"({(done or {}).get('config') if isinstance(done, dict) else done!r}); "
                    "use another output folder or delete it. It was left untouched."
                )
            old_sizes = (done.get("task") or {}).get("sizes")
            _check_same_data(results_path, ResultsFileError, old_sizes, task)
            if done.get("status") == "finished":
                lacking = [k for k in _RESULT_KEYS if k not in done]
                if lacking:
                    raise ResultsFileError(
                        f"{results_path} is a finished run without {lacking}. It was left "
                        "untouched. Delete it to rerun this seed; other seeds' results are "
                        "separate files."
                    )
                return done
        return _fit(task, config, env, out, results_path, ckpt_path, digest, model_factory, extra)
    finally:
        if own_env:
            env.close()


def _check_same_data(path: Path, error: type, old_sizes, task) -> None:
    """A run stored at ``path`` must be on data of the same split sizes: the settings digest
    holds the benchmark's name, not its data, and scripts build differently sized data under
    one name (``--sizes``). Files written before the sizes were recorded are not checked."""
    new_sizes = task.info.get("sizes")
    if old_sizes is None or new_sizes is None:
        return
    old = {str(k): int(v) for k, v in dict(old_sizes).items()}
    new = {str(k): int(v) for k, v in dict(new_sizes).items()}
    if old != new:
        raise error(
            f"{path} holds a run on other data (split sizes {old}, this task {new}); use "
            "another output folder or delete it. It was left untouched."
        )


def _fit(task, config, env, out, results_path, ckpt_path, digest, model_factory, extra):
    seed_everything(config.seed)
    if model_factory is not None:
        model = model_factory()
    else:
        model = build_model(config.model, task.spec, **config.model_args)
    model = model.to(env.device)
    num_params = count_parameters(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    start_epoch, history, best, best_epoch, bad_epochs, elapsed = 1, [], None, None, 0, 0.0
    if ckpt_path is not None and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        if state.get("config_digest") != digest:
            raise CheckpointError(
                f"checkpoint {ckpt_path} was written with different settings "
                f"({state.get('config')}); use another output folder or delete it. "
                "It was left untouched."
            )
        _check_same_data(ckpt_path, CheckpointError, state.get("task_sizes"), task)
        old_world = state.get("world_size")  # checkpoints written before it was recorded: None
        if old_world is not None and int(old_world) != env.world_size:
            what = (
                "each process's share of the training nodes"
                if task.level == "node"
                else f"the effective batch, {config.batch_size} graphs per process and step"
            )
            raise CheckpointError(
                f"checkpoint {ckpt_path} was written by a run of {old_world} process(es), this "
                f"run has {env.world_size} ({what}, would change mid-run): resume it with the "
                "same number of "
                "processes (torchrun --nproc_per_node), or use another output folder. It was "
                "left untouched."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        history = list(state["history"])
        best, best_epoch = state["best"], state["best_epoch"]
        bad_epochs, elapsed = int(state["bad_epochs"]), float(state["elapsed"])

    if env.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None
        )
    sampler = None
    if task.level == "graph":
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(
            task.splits["train"], num_replicas=env.world_size, rank=env.rank, shuffle=True,
            seed=config.seed,
        )  # fmt: skip

    writer = None
    if config.tensorboard and env.is_main and out is not None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(
                "tensorboard=True needs the tensorboard package: pip install tensorboard"
            ) from err
        writer = SummaryWriter(str(out / "tensorboard"))

    bar = None
    if config.progress and env.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=config.epochs, initial=start_epoch - 1, desc=f"{task.name} {config.model} "
            f"seed {config.seed}", unit="epoch", file=sys.stderr, dynamic_ncols=True, leave=False,
        )  # fmt: skip

    higher = task.higher_is_better
    metric = task.metric
    stopped_early = False
    t_start = time.perf_counter() - elapsed
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            if config.patience is not None and bad_epochs >= config.patience:
                stopped_early = True
                break
            torch.manual_seed(config.seed * 100_003 + epoch)  # dropout: reproducible on resume
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(epoch)
            t0 = time.perf_counter()
            if task.level == "graph":
                loss = _train_epoch_graph(task, model, optimizer, sampler, config, env, epoch)
                scored = _share_buffers(model, env)
                scores = {
                    s: _evaluate_graph(task, scored, s, config, env)
                    for s in (("train",) if config.eval_train else ()) + ("valid", "test")
                }
            else:
                loss = _train_epoch_node(task, model, optimizer, config, env, epoch)
                scores = _evaluate_node(
                    task, _share_buffers(model, env),
                    (("train",) if config.eval_train else ()) + ("valid", "test"), env,
                )  # fmt: skip
            row = {"epoch": epoch, "train_loss": loss, "epoch_time_s": time.perf_counter() - t0}
            row.update({f"{s}_{metric}": v for s, v in scores.items()})
            history.append(row)
            if _better(scores["valid"], None if best is None else best["valid"], higher):
                best, best_epoch, bad_epochs = dict(scores), epoch, 0
            else:
                bad_epochs += 1
            elapsed = time.perf_counter() - t_start
            if env.is_main:
                if writer is not None:
                    writer.add_scalar("train/loss", loss, epoch)
                    for s, v in scores.items():
                        writer.add_scalar(f"{s}/{metric}", v, epoch)
                if ckpt_path is not None:
                    save_checkpoint(
                        ckpt_path,
                        {
                            "format": _CKPT_FORMAT, "epoch": epoch, "config_digest": digest,
                            "config": config.identity(), "model": _unwrap(model).state_dict(),
                            "optimizer": optimizer.state_dict(), "history": history,
                            "best": best, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                            "elapsed": elapsed, "task_sizes": task.info.get("sizes"),
                            "world_size": env.world_size,
                        },
                    )  # fmt: skip
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss:.4f}",
                    valid=f"{scores['valid']:.4f}",
                    test=f"{scores['test']:.4f}",
                    best=f"{best['valid']:.4f}@{best_epoch}" if best else "-",
                )
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    env.barrier()

    results = {
        "status": "finished",
        "benchmark": task.name,
        "model": config.model,
        "seed": config.seed,
        "metric": metric,
        "higher_is_better": higher,
        "best_epoch": best_epoch,
        "best": best,
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "num_parameters": num_params,
        "wall_time_s": elapsed,
        "mean_epoch_time_s": float(np.mean([h["epoch_time_s"] for h in history]))
        if history
        else None,
        "world_size": env.world_size,
        "config": dataclasses.asdict(config),
        "config_digest": digest,
        "git_commit": git_commit(),
        "machine": machine_info(env.device),
        "task": {"level": task.level, "task_type": task.task_type, **task.info},
        "history": history,
    }
    if extra:
        results.update(extra)
    if env.is_main and out is not None:
        results["plot"] = "curves.png" if plot_curves(
            out / "curves.png", history, metric=metric, best_epoch=best_epoch,
            title=f"{task.name} / {config.model} / seed {config.seed}",
        ) else None  # fmt: skip
        write_json(results_path, results)
    env.barrier()
    return results
