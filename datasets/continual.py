"""Task streams for continual learning: Permuted-/Split-MNIST, digits streams, graph tasks.

Every stream is a list of :class:`ContinualTask`; task ``t`` is meant for output head ``t``
and its labels are local to the head (``0..num_classes-1``). Splits have ``len()`` and
``batch(index) -> (inputs, labels)``, the interface of :func:`graphseq.continual.train_continual`.

* :func:`permuted_mnist`: Permuted-MNIST (task 0 unpermuted, then fixed random pixel
  permutations), 10 classes per task, the standard 60k/10k split.
* :func:`split_mnist`: Split-MNIST, tasks {0,1}, {2,3}, ..., {8,9}, binary labels.
* :func:`permuted_digits`, :func:`split_digits`: the same on scikit-learn's 8x8 digits
  (1,797 images shipped with scikit-learn; stratified 70/30 split, ``random_state=0``): fast
  streams for tests.
* :func:`graph_tasks`: synthetic graph classification tasks for GNN targets; task ``k`` asks
  whether a random graph has at least a threshold number of edges between node types
  ``a_k`` and ``b_k`` (the threshold that splits the task's training graphs most evenly), so
  it needs one round of message passing.

MNIST is read from ``mnist.npz`` (keys ``x_train``, ``y_train``, ``x_test``, ``y_test``, as
distributed by Keras/TensorFlow: https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz)
in ``data_dir``, else ``$GRAPHSEQ_DATA``, else ``~/.cache/graphseq/data``. Nothing downloads;
a missing file raises :class:`~graphseq.datasets.molecules.MissingDataError` naming where it
looked.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._checks import check_seed, load_npz
from .molecules import DATA_ENV, MissingDataError, default_data_dir

__all__ = [
    "ContinualTask",
    "GraphSplit",
    "TensorSplit",
    "graph_tasks",
    "load_mnist",
    "permuted_digits",
    "permuted_mnist",
    "split_digits",
    "split_mnist",
    "validation_stream",
]


class TensorSplit:
    """Examples stored as tensors, with an optional fixed feature permutation.

    Args:
        x: ``[n, F]`` float inputs (shared between tasks; not copied).
        y: ``[n]`` int64 labels.
        permutation: ``[F]`` feature order applied on every batch, or ``None``.
    """

    def __init__(self, x: Tensor, y: Tensor, permutation: Tensor | None = None) -> None:
        if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"x must be [n, F] and y [n], got {list(x.shape)} and {list(y.shape)}")
        if permutation is not None and (
            permutation.dim() != 1 or permutation.numel() != x.shape[1]
        ):
            raise ValueError(f"permutation must have {x.shape[1]} entries")
        self.x, self.y, self.permutation = x, y, permutation

    def __len__(self) -> int:
        return self.y.shape[0]

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        x = self.x[index]
        if self.permutation is not None:
            x = x[:, self.permutation]
        return x, self.y[index]


class GraphSplit:
    """PyG ``Data`` graphs; ``batch`` collates them with :class:`torch_geometric.data.Batch`."""

    def __init__(self, graphs: list, y: Tensor) -> None:
        if len(graphs) != y.shape[0]:
            raise ValueError(f"{len(graphs)} graphs but {y.shape[0]} labels")
        self.graphs, self.y = graphs, y

    def __len__(self) -> int:
        return len(self.graphs)

    def batch(self, index: Tensor):
        from torch_geometric.data import Batch

        return Batch.from_data_list([self.graphs[i] for i in index.tolist()]), self.y[index]


@dataclass(frozen=True)
class ContinualTask:
    """One task of a stream.

    Attributes:
        name: e.g. ``"split-mnist/2-3"``.
        classes: the original class labels behind local labels ``0, 1, ...``.
        train, test: splits (:class:`TensorSplit` or :class:`GraphSplit`).
    """

    name: str
    classes: tuple[int, ...]
    train: TensorSplit | GraphSplit
    test: TensorSplit | GraphSplit

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def validation_stream(stream: list[ContinualTask], fraction: float = 1 / 6) -> list[ContinualTask]:
    """The stream with each task's test split replaced by a held-out tail of its training split.

    For choosing hyper-parameters without looking at the test set: task ``t`` trains on the
    first ``n - k`` training examples and is evaluated on the last ``k = round(fraction * n)``
    (the MNIST training sets are in no particular class order; ``1/6`` holds out 10,000 of
    Permuted-MNIST's 60,000). Only :class:`TensorSplit` tasks; the inputs are views, not copies.

    Raises:
        ValueError: ``fraction`` not in ``(0, 1)``, or a task too small to leave both parts
            non-empty.
        TypeError: a task whose training split is not a :class:`TensorSplit`.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"fraction must be a float, got {type(fraction).__name__}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    out = []
    for task in stream:
        tr = task.train
        if not isinstance(tr, TensorSplit):
            raise TypeError(f"task {task.name!r}: validation_stream needs TensorSplit tasks")
        n = len(tr)
        k = round(fraction * n)
        if not 0 < k < n:
            raise ValueError(
                f"task {task.name!r}: fraction {fraction} of {n} training examples leaves an "
                "empty part"
            )
        fit = TensorSplit(tr.x[: n - k], tr.y[: n - k], tr.permutation)
        held = TensorSplit(tr.x[n - k :], tr.y[n - k :], tr.permutation)
        out.append(ContinualTask(task.name, task.classes, fit, held))
    return out


def _check_count(name: str, value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ValueError(f"{name} must be an int in [1, {maximum}], got {value!r}")
    return value


def load_mnist(data_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Read ``mnist.npz`` from ``data_dir`` (else ``$GRAPHSEQ_DATA``, else
    ``~/.cache/graphseq/data``).

    Raises:
        MissingDataError: the file is not there; the message names the path and how to get it.
    """
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    path = root / "mnist.npz" if root.suffix != ".npz" else root
    if not path.is_file():
        raise MissingDataError(
            f"MNIST not found: looked for {path}. Put mnist.npz (keys x_train, y_train, x_test, "
            "y_test; e.g. https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz) "
            f"there, or pass data_dir=... / set ${DATA_ENV} to the folder holding it. "
            "Nothing is downloaded."
        )
    return load_npz("load_mnist", path, ("x_train", "y_train", "x_test", "y_test"))


def _images(x: np.ndarray, padding: int) -> Tensor:
    t = torch.from_numpy(x.astype(np.float32) / 255.0)
    if padding:
        t = torch.nn.functional.pad(t, (padding,) * 4)
    return t.reshape(t.shape[0], -1)


def _permuted(prefix, x_tr, y_tr, x_te, y_te, num_tasks, seed, classes) -> list[ContinualTask]:
    rng = np.random.default_rng(seed)
    f = x_tr.shape[1]
    tasks = []
    for t in range(num_tasks):
        perm = None if t == 0 else torch.from_numpy(rng.permutation(f))
        tasks.append(
            ContinualTask(
                f"{prefix}/{t}",
                classes,
                TensorSplit(x_tr, y_tr, perm),
                TensorSplit(x_te, y_te, perm),
            )
        )
    return tasks


def _split(prefix, x_tr, y_tr, x_te, y_te, num_tasks) -> list[ContinualTask]:
    tasks = []
    for t in range(num_tasks):
        a, b = 2 * t, 2 * t + 1
        parts = []
        for x, y in ((x_tr, y_tr), (x_te, y_te)):
            keep = (y == a) | (y == b)
            parts.append(TensorSplit(x[keep], (y[keep] == b).long()))
        tasks.append(ContinualTask(f"{prefix}/{a}-{b}", (a, b), parts[0], parts[1]))
    return tasks


def permuted_mnist(
    num_tasks: int = 10,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    padding: int = 0,
) -> list[ContinualTask]:
    """Permuted-MNIST: task 0 is plain MNIST, task ``t > 0`` a fixed random pixel permutation
    (``numpy.random.default_rng(seed)``). Images scaled to ``[0, 1]``, zero-padded by
    ``padding`` pixels per side, flattened to ``(28 + 2 padding)**2`` features."""
    num_tasks = _check_count("num_tasks", num_tasks, 1000)
    check_seed("permuted_mnist", seed)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    d = load_mnist(data_dir)
    x_tr, x_te = _images(d["x_train"], padding), _images(d["x_test"], padding)
    y_tr, y_te = (torch.from_numpy(d[k].astype(np.int64)) for k in ("y_train", "y_test"))
    return _permuted("permuted-mnist", x_tr, y_tr, x_te, y_te, num_tasks, seed, tuple(range(10)))


def split_mnist(
    num_tasks: int = 5, data_dir: str | os.PathLike | None = None
) -> list[ContinualTask]:
    """Split-MNIST: task ``t`` separates digits ``2t`` (label 0) and ``2t + 1`` (label 1)."""
    num_tasks = _check_count("num_tasks", num_tasks, 5)
    d = load_mnist(data_dir)
    x_tr, x_te = _images(d["x_train"], 0), _images(d["x_test"], 0)
    y_tr, y_te = (torch.from_numpy(d[k].astype(np.int64)) for k in ("y_train", "y_test"))
    return _split("split-mnist", x_tr, y_tr, x_te, y_te, num_tasks)


def _digits():
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError(
            "the digits task streams need scikit-learn (its bundled digits dataset): "
            "pip install 'graphseq[continual]'"
        ) from err

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x / 16.0, y, test_size=0.3, stratify=y, random_state=0
    )
    f = torch.float32
    return (
        torch.tensor(x_tr, dtype=f),
        torch.tensor(y_tr, dtype=torch.long),
        torch.tensor(x_te, dtype=f),
        torch.tensor(y_te, dtype=torch.long),
    )


def permuted_digits(num_tasks: int = 10, seed: int = 0) -> list[ContinualTask]:
    """Permuted-Digits: scikit-learn's 8x8 digits (64 features, 1,257 train / 540 test),
    task 0 unpermuted, then fixed random feature permutations."""
    num_tasks = _check_count("num_tasks", num_tasks, 1000)
    check_seed("permuted_digits", seed)
    return _permuted("permuted-digits", *_digits(), num_tasks, seed, tuple(range(10)))


def split_digits(num_tasks: int = 5) -> list[ContinualTask]:
    """Split-Digits: scikit-learn's 8x8 digits in pairs {0,1}, ..., {8,9}."""
    num_tasks = _check_count("num_tasks", num_tasks, 5)
    return _split("split-digits", *_digits(), num_tasks)


def _random_graph(rng: np.random.Generator, num_types: int, n_min: int, n_max: int, p: float):
    n = int(rng.integers(n_min, n_max + 1))
    types = rng.integers(0, num_types, size=n)
    iu = np.triu_indices(n, k=1)
    keep = rng.random(iu[0].shape[0]) < p
    src, dst = iu[0][keep], iu[1][keep]
    return types, src, dst


def graph_tasks(
    num_tasks: int = 4,
    num_train: int = 600,
    num_test: int = 200,
    num_types: int = 4,
    seed: int = 0,
) -> list[ContinualTask]:
    """Synthetic graph classification tasks for a GNN target.

    Every graph has 8-16 nodes, each edge present with probability 0.25 (undirected, stored
    in both directions) and one-hot node types. Task ``k`` uses the ``k``-th pair of types
    ``(a, b)`` with ``a <= b`` (in ``itertools.combinations_with_replacement`` order) and
    labels a graph 1 if it has at least ``c_k`` ``a``-``b`` edges, where ``c_k`` is the
    threshold that splits the task's training graphs most evenly (the smallest such count on a
    tie). A plain ``>= median`` would label every graph 1 whenever half of the training graphs
    have no ``a``-``b`` edge at all, as happens for same-type pairs. Each task draws its own
    graphs from ``seed`` and ``k``.
    """
    from torch_geometric.data import Data

    num_types = _check_count("num_types", num_types, 10**4)
    pairs = list(itertools.combinations_with_replacement(range(num_types), 2))
    num_tasks = _check_count("num_tasks", num_tasks, len(pairs))
    for name, v in (("num_train", num_train), ("num_test", num_test)):
        _check_count(name, v, 10**7)
    check_seed("graph_tasks", seed)
    tasks = []
    for k in range(num_tasks):
        a, b = pairs[k]
        rng = np.random.default_rng([seed, k])
        graphs, counts = [], []
        for _ in range(num_train + num_test):
            types, src, dst = _random_graph(rng, num_types, 8, 16, 0.25)
            ta, tb = types[src], types[dst]
            counts.append(int((((ta == a) & (tb == b)) | ((ta == b) & (tb == a))).sum()))
            edge_index = torch.from_numpy(np.stack([np.r_[src, dst], np.r_[dst, src]])).long()
            x = torch.nn.functional.one_hot(torch.from_numpy(types).long(), num_types).float()
            graphs.append(Data(x=x, edge_index=edge_index))
        counts_t = torch.tensor(counts)
        train_counts = counts_t[:num_train]
        candidates = train_counts.unique()  # sorted; argmin keeps the smallest on a tie
        # |positives - num_train / 2| in integers: in floats, |0.8 - 0.5| > |0.2 - 0.5| and the
        # larger of two equally even thresholds would win
        positive = (train_counts[None, :] >= candidates[:, None]).sum(1)
        threshold = candidates[(2 * positive - num_train).abs().argmin()]
        y = (counts_t >= threshold).long()
        tasks.append(
            ContinualTask(
                f"graph-edges/{a}-{b}",
                (0, 1),
                GraphSplit(graphs[:num_train], y[:num_train]),
                GraphSplit(graphs[num_train:], y[num_train:]),
            )
        )
    return tasks
