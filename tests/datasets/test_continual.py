"""graphseq.datasets.continual: task streams (digits always; MNIST when the file is there)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from graphseq.datasets.continual import (
    graph_tasks,
    load_mnist,
    permuted_digits,
    permuted_mnist,
    split_digits,
    split_mnist,
    validation_stream,
)
from graphseq.datasets.molecules import MissingDataError

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("GRAPHSEQ_TEST_DATA", REPO.parent / "shared" / "data"))
needs_mnist = pytest.mark.skipif(
    not (SHARED / "mnist.npz").is_file(),
    reason=f"mnist.npz not found at {SHARED} (set GRAPHSEQ_TEST_DATA)",
)


def test_permuted_digits():
    stream = permuted_digits(3, seed=1)
    assert [t.name for t in stream] == [
        "permuted-digits/0",
        "permuted-digits/1",
        "permuted-digits/2",
    ]
    assert len(stream[0].train) == 1257 and len(stream[0].test) == 540
    idx = torch.arange(5)
    x0, y0 = stream[0].train.batch(idx)
    x1, y1 = stream[1].train.batch(idx)
    assert x0.shape == (5, 64) and torch.equal(y0, y1)
    assert stream[0].train.permutation is None
    perm = stream[1].train.permutation
    assert torch.equal(x1, x0[:, perm]) and not torch.equal(perm, torch.arange(64))
    assert torch.equal(stream[1].test.permutation, perm)  # the same permutation for test
    assert not torch.equal(perm, stream[2].train.permutation)
    assert 0 <= x0.min() and x0.max() <= 1
    assert stream[0].num_classes == 10


def test_split_digits_labels_are_local():
    stream = split_digits(5)
    assert [t.classes for t in stream] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    total = sum(len(t.train) + len(t.test) for t in stream)
    assert total == 1797
    for t in stream:
        _, y = t.train.batch(torch.arange(len(t.train)))
        assert set(y.tolist()) == {0, 1}


def test_stream_argument_checks():
    with pytest.raises(ValueError, match="num_tasks"):
        split_digits(6)
    with pytest.raises(ValueError, match="num_tasks"):
        permuted_digits(0)


def test_missing_mnist_names_the_place(tmp_path):
    with pytest.raises(MissingDataError, match=str(tmp_path / "mnist.npz")):
        load_mnist(tmp_path)
    with pytest.raises(MissingDataError, match="GRAPHSEQ_DATA"):
        permuted_mnist(2, data_dir=tmp_path)
    bad = tmp_path / "mnist.npz"
    np.savez(bad, x_train=np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="lacks"):
        load_mnist(tmp_path)


def test_graph_tasks():
    stream = graph_tasks(3, num_train=80, num_test=20, seed=0)
    assert [t.name for t in stream] == ["graph-edges/0-0", "graph-edges/0-1", "graph-edges/0-2"]
    batch, y = stream[1].train.batch(torch.arange(8))
    assert batch.num_graphs == 8 and batch.x.shape[1] == 4 and y.shape == (8,)
    # labels count a-b edges against the training median: both classes occur
    _, ytr = stream[1].train.batch(torch.arange(80))
    assert 0.2 < ytr.float().mean() < 0.8
    # undirected: every edge is stored in both directions
    e = batch.edge_index
    assert set(map(tuple, e.t().tolist())) == set(map(tuple, e.flip(0).t().tolist()))
    again = graph_tasks(3, num_train=80, num_test=20, seed=0)
    assert torch.equal(again[2].test.y, stream[2].test.y)
    with pytest.raises(ValueError, match="num_tasks"):
        graph_tasks(11)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="num_types must be an int"):
            graph_tasks(1, num_types=bad)


def test_graph_tasks_are_never_constant():
    # With the default arguments, seed 0, the same-type pairs (0-0, 1-1, 2-2) have no a-b edge
    # in half of the training graphs: a ">= median" threshold labelled every graph 1.
    for task in graph_tasks(10, seed=0):
        for split in (task.train, task.test):
            assert 0.3 < split.y.float().mean() < 0.7, task.name
    for task in graph_tasks(4, num_train=200, num_test=100, seed=2):
        assert 0.3 < task.train.y.float().mean() < 0.7, task.name


def test_graph_tasks_threshold_ties_keep_the_smallest_count():
    # seed 38, 10 training graphs: thresholds 1 (8 of 10 positive) and 2 (2 of 10) split them
    # equally evenly; the docstring promises the smaller one (float |p - 0.5| picked 2)
    for seed in (38, 7, 22):
        for task in graph_tasks(3, num_train=10 if seed == 38 else 20, num_test=1, seed=seed):
            a, b = map(int, task.name.split("/")[1].split("-"))
            counts = []
            for g in task.train.graphs:
                t = g.x.argmax(1)
                s, d = g.edge_index
                hit = ((t[s] == a) & (t[d] == b)) | ((t[s] == b) & (t[d] == a))
                counts.append(int(hit.sum()) // 2)
            counts = torch.tensor(counts)
            n = len(counts)
            gap = {int(c): abs(2 * int((counts >= c).sum()) - n) for c in counts.unique()}
            best = min(c for c in gap if gap[c] == min(gap.values()))
            assert torch.equal(task.train.y, (counts >= best).long()), (seed, task.name)


def _fake_mnist(path: Path, n_train: int = 40, n_test: int = 20) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        path / "mnist.npz",
        x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        y_train=(np.arange(n_train) % 10).astype(np.uint8),
        x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        y_test=(np.arange(n_test) % 10).astype(np.uint8),
    )


def test_mnist_streams_from_a_small_file(tmp_path):
    _fake_mnist(tmp_path)
    pm = permuted_mnist(3, data_dir=tmp_path)
    x0, y0 = pm[0].test.batch(torch.arange(20))
    x2, _ = pm[2].test.batch(torch.arange(20))
    raw = np.load(tmp_path / "mnist.npz")["x_test"].reshape(20, -1) / 255.0
    torch.testing.assert_close(x0, torch.tensor(raw, dtype=torch.float32))
    assert torch.equal(x2, x0[:, pm[2].test.permutation])
    assert torch.equal(y0, torch.arange(20) % 10)
    padded = permuted_mnist(1, data_dir=tmp_path, padding=2)
    xp, _ = padded[0].train.batch(torch.arange(2))
    assert xp.shape == (2, 32 * 32) and xp.view(2, 32, 32)[:, :2].abs().sum() == 0
    sm = split_mnist(5, data_dir=tmp_path / "mnist.npz")  # a file path works too
    assert [len(t.train) for t in sm] == [8] * 5 and [len(t.test) for t in sm] == [4] * 5
    _, y = sm[3].train.batch(torch.arange(8))
    assert y.tolist() == [0, 1] * 4  # digits 6, 7 -> local labels 0, 1
    with pytest.raises(ValueError, match="padding"):
        permuted_mnist(1, data_dir=tmp_path, padding=-1)


@pytest.mark.slow
@needs_mnist
def test_mnist_streams():
    pm = permuted_mnist(3, data_dir=SHARED)
    assert len(pm[0].train) == 60000 and len(pm[0].test) == 10000
    x, _ = pm[2].test.batch(torch.arange(4))
    assert x.shape == (4, 784) and 0 <= x.min() and x.max() <= 1
    padded = permuted_mnist(1, data_dir=SHARED, padding=2)
    assert padded[0].train.batch(torch.arange(1))[0].shape == (1, 1024)
    sm = split_mnist(5, data_dir=SHARED)
    assert sum(len(t.test) for t in sm) == 10000
    assert sum(len(t.train) for t in sm) == 60000
    assert sm[4].classes == (8, 9)


def test_validation_stream_holds_out_the_tail_of_each_training_split():
    stream = permuted_digits(3)
    val = validation_stream(stream, 0.25)
    assert [t.name for t in val] == [t.name for t in stream]
    for task, held in zip(stream, val, strict=True):
        n = len(task.train)
        k = round(0.25 * n)
        assert len(held.train) == n - k and len(held.test) == k
        # same examples, same permutation; nothing of the test split is used
        idx = torch.arange(k)
        x, y = held.test.batch(idx)
        x_ref, y_ref = task.train.batch(idx + (n - k))
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
        x, y = held.train.batch(torch.arange(n - k))
        assert torch.equal(x, task.train.batch(torch.arange(n - k))[0])
        assert held.train.x.data_ptr() == task.train.x.data_ptr()  # a view, not a copy


def test_bad_seeds_are_named():
    with pytest.raises(ValueError, match="graph_tasks: seed must be >= 0"):
        graph_tasks(1, num_train=4, num_test=2, seed=-1)
    with pytest.raises(ValueError, match="permuted_digits: seed must be >= 0"):
        permuted_digits(2, seed=-1)
    with pytest.raises(TypeError, match="permuted_mnist: seed must be an int"):
        permuted_mnist(2, data_dir="/nonexistent", seed=0.5)  # checked before the file is read


def test_validation_stream_bad_input():
    stream = split_digits(2)
    with pytest.raises(ValueError, match="fraction must be in"):
        validation_stream(stream, 1.0)
    with pytest.raises(TypeError, match="fraction must be a float"):
        validation_stream(stream, "0.2")
    with pytest.raises(ValueError, match="leaves an empty part"):
        validation_stream(stream, 1e-6)
    with pytest.raises(TypeError, match="TensorSplit"):
        validation_stream(graph_tasks(1, num_train=8, num_test=4), 0.5)
