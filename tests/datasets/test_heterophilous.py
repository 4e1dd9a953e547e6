"""Minesweeper / Tolokers loader: the official npz files read in place, 10 splits, errors.

The files are read from ``$GRAPHSEQ_TEST_DATA``, else ``../shared/data`` beside the repository;
the tests that need them skip when they are absent.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.utils import is_undirected

from graphseq.datasets.heterophilous import load_heterophilous, split_masks

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("GRAPHSEQ_TEST_DATA", REPO.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(
    not (SHARED / "heterophilous" / "minesweeper.npz").is_file(),
    reason=f"heterophilous data not found under {SHARED}",
)


@needs_data
@pytest.mark.parametrize(
    "name, nodes, feats", [("minesweeper", 10_000, 7), ("tolokers", 11_758, 10)]
)
def test_load(name, nodes, feats):
    data = load_heterophilous(name, SHARED)
    assert data.x.shape == (nodes, feats) and data.y.shape == (nodes, 1)
    assert set(data.y.view(-1).tolist()) == {0.0, 1.0}
    assert is_undirected(data.edge_index, num_nodes=nodes)
    raw = np.load(SHARED / "heterophilous" / f"{name}.npz")
    e = np.sort(raw["edges"], axis=1)
    assert data.edge_index.size(1) == 2 * np.unique(e[:, 0] * nodes + e[:, 1]).size
    assert data.train_mask.shape == (nodes, 10)
    for k in range(10):
        s = split_masks(data, k)
        parts = [set(s[p].tolist()) for p in ("train", "valid", "test")]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert torch.equal(s["train"], torch.from_numpy(np.flatnonzero(raw["train_masks"][k])))


@needs_data
def test_bad_split():
    data = load_heterophilous("minesweeper", SHARED)
    with pytest.raises(ValueError, match="split"):
        split_masks(data, 10)


def test_missing_file_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("GRAPHSEQ_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_heterophilous("minesweeper", tmp_path)
    with pytest.raises(FileNotFoundError, match="GRAPHSEQ_DATA"):
        load_heterophilous("tolokers")
    with pytest.raises(ValueError, match="name"):
        load_heterophilous("roman-empire", tmp_path)


def test_default_folder_is_the_other_loaders_one(tmp_path, monkeypatch):
    """Without data_dir: $GRAPHSEQ_DATA, else ~/.cache/graphseq/data, as the molecule and
    MNIST loaders (the error names the folder it looked in)."""
    monkeypatch.delenv("GRAPHSEQ_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"\.cache/graphseq/data/heterophilous"):
        load_heterophilous("tolokers")


def test_env_variable_and_bad_file(tmp_path, monkeypatch):
    (tmp_path / "heterophilous").mkdir()
    np.savez(tmp_path / "heterophilous" / "minesweeper.npz", node_features=np.zeros((2, 1)))
    monkeypatch.setenv("GRAPHSEQ_DATA", str(tmp_path))
    with pytest.raises(
        ValueError, match=r"load_heterophilous: .*minesweeper\.npz lacks the arrays"
    ):
        load_heterophilous("minesweeper")


@pytest.mark.parametrize(
    "content, why",
    [
        (b"not an archive", "object arrays"),  # numpy reads an unknown format as a pickle
        (None, "File is not a zip file"),  # a truncated archive
        ("object", "object arrays"),
    ],
)
def test_a_damaged_file_is_named(content, why, tmp_path, monkeypatch):
    path = tmp_path / "heterophilous" / "minesweeper.npz"
    if content == "object":
        _npz(tmp_path, node_labels=np.array([0, 1, 0, 1, 0], dtype=object))
    elif content is None:
        _npz(tmp_path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        _npz(tmp_path)
        path.write_bytes(content)
    monkeypatch.setenv("GRAPHSEQ_DATA", str(tmp_path))
    with pytest.raises(
        ValueError, match=rf"load_heterophilous: cannot read .*minesweeper.npz.*{why}"
    ):
        load_heterophilous("minesweeper")


def _npz(path, **override):
    n = 5
    arrays = dict(
        node_features=np.zeros((n, 2)), node_labels=np.array([0, 1, 0, 1, 1]),
        edges=np.array([[0, 1], [1, 2], [3, 4]]), train_masks=np.ones((10, n), bool),
        val_masks=np.zeros((10, n), bool), test_masks=np.zeros((10, n), bool),
    )  # fmt: skip
    arrays.update(override)
    (path / "heterophilous").mkdir(exist_ok=True)
    np.savez(path / "heterophilous" / "minesweeper.npz", **arrays)


@pytest.mark.parametrize(
    "override, match",
    [
        ({"edges": np.array([[0, 1], [1, 9]])}, r"edges must lie in \[0, N = 5\)"),
        ({"edges": np.array([[0, -1]])}, "edges must lie"),
        ({"edges": np.zeros((3, 3), np.int64)}, r"edges must be integer \[E, 2\]"),
        ({"node_labels": np.array([0, 1, 0])}, r"node_labels must be \[N\] = \[5\]"),
        ({"node_labels": np.arange(5)}, "node_labels must be binary"),
        ({"train_masks": np.ones((5, 10), bool)}, r"train_masks must be \[num_splits, N = 5\]"),
        ({"node_features": np.zeros(5)}, r"node_features must be \[N, F\]"),
    ],
)
def test_malformed_arrays_are_named(tmp_path, override, match):
    _npz(tmp_path, **override)
    with pytest.raises(ValueError, match=match):
        load_heterophilous("minesweeper", tmp_path)
    _npz(tmp_path)  # the well-formed file loads
    assert load_heterophilous("minesweeper", tmp_path).num_nodes == 5


def test_data_dir_expands_the_home_folder(tmp_path, monkeypatch):
    # "~/data" works as it does for load_mnist and the molecule loaders
    (tmp_path / "data").mkdir()
    _npz(tmp_path / "data")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_heterophilous("minesweeper", "~/data").num_nodes == 5
