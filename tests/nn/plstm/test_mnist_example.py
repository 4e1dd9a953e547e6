"""examples/mnist.py: flag values the script cannot honour are refused, naming the flag."""

from __future__ import annotations

import numpy as np
import pytest


def test_mnist_example_refuses_what_it_cannot_honour(load_example, tmp_path, capsys):
    mod = load_example("mnist")
    data = tmp_path / "small.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x_train=rng.integers(0, 255, (20, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, 20, dtype=np.uint8),
             x_test=rng.integers(0, 255, (10, 28, 28), dtype=np.uint8),
             y_test=rng.integers(0, 10, 10, dtype=np.uint8))  # fmt: skip
    base = ["--data", str(data), "--epochs", "1", "--dim", "8", "--heads", "2",
            "--batch-size", "10", "--out", str(tmp_path / "run")]  # fmt: skip
    for argv, flag in ((["--train-size", "50"], "--train-size 50"),  # the file holds 20
                       (["--train-size", "20", "--shift", "-1"], "--shift")):  # fmt: skip
        with pytest.raises(SystemExit):
            mod.main([*base, *argv])
        assert flag in capsys.readouterr().err
    assert not (tmp_path / "run" / "mnist.json").exists()


def test_mnist_example_reads_the_data_directory(load_example, tmp_path, monkeypatch):
    """$GRAPHSEQ_DATA (README's data directory, where graphseq's own MNIST loader looks) was
    ignored: only the test suite's $GRAPHSEQ_TEST_DATA was read."""
    monkeypatch.setenv("GRAPHSEQ_DATA", str(tmp_path))
    monkeypatch.setenv("GRAPHSEQ_TEST_DATA", str(tmp_path / "elsewhere"))
    assert load_example("mnist").DEFAULT_DATA == tmp_path
    monkeypatch.delenv("GRAPHSEQ_DATA")
    assert load_example("mnist").DEFAULT_DATA == tmp_path / "elsewhere"
