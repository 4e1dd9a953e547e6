"""Minesweeper and Tolokers (Platonov et al., "A critical look at the evaluation of GNNs under
heterophily", ICLR 2023) from the official ``.npz`` files, with their 10 train/valid/test splits.

The files (``minesweeper.npz``, ``tolokers.npz``, from ``yandex-research/heterophilous-graphs``)
hold ``node_features`` ``[N, F]``, ``node_labels`` ``[N]``, ``edges`` ``[E, 2]`` and
``train_masks`` / ``val_masks`` / ``test_masks`` ``[10, N]``. PyG's
``HeterophilousGraphDataset`` reads the same format but downloads into its own folder layout; this
loader reads a file in place and never touches the network. As in the published protocol the
graph is made undirected (each edge stored in both directions, duplicates merged).

The data directory is an argument; without one, ``$GRAPHSEQ_DATA`` is read (the folder holding
``heterophilous/``). A missing file raises ``FileNotFoundError`` naming where it looked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.utils import to_undirected

from ._checks import load_npz

__all__ = ["DATA_ENV", "HETEROPHILOUS", "load_heterophilous", "split_masks"]

DATA_ENV = "GRAPHSEQ_DATA"
HETEROPHILOUS = ("minesweeper", "tolokers")
_KEYS = ("node_features", "node_labels", "edges", "train_masks", "val_masks", "test_masks")


def _find(name: str, data_dir: str | Path | None) -> Path:
    if name not in HETEROPHILOUS:
        raise ValueError(f"load_heterophilous: name must be one of {HETEROPHILOUS}, got {name!r}")
    from .molecules import default_data_dir

    # --data-dir, else $GRAPHSEQ_DATA, else ~/.cache/graphseq/data (as the other loaders)
    roots = [Path(data_dir).expanduser() if data_dir is not None else default_data_dir()]
    tried = []
    for root in roots:
        for cand in (root / "heterophilous" / f"{name}.npz", root / f"{name}.npz"):
            tried.append(str(cand))
            if cand.is_file():
                return cand
    raise FileNotFoundError(
        f"load_heterophilous: {name}.npz not found (looked in: {', '.join(tried) or 'nowhere'}); "
        f"pass data_dir= or set ${DATA_ENV} to the folder holding heterophilous/{name}.npz "
        "(the file comes from github.com/yandex-research/heterophilous-graphs, data/)"
    )


def _check_arrays(path: Path, a: dict[str, np.ndarray]) -> None:
    """The layout of Platonov et al.'s files: features ``[N, F]``, edges ``[E, 2]`` in
    ``[0, N)``, binary labels ``[N]``, masks ``[10, N]``; anything else is named."""

    def bad(key: str, why: str) -> ValueError:
        return ValueError(f"load_heterophilous: {path}: {key} {why}")

    x = a["node_features"]
    if x.ndim != 2:
        raise bad("node_features", f"must be [N, F], got shape {x.shape}")
    n = x.shape[0]
    e = a["edges"]
    if e.ndim != 2 or e.shape[1] != 2 or not np.issubdtype(e.dtype, np.integer):
        raise bad("edges", f"must be integer [E, 2], got {e.dtype} shape {e.shape}")
    if e.size and (e.min() < 0 or e.max() >= n):
        raise bad("edges", f"must lie in [0, N = {n}), got values in [{e.min()}, {e.max()}]")
    y = a["node_labels"]
    if y.shape != (n,):
        raise bad("node_labels", f"must be [N] = [{n}], got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise bad("node_labels", f"must be binary (0/1), got values {np.unique(y)[:5].tolist()}")
    for key in ("train_masks", "val_masks", "test_masks"):
        m = a[key]
        if m.ndim != 2 or m.shape[1] != n:
            raise bad(key, f"must be [num_splits, N = {n}], got shape {m.shape}")


def load_heterophilous(name: str, data_dir: str | Path | None = None) -> Data:
    """The graph ``name`` as one PyG ``Data``.

    Returns:
        ``Data`` with ``x`` float ``[N, F]``, ``y`` float ``[N, 1]`` (binary labels),
        ``edge_index`` (undirected), and ``train_mask`` / ``val_mask`` / ``test_mask`` bool
        ``[N, 10]`` (one column per split).
    """
    path = _find(name, data_dir)
    arrays = load_npz("load_heterophilous", path, _KEYS)
    _check_arrays(path, arrays)
    n = arrays["node_features"].shape[0]
    edges = torch.from_numpy(arrays["edges"].astype(np.int64)).t().contiguous()
    data = Data(
        x=torch.from_numpy(arrays["node_features"].astype(np.float32)),
        y=torch.from_numpy(arrays["node_labels"].astype(np.float32)).view(-1, 1),
        edge_index=to_undirected(edges, num_nodes=n),
        train_mask=torch.from_numpy(arrays["train_masks"]).bool().t().contiguous(),
        val_mask=torch.from_numpy(arrays["val_masks"]).bool().t().contiguous(),
        test_mask=torch.from_numpy(arrays["test_masks"]).bool().t().contiguous(),
    )
    data.name = name
    return data


def split_masks(data: Data, split: int) -> dict[str, torch.Tensor]:
    """Node indices ``{"train", "valid", "test"}`` of split ``split`` (0..9)."""
    k = data.train_mask.size(1)
    if isinstance(split, bool) or not isinstance(split, int) or not 0 <= split < k:
        raise ValueError(f"split_masks: split must be an int in [0, {k}), got {split!r}")
    return {
        "train": data.train_mask[:, split].nonzero().view(-1),
        "valid": data.val_mask[:, split].nonzero().view(-1),
        "test": data.test_mask[:, split].nonzero().view(-1),
    }
