"""Turn raw dataset downloads into the canonical paired manifest and the resized image cache.

``prepare(source, input_dir, output_dir, **options)`` is what ``convirt prepare`` calls. Each source has one
adapter module (``mimic``, ``iu_xray``, ``covid``, ``table``) that reads its raw layout into studies; the shared
pipeline (``pipeline``) filters the text, resizes the images once, draws the patient splits and writes::

    OUTPUT/manifest.csv            images | text (one sentence per line) | patient_id | study_id | split | extras
    OUTPUT/images/...              the cache (longer side 256 px by default, 8-bit grey PNG)
    OUTPUT/prepare_report.json     counts, drop reasons, named missing/unreadable images, corpus figures
    OUTPUT/dropped.csv             every dropped study and why
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from convirt.errors import ConfigError
from convirt.text.sections import DEFAULT_SECTIONS

from .pipeline import DROPPED_NAME, IMAGES_DIR, MANIFEST_NAME, REPORT_NAME, run_pipeline
from .report import DROP_REASONS, PrepareReport
from .types import RawPair, SourceData

SOURCES = ("mimic-cxr", "iu-xray", "covid-chestxray", "csv", "jsonl")

# Defaults that differ per source: the paper's 5000 validation pairs for MIMIC-CXR; 10% for the small sets.
SOURCE_DEFAULTS: dict[str, dict[str, Any]] = {
    "mimic-cxr": {"val_size": 5000, "views": "all"},
    "iu-xray": {"val_size": 0.1, "views": "all"},
    "covid-chestxray": {"val_size": 0.1, "views": "frontal"},
    "csv": {"val_size": 0.1, "views": "all"},
    "jsonl": {"val_size": 0.1, "views": "all"},
}

__all__ = [
    "DROPPED_NAME",
    "DROP_REASONS",
    "IMAGES_DIR",
    "MANIFEST_NAME",
    "REPORT_NAME",
    "SOURCES",
    "PrepareReport",
    "RawPair",
    "SourceData",
    "prepare",
    "read_source",
]


def read_source(source: str, input_dir: Path, views: str, options: dict[str, Any]) -> SourceData:
    """Run the adapter for ``source`` on ``input_dir`` (``options`` are the source-specific keywords)."""
    if source == "covid-chestxray":
        from .covid import read_covid

        return read_covid(input_dir, views=views, **options)
    if source == "mimic-cxr":
        from .mimic import read_mimic

        return read_mimic(input_dir, views=views, **options)
    if source == "iu-xray":
        from .iu_xray import read_iu_xray

        return read_iu_xray(input_dir, views=views, **options)
    if source in ("csv", "jsonl"):
        from .table import read_pairs_table

        return read_pairs_table(input_dir, table_format=source, views=views, **options)
    raise ConfigError(f"unknown source {source!r}; choose one of {list(SOURCES)}")


def prepare(
    source: str,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    views: str | None = None,
    val_size: float | int | None = None,
    test_size: float | int | None = 0,
    split_mode: str = "random",
    seed: int = 0,
    text_mode: str | None = None,
    sections: Sequence[str] | None = DEFAULT_SECTIONS,
    min_tokens: int = 3,
    image_size: int = 256,
    image_format: str = "png",
    jpeg_draft: bool = True,
    workers: int | None = None,
    limit: int | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    **source_options: Any,
) -> PrepareReport:
    """Prepare ``source`` from the raw download at ``input_dir`` into ``output_dir``; returns the report.

    ``val_size``/``test_size``: a number of pairs (``5000``) or a fraction (``0.1``); the default is the paper's
    5000 for MIMIC-CXR and 10% for the smaller sources. ``split_mode="official"`` uses the dataset's own split
    (MIMIC-CXR's split file, a CSV split column). ``views``: ``frontal`` or ``all``. ``text_mode``: ``sections``
    (keep ``sections``, default Findings + Impression), ``whole`` or ``auto``; the default depends on the source.
    ``limit`` keeps the first N studies (smoke runs). Re-running into the same ``output_dir`` reuses every image
    already cached.
    """
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}; choose one of {list(SOURCES)}")
    input_path = Path(input_dir).expanduser()
    if not input_path.exists():
        raise ConfigError(f"--input {input_path} does not exist")
    output_path = Path(output_dir).expanduser()
    defaults = SOURCE_DEFAULTS[source]
    views = views or defaults["views"]
    data = read_source(source, input_path, views, source_options)
    if limit is not None:
        data.pairs = data.pairs[: int(limit)]
        data.notes.append(f"--limit {limit}: only the first {len(data.pairs)} studies were prepared")
    return run_pipeline(
        source,
        data,
        input_path,
        output_path,
        text_mode=text_mode,  # type: ignore[arg-type]
        sections=sections,
        min_tokens=min_tokens,
        image_size=image_size,
        image_format=image_format,
        jpeg_draft=jpeg_draft,
        workers=workers,
        val_size=defaults["val_size"] if val_size is None else val_size,
        test_size=test_size,
        split_mode=split_mode,
        seed=seed,
        progress=progress,
        log=log,
        settings={"views": views, **{k: v for k, v in source_options.items() if v is not None}},
    )
