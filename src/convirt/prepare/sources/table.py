"""Any table of image-report pairs: CSV/TSV/Parquet (``csv``) or JSON Lines (``jsonl``).

This is how a hospital export or the paper's musculoskeletal set comes in. Columns are named on the command
line; defaults are the first present of:

- images: ``images``, ``image``, ``image_path``, ``image_paths``, ``path``, ``filename``, ``file``; several
  columns can be given (one image each), and one cell can hold several paths separated by ``|`` or ``;`` (or
  ``image_separator``); in JSON Lines a list of paths also works;
- text: ``text``, ``report``, ``report_text``; several text columns (e.g. ``findings`` and ``impression``)
  become sections named after the columns, so the Findings + Impression rule applies to them;
- patient: ``patient_id``, ``patient``, ``subject_id`` (none: every study is its own patient, noted in the
  report); study: ``study_id``, ``study``, ``accession`` (none: one study per row); split and view: optional.

Rows with the same study id are one study (their images are merged; the first non-empty text is used and the
number of studies whose rows disagree on the text is reported). Relative image paths resolve against
``images_dir`` (default: the table's folder).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from convirt.data.manifest import require_columns
from convirt.errors import ConfigError, ManifestError
from convirt.text.sections import canonical_section

from ..tables import read_source_table, read_text
from ..types import PrepareSource, RawPair, ReadSettings, SourceData, SourceOption

IMAGE_DEFAULTS = ("images", "image", "image_path", "image_paths", "path", "paths", "filename", "file")
TEXT_DEFAULTS = ("text", "report", "report_text", "reports")
PATIENT_DEFAULTS = ("patient_id", "patient", "subject_id", "subject")
STUDY_DEFAULTS = ("study_id", "study", "accession", "accession_number")
FRONTAL = frozenset({"PA", "AP", "FRONTAL", "AP SUPINE", "AP ERECT", "PA ERECT", "AP SEMI ERECT"})
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
TABLE_SUFFIXES = {
    "csv": (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet"),
    "jsonl": (".jsonl", ".jsonl.gz", ".ndjson"),
}


def _find_table(input_dir: Path, table: str | os.PathLike | None, table_format: str) -> Path:
    if table is not None:
        path = Path(table)
        path = path if path.is_absolute() or path.exists() else input_dir / path
        if not path.is_file():
            raise ConfigError(f"table {path} not found")
        return path
    if input_dir.is_file():
        return input_dir
    found = sorted(p for p in input_dir.iterdir() if p.name.lower().endswith(TABLE_SUFFIXES[table_format]))
    if len(found) != 1:
        listed = [p.name for p in found] or "none"
        raise ConfigError(
            f"input folder {input_dir} holds {len(found)} {table_format} tables ({listed}); give the table itself as "
            "the input, or name it: table=NAME"
        )
    return found[0]


def _read_jsonl(path: Path, encoding: str) -> pd.DataFrame:
    """JSON Lines with lists kept as lists (pandas would turn them into strings)."""
    records = []
    for number, line in enumerate(read_text(path, encoding).split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} line {number} is not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise ManifestError(f"{path} line {number} is not a JSON object")
        records.append(record)
    frame = pd.DataFrame.from_records(records)

    def clean(value: Any) -> Any:
        if isinstance(value, list):
            return value
        if value is None or (isinstance(value, float) and value != value):  # missing key -> NaN
            return ""
        return str(value)

    return frame.map(clean)


def _pick(
    frame: pd.DataFrame,
    given: Sequence[str] | str | None,
    defaults: Sequence[str],
    what: str,
    source: str,
    required: bool,
) -> list[str]:
    if given:
        names = [given] if isinstance(given, str) else list(given)
        require_columns(frame, names, f"{source} ({what} column)")
        return names
    lowered = {c.lower(): c for c in frame.columns}
    for name in defaults:
        if name in lowered:
            return [lowered[name]]
    if required:
        raise ManifestError(
            f"{source} has no {what} column (looked for {list(defaults)}); it has {list(frame.columns)}. "
            f"Name it: {what}_column{'s' if what in ('image', 'text') else ''}=NAME."
        )
    return []


def _split_cell(value: Any, separator: str | None) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    if not text:
        return []
    if separator:
        parts = text.split(separator)
    elif "|" in text:
        parts = text.split("|")
    elif ";" in text:
        parts = text.split(";")
    else:
        parts = [text]
    return [p.strip() for p in parts if p.strip()]


def read_pairs_table(
    input_dir: Path,
    settings: ReadSettings,
    table_format: str = "csv",
    table: str | os.PathLike | None = None,
    image_columns: Sequence[str] | str | None = None,
    text_columns: Sequence[str] | str | None = None,
    image_separator: str | None = None,
    patient_column: str | None = None,
    study_column: str | None = None,
    split_column: str | None = None,
    view_column: str | None = None,
    images_dir: str | os.PathLike | None = None,
) -> SourceData:
    """Read a table of pairs into studies (see the module notes for column defaults and grouping)."""
    views = settings.views
    path = _find_table(input_dir, table, table_format)
    is_jsonl = path.name.lower().endswith(TABLE_SUFFIXES["jsonl"])
    frame = _read_jsonl(path, settings.encoding) if is_jsonl else read_source_table(path, settings)
    source = f"table {path}"
    image_cols = _pick(frame, image_columns, IMAGE_DEFAULTS, "image", source, True)
    text_cols = _pick(frame, text_columns, TEXT_DEFAULTS, "text", source, True)
    patient_cols = _pick(frame, patient_column, PATIENT_DEFAULTS, "patient", source, False)
    study_cols = _pick(frame, study_column, STUDY_DEFAULTS, "study", source, False)
    split_cols = _pick(frame, split_column, ("split",), "split", source, False)
    view_cols = _pick(
        frame, view_column, ("view", "view_position", "viewposition", "projection"), "view", source, views == "frontal"
    )
    root = Path(images_dir) if images_dir else path.parent
    notes = []
    if not patient_cols:
        notes.append("no patient column: every study is its own patient, so the split is by study")
    if frame.attrs.get("delimiter", ",") != "," and not settings.delimiter and not path.name.lower().endswith(".tsv"):
        notes.append(f"table {path.name}: delimiter {frame.attrs['delimiter']!r} detected from the header line")

    rows_in = len(frame)
    studies: dict[str, RawPair] = {}
    conflicts: set[str] = set()
    rows_view = 0
    for number, row in enumerate(frame.to_dict("records"), 1):
        if views == "frontal":
            view = re.sub(r"\s+", " ", str(row[view_cols[0]])).strip().upper()
            if view not in FRONTAL:
                continue
        rows_view += 1
        study = str(row[study_cols[0]]).strip() if study_cols else ""
        study = study or f"row{number}"
        patient = (str(row[patient_cols[0]]).strip() if patient_cols else "") or study
        images = [p for column in image_cols for p in _split_cell(row[column], image_separator)]
        paths = [Path(p) if os.path.isabs(p) else root / p for p in images]
        if len(text_cols) == 1:
            text, sections = str(row[text_cols[0]]), None
        else:
            text = ""
            sections = {canonical_section(c) or c.lower(): str(row[c]) for c in text_cols}
        split = None
        if split_cols:
            split = SPLIT_NAMES.get(str(row[split_cols[0]]).strip().lower())
        pair = studies.get(study)
        if pair is None:
            studies[study] = RawPair(
                study_id=study, patient_id=patient, images=paths, text=text, sections=sections, split=split
            )
            continue
        for p in paths:
            if p not in pair.images:
                pair.images.append(p)
        current = pair.sections if pair.sections is not None else pair.text
        incoming = sections if sections is not None else text
        if not (str(current).strip() if sections is None else any(v.strip() for v in current.values())):
            pair.text, pair.sections = text, sections
        elif incoming != current and (sections is not None or text.strip()):
            conflicts.add(study)
    pairs = list(studies.values())
    stats: dict[str, object] = {
        "table": path.name,
        "rows": rows_in,
        "image_columns": ",".join(image_cols),
        "text_columns": ",".join(text_cols),
        "studies": len(pairs),
    }
    if views == "frontal":
        stats["rows_after_view_filter"] = rows_view
    if conflicts:
        notes.append(f"{len(conflicts)} studies have rows with different texts; the first non-empty text was used")
    return SourceData(pairs=pairs, image_root=root, stats=stats, notes=notes)


TABLE_OPTIONS = (
    SourceOption("table", "--table", "the table file when --input is a folder"),
    SourceOption("image_columns", "--image-column", "image column(s)", repeatable=True),
    SourceOption(
        "text_columns",
        "--text-column",
        "text column(s); several columns become sections named after them, e.g. findings and impression",
        repeatable=True,
    ),
    SourceOption("image_separator", "--image-separator", "separator inside an image cell (default: '|', else ';')"),
    SourceOption("patient_column", "--patient-column", "patient id column (default: one patient per study)"),
    SourceOption("study_column", "--study-column", "study id column (default: row number)"),
    SourceOption("split_column", "--split-column", "column with train/val(idate)/test for --split official"),
    SourceOption("view_column", "--view-column", "view column for --views frontal"),
    SourceOption("images_dir", "--images", "folder image paths are resolved against (default: the table's folder)"),
)
_TABLE_SUMMARY = (
    "any table of pairs: --input TABLE (or a folder holding it, with --table NAME), with\n"
    "--image-column/--text-column naming the columns"
)
CSV_SOURCE = PrepareSource(
    name="csv",
    summary=_TABLE_SUMMARY,
    read=read_pairs_table,
    text_mode="auto",
    options=TABLE_OPTIONS,
    fixed=MappingProxyType({"table_format": "csv"}),
)
JSONL_SOURCE = replace(CSV_SOURCE, name="jsonl", fixed=MappingProxyType({"table_format": "jsonl"}))
