"""Tests of the one backend rule every op shares (graphseq.kernels._backend)."""

from __future__ import annotations

import pytest
import torch

from graphseq.kernels import dag_scan, linear_scan
from graphseq.kernels._backend import HAS_TRITON, resolve_backend
from graphseq.kernels.dag_scan import reference as dag_reference
from graphseq.kernels.linear_scan import reference as linear_reference
from graphseq.testing import requires_triton

CPU = torch.device("cpu")


def test_argument_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("GRAPHSEQ_BACKEND", "reference")
    assert resolve_backend(None, CPU, op="op") == "reference"
    assert resolve_backend("torch", CPU, op="op") == "torch"
    monkeypatch.delenv("GRAPHSEQ_BACKEND")
    assert resolve_backend(None, CPU, op="op") == "torch"  # the CPU default


def test_environment_variable_reaches_the_op(monkeypatch):
    """GRAPHSEQ_BACKEND=reference makes a call without backend= run the loop reference."""
    calls = []
    real = linear_reference.linear_scan

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(linear_reference, "linear_scan", spy)
    monkeypatch.setenv("GRAPHSEQ_BACKEND", "reference")
    linear_scan(torch.rand(1, 4, 2), torch.rand(1, 4, 2))
    assert calls == [1]
    monkeypatch.delenv("GRAPHSEQ_BACKEND")
    linear_scan(torch.rand(1, 4, 2), torch.rand(1, 4, 2))
    assert calls == [1]


def test_a_bad_value_names_where_it_came_from(monkeypatch):
    with pytest.raises(ValueError, match=r"op: backend must be one of .* or None, got 'Torch'"):
        resolve_backend("Torch", CPU, op="op")
    monkeypatch.setenv("GRAPHSEQ_BACKEND", "Torch")
    with pytest.raises(ValueError, match=r"op: GRAPHSEQ_BACKEND must be one of .* got 'Torch'"):
        resolve_backend(None, CPU, op="op")


def test_triton_preference_from_the_environment_falls_back_where_there_is_no_kernel(
    monkeypatch,
):
    """An explicit backend='triton' for arguments without a kernel raises; the same value
    from GRAPHSEQ_BACKEND is a process-wide preference and runs the PyTorch path there."""
    with pytest.raises(ValueError, match="no Triton kernel"):
        resolve_backend("triton", CPU, op="op", triton_supported=False)
    monkeypatch.setenv("GRAPHSEQ_BACKEND", "triton")
    assert resolve_backend(None, CPU, op="op", triton_supported=False) == "torch"


@requires_triton
def test_triton_preference_runs_a_model_of_mixed_ops(monkeypatch):
    """With GRAPHSEQ_BACKEND=triton an op that has a kernel (linear_scan) and one that has
    none (dag_scan) both run and agree with their references."""
    monkeypatch.setenv("GRAPHSEQ_BACKEND", "triton")
    a, b = torch.rand(1, 5, 3), torch.randn(1, 5, 3)
    h, _ = linear_scan(a, b)
    torch.testing.assert_close(h, linear_reference.linear_scan(a, b)[0])
    # a chain of three states with one head: 0 -> 1 -> 2
    edge_index = torch.tensor([[0, 1], [1, 2]])
    x, w = torch.randn(3, 1, 2), torch.rand(2, 1)
    torch.testing.assert_close(dag_scan(x, w, edge_index), dag_reference.dag_scan(x, w, edge_index))


def test_triton_environment_without_triton_names_the_variable(monkeypatch):
    if HAS_TRITON:
        monkeypatch.setattr("graphseq.kernels._backend.HAS_TRITON", False)
    monkeypatch.setenv("GRAPHSEQ_BACKEND", "triton")
    with pytest.raises(ValueError, match=r"op: GRAPHSEQ_BACKEND='triton' needs the 'triton'"):
        resolve_backend(None, CPU, op="op")


def test_fast_backends_report_triton_as_skipped_where_it_cannot_run(monkeypatch):
    """Without Triton the triton cases of every FAST_BACKENDS parametrisation must show up as
    skipped, not silently disappear from the run (pip install -e .[dev] has no triton)."""
    import importlib

    import graphseq.testing as testing

    monkeypatch.setattr("graphseq.kernels._backend.HAS_TRITON", False)
    try:
        reloaded = importlib.reload(testing)
        params = {getattr(p, "values", (p,))[0]: p for p in reloaded.FAST_BACKENDS}
        assert set(params) == {"torch", "triton"}
        marks = getattr(params["triton"], "marks", ())
        assert any(m.name == "skipif" and m.args[0] for m in marks)
    finally:
        monkeypatch.undo()
        importlib.reload(testing)
