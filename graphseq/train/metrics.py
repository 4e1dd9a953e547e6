"""Evaluation metrics. OGB datasets are scored by ``ogb``'s own ``Evaluator``; the rest by the
same formulas here (RMSE and ROC-AUC averaged over tasks with labels, NaN = missing label).

A NaN prediction at a labelled entry (a diverged model) makes the score NaN, for every metric
and for the ``Evaluator`` too (where scikit-learn would raise), so the trainer treats the
epoch as unscored: it is never the best epoch."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["HIGHER_IS_BETTER", "accuracy", "accuracy_sbm", "make_evaluator", "rmse", "rocauc"]

HIGHER_IS_BETTER = {
    "rocauc": True, "acc": True, "acc_sbm": True, "ap": True, "rmse": False, "mae": False,
}  # fmt: skip


def _columns(name: str, y_true: Tensor, y_pred: Tensor) -> tuple[Tensor, Tensor]:
    """Both as float64 ``[N, T]``; like OGB's ``Evaluator``, other shapes are refused (a
    ``[N, 2]`` prediction for ``[N]`` labels would otherwise be scored on its first column)."""
    yt = y_true.double().reshape(len(y_true), -1)
    if len(y_pred) != len(y_true) or y_pred.numel() != y_true.numel():
        raise ValueError(
            f"{name}: y_pred must have the shape of y_true (one column per task), got y_true "
            f"{tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)}"
        )
    return yt, y_pred.double().reshape(yt.shape)


def rmse(y_true: Tensor, y_pred: Tensor) -> float:
    """Root mean squared error per task over labelled entries, averaged over tasks (as OGB)."""
    y_true, y_pred = _columns("rmse", y_true, y_pred)
    values = []
    for t in range(y_true.size(1)):
        ok = ~torch.isnan(y_true[:, t])
        if ok.any():
            values.append(((y_true[ok, t] - y_pred[ok, t]) ** 2).mean().sqrt().item())
    if not values:
        raise ValueError("rmse: no labelled entries")
    return sum(values) / len(values)


def _binary_auc(y: Tensor, s: Tensor) -> float:
    # Mann-Whitney U with average ranks for ties
    order = torch.argsort(s)
    s_sorted = s[order]
    ranks = torch.empty_like(s, dtype=torch.float64)
    _, inverse, counts = torch.unique_consecutive(s_sorted, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2  # 1-based average rank of each tie group
    ranks[order] = avg[inverse]
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def rocauc(y_true: Tensor, y_pred: Tensor) -> float:
    """ROC-AUC per task with both classes present, averaged over tasks (as OGB); NaN if a
    labelled entry's prediction is NaN (a ranking would place NaN silently). Labels other than
    0, 1 and NaN raise ``ValueError`` (they were thresholded at 0.5)."""
    y_true, y_pred = _columns("rocauc", y_true, y_pred)
    labels = y_true[~torch.isnan(y_true)]
    odd = labels[(labels != 0) & (labels != 1)]
    if odd.numel():
        raise ValueError(
            "rocauc: y_true must hold binary labels 0 / 1 (NaN = missing), as OGB's "
            f"Evaluator; got {sorted(set(odd.unique()[:5].tolist()))}"
        )
    values = []
    for t in range(y_true.size(1)):
        ok = ~torch.isnan(y_true[:, t])
        y = y_true[ok, t]
        if (y > 0.5).any() and (y <= 0.5).any():
            s = y_pred[ok, t]
            values.append(math.nan if torch.isnan(s).any() else _binary_auc(y, s))
    if not values:
        raise ValueError("rocauc: no task has both positive and negative labels")
    return sum(values) / len(values)


def _class_scores(name: str, y_true: Tensor, y_pred: Tensor) -> tuple[Tensor, Tensor]:
    """``y_true`` as ``[N]`` class ids and ``y_pred`` checked to be ``[N, C]`` scores, C >= 2:
    a single column (one binary logit, or class ids as OGB's ``acc`` takes them) or another
    number of rows would otherwise be argmax-ed into a silently wrong score."""
    y = y_true.reshape(-1).long()
    if y_pred.dim() != 2 or y_pred.size(0) != y.numel() or y_pred.size(1) < 2:
        raise ValueError(
            f"{name}: y_pred must be [N, C] class scores with C >= 2 for the N = {y.numel()} "
            f"labels (for one binary logit per row use 'rocauc', or output two scores), got "
            f"y_pred {tuple(y_pred.shape)}"
        )
    return y, y_pred


def accuracy(y_true: Tensor, y_pred: Tensor) -> float:
    """Multi-class accuracy: ``y_pred`` are ``[N, C]`` scores (C >= 2), ``y_true`` ``[N]`` class
    ids; other shapes raise ``ValueError``. NaN if any score is NaN (argmax would pick the NaN
    column: an all-NaN model scored the share of class 0)."""
    y, y_pred = _class_scores("accuracy", y_true, y_pred)
    if torch.isnan(y_pred).any():
        return math.nan
    return float((y_pred.argmax(-1) == y).double().mean())


def accuracy_sbm(y_true: Tensor, y_pred: Tensor) -> float:
    """Class-balanced accuracy: the mean over classes present in ``y_true`` of the fraction of
    that class predicted correctly (Benchmarking-GNNs' ``accuracy_SBM`` for PATTERN / CLUSTER,
    there reported in percent). ``y_pred`` are ``[N, C]`` scores (C >= 2), ``y_true`` ``[N]``
    ids; other shapes raise ``ValueError``. NaN if any score is NaN, as :func:`accuracy`."""
    y, y_pred = _class_scores("accuracy_sbm", y_true, y_pred)
    if torch.isnan(y_pred).any():
        return math.nan
    hit = (y_pred.argmax(-1) == y).double()
    classes = torch.unique(y)
    if classes.numel() == 0:
        raise ValueError("accuracy_sbm: no labels")
    return float(torch.stack([hit[y == c].mean() for c in classes]).mean())


_LOCAL: dict[str, Callable[[Tensor, Tensor], float]] = {
    "rmse": rmse,
    "rocauc": rocauc,
    "acc": accuracy,
    "acc_sbm": accuracy_sbm,
}


def make_evaluator(metric: str, ogb_name: str | None = None) -> Callable[[Tensor, Tensor], float]:
    """``evaluate(y_true, y_pred) -> float``; with ``ogb_name``, ``ogb``'s ``Evaluator`` is used."""
    if ogb_name is not None:
        from ogb.graphproppred import Evaluator

        evaluator = Evaluator(ogb_name)
        if evaluator.eval_metric != metric:
            raise ValueError(f"{ogb_name}: OGB's metric is {evaluator.eval_metric}, not {metric}")

        def evaluate(y_true: Tensor, y_pred: Tensor) -> float:
            shape = (len(y_true), -1)
            y_true, y_pred = y_true.reshape(shape).cpu(), y_pred.reshape(shape).cpu()
            if y_true.shape == y_pred.shape and torch.isnan(y_pred[~torch.isnan(y_true)]).any():
                return math.nan  # scikit-learn's roc_auc_score would raise "Input contains NaN"
            try:
                return float(evaluator.eval({"y_true": y_true, "y_pred": y_pred})[metric])
            except RuntimeError as err:  # e.g. no task with both classes: as the local rocauc
                raise ValueError(f"{ogb_name} {metric}: {err}") from err

        return evaluate
    if metric not in _LOCAL:
        raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(_LOCAL)}")
    return _LOCAL[metric]
