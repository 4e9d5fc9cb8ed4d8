"""COVIDx (v4 and later), the paper's three-class task (accuracy).

Layout (as built by the COVID-Net scripts)::

    ROOT/train.txt   ROOT/test.txt   ROOT/train/<file>   ROOT/test/<file>

Each split-file line is ``patient_id file_name class [source]`` separated by spaces (v4 has no source column;
later versions add it). Classes ``normal``, ``pneumonia``, ``COVID-19`` (case-insensitive) make the paper's
3-class task, class order ``normal, pneumonia, COVID-19``; the binary ``negative``/``positive`` labels of
COVIDx9+ make a binary task (AUC). Split files named ``train_*.txt``/``test_*.txt`` are found when they are the
only ones. The official test list is the test set; ``val_size`` (300) training images, whole patients at a
time, are the validation set.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from convirt.data.labelled import LabelledManifest, LabelledTask, manifest_from_frame
from convirt.data.sources.common import check_images_exist, draw_validation, require_dir
from convirt.errors import ManifestError

LAYOUT = "ROOT/{train,test}.txt (patient_id file class [source]) + ROOT/{train,test}/<file>"
THREE_CLASSES = {"normal": "normal", "pneumonia": "pneumonia", "covid-19": "COVID-19", "covid19": "COVID-19"}
BINARY_CLASSES = {"negative": "negative", "positive": "positive"}


def split_file(root: Path, split: str) -> Path:
    exact = root / f"{split}.txt"
    if exact.is_file():
        return exact
    found = sorted(root.glob(f"{split}*.txt"))
    if len(found) == 1:
        return found[0]
    raise ManifestError(f"COVIDx {root}: no single {split}.txt (found {[p.name for p in found]}); expected {LAYOUT}")


def parse_line(line: str, known: set[str]) -> tuple[str, str, str, str]:
    """``"12 a b.png COVID-19 cohen"`` -> (patient, file, class, source); file names may contain spaces."""
    tokens = line.split()
    if len(tokens) < 3:
        raise ValueError("fewer than 3 fields")
    if tokens[-1].lower() in known:
        return tokens[0], " ".join(tokens[1:-1]), tokens[-1], ""
    if len(tokens) >= 4 and tokens[-2].lower() in known:
        return tokens[0], " ".join(tokens[1:-2]), tokens[-2], tokens[-1]
    raise ValueError(f"no class among {sorted(known)}")


def _read(path: Path, images_dir: Path, split: str) -> pd.DataFrame:
    known = set(THREE_CLASSES) | set(BINARY_CLASSES)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            patient, name, label, source = parse_line(line, known)
        except ValueError as exc:
            raise ManifestError(f"COVIDx {path}, line {number}: {exc}: {line!r} ({LAYOUT})") from exc
        key = label.lower()
        label = THREE_CLASSES.get(key) or BINARY_CLASSES[key]
        records.append((str(images_dir / name), patient, f"{split}/{name}", split, label, source))
    return pd.DataFrame(records, columns=["image", "patient_id", "study_id", "split", "label", "source"])


def build(root: str | os.PathLike, val_size: float = 300, seed: int = 0, check_files: bool = True) -> LabelledManifest:
    root = Path(os.path.abspath(root))
    require_dir(root, "COVIDx", LAYOUT)
    train = _read(split_file(root, "train"), root / "train", "train")
    test = _read(split_file(root, "test"), root / "test", "test")
    frame = pd.concat([draw_validation(train, val_size, seed), test], ignore_index=True)
    if check_files:
        check_images_exist(frame["image"], f"COVIDx {root}")
    labels = set(frame["label"])
    if labels <= set(BINARY_CLASSES.values()):
        task = LabelledTask(name="covidx", kind="binary", class_names=["negative", "positive"], metric="auc")
    elif labels <= set(THREE_CLASSES.values()):
        task = LabelledTask(
            name="covidx",
            kind="multiclass",
            class_names=["normal", "pneumonia", "COVID-19"],
            metric="accuracy",
            paper_key="covidx",
        )
    else:
        raise ManifestError(f"COVIDx {root} mixes 3-class and binary labels: {sorted(labels)}")
    return manifest_from_frame(frame, task, root, source=f"COVIDx {root}", path=root / "train.txt")
