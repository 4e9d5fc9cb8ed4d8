"""Metrics against scikit-learn and hand computations, including MURA's per-study aggregation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from convirt.data.labelled import LabelledTask
from convirt.evaluation.classification.metrics import (
    accuracy,
    aggregate_by_group,
    average_ranks,
    roc_auc,
    score_predictions,
)

BINARY = LabelledTask(name="b", kind="binary", class_names=["normal", "abnormal"])
MURA = LabelledTask(name="mura", kind="binary", class_names=["normal", "abnormal"], scoring_level="study")
MULTILABEL = LabelledTask(name="m", kind="multilabel", class_names=["a", "b", "c"], label_columns=["a", "b", "c"])
MULTICLASS = LabelledTask(name="c", kind="multiclass", class_names=["normal", "pneumonia", "COVID-19"])


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(5):
        y = rng.integers(0, 2, 200)
        scores = np.round(rng.normal(size=200) + y * 0.7, 1)  # rounding makes many ties
        assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12), trial
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert np.isnan(roc_auc([1, 1, 1], [0.2, 0.3, 0.4]))
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_accuracy_matches_sklearn():
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(3), size=50)
    y = rng.integers(0, 3, 50)
    assert accuracy(y, probabilities) == pytest.approx(accuracy_score(y, probabilities.argmax(1)))
    binary = rng.random(40)
    y2 = rng.integers(0, 2, 40)
    assert accuracy(y2, binary) == pytest.approx(accuracy_score(y2, binary >= 0.5))
    score = score_predictions(MULTICLASS, y, probabilities)
    assert score.metric == "accuracy" and score.value == pytest.approx(accuracy_score(y, probabilities.argmax(1)))
    assert score.per_class["COVID-19"] == pytest.approx(roc_auc_score(y == 2, probabilities[:, 2]))


def test_multilabel_mean_auc_matches_sklearn_macro_and_masks_unknown():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (60, 3)).astype(np.float32)
    p = rng.random((60, 3)) + y * 0.3
    score = score_predictions(MULTILABEL, y, p)
    assert score.value == pytest.approx(roc_auc_score(y, p, average="macro"))
    y_unknown = y.copy()
    y_unknown[:10, 1] = np.nan
    masked = score_predictions(MULTILABEL, y_unknown, p)
    assert masked.per_class["b"] == pytest.approx(roc_auc_score(y[10:, 1], p[10:, 1]))
    assert masked.per_class["a"] == pytest.approx(roc_auc_score(y[:, 0], p[:, 0]))


def test_mura_study_level_scoring_by_hand():
    # study A: images 0.2, 0.6 (abnormal) -> 0.4; study B: 0.9 (normal); study C: 0.1, 0.3, 0.5 (normal) -> 0.3;
    # study D: 0.7 (abnormal).  Study level: positives {0.4, 0.7} vs negatives {0.9, 0.3}: 2 of 4 pairs -> 0.5.
    # Image level: positives {0.2, 0.6, 0.7} vs negatives {0.9, 0.1, 0.3, 0.5}: 1 + 3 + 3 = 7 of 12 pairs.
    studies = ["A", "A", "B", "C", "C", "C", "D"]
    targets = np.array([1, 1, 0, 0, 0, 0, 1])
    probabilities = np.array([0.2, 0.6, 0.9, 0.1, 0.3, 0.5, 0.7])
    keys, group_targets, group_probabilities = aggregate_by_group(MURA, targets, probabilities, studies)
    assert keys.tolist() == ["A", "B", "C", "D"]
    assert group_targets.tolist() == [1, 0, 0, 1]
    assert group_probabilities == pytest.approx([0.4, 0.9, 0.3, 0.7])
    study = score_predictions(MURA, targets, probabilities, studies)
    assert study.value == pytest.approx(0.5) and study.n == 4 and study.level == "study"
    image = score_predictions(MURA, targets, probabilities)
    assert image.value == pytest.approx(7 / 12) and image.n == 7 and image.level == "image"


def test_patient_level_group_target_is_any_positive():
    patient = LabelledTask(name="p", kind="binary", class_names=["n", "a"], scoring_level="patient")
    _, group_targets, group_probabilities = aggregate_by_group(
        patient, np.array([0, 1, 0]), np.array([0.2, 0.8, 0.5]), ["p1", "p1", "p2"]
    )
    assert group_targets.tolist() == [1, 0] and group_probabilities == pytest.approx([0.5, 0.5])
    _, ml_targets, _ = aggregate_by_group(
        MULTILABEL,
        np.array([[1, np.nan, 0], [0, np.nan, 0], [np.nan, 1, 0]], dtype=np.float32),
        np.zeros((3, 3)),
        ["s", "s", "t"],
    )
    assert np.array_equal(ml_targets, np.array([[1, np.nan, 0], [np.nan, 1, 0]]), equal_nan=True)
