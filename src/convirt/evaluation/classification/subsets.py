"""Label-fraction training subsets (1 %, 10 %, 100 % ... of the training labels), one per seed.

The paper reports each label fraction as the mean of 5 runs; each run must draw **its own** subset (a subset
fixed across seeds is a known pitfall of public re-implementations). :func:`label_fraction_subset` draws from a
generator seeded with (seed, fraction), stratified so every class is present:

- single-label tasks: ``max(1, round(fraction * n_c))`` units of every class c, so class proportions are kept
  and the smallest class has at least one example;
- multi-label tasks: ``round(fraction * n)`` units at random, then for every label lacking a positive (or a
  negative) one random unit that has it is added.

Units are images, or whole studies/patients (``groups``) for tasks scored per study, so a study's images stay
together. ``fraction >= 1`` returns every row (then the seeds differ only in the head's initialisation and
batch order).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convirt.data.labelled import LabelledTask
from convirt.errors import ConfigError


def subset_seed(seed: int, fraction: float) -> np.random.Generator:
    return np.random.default_rng([int(seed), round(float(fraction) * 1_000_000)])


def _units(task: LabelledTask, targets: np.ndarray, groups: Sequence[str] | None):
    """(unit id per row, unit targets) where units are rows or groups."""
    if groups is None:
        return np.arange(len(targets)), targets
    keys, inverse = np.unique(np.asarray(list(groups)).astype(str), return_inverse=True)
    first = np.full(len(keys), -1, dtype=np.int64)
    for row in range(len(inverse) - 1, -1, -1):
        first[inverse[row]] = row
    if task.kind == "multilabel":
        values = np.where(np.isnan(targets), -np.inf, targets)
        unit_targets = np.full((len(keys), targets.shape[1]), -np.inf)
        np.maximum.at(unit_targets, inverse, values)
        unit_targets[np.isneginf(unit_targets)] = np.nan
    elif task.kind == "binary":
        unit_targets = np.zeros(len(keys), dtype=np.int64)
        np.maximum.at(unit_targets, inverse, targets)
    else:
        unit_targets = targets[first]
    return inverse, unit_targets


def label_fraction_subset(
    task: LabelledTask,
    targets: np.ndarray,
    fraction: float,
    seed: int,
    groups: Sequence[str] | None = None,
) -> np.ndarray:
    """Sorted row indices of the training subset for ``fraction`` and ``seed`` (see the module docstring)."""
    fraction = float(fraction)
    if not fraction > 0:
        raise ConfigError(f"label fraction must be > 0, not {fraction}")
    n_rows = len(targets)
    if fraction >= 1:
        return np.arange(n_rows)
    unit_of_row, unit_targets = _units(task, np.asarray(targets), groups)
    n_units = len(unit_targets)
    rng = subset_seed(seed, fraction)
    if task.kind in ("binary", "multiclass"):
        chosen = []
        for k, name in enumerate(task.class_names):
            members = np.flatnonzero(unit_targets == k)
            if len(members) == 0:
                raise ConfigError(f"class {name!r} has no training examples; every class needs at least one")
            take = min(len(members), max(1, round(fraction * len(members))))
            chosen.append(rng.choice(members, size=take, replace=False))
        units = np.concatenate(chosen)
    else:
        take = min(n_units, max(1, round(fraction * n_units)))
        units = rng.choice(n_units, size=take, replace=False)
        selected = np.zeros(n_units, dtype=bool)
        selected[units] = True
        for k in range(unit_targets.shape[1]):
            column = unit_targets[:, k]
            for value in (1.0, 0.0):
                if not (column[selected] == value).any():
                    candidates = np.flatnonzero((column == value) & ~selected)
                    if len(candidates):
                        selected[rng.choice(candidates)] = True
        units = np.flatnonzero(selected)
    keep = np.zeros(n_units, dtype=bool)
    keep[units] = True
    return np.flatnonzero(keep[unit_of_row])
