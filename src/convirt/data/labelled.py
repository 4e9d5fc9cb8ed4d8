"""The canonical labelled manifest: one table that every labelled (classification) data source is converted into.

A labelled manifest is a table (CSV, TSV, Parquet or JSON Lines) with one row per image, plus a small JSON
side-car ``<table>.task.json`` describing the task. Columns:

================ ==========================================================================================
``image``        image path; relative paths are resolved against the image root (default: the manifest's
                 own folder). Any format :func:`convirt.data.images.load_image` reads (DICOM included).
``patient_id``   patient identifier (validation sets are drawn by patient, so no patient is in two splits)
``study_id``     study identifier (several images may share a study; MURA is scored per study)
``split``        ``train``, ``val`` or ``test``
label column(s)  **single-label tasks** (binary, multiclass): one column (default ``label``) holding the
                 class *name* of each image (e.g. ``NORMAL``/``PNEUMONIA``). **Multi-label tasks**: one column
                 per label holding ``1``, ``0`` or blank (unknown: left out of that label's loss and metric).
================ ==========================================================================================

Extra columns are kept in the file but ignored. The side-car (:class:`LabelledTask`) says::

    {"name": "kermany", "kind": "binary", "label_columns": ["label"], "class_names": ["NORMAL", "PNEUMONIA"],
     "metric": "auc", "scoring_level": "image", "paper_key": null}

- ``kind``: ``binary`` (``class_names[1]`` is the positive class), ``multiclass`` or ``multilabel``
  (``class_names`` == ``label_columns``);
- ``metric``: ``auc`` (binary), ``mean_auc`` (multilabel: mean of per-label AUCs), ``accuracy`` (multiclass);
- ``scoring_level``: ``image`` (score each image), ``study`` or ``patient`` (average the image probabilities of
  each study / patient, then score one prediction per study / patient; MURA uses ``study``);
- ``paper_key``: ``rsna``/``chexpert``/``covidx``/``mura`` when the dataset is one of the paper's four, so tables
  can print the paper's numbers beside ours.

Without a side-car the task is inferred: one label column (``label`` if present, else the only column that is
not one of the four above) -> binary when it has two classes (sorted; positive = the second) else multiclass;
several 0/1 columns -> multilabel. Write manifests with :func:`write_labelled_manifest` to keep the side-car.

Reading (:func:`read_labelled_manifest`) validates everything and raises :class:`ManifestError` naming the file
and the data rows at fault. The loaded :class:`LabelledManifest` keeps strings in compact
:class:`~convirt.data.manifest.StringColumn` buffers (fork-friendly for DataLoader workers) and the targets as one
numpy array: class indices (int64, shape (N,)) for single-label tasks, a float32 (N, K) matrix with NaN for
unknown labels for multi-label tasks.

>>> manifest = read_labelled_manifest("kermany/labels.csv", split="test")
>>> manifest.task.class_names, len(manifest), manifest.images[0], manifest.targets[:5]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from convirt.data.manifest import SPLITS, StringColumn, read_table, resolve_path, write_table
from convirt.errors import ManifestError

LABELLED_COLUMNS = ("image", "patient_id", "study_id", "split")
TASK_KINDS = ("binary", "multiclass", "multilabel")
METRICS = ("auc", "mean_auc", "accuracy")
SCORING_LEVELS = ("image", "study", "patient")
DEFAULT_METRIC = {"binary": "auc", "multiclass": "accuracy", "multilabel": "mean_auc"}
TASK_SUFFIX = ".task.json"


@dataclass
class LabelledTask:
    """What a labelled manifest's labels mean (stored in the ``<table>.task.json`` side-car)."""

    name: str
    kind: str  # binary | multiclass | multilabel
    class_names: list[str]
    label_columns: list[str] = field(default_factory=lambda: ["label"])
    metric: str = ""  # default by kind (auc, accuracy, mean_auc)
    scoring_level: str = "image"  # image | study | patient
    paper_key: str | None = None  # rsna | chexpert | covidx | mura
    notes: str = ""

    def __post_init__(self) -> None:
        self.class_names = [str(c) for c in self.class_names]
        self.label_columns = [str(c) for c in self.label_columns]
        self.metric = self.metric or DEFAULT_METRIC.get(self.kind, "")
        self.validate()

    def validate(self, source: str = "task") -> None:
        problems = []
        if self.kind not in TASK_KINDS:
            problems.append(f"kind {self.kind!r} is not one of {list(TASK_KINDS)}")
        if self.metric not in METRICS:
            problems.append(f"metric {self.metric!r} is not one of {list(METRICS)}")
        if self.scoring_level not in SCORING_LEVELS:
            problems.append(f"scoring_level {self.scoring_level!r} is not one of {list(SCORING_LEVELS)}")
        if len(set(self.class_names)) != len(self.class_names):
            problems.append(f"class_names {self.class_names} has duplicates")
        if self.kind == "binary" and len(self.class_names) != 2:
            problems.append(f"a binary task needs exactly 2 class_names, not {self.class_names}")
        if self.kind == "multiclass" and len(self.class_names) < 2:
            problems.append(f"a multiclass task needs at least 2 class_names, not {self.class_names}")
        if self.kind in ("binary", "multiclass") and len(self.label_columns) != 1:
            problems.append(f"a single-label task has one label column, not {self.label_columns}")
        if self.kind == "multilabel" and self.label_columns != self.class_names:
            problems.append("a multilabel task's class_names must equal its label_columns")
        clash = [c for c in self.label_columns if c in LABELLED_COLUMNS]
        if clash:
            problems.append(f"label column(s) {clash} clash with the reserved columns {list(LABELLED_COLUMNS)}")
        if problems:
            raise ManifestError(f"{source}: " + "; ".join(problems))

    @property
    def num_outputs(self) -> int:
        """Width of a classifier head: 1 for binary, one logit per class or label otherwise."""
        return 1 if self.kind == "binary" else len(self.class_names)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "task") -> LabelledTask:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ManifestError(f"{source}: unknown task field(s) {unknown}; known fields are {sorted(known)}")
        for required in ("name", "kind", "class_names"):
            if required not in data:
                raise ManifestError(f"{source}: task field {required!r} is missing")
        try:
            return cls(**data)
        except ManifestError as exc:
            raise ManifestError(f"{source}: {exc}") from exc


@dataclass
class LabelledManifest:
    """A loaded, validated labelled manifest (all rows or one split)."""

    path: Path
    image_root: Path
    task: LabelledTask
    images: StringColumn  # resolved image paths
    patient_ids: StringColumn
    study_ids: StringColumn
    splits: np.ndarray  # split name per row (numpy str array)
    targets: np.ndarray  # (N,) int64 class indices, or (N, K) float32 with NaN = unknown (multilabel)
    rows: np.ndarray  # 1-based data row numbers in the file, for error messages

    def __len__(self) -> int:
        return len(self.images)

    def describe_row(self, index: int) -> str:
        return f"row {int(self.rows[index])} (image {self.images[index]}) of {self.path}"

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabelledManifest:
        """A manifest of the given rows (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        return LabelledManifest(
            path=self.path,
            image_root=self.image_root,
            task=self.task,
            images=StringColumn([self.images[int(i)] for i in indices]),
            patient_ids=StringColumn([self.patient_ids[int(i)] for i in indices]),
            study_ids=StringColumn([self.study_ids[int(i)] for i in indices]),
            splits=self.splits[indices],
            targets=self.targets[indices],
            rows=self.rows[indices],
        )

    def split(self, name: str) -> LabelledManifest:
        """Rows of one split (``train``, ``val`` or ``test``)."""
        if name not in SPLITS:
            raise ManifestError(f"unknown split {name!r}; use one of {list(SPLITS)}")
        return self.subset(np.flatnonzero(self.splits == name))

    def counts(self) -> dict[str, int]:
        return {s: int((self.splits == s).sum()) for s in SPLITS}

    def class_counts(self) -> dict[str, int]:
        """Images per class (single-label) or positives per label (multilabel)."""
        if self.task.kind == "multilabel":
            return {c: int(np.nansum(self.targets[:, k])) for k, c in enumerate(self.task.class_names)}
        return {c: int((self.targets == k).sum()) for k, c in enumerate(self.task.class_names)}

    def to_frame(self, relative_to: Path | None = None) -> pd.DataFrame:
        """The manifest as a canonical table (image paths made relative to ``relative_to`` when given)."""
        images = list(self.images)
        if relative_to is not None:
            images = [_relative(p, relative_to) for p in images]
        frame = pd.DataFrame(
            {
                "image": images,
                "patient_id": list(self.patient_ids),
                "study_id": list(self.study_ids),
                "split": self.splits.astype(str),
            }
        )
        if self.task.kind == "multilabel":
            for k, column in enumerate(self.task.label_columns):
                frame[column] = [_format_multilabel(v) for v in self.targets[:, k]]
        else:
            names = np.asarray(self.task.class_names, dtype=object)
            frame[self.task.label_columns[0]] = names[self.targets]
        return frame


def _relative(path: str, root: Path) -> str:
    try:
        return os.path.relpath(os.path.abspath(path), root)
    except ValueError:  # different drive on Windows
        return path


def _format_multilabel(value: float) -> str:
    return "" if np.isnan(value) else str(int(value))


def task_path(manifest_path: str | os.PathLike) -> Path:
    """The side-car file of a manifest: ``labels.csv`` -> ``labels.csv.task.json``."""
    path = Path(manifest_path)
    return path.with_name(path.name + TASK_SUFFIX)


def infer_task(frame: pd.DataFrame, name: str, source: str) -> LabelledTask:
    """Infer the task of a manifest without side-car (see the module docstring)."""
    candidates = [c for c in frame.columns if c not in LABELLED_COLUMNS]
    if not candidates:
        raise ManifestError(
            f"{source} has no label column (columns: {list(frame.columns)}); add a 'label' column with class names"
        )
    try:
        if "label" in candidates or len(candidates) == 1:
            column = "label" if "label" in candidates else candidates[0]
            classes = sorted(v for v in set(frame[column]) if v != "")
            kind = "binary" if len(classes) == 2 else "multiclass"
            return LabelledTask(name=name, kind=kind, class_names=classes, label_columns=[column])
        return LabelledTask(name=name, kind="multilabel", class_names=candidates, label_columns=candidates)
    except ManifestError as exc:
        raise ManifestError(f"{source} (no task file {TASK_SUFFIX!r} beside it, task inferred): {exc}") from exc


def _rows_text(rows: Sequence[int]) -> str:
    rows = [int(r) for r in rows]
    return ", ".join(str(r) for r in rows[:5]) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def _parse_multilabel(values: pd.Series, column: str, row_numbers: np.ndarray, source: str) -> np.ndarray:
    text = values.astype(str).str.strip()
    numeric = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = (text != "") & ~numeric.isin([0.0, 1.0])
    if bad.any():
        examples = sorted(set(text[bad]))[:3]
        raise ManifestError(
            f"{source}: label column {column!r} must hold 1, 0 or blank (unknown); data row(s) "
            f"{_rows_text(row_numbers[bad.to_numpy()])} hold {examples}. Apply an uncertain-label policy first."
        )
    return numeric.to_numpy(dtype=np.float32)


def validate_labelled_frame(frame: pd.DataFrame, task: LabelledTask, source: str) -> np.ndarray:
    """Check a canonical table against its task; returns the targets array (see :class:`LabelledManifest`)."""
    task.validate(source)
    missing = [c for c in (*LABELLED_COLUMNS, *task.label_columns) if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"{source} is missing column(s) {missing}; it has {list(frame.columns)}. A labelled manifest needs "
            f"{list(LABELLED_COLUMNS)} plus the label column(s) {task.label_columns} (see convirt.data.labelled)."
        )
    row_numbers = np.arange(1, len(frame) + 1)
    splits = frame["split"].astype(str)
    bad_split = ~splits.isin(SPLITS)
    if bad_split.any():
        raise ManifestError(
            f"{source}: data row(s) {_rows_text(row_numbers[bad_split.to_numpy()])} have unknown split value(s) "
            f"{sorted(set(splits[bad_split]))[:5]}; use one of {list(SPLITS)}"
        )
    for column in ("image", "patient_id", "study_id"):
        empty = frame[column].astype(str).str.strip() == ""
        if empty.any():
            raise ManifestError(
                f"{source}: data row(s) {_rows_text(row_numbers[empty.to_numpy()])} have an empty {column!r}"
            )
    if task.kind == "multilabel":
        columns = [_parse_multilabel(frame[c], c, row_numbers, source) for c in task.label_columns]
        return np.stack(columns, axis=1) if columns else np.zeros((len(frame), 0), np.float32)
    column = task.label_columns[0]
    values = frame[column].astype(str).str.strip()
    lookup = {name: k for k, name in enumerate(task.class_names)}
    indices = values.map(lookup)
    unknown = indices.isna()
    if unknown.any():
        raise ManifestError(
            f"{source}: data row(s) {_rows_text(row_numbers[unknown.to_numpy()])} have label(s) "
            f"{sorted(set(values[unknown]))[:5]} in column {column!r}, which are not among the task's classes "
            f"{task.class_names}"
        )
    return indices.to_numpy(dtype=np.int64)


def manifest_from_frame(
    frame: pd.DataFrame,
    task: LabelledTask,
    image_root: str | os.PathLike,
    source: str = "labelled table",
    path: str | os.PathLike | None = None,
) -> LabelledManifest:
    """Validate a canonical table (e.g. from a source adapter) and load it as a :class:`LabelledManifest`."""
    frame = frame.reset_index(drop=True).fillna("").astype(str)
    targets = validate_labelled_frame(frame, task, source)
    root = Path(image_root)
    return LabelledManifest(
        path=Path(path) if path is not None else Path(source),
        image_root=root,
        task=task,
        images=StringColumn([resolve_path(p, root) for p in frame["image"]]),
        patient_ids=StringColumn(list(frame["patient_id"])),
        study_ids=StringColumn(list(frame["study_id"])),
        splits=frame["split"].to_numpy(dtype=str),
        targets=targets,
        rows=np.arange(1, len(frame) + 1),
    )


def read_labelled_manifest(
    path: str | os.PathLike,
    split: str | None = None,
    image_root: str | os.PathLike | None = None,
) -> LabelledManifest:
    """Load and validate a labelled manifest (and its side-car), keeping only ``split`` when given.

    Raises :class:`ManifestError` naming the file and the data rows for missing columns, an unknown split or
    class, an empty image/patient/study cell, or a multilabel value other than 1/0/blank.
    """
    path = Path(path)
    frame = read_table(path)
    sidecar = task_path(path)
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ManifestError(f"cannot read task file {sidecar}: {exc}") from exc
        task = LabelledTask.from_dict(data, source=str(sidecar))
    else:
        missing = [c for c in LABELLED_COLUMNS if c not in frame.columns]
        if missing:
            raise ManifestError(
                f"manifest {path} is missing column(s) {missing}; it has {list(frame.columns)}. A labelled "
                f"manifest needs {list(LABELLED_COLUMNS)} plus label column(s) (see convirt.data.labelled)."
            )
        task = infer_task(frame, name=path.stem, source=f"manifest {path}")
    manifest = manifest_from_frame(frame, task, image_root or path.parent, source=f"manifest {path}", path=path)
    return manifest.split(split) if split is not None else manifest


def write_labelled_manifest(
    manifest: LabelledManifest | pd.DataFrame,
    path: str | os.PathLike,
    task: LabelledTask | None = None,
    relative: bool = True,
) -> Path:
    """Write a manifest (or a canonical table plus ``task``) and its side-car atomically; returns the table path.

    With ``relative=True`` image paths are written relative to the manifest's folder, so the folder can move with
    its images.
    """
    from convirt.fileio import atomic_write_json

    path = Path(path)
    if isinstance(manifest, LabelledManifest):
        task = manifest.task
        frame = manifest.to_frame(relative_to=path.parent.resolve() if relative else None)
    else:
        if task is None:
            raise ValueError("write_labelled_manifest needs a task when given a table")
        frame = manifest
        validate_labelled_frame(frame.fillna("").astype(str), task, f"table for {path}")
    write_table(frame, path)
    atomic_write_json(task_path(path), task.to_dict())
    return path
