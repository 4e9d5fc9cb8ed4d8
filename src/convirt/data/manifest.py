"""The canonical paired manifest: one table that every paired data source is converted into.

Columns (CSV, Parquet or JSON Lines; extra columns are kept but ignored):

================ ==========================================================================================
``images``       one or more image paths for the study, joined with ``|``; relative paths are resolved
                 against the image root (default: the manifest's own folder)
``text``         the report text. Written by ``convirt prepare`` as one sentence per line (Findings +
                 Impression). Text without line breaks is split into sentences when loaded.
``patient_id``   patient identifier (splits are drawn by patient, so no patient is in two splits)
``study_id``     study identifier (unique per row)
``split``        ``train``, ``val`` or ``test``
================ ==========================================================================================

The loaded form, :class:`PairedManifest`, keeps strings in flat byte buffers with offsets (numpy arrays, no
Python object per string), so DataLoader worker processes that fork share the pages instead of copying them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from convirt.errors import ManifestError

PAIRED_COLUMNS = ("images", "text", "patient_id", "study_id", "split")
IMAGE_SEPARATOR = "|"
SPLITS = ("train", "val", "test")


class StringColumn:
    """An immutable sequence of strings stored as one UTF-8 buffer plus offsets."""

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        if index < 0:
            index += len(self)
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._buffer[start:end].tobytes().decode("utf-8")

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class RaggedStrings:
    """A sequence of string lists (e.g. the sentences of each report), stored flat."""

    def __init__(self, rows: Sequence[Sequence[str]]) -> None:
        counts = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        self._row_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=self._row_offsets[1:])
        self._items = StringColumn([s for row in rows for s in row])

    def __len__(self) -> int:
        return len(self._row_offsets) - 1

    def count(self, index: int) -> int:
        return int(self._row_offsets[index + 1] - self._row_offsets[index])

    def item(self, index: int, position: int) -> str:
        return self._items[int(self._row_offsets[index]) + position]

    def __getitem__(self, index: int) -> list[str]:
        start, end = self._row_offsets[index], self._row_offsets[index + 1]
        return [self._items[i] for i in range(int(start), int(end))]


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV, TSV, Parquet or JSON Lines table, all columns as strings; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist (run `convirt prepare ...` to make one)")
    suffixes = "".join(path.suffixes).lower()
    try:
        if suffixes.endswith(".parquet"):
            frame = pd.read_parquet(path)
        elif suffixes.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            frame = pd.read_json(path, lines=True, dtype=False)
        elif suffixes.endswith((".tsv", ".tsv.gz")):
            frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises parser-specific types
        raise ManifestError(f"cannot parse table {path}: {exc}") from exc
    return frame.fillna("").astype(str)


def require_columns(frame: pd.DataFrame, required: Sequence[str], source: str, hint: str | None = None) -> None:
    """Raise a :class:`ManifestError` listing the missing and the present columns (``hint``: what to do)."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"{source} is missing column(s) {missing}; it has {list(frame.columns)}. "
            + (hint or f"It needs {list(required)}.")
        )


def split_images(cell: str) -> list[str]:
    return [p.strip() for p in str(cell).split(IMAGE_SEPARATOR) if p.strip()]


def resolve_path(path: str, root: Path) -> str:
    return path if os.path.isabs(path) else str(root / path)


def report_sentences(text: str) -> list[str]:
    """Sentences of a manifest ``text`` cell: one per line when prepared, else split with the report splitter.

    Control characters and simple HTML markup are cleaned out first (:func:`convirt.text.clean.clean_text`), so a
    hand-written manifest trains on the same clean text as a prepared one."""
    from convirt.text.clean import clean_text

    lines = [line.strip() for line in clean_text(text).splitlines() if line.strip()]
    if len(lines) > 1:
        return lines
    from convirt.text.sentences import split_sentences

    return split_sentences(lines[0]) if lines else []


@dataclass
class PairedManifest:
    """A loaded paired manifest for one split (or all rows)."""

    path: Path
    image_root: Path
    images: RaggedStrings  # absolute/resolved image paths per row
    sentences: RaggedStrings  # sentences per row
    patient_ids: StringColumn
    study_ids: StringColumn
    rows: np.ndarray  # row numbers in the file (1-based data rows), for error messages

    def __len__(self) -> int:
        return len(self.images)

    def describe_row(self, index: int) -> str:
        return f"row {int(self.rows[index])} (study {self.study_ids[index]}) of {self.path}"


def read_paired_manifest(
    path: str | os.PathLike,
    split: str | None = None,
    image_root: str | os.PathLike | None = None,
) -> PairedManifest:
    """Load and validate a paired manifest, keeping only ``split`` when given.

    Raises :class:`ManifestError` for missing columns, an empty text, a row with no image, or an unknown split.
    """
    path = Path(path)
    frame = read_table(path)
    require_columns(
        frame,
        PAIRED_COLUMNS,
        f"manifest {path}",
        f"A paired manifest needs {list(PAIRED_COLUMNS)} (see `convirt prepare --help`).",
    )
    unknown = sorted(set(frame["split"]) - set(SPLITS))
    if unknown:
        raise ManifestError(f"manifest {path} has unknown split value(s) {unknown}; use one of {list(SPLITS)}")
    frame = frame.assign(_row=np.arange(1, len(frame) + 1))
    if split is not None:
        if split not in SPLITS:
            raise ManifestError(f"unknown split {split!r}; use one of {list(SPLITS)}")
        frame = frame[frame["split"] == split]
    root = Path(image_root) if image_root else path.parent
    images = [[resolve_path(p, root) for p in split_images(cell)] for cell in frame["images"]]
    sentences = [report_sentences(text) for text in frame["text"]]
    for what, values in (("no image path", images), ("an empty text", sentences)):
        bad = [int(r) for r, v in zip(frame["_row"], values, strict=True) if not v]
        if bad:
            shown = ", ".join(str(r) for r in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise ManifestError(
                f"manifest {path}: {len(bad)} row(s) have {what} (data row {shown}). "
                "Every pair needs at least one image and a non-empty report; drop those rows or re-run "
                "`convirt prepare`, which filters them."
            )
    return PairedManifest(
        path=path,
        image_root=root,
        images=RaggedStrings(images),
        sentences=RaggedStrings(sentences),
        patient_ids=StringColumn(list(frame["patient_id"])),
        study_ids=StringColumn(list(frame["study_id"])),
        rows=frame["_row"].to_numpy(),
    )


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a CSV or Parquet table atomically (format by extension)."""
    from convirt.fileio import atomic_open

    path = Path(path)
    if path.suffix.lower() == ".parquet":
        with atomic_open(path, "wb") as handle:
            frame.to_parquet(handle, index=False)
    else:
        with atomic_open(path, "w") as handle:
            frame.to_csv(handle, index=False)
