"""CheXpert v1.0 (or CheXpert-v1.0-small), the paper's five-label multi-label task.

Layout (as downloaded)::

    ROOT/train.csv   ROOT/valid.csv   ROOT/train/patient00001/study1/view1_frontal.jpg   ROOT/valid/...

where ``ROOT`` is the ``CheXpert-v1.0`` (or ``-small``) folder; the CSV ``Path`` column starts with that folder's
name (``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``). Passing ROOT's parent also works.

Labels: Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion (columns ``atelectasis``,
``cardiomegaly``, ``consolidation``, ``edema``, ``pleural_effusion``); metric: mean AUC over the five. Cells are
1 (positive), 0 (negative), -1 (uncertain) or blank (not mentioned -> negative). The paper does not say how it
treated uncertain labels; ``uncertain`` picks the policy:

- ``mixed`` (default): U-Ones for Atelectasis and Edema, U-Zeros for the other three (the best single policies
  per label in Irvin et al., 2019, and the common choice for these five labels);
- ``zeros``: uncertain -> 0;   ``ones``: uncertain -> 1;   ``ignore``: uncertain -> unknown (masked out of the
  loss and the metric for that label).

Splits follow the paper: the official ``valid.csv`` (234 images, expert labels without uncertainty) is the test
set; ``val_size`` (5000) training images, whole patients at a time, are the validation set; all views are kept
(``frontal_only`` drops laterals).

``exclude_retrieval``: the CheXpert 8x200 retrieval lists (:mod:`convirt.data.chexpert8x200`) draw their 80 query
and 1600 candidate images from CheXpert *train*. An encoder fine-tuned on CheXpert and then evaluated on those lists
(the paper's "ConVIRT + CheXpert Supervised" row) must not have trained on them, so this option removes every listed
image from ``train.csv`` before the validation images are drawn (matched on the path below the dataset folder, so a
full-size ``CheXpert-v1.0`` download matches the ``-small`` lists); the task's notes say how many were removed.
Other images of the same studies and patients stay. ``convirt evaluate classify --save-encoder`` sets it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from convirt.data.chexpert8x200 import read_official_lists
from convirt.data.labelled import LabelledManifest, LabelledTask, manifest_from_frame
from convirt.data.manifest import read_table
from convirt.data.sources.common import check_images_exist, draw_validation, require_file, require_table_columns
from convirt.errors import ConfigError, ManifestError

LAYOUT = "ROOT/{train,valid}.csv + ROOT/{train,valid}/patientNNNNN/studyN/viewN_*.jpg"
LABELS = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Pleural Effusion": "pleural_effusion",
}
UNCERTAIN_POLICIES = ("mixed", "zeros", "ones", "ignore")
MIXED_ONES = ("Atelectasis", "Edema")
LISTED_PATH = "_path"


def find_root(path: Path) -> Path:
    """The folder holding ``train.csv`` and ``valid.csv``: ``path`` itself or its only CheXpert sub-folder."""
    if (path / "train.csv").is_file():
        return path
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_dir() and (p / "train.csv").is_file())
        if len(found) == 1:
            return found[0]
    raise ManifestError(f"{path} is not a CheXpert folder: no train.csv in it or in one sub-folder ({LAYOUT})")


def apply_uncertain_policy(values: pd.Series, label: str, policy: str) -> pd.Series:
    """CheXpert cells (1, 0, -1, blank) -> "1", "0" or "" (unknown) under ``policy``."""
    numeric = pd.to_numeric(values.astype(str).str.strip().replace("", np.nan), errors="coerce")
    if policy == "mixed":
        uncertain = 1.0 if label in MIXED_ONES else 0.0
    else:
        uncertain = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[policy]
    mapped = numeric.fillna(0.0).where(numeric != -1.0, uncertain)
    return mapped.map(lambda v: "" if np.isnan(v) else str(int(v)))


def _resolve(path_cell: str, root: Path) -> str:
    parts = Path(path_cell).parts
    if parts and parts[0] == root.name:
        return str(root.parent / path_cell)
    if len(parts) > 1 and parts[0].lower().startswith("chexpert"):
        return str(root.joinpath(*parts[1:]))
    return str(root / path_cell)


def _table(csv_file: Path, root: Path, policy: str, split: str, frontal_only: bool) -> pd.DataFrame:
    table = read_table(csv_file)
    require_table_columns(table, ["Path", *LABELS], f"CheXpert {csv_file}", LAYOUT)
    if frontal_only and "Frontal/Lateral" in table.columns:
        table = table[table["Frontal/Lateral"] == "Frontal"]
    bad = []
    numeric = table[list(LABELS)].apply(lambda c: pd.to_numeric(c.str.strip().replace("", np.nan), errors="coerce"))
    for label in LABELS:
        wrong = ~(numeric[label].isna() | numeric[label].isin([1.0, 0.0, -1.0])) | (
            numeric[label].isna() & (table[label].str.strip() != "")
        )
        bad.extend(np.flatnonzero(wrong.to_numpy()) + 1)
    if bad:
        raise ManifestError(f"CheXpert {csv_file}: label cells must be 1, 0, -1 or blank (data rows {sorted(bad)[:5]})")
    parts = table["Path"].str.extract(r"(patient\d+)/(study\d+)/")
    if parts.isna().any().any():
        rows = np.flatnonzero(parts.isna().any(axis=1).to_numpy())[:5] + 1
        raise ManifestError(f"CheXpert {csv_file}: Path without patientNNNNN/studyN/ (data rows {rows.tolist()})")
    frame = pd.DataFrame(
        {
            "image": [_resolve(p, root) for p in table["Path"]],
            "patient_id": parts[0].to_numpy(),
            "study_id": (parts[0] + "/" + parts[1]).to_numpy(),
            "split": split,
            LISTED_PATH: table["Path"].to_numpy(),  # as train.csv names it, for the retrieval-image exclusion
        }
    )
    for label, column in LABELS.items():
        frame[column] = apply_uncertain_policy(table[label], label, policy).to_numpy()
    return frame


def _below_dataset_folder(path: str) -> str:
    """``CheXpert-v1.0-small/train/patient1/study1/view1.jpg`` -> ``train/patient1/study1/view1.jpg``."""
    parts = Path(path).parts
    return Path(*parts[1:]).as_posix() if parts and parts[0].lower().startswith("chexpert") else Path(path).as_posix()


def without_retrieval_images(
    train: pd.DataFrame, lists: str | os.PathLike | None = None
) -> tuple[pd.DataFrame, int, int]:
    """``train`` (rows of ``train.csv``) without the images the CheXpert 8x200 lists name (query and candidate
    images, default: the official lists); returns (kept rows, rows removed, images listed)."""
    listed = {_below_dataset_folder(p) for p in read_official_lists(lists, strict=lists is None).image_paths()}
    removed = train[LISTED_PATH].map(_below_dataset_folder).isin(listed)
    return train[~removed], int(removed.sum()), len(listed)


def build(
    root: str | os.PathLike,
    uncertain: str = "mixed",
    val_size: float = 5000,
    seed: int = 0,
    frontal_only: bool = False,
    check_files: bool = True,
    exclude_retrieval: bool = False,
    retrieval_lists: str | os.PathLike | None = None,
) -> LabelledManifest:
    if uncertain not in UNCERTAIN_POLICIES:
        raise ConfigError(f"unknown CheXpert uncertain-label policy {uncertain!r}; use one of {UNCERTAIN_POLICIES}")
    root = find_root(Path(os.path.abspath(root)))
    train_csv = require_file(root / "train.csv", "CheXpert train", LAYOUT)
    valid_csv = require_file(root / "valid.csv", "CheXpert valid", LAYOUT)
    train = _table(train_csv, root, uncertain, "train", frontal_only)
    test = _table(valid_csv, root, uncertain, "test", frontal_only)
    notes = f"uncertain-label policy: {uncertain}; official valid.csv as test"
    if exclude_retrieval:
        train, removed, listed = without_retrieval_images(train, retrieval_lists)
        notes += (
            f"; {removed} of the {listed} CheXpert 8x200 retrieval images (queries + candidates) removed from "
            "train.csv before the validation draw"
        )
    frame = pd.concat([draw_validation(train, val_size, seed), test], ignore_index=True).drop(columns=LISTED_PATH)
    if check_files:
        check_images_exist(frame["image"], f"CheXpert {root}")
    columns = list(LABELS.values())
    task = LabelledTask(
        name="chexpert",
        kind="multilabel",
        class_names=columns,
        label_columns=columns,
        metric="mean_auc",
        paper_key="chexpert",
        notes=notes,
    )
    return manifest_from_frame(frame, task, root, source=f"CheXpert {root}", path=train_csv)
