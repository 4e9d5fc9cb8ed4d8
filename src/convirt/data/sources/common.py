"""Helpers shared by the labelled-dataset adapters: layout checks, patient-level validation splits."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from convirt.data.manifest import require_columns
from convirt.data.splits import assign_splits
from convirt.errors import ManifestError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".gif", ".webp")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


def require_dir(path: Path, what: str, layout: str) -> Path:
    if not path.is_dir():
        raise ManifestError(f"{what} folder {path} does not exist; expected the layout {layout}")
    return path


def require_file(path: Path, what: str, layout: str) -> Path:
    if not path.is_file():
        raise ManifestError(f"{what} file {path} does not exist; expected the layout {layout}")
    return path


def check_images_exist(paths: Iterable[str], source: str) -> None:
    """Raise a :class:`ManifestError` naming the first few image files the labels list but the disk lacks."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ManifestError(f"{source}: {len(missing)} labelled image(s) are missing on disk: {shown}")


def draw_validation(frame: pd.DataFrame, val_size: float | int, seed: int) -> pd.DataFrame:
    """Move ``val_size`` train rows (a count, or a fraction of train) to ``val``, whole patients at a time."""
    frame = frame.copy()
    train = np.flatnonzero(frame["split"].to_numpy() == "train")
    if len(train) == 0 or not val_size:
        return frame
    groups = frame["patient_id"].to_numpy()[train].tolist()
    assigned = assign_splits(groups, val_size, 0, seed)
    column = frame.columns.get_loc("split")
    frame.iloc[train, column] = assigned
    return frame


def draw_val_test(frame: pd.DataFrame, val_size: float | int, test_size: float | int, seed: int) -> pd.DataFrame:
    """Split all rows into train/val/test by patient (``*_size`` are counts or fractions of all rows)."""
    frame = frame.copy()
    frame["split"] = assign_splits(frame["patient_id"].tolist(), val_size, test_size, seed)
    return frame


def require_table_columns(frame: pd.DataFrame, required: Iterable[str], source: str, layout: str = "") -> None:
    """Raise a :class:`ManifestError` listing the missing and the present columns of a source table."""
    require_columns(frame, list(required), source, f"Expected the layout {layout}." if layout else None)
