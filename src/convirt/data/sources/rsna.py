"""RSNA Pneumonia Detection Challenge (Kaggle), stage 2.

Layout (as downloaded from Kaggle)::

    ROOT/stage_2_train_labels.csv      patientId,x,y,width,height,Target  (one row per box; Target 0/1)
    ROOT/stage_2_train_images/<patientId>.dcm

One frontal DICOM per patient; its label is 1 (``pneumonia``) when any of its rows has ``Target`` 1. The paper
reports a 25184/1500/3000 train/val/test split. 25184 + 1500 = 26684 is exactly the number of labelled stage-2
training images, so the paper's 3000 test images must be the stage-2 test set, whose labels Kaggle does not ship.
With the Kaggle layout we therefore draw the 3000 test and 1500 validation images from the labelled set
(seeded, by patient; ``test_size``/``val_size`` change them) and train on the remaining 22184.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from convirt.data.labelled import LabelledManifest, LabelledTask, manifest_from_frame
from convirt.data.manifest import read_table
from convirt.data.sources.common import (
    check_images_exist,
    draw_val_test,
    require_dir,
    require_file,
    require_table_columns,
)
from convirt.errors import ManifestError

LAYOUT = "ROOT/stage_2_train_labels.csv + ROOT/stage_2_train_images/<patientId>.dcm"
CLASS_NAMES = ["negative", "pneumonia"]


def build(
    root: str | os.PathLike,
    val_size: float = 1500,
    test_size: float = 3000,
    seed: int = 0,
    check_files: bool = True,
) -> LabelledManifest:
    root = Path(os.path.abspath(root))
    require_dir(root, "RSNA", LAYOUT)
    labels_file = require_file(root / "stage_2_train_labels.csv", "RSNA labels", LAYOUT)
    images_dir = require_dir(root / "stage_2_train_images", "RSNA image", LAYOUT)
    table = read_table(labels_file)
    require_table_columns(table, ["patientId", "Target"], f"RSNA labels {labels_file}", LAYOUT)
    target = pd.to_numeric(table["Target"], errors="coerce")
    if target.isna().any() or not target.isin([0, 1]).all():
        rows = (target.isna() | ~target.isin([0, 1])).to_numpy().nonzero()[0][:5] + 1
        raise ManifestError(f"RSNA {labels_file}: Target must be 0 or 1 (data rows {rows.tolist()})")
    per_patient = target.groupby(table["patientId"], sort=True).max().astype(int)
    patients = per_patient.index.astype(str)
    frame = pd.DataFrame(
        {
            "image": [str(images_dir / f"{p}.dcm") for p in patients],
            "patient_id": patients,
            "study_id": patients,
            "split": "train",
            "label": [CLASS_NAMES[v] for v in per_patient.to_numpy()],
        }
    )
    if check_files:
        check_images_exist(frame["image"], f"RSNA {root}")
    frame = draw_val_test(frame, val_size, test_size, seed)
    task = LabelledTask(
        name="rsna",
        kind="binary",
        class_names=CLASS_NAMES,
        metric="auc",
        paper_key="rsna",
        notes="val/test drawn from the labelled stage-2 train images by patient (see convirt.data.sources.rsna)",
    )
    return manifest_from_frame(frame, task, root, source=f"RSNA {root}", path=labels_file)
