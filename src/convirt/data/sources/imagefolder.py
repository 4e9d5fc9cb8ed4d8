"""ImageFolder layout: one folder per class, optionally inside split folders.

Accepted layouts (folder names case-insensitive; hidden files and non-image files are skipped)::

    ROOT/train/CLASS/*.jpeg   ROOT/test/CLASS/*.jpeg   [ROOT/val/CLASS/*]     (e.g. kermany-pneumonia)
    ROOT/CLASS/*.png                                                          (no split folders)

Split folders may be named ``train``/``training``, ``val``/``valid``/``validation``/``dev``, ``test``/``testing``.
When there is no validation folder, ``val_size`` of the training images (default 10 %) are moved to ``val``
whole patients at a time; with no split folders at all, ``test_size`` (default 20 %) also goes to ``test``.

Patient ids come from the file name: ``patient_pattern`` (a regular expression whose first group, or group
``patient``, is the id) or, by default, the Kermany pediatric pneumonia conventions (``person123_bacteria_45``
-> ``person123``; ``IM-0115-0001`` -> ``IM-0115``; ``NORMAL2-IM-0381-0001`` -> ``NORMAL2-IM-0381``); a name that
matches none of them is its own patient (the file stem). Each image is its own study. Two classes make a binary
task whose positive class is ``positive`` (default: the second class in sorted order, e.g. ``PNEUMONIA`` after
``NORMAL``); more make a multiclass task (accuracy).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from convirt.data.labelled import LabelledManifest, LabelledTask, manifest_from_frame
from convirt.data.sources.common import IMAGE_EXTENSIONS, SPLIT_ALIASES, draw_val_test, draw_validation
from convirt.errors import ConfigError, ManifestError

LAYOUT = "ROOT/[train|val|test/]CLASS/IMAGE"
KERMANY_PATTERNS = (r"^(person\d+)_", r"^((?:NORMAL\d*-)?IM-\d+)-")


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(extensions):
                found.append(Path(dirpath) / name)
    return found


def patient_from_name(name: str, pattern: str | None = None) -> str:
    """Patient id of an image file name (see the module docstring)."""
    stem = Path(name).stem
    patterns = (pattern,) if pattern else KERMANY_PATTERNS
    for candidate in patterns:
        match = re.search(candidate, name)
        if match:
            if "patient" in match.groupdict():
                return match.group("patient")
            return match.group(1) if match.groups() else match.group(0)
    return stem


def build(
    root: str | os.PathLike,
    val_size: float = 0.1,
    test_size: float = 0.2,
    seed: int = 0,
    patient_pattern: str | None = None,
    positive: str | None = None,
    name: str | None = None,
) -> LabelledManifest:
    """Read an ImageFolder tree into a labelled manifest (see the module docstring)."""
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise ManifestError(f"image folder {root} does not exist; expected the layout {LAYOUT}")
    if patient_pattern:
        try:
            re.compile(patient_pattern)
        except re.error as exc:
            raise ConfigError(f"patient pattern {patient_pattern!r} is not a regular expression: {exc}") from exc
    top = _visible_dirs(root)
    split_dirs = {d: SPLIT_ALIASES[d.name.lower()] for d in top if d.name.lower() in SPLIT_ALIASES}
    if split_dirs and len(split_dirs) != len(top):
        others = [d.name for d in top if d not in split_dirs]
        raise ManifestError(f"{root} mixes split folders {[d.name for d in split_dirs]} with other folders {others}")
    sources = split_dirs.items() if split_dirs else [(root, "")]
    records = []
    for folder, split in sources:
        for class_dir in _visible_dirs(folder):
            for image in _images(class_dir, IMAGE_EXTENSIONS):
                patient = patient_from_name(image.name, patient_pattern)
                records.append((str(image), patient, image.relative_to(root).as_posix(), split, class_dir.name))
    if not records:
        raise ManifestError(f"no images found under {root}; expected the layout {LAYOUT}")
    frame = pd.DataFrame(records, columns=["image", "patient_id", "study_id", "split", "label"])
    classes = sorted(set(frame["label"]))
    if len(classes) < 2:
        raise ManifestError(f"{root} has {len(classes)} class folder(s) {classes}; a classification task needs 2+")
    if split_dirs:
        if "train" not in set(frame["split"]) or "test" not in set(frame["split"]):
            raise ManifestError(f"{root} has split folders but no train and test images ({LAYOUT})")
        if "val" not in set(frame["split"]):
            frame = draw_validation(frame, val_size, seed)
    else:
        frame = draw_val_test(frame, val_size, test_size, seed)
    if len(classes) == 2:
        if positive is not None:
            if positive not in classes:
                raise ConfigError(f"positive class {positive!r} is not one of the class folders {classes}")
            classes = [c for c in classes if c != positive] + [positive]
        task = LabelledTask(name=name or root.name, kind="binary", class_names=classes)
    else:
        task = LabelledTask(name=name or root.name, kind="multiclass", class_names=classes)
    return manifest_from_frame(frame, task, root, source=f"image folder {root}", path=root)
