"""Benchmarks of the graph-sequence-model family (registered on import).

* ``minesweeper``, ``tolokers``: node classification on one graph (Platonov et al., 2023), split 0
  of the official 10; :func:`heterophilous_task` builds any split.
* ``pattern-small`` (2,000 / 500 / 500 graphs), ``cluster-small`` (2,000 / 250 / 250): the
  Benchmarking-GNNs SBM tasks regenerated offline, class-weighted cross-entropy, class-balanced
  accuracy (``acc_sbm``).
* ``graph-<task>`` for the six algorithmic tasks of :mod:`graphseq.datasets.graph_tasks`
  (1,000 / 500 / 500 graphs), each graph with a Laplacian positional encoding ``lap_pe``.

Every loader applies the GSM tokenizers (:class:`~graphseq.nn.gsm.HACTokenizer`, a
:class:`~graphseq.nn.gsm.KHopTokenizer` and the node orders) so that ``gsm`` / ``gsm++`` and the
anchors (``gps``, ``gat``, ``sage``, ``gin``) run on the same data. Node-level tasks over many
graphs (PATTERN, CLUSTER, node degree) are mini-batched like graph-level tasks
(``Task.level="graph"``) while the models predict per node (``InputSpec.level="node"``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
import torch_geometric.transforms as T
from torch import Tensor, nn

from graphseq.models import InputSpec
from graphseq.nn.gsm import HACTokenizer, KHopTokenizer, NodeTokenizer
from graphseq.train.benchmarks import Benchmark, Task, register_benchmark
from graphseq.train.metrics import make_evaluator

__all__ = [
    "LAP_PE_DIM",
    "gsm_transform",
    "heterophilous_task",
    "sbm_task",
    "weighted_cross_entropy",
]


def gsm_transform(
    k: int = 2,
    levels: int = 16,
    orders: tuple[str, ...] = ("degree",),
    hac_on: str | tuple[str, ...] = "x",
) -> T.Compose:
    """HAC (cosine on the attributes ``hac_on``) + k-hop(``k``) + the given node orders, as one
    PyG transform."""
    return T.Compose(
        [HACTokenizer(hac_on, levels=levels), KHopTokenizer(k),
         *(NodeTokenizer(o) for o in orders)]
    )  # fmt: skip


#: Width of the Laplacian positional encoding the algorithmic tasks attach (``lap_pe``).
LAP_PE_DIM = 6


def weighted_cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy with class weights ``1 - (class frequency in the batch)`` (GraphGPS's
    ``weighted_cross_entropy`` for PATTERN / CLUSTER; absent classes get no weight). A batch
    of a single class would give that class weight 0 and the loss 0 / 0; it takes the plain
    cross-entropy instead (GraphGPS's returns NaN there)."""
    y = y.reshape(-1).long()
    counts = torch.bincount(y, minlength=out.size(-1)).to(out.dtype)
    if int((counts > 0).sum()) < 2:
        return nn.functional.cross_entropy(out, y)
    weight = torch.where(counts > 0, (y.numel() - counts) / max(y.numel(), 1), counts)
    return nn.functional.cross_entropy(out, y, weight=weight)


# --------------------------------------------------------------------------------------------
# heterophilous graphs


def heterophilous_task(
    name: str, split: int = 0, data_dir: Any = None, transform: Callable | None = None
) -> Task:
    """Node classification task ``name`` (``"minesweeper"``/``"tolokers"``) on split ``split``."""
    from graphseq.datasets.heterophilous import load_heterophilous, split_masks

    graph = load_heterophilous(name, data_dir)
    if transform is None:
        transform = gsm_transform(k=2)
    graph = transform(graph)
    splits = split_masks(graph, split)
    return Task(
        f"{name}" if split == 0 else f"{name}-split{split}",
        "node", "binary classification", "rocauc",
        InputSpec("node", 1, "dense", graph.x.size(1), None), splits, make_evaluator("rocauc"),
        graph=graph,
        info={"sizes": {k: len(v) for k, v in splits.items()}, "split": split,
              "source": "heterophilous-graphs npz (Platonov et al., 2023), made undirected"},
    )  # fmt: skip


def _load_heterophilous(name: str) -> Callable[[Any, Any], Task]:
    def load(data_dir, cache_dir) -> Task:
        return heterophilous_task(name, 0, data_dir)

    return load


_HETERO = {"epochs": 200, "lr": 1e-3, "seeds": 1,
           "model": {"hidden": 64, "layers": 3, "dropout": 0.2}}  # fmt: skip
for _name, _desc in (
    ("minesweeper", "10,000-cell Minesweeper grid, is the cell a mine? (split 0 of 10)"),
    ("tolokers", "11,758 Toloka workers, banned or not (split 0 of 10)"),
):
    register_benchmark(
        Benchmark(_name, _desc, "node", "binary classification", "rocauc",
                  _load_heterophilous(_name), dict(_HETERO),
                  data=f"$GRAPHSEQ_DATA/heterophilous/{_name}.npz", node_features="dense",
                  tokenized=True)
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# SBM benchmarks


def sbm_task(
    name: str,
    sizes: tuple[int, int, int],
    seed: int = 0,
    transform: Callable | None = None,
) -> Task:
    """PATTERN or CLUSTER with ``sizes`` = (train, valid, test) graphs, tokenized."""
    from graphseq.datasets.sbm import sbm_splits

    if len(sizes) == 3 and isinstance(sizes[0], int) and sizes[0] < 1:
        raise ValueError(f"sbm_task: sizes[0] (training graphs) must be >= 1, got {sizes!r}")

    raw = sbm_splits(name, sizes, seed)
    if transform is None:
        transform = gsm_transform(k=1)
    splits = {k: [transform(g) for g in v] for k, v in raw.items()}
    classes = 2 if name == "pattern" else 6
    node_dim = splits["train"][0].x.size(1)
    return Task(
        f"{name}-small", "graph", "multiclass classification", "acc_sbm",
        InputSpec("node", classes, "dense", node_dim, None), splits,
        make_evaluator("acc_sbm"),
        info={"sizes": {k: len(v) for k, v in splits.items()}, "seed": seed,
              "source": "Benchmarking-GNNs SBM generator parameters, regenerated"},
        loss=weighted_cross_entropy,
    )  # fmt: skip


_SBM = {"epochs": 20, "batch_size": 32, "lr": 5e-4, "weight_decay": 1e-5, "seeds": 3,
        "schedule": "cosine", "warmup_epochs": 2,
        "model": {"hidden": 48, "layers": 4}}  # fmt: skip
register_benchmark(
    Benchmark("pattern-small", "PATTERN (SBM), 2,000/500/500 graphs, regenerated", "graph",
              "multiclass classification", "acc_sbm",
              lambda data_dir, cache_dir: sbm_task("pattern", (2000, 500, 500)), dict(_SBM),
              data="generated", node_features="dense", tokenized=True,
              prediction_level="node")
)  # fmt: skip
register_benchmark(
    Benchmark("cluster-small", "CLUSTER (SBM), 2,000/250/250 graphs, regenerated", "graph",
              "multiclass classification", "acc_sbm",
              lambda data_dir, cache_dir: sbm_task("cluster", (2000, 250, 250)), dict(_SBM),
              data="generated", node_features="dense", tokenized=True,
              prediction_level="node")
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# algorithmic graph tasks


def graph_tasks_task(
    task: str,
    sizes: tuple[int, int, int] = (1000, 500, 500),
    seed: int = 0,
    transform: Callable | None = None,
    lap_pe: int = LAP_PE_DIM,
    **generator_args: Any,
) -> Task:
    """One of the six algorithmic tasks, tokenized; split ``j`` is drawn with seed
    ``3 * seed + j + 1`` (:func:`graphseq.datasets.graph_tasks.graph_task`).

    With ``lap_pe > 0`` every graph also carries ``lap_pe``: eigenvectors 2 .. ``lap_pe + 1``
    by ascending eigenvalue of its symmetric-normalised Laplacian (PyG's
    :class:`~torch_geometric.transforms.AddLaplacianEigenvectorPE` convention: only the first
    is dropped, so a disconnected graph keeps some of its zero-eigenvalue vectors), the
    positional encoding of the GSM paper's node-token rows. The eigenvectors come from a dense
    ``eigh`` at every size and their random signs from a torch generator seeded by ``seed``, so
    the same arguments give the same encoding. The generators' graphs have at least 7 nodes,
    so ``lap_pe <= 6`` always fits."""
    from graphseq.datasets.graph_tasks import MIN_NODES, exact_match, graph_task, task_info

    info = task_info(task, **{k: v for k, v in generator_args.items()
                              if k in ("max_degree", "num_colours")})  # fmt: skip
    if isinstance(lap_pe, bool) or not isinstance(lap_pe, int) or not 0 <= lap_pe < MIN_NODES:
        raise ValueError(
            f"graph_tasks_task: lap_pe must be an int in [0, {MIN_NODES}), got {lap_pe!r}"
        )
    if transform is None:
        transform = gsm_transform(k=2, orders=("degree", "random", "bfs"))
    if lap_pe:
        add_pe = T.AddLaplacianEigenvectorPE(lap_pe, "lap_pe", is_undirected=True)
        # PyG switches to scipy's eigsh from 100 nodes, whose start vector is unseeded: keep
        # the dense solver (the generated graphs are small) so the encoding is reproducible
        add_pe.SPARSE_THRESHOLD = sys.maxsize
        transform = T.Compose([transform, add_pe])
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)  # the eigenvectors' random signs
        splits = {
            name: [transform(g) for g in graph_task(task, int(n), 3 * seed + j + 1,
                                                    **generator_args)]
            for j, (name, n) in enumerate(zip(("train", "valid", "test"), sizes, strict=True))
        }  # fmt: skip
    evaluate = exact_match if task == "colour_counting" else make_evaluator(info["metric"])
    return Task(
        f"graph-{task}", "graph", info["task_type"], info["metric"],
        InputSpec(info["level"], info["out_dim"], "dense", info["node_dim"], None), splits,
        evaluate,
        info={"sizes": {k: len(v) for k, v in splits.items()}, "seed": seed,
              "source": "graphseq.datasets.graph_tasks", "generator_args": generator_args,
              "lap_pe": lap_pe},
    )  # fmt: skip


def _load_graph_task(task: str) -> Callable[[Any, Any], Task]:
    def load(data_dir, cache_dir) -> Task:
        return graph_tasks_task(task)

    return load


_TASKS = {"epochs": 50, "batch_size": 32, "lr": 1e-3, "seeds": 3,
          "model": {"hidden": 64, "layers": 2}}  # fmt: skip
for _task, _kind in (
    ("node_degree", "node level, accuracy"),
    ("cycle_check", "graph level, accuracy"),
    ("triangle_counting", "graph level, RMSE"),
    ("connectivity", "query pair, accuracy"),
    ("colour_counting", "count vector, exact-match accuracy"),
    ("shortest_path", "query pair hop distance, RMSE"),
):
    from graphseq.datasets.graph_tasks import task_info as _task_info

    _info = _task_info(_task)
    register_benchmark(
        Benchmark(f"graph-{_task}", f"GSM algorithmic task {_task} ({_kind}), 1,000/500/500 graphs",
                  "graph", _info["task_type"], _info["metric"], _load_graph_task(_task),
                  dict(_TASKS), data="generated", node_features="dense", tokenized=True,
                  prediction_level=_info["level"])
    )  # fmt: skip
