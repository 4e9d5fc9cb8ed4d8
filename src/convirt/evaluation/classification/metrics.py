"""Metrics of the paper's Table 1: AUC, mean AUC over labels, accuracy; with study/patient-level aggregation.

Predictions are probabilities: shape (N,) (positive class) for binary tasks, (N, C) softmax for multiclass,
(N, K) sigmoid for multilabel. Targets are class indices (N,) or a (N, K) 0/1 matrix with NaN for unknown.

For tasks scored per study or patient (MURA), :func:`aggregate_by_group` averages the image probabilities of each
group and gives the group one target (binary and multilabel: the maximum over its images, i.e. positive when any
image is; multiclass: the images must agree), then the metric is computed over groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from convirt.data.labelled import LabelledTask
from convirt.errors import ManifestError


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as in the Mann-Whitney U statistic)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    _, inverse, counts = np.unique(values[order], return_inverse=True, return_counts=True)
    average = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = average[inverse]
    return ranks


def roc_auc(targets: Sequence[float], scores: Sequence[float]) -> float:
    """Area under the ROC curve (probability a random positive outscores a random negative, ties count 1/2).

    Rows whose target is NaN are ignored; NaN is returned when only one class is present.
    """
    y = np.asarray(targets, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"targets {y.shape} and scores {s.shape} differ in length")
    known = ~np.isnan(y)
    y, s = y[known], s[known]
    positives = y == 1
    n_pos, n_neg = int(positives.sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(s)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def accuracy(targets: Sequence[int], probabilities: np.ndarray) -> float:
    """Fraction of rows whose arg-max class is the target ((N,) binary probabilities use a 0.5 threshold)."""
    y = np.asarray(targets)
    p = np.asarray(probabilities, dtype=np.float64)
    predicted = (p >= 0.5).astype(np.int64) if p.ndim == 1 else p.argmax(axis=1)
    return float((predicted == y).mean()) if len(y) else float("nan")


def aggregate_by_group(
    task: LabelledTask, targets: np.ndarray, probabilities: np.ndarray, groups: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average the probabilities of each group (study or patient); returns (keys, group targets, group probs)."""
    groups = np.asarray(list(groups), dtype=object)
    keys, inverse = np.unique(groups.astype(str), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(keys)).astype(np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    sums = np.zeros((len(keys), *probabilities.shape[1:]), dtype=np.float64)
    np.add.at(sums, inverse, probabilities)
    mean = sums / counts.reshape(-1, *([1] * (probabilities.ndim - 1)))
    if task.kind == "multiclass":
        group_targets = np.full(len(keys), -1, dtype=np.int64)
        for row, key in enumerate(inverse):
            if group_targets[key] not in (-1, targets[row]):
                raise ManifestError(f"images of group {keys[key]!r} have different classes; cannot score per group")
            group_targets[key] = targets[row]
    else:
        values = np.asarray(targets, dtype=np.float64)
        filled = np.where(np.isnan(values), -np.inf, values)
        group_targets = np.full((len(keys), *values.shape[1:]), -np.inf)
        np.maximum.at(group_targets, inverse, filled)
        group_targets[np.isneginf(group_targets)] = np.nan
        if task.kind == "binary":
            group_targets = group_targets.astype(np.int64)
    return keys, group_targets, mean


@dataclass
class Score:
    """A task's headline metric (``value``, in [0, 1]) plus per-class values and the number of scored units."""

    metric: str
    value: float
    per_class: dict[str, float] = field(default_factory=dict)
    n: int = 0
    level: str = "image"


def score_predictions(
    task: LabelledTask, targets: np.ndarray, probabilities: np.ndarray, groups: Sequence[str] | None = None
) -> Score:
    """Score predictions with the task's metric, first averaging per group when ``groups`` is given."""
    level = "image"
    if groups is not None:
        _, targets, probabilities = aggregate_by_group(task, targets, probabilities, groups)
        level = task.scoring_level
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if task.kind == "binary":
        auc = roc_auc(targets, probabilities)
        value = auc if task.metric == "auc" else accuracy(targets, probabilities)
        return Score(task.metric, value, {task.class_names[1]: auc}, len(targets), level)
    if task.kind == "multilabel":
        per = {name: roc_auc(targets[:, k], probabilities[:, k]) for k, name in enumerate(task.class_names)}
        finite = [v for v in per.values() if not np.isnan(v)]
        value = float(np.mean(finite)) if finite else float("nan")
        return Score(task.metric, value, per, len(targets), level)
    per = {name: roc_auc(targets == k, probabilities[:, k]) for k, name in enumerate(task.class_names)}
    if task.metric == "accuracy":
        value = accuracy(targets, probabilities)
    else:
        finite = [v for v in per.values() if not np.isnan(v)]
        value = float(np.mean(finite)) if finite else float("nan")
    return Score(task.metric, value, per, len(targets), level)


def roc_curves(
    task: LabelledTask, targets: np.ndarray, probabilities: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ROC curve points (fpr, tpr) per positive class / label (one-vs-rest for multiclass), for plots."""
    from sklearn.metrics import roc_curve

    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if task.kind == "binary":
        columns = [(task.class_names[1], np.asarray(targets, dtype=np.float64), probabilities)]
    elif task.kind == "multilabel":
        columns = [(n, targets[:, k], probabilities[:, k]) for k, n in enumerate(task.class_names)]
    else:
        columns = [(n, (targets == k).astype(np.float64), probabilities[:, k]) for k, n in enumerate(task.class_names)]
    for name, y, s in columns:
        known = ~np.isnan(y)
        if len(np.unique(y[known])) == 2:
            fpr, tpr, _ = roc_curve(y[known], s[known])
            curves[name] = (fpr, tpr)
    return curves
