"""Label-fraction subsets: each seed draws its own subset, stratified so every class is present."""

from __future__ import annotations

import numpy as np

from convirt.data.labelled import LabelledTask
from convirt.evaluation.classification.subsets import label_fraction_subset

BINARY = LabelledTask(name="b", kind="binary", class_names=["normal", "pneumonia"])
MULTICLASS = LabelledTask(name="c", kind="multiclass", class_names=["normal", "pneumonia", "COVID-19"])


def test_subsets_differ_across_seeds_and_are_reproducible():
    targets = np.array([0] * 300 + [1] * 700)
    subsets = [label_fraction_subset(BINARY, targets, 0.1, seed) for seed in range(5)]
    assert len({tuple(s) for s in subsets}) == 5  # every seed its own subset
    assert np.array_equal(subsets[2], label_fraction_subset(BINARY, targets, 0.1, 2))  # same seed, same subset
    for subset in subsets:
        assert len(subset) == 100 and np.bincount(targets[subset]).tolist() == [30, 70]  # proportions kept
        assert len(np.unique(subset)) == len(subset)
    one = label_fraction_subset(BINARY, targets, 0.1, 0)
    assert not np.array_equal(one, label_fraction_subset(BINARY, targets, 0.2, 0)[:100])
    assert np.array_equal(label_fraction_subset(BINARY, targets, 1.0, 3), np.arange(1000))


def test_every_class_present_even_when_rare():
    targets = np.array([0] * 500 + [1] * 480 + [2] * 20)  # COVID-19 is rare
    for seed in range(5):
        subset = label_fraction_subset(MULTICLASS, targets, 0.01, seed)
        counts = np.bincount(targets[subset], minlength=3)
        assert counts.tolist() == [5, 5, 1]  # round(1 % of 20) = 0 -> at least one


def test_study_groups_stay_together():
    task = LabelledTask(name="mura", kind="binary", class_names=["normal", "abnormal"], scoring_level="study")
    studies = [f"s{k // 3}" for k in range(300)]  # 100 studies of 3 images
    targets = np.array([(k // 3) % 2 for k in range(300)])
    subset = label_fraction_subset(task, targets, 0.1, 4, groups=studies)
    chosen = {studies[i] for i in subset}
    assert len(subset) == 3 * len(chosen) and len(chosen) == 10  # 5 normal + 5 abnormal studies, whole
    assert set(np.bincount(targets[subset]).tolist()) == {15}


def test_multilabel_subset_has_positive_and_negative_per_label():
    task = LabelledTask(name="m", kind="multilabel", class_names=["a", "b"], label_columns=["a", "b"])
    targets = np.zeros((1000, 2), dtype=np.float32)
    targets[:500, 0] = 1
    targets[7, 1] = 1  # label b has a single positive
    subsets = [label_fraction_subset(task, targets, 0.01, seed) for seed in range(5)]
    assert len({tuple(s) for s in subsets}) == 5
    for subset in subsets:
        assert 10 <= len(subset) <= 11 and 7 in subset
        assert set(targets[subset, 0].tolist()) == {0.0, 1.0}
