"""graphseq.continual.metrics on hand-computed accuracy matrices."""

from __future__ import annotations

import math

import pytest

from graphseq.continual import (
    average_accuracy,
    backward_transfer,
    during_accuracy,
    forgetting,
    max_forgetting,
    summarize_matrix,
)

NAN = math.nan
# R[i][j]: accuracy on task j after training task i
R = [
    [0.90, NAN, NAN],
    [0.80, 0.95, NAN],
    [0.70, 0.85, 0.99],
]


def test_hand_computed_values():
    assert average_accuracy(R) == pytest.approx((0.70 + 0.85 + 0.99) / 3)
    assert during_accuracy(R) == pytest.approx((0.90 + 0.95 + 0.99) / 3)
    # Lopez-Paz BWT: ((0.70 - 0.90) + (0.85 - 0.95)) / 2
    assert backward_transfer(R) == pytest.approx(-0.15)
    assert forgetting(R) == pytest.approx(0.15)
    # Chaudhry: task 0 best 0.90 (rows 0-1) -> 0.20; task 1 best 0.95 -> 0.10
    assert max_forgetting(R) == pytest.approx(0.15)


def test_max_forgetting_differs_from_avalanche_forgetting():
    # task 0 improves after task 1 then drops: initial-minus-last 0.0, max-based 0.1
    r = [[0.8, NAN, NAN], [0.9, 0.9, NAN], [0.8, 0.9, 0.9]]
    assert forgetting(r) == pytest.approx(0.0)
    assert max_forgetting(r) == pytest.approx(0.05)
    assert backward_transfer(r) == pytest.approx(0.0)


def test_positive_backward_transfer():
    r = [[0.5, NAN], [0.7, 0.9]]
    assert backward_transfer(r) == pytest.approx(0.2)
    assert forgetting(r) == pytest.approx(-0.2)
    assert max_forgetting(r) == pytest.approx(-0.2)


def test_single_task_and_summary():
    assert math.isnan(backward_transfer([[0.5]]))
    assert math.isnan(max_forgetting([[0.5]]))
    s = summarize_matrix(R)
    assert set(s) == {"acc", "during", "bwt", "forgetting", "max_forgetting"}
    assert s["bwt"] == pytest.approx(-0.15)


def test_bad_matrices():
    with pytest.raises(ValueError, match="square"):
        average_accuracy([[0.1, 0.2]])
    with pytest.raises(ValueError, match="seen tasks"):
        average_accuracy([[0.1, NAN], [NAN, 0.2]])
    with pytest.raises(ValueError, match="square"):
        average_accuracy([])


def test_a_missing_diagonal_entry_is_refused():
    """R[j, j] (the accuracy right after learning task j) is a seen task: a NaN there is
    refused like any other seen entry, not averaged into a NaN or skipped by the metrics
    that read only the last row."""
    for bad in ([[NAN, NAN], [0.7, 0.9]], [[0.5, NAN], [0.7, NAN]]):
        for fn in (average_accuracy, during_accuracy, backward_transfer):
            with pytest.raises(ValueError, match="seen tasks"):
                fn(bad)
