"""Train/val/test splits drawn by patient, so no patient (and no shared image) is in two splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convirt.errors import ConfigError


def resolve_size(size: float | int | None, total: int, what: str) -> int:
    """Number of pairs for a split size given as a count (``5000``) or a fraction of all pairs (``0.1``)."""
    if size is None:
        return 0
    size = float(size)
    if size < 0:
        raise ConfigError(f"{what} must be >= 0 (a number of pairs, or a fraction below 1), not {size}")
    if size < 1:
        return round(size * total)
    if size != int(size):
        raise ConfigError(f"{what} {size} is neither a whole number of pairs nor a fraction below 1")
    return int(size)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, item: str) -> str:
        self.parent.setdefault(item, item)
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def patient_groups(patient_ids: Sequence[str], images: Sequence[Sequence[str]]) -> list[str]:
    """A group key per pair: its patient, merged with every patient it shares an image file with.

    Public collections sometimes file one image under two patient ids (the COVID-19 collection has such
    duplicates); keeping those patients together keeps the image out of two splits.
    """
    uf = _UnionFind()
    owner: dict[str, str] = {}
    for patient, paths in zip(patient_ids, images, strict=True):
        key = "p:" + patient
        uf.find(key)
        for path in paths:
            if path in owner:
                uf.union(key, owner[path])
            else:
                owner[path] = key
    return [uf.find("p:" + p) for p in patient_ids]


def assign_splits(
    groups: Sequence[str],
    val_size: float | int | None,
    test_size: float | int | None = 0,
    seed: int = 0,
) -> list[str]:
    """Assign ``train``/``val``/``test`` per pair so that every group (patient) lands in exactly one split.

    Groups are shuffled with ``seed``; the test split is filled first, then val, each taking whole groups while
    they fit under the target number of pairs (so the result is at most the target, and reaches it exactly unless
    no remaining group is small enough). Everything else is train.
    """
    total = len(groups)
    n_val = resolve_size(val_size, total, "val size")
    n_test = resolve_size(test_size, total, "test size")
    if n_val + n_test > total:
        raise ConfigError(
            f"val size {n_val} + test size {n_test} pairs exceed the {total} pairs kept; lower val_size or test_size"
        )
    order: dict[str, int] = {}
    counts: dict[str, int] = {}
    for group in groups:
        order.setdefault(group, len(order))
        counts[group] = counts.get(group, 0) + 1
    unique = sorted(order, key=order.__getitem__)
    rng = np.random.default_rng(seed)
    shuffled = [unique[i] for i in rng.permutation(len(unique))]
    assignment: dict[str, str] = {}
    for split, target in (("test", n_test), ("val", n_val)):
        filled = 0
        for group in shuffled:
            if filled >= target:
                break
            if group in assignment or filled + counts[group] > target:
                continue
            assignment[group] = split
            filled += counts[group]
    return [assignment.get(g, "train") for g in groups]


def official_or_random(
    groups: Sequence[str],
    official: Sequence[str | None],
    val_size: float | int | None,
    test_size: float | int | None,
    seed: int,
) -> list[str]:
    """Use the dataset's own split where every pair has one; otherwise draw a patient split."""
    if official and all(s in ("train", "val", "test") for s in official):
        return list(official)  # type: ignore[arg-type]
    return assign_splits(groups, val_size, test_size, seed)
