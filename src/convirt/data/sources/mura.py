"""MURA v1.1 (musculoskeletal radiographs), binary abnormal, scored per study.

Layout (as downloaded; the CSVs have no header and their paths start with ``MURA-v1.1/``)::

    ROOT/train_image_paths.csv      MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png
    ROOT/train_labeled_studies.csv  MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/,1
    ROOT/valid_image_paths.csv      ROOT/valid_labeled_studies.csv      ROOT/train/...   ROOT/valid/...

Labels are per study (1 = abnormal) and every image of a study gets its study's label. The paper scores MURA
"at the patient level" by averaging image probabilities; MURA's unit of labelling is the study (a patient may
have a normal and an abnormal study), so the default ``scoring_level`` is ``study``: the probabilities of a
study's images are averaged and each study is scored once. ``scoring_level="patient"`` averages per patient
(a patient's label is then abnormal if any of their studies is). Splits follow the paper: the official valid set
is the test set; ``val_size`` (10 %) of the training images, whole patients at a time, are the validation set.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from convirt.data.labelled import LabelledManifest, LabelledTask, manifest_from_frame
from convirt.data.sources.common import check_images_exist, draw_validation, require_dir, require_file
from convirt.errors import ConfigError, ManifestError

LAYOUT = "ROOT/{train,valid}_image_paths.csv + ROOT/{train,valid}_labeled_studies.csv (MURA-v1.1)"
CLASS_NAMES = ["normal", "abnormal"]


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _resolve(cell: str, root: Path) -> str:
    parts = Path(cell).parts
    if parts and parts[0] == root.name:
        return str(root.parent / cell)
    if len(parts) > 1 and parts[0].upper().startswith("MURA"):
        return str(root.joinpath(*parts[1:]))
    return str(root / cell)


def _read(root: Path, prefix: str, split: str) -> pd.DataFrame:
    studies_file = require_file(root / f"{prefix}_labeled_studies.csv", "MURA studies", LAYOUT)
    images_file = require_file(root / f"{prefix}_image_paths.csv", "MURA image paths", LAYOUT)
    labels: dict[str, str] = {}
    for number, line in enumerate(_lines(studies_file), start=1):
        study, _, value = line.rpartition(",")
        if value.strip() not in ("0", "1") or not study:
            raise ManifestError(f"MURA {studies_file}, line {number}: expected 'STUDY_FOLDER/,0|1', got {line!r}")
        labels[study.rstrip("/")] = CLASS_NAMES[int(value)]
    records = []
    for number, line in enumerate(_lines(images_file), start=1):
        cell = line.split(",")[0]
        study = cell.rsplit("/", 1)[0]
        if study not in labels:
            raise ManifestError(f"MURA {images_file}, line {number}: image {cell} belongs to no labelled study")
        parts = study.split("/")
        patient = next((p for p in parts if p.startswith("patient")), None)
        if patient is None or len(parts) < 3:
            raise ManifestError(f"MURA {images_file}, line {number}: no patientNNNNN folder in {cell}")
        records.append((_resolve(cell, root), patient, "/".join(parts[-3:]), split, labels[study]))
    return pd.DataFrame(records, columns=["image", "patient_id", "study_id", "split", "label"])


def build(
    root: str | os.PathLike,
    val_size: float = 0.1,
    seed: int = 0,
    scoring_level: str = "study",
    check_files: bool = True,
) -> LabelledManifest:
    if scoring_level not in ("study", "patient", "image"):
        raise ConfigError(f"MURA scoring level must be study, patient or image, not {scoring_level!r}")
    root = Path(os.path.abspath(root))
    require_dir(root, "MURA", LAYOUT)
    train = _read(root, "train", "train")
    test = _read(root, "valid", "test")
    frame = pd.concat([draw_validation(train, val_size, seed), test], ignore_index=True)
    if check_files:
        check_images_exist(frame["image"], f"MURA {root}")
    task = LabelledTask(
        name="mura",
        kind="binary",
        class_names=CLASS_NAMES,
        metric="auc",
        scoring_level=scoring_level,
        paper_key="mura",
        notes="official valid set as test; probabilities averaged per " + scoring_level,
    )
    return manifest_from_frame(frame, task, root, source=f"MURA {root}", path=root / "train_image_paths.csv")
