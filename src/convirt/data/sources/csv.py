"""A generic table (CSV, TSV, Parquet, JSON Lines) of images and labels.

Name the columns with options (defaults in brackets):

- ``image_column`` [``image``]: image path, relative to ``image_root`` (default: the table's folder);
- ``label_columns`` [``label``]: one column of class names (binary with two classes, else multiclass; the
  positive class is ``positive`` or the second in sorted order), or several comma-separated columns of
  1/0/-1/blank for a multi-label task (``uncertain``: ``zeros`` [default], ``ones`` or ``ignore`` for -1; blank
  is unknown);
- ``patient_column`` / ``study_column`` [none]: identifiers; without them each image is its own patient/study;
- ``split_column`` [none]: ``train``/``val``/``test`` (also ``valid``, ``validation``, ``dev``, ``training``,
  ``testing``). Without it, ``val_size`` (10 %) and ``test_size`` (20 %) are drawn by patient; with it but no
  validation rows, ``val_size`` of train becomes validation.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from convirt.data.labelled import LabelledManifest, LabelledTask, manifest_from_frame
from convirt.data.manifest import read_table, resolve_path
from convirt.data.sources.common import (
    SPLIT_ALIASES,
    check_images_exist,
    draw_val_test,
    draw_validation,
    require_table_columns,
)
from convirt.errors import ConfigError, ManifestError


def _multilabel(values: pd.Series, column: str, policy: str, source: str) -> pd.Series:
    text = values.astype(str).str.strip()
    numeric = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = (text != "") & ~numeric.isin([1.0, 0.0, -1.0])
    if bad.any():
        rows = (np.flatnonzero(bad.to_numpy()) + 1)[:5].tolist()
        raise ManifestError(f"{source}: column {column!r} must hold 1, 0, -1 or blank (data rows {rows})")
    uncertain = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[policy]
    numeric = numeric.where(numeric != -1.0, uncertain)
    return numeric.map(lambda v: "" if np.isnan(v) else str(int(v)))


def build(
    root: str | os.PathLike,
    image_column: str = "image",
    label_columns: str = "label",
    patient_column: str | None = None,
    study_column: str | None = None,
    split_column: str | None = None,
    image_root: str | None = None,
    positive: str | None = None,
    uncertain: str = "zeros",
    val_size: float = 0.1,
    test_size: float = 0.2,
    seed: int = 0,
    name: str | None = None,
    check_files: bool = True,
) -> LabelledManifest:
    path = Path(os.path.abspath(root))
    source = f"table {path}"
    if uncertain not in ("zeros", "ones", "ignore"):
        raise ConfigError(f"uncertain-label policy must be zeros, ones or ignore, not {uncertain!r}")
    labels = [c.strip() for c in str(label_columns).split(",") if c.strip()]
    table = read_table(path)
    wanted = [image_column, *labels, *(c for c in (patient_column, study_column, split_column) if c)]
    require_table_columns(table, wanted, source)
    base = Path(os.path.abspath(image_root)) if image_root else path.parent
    images = [resolve_path(p, base) for p in table[image_column]]
    patients = table[patient_column] if patient_column else pd.Series(images)
    frame = pd.DataFrame(
        {
            "image": images,
            "patient_id": patients.to_numpy(),
            "study_id": (table[study_column] if study_column else pd.Series(images)).to_numpy(),
            "split": "train",
        }
    )
    if split_column:
        raw = table[split_column].str.strip().str.lower()
        mapped = raw.map(SPLIT_ALIASES)
        if mapped.isna().any():
            rows = (np.flatnonzero(mapped.isna().to_numpy()) + 1)[:5].tolist()
            raise ManifestError(f"{source}: unknown split value(s) {sorted(set(raw[mapped.isna()]))[:5]} (rows {rows})")
        frame["split"] = mapped.to_numpy()
        if "val" not in set(frame["split"]):
            frame = draw_validation(frame, val_size, seed)
    else:
        frame = draw_val_test(frame, val_size, test_size, seed)
    task_name = name or path.stem
    if len(labels) == 1:
        column = labels[0]
        frame["label"] = table[column].str.strip().to_numpy()
        classes = sorted(v for v in set(frame["label"]) if v)
        if positive is not None:
            if positive not in classes:
                raise ConfigError(f"positive class {positive!r} is not among the values {classes} of {column!r}")
            classes = [c for c in classes if c != positive] + [positive]
        kind = "binary" if len(classes) == 2 else "multiclass"
        task = LabelledTask(name=task_name, kind=kind, class_names=classes)
    else:
        columns = [c.lower().replace(" ", "_") for c in labels]
        for column, label in zip(columns, labels):
            frame[column] = _multilabel(table[label], label, uncertain, source).to_numpy()
        task = LabelledTask(name=task_name, kind="multilabel", class_names=columns, label_columns=columns)
    if check_files:
        check_images_exist(frame["image"], source)
    return manifest_from_frame(frame, task, base, source=source, path=path)
