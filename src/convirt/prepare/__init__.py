"""Turn raw dataset downloads into the canonical paired manifest and the resized image cache.

``prepare(source, input_dir, output_dir, **options)`` is what ``convirt prepare`` calls. Each source is one module
of :mod:`convirt.prepare.sources` (``mimic``, ``iu_xray``, ``covid``, ``table``) that reads its raw layout into
studies; the options of a run are one :class:`PrepareOptions`; the shared pipeline (``pipeline``) filters the
text, resizes the images once, draws the patient splits and writes::

    OUTPUT/manifest.csv            images | text (one sentence per line) | patient_id | study_id | split | extras
    OUTPUT/images/...              the cache (longer side 256 px by default, 8-bit grey PNG)
    OUTPUT/prepare_report.json     counts, drop reasons, named missing/unreadable images, corpus figures
    OUTPUT/dropped.csv             every dropped study and why
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convirt.errors import ConfigError

from .options import PrepareOptions
from .pipeline import DROPPED_NAME, IMAGES_DIR, MANIFEST_NAME, REPORT_NAME, run_prepare
from .report import DROP_REASONS, PrepareReport
from .sources import SOURCES, get_source
from .types import PrepareSource, RawPair, SourceData

__all__ = [
    "DROPPED_NAME",
    "DROP_REASONS",
    "IMAGES_DIR",
    "MANIFEST_NAME",
    "REPORT_NAME",
    "SOURCES",
    "PrepareOptions",
    "PrepareReport",
    "PrepareSource",
    "RawPair",
    "SourceData",
    "get_source",
    "prepare",
]


def prepare(
    source: str,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    options: PrepareOptions | None = None,
    *,
    log: Callable[[str], None] | None = None,
    **keywords: Any,
) -> PrepareReport:
    """Prepare ``source`` from the raw download at ``input_dir`` into ``output_dir``; returns the report.

    Pass a :class:`PrepareOptions`, or its fields and the source's own options as keywords
    (``prepare("csv", "export.csv", "data/x", val_size=0.1, image_columns=["paths"])``). Re-running into the same
    ``output_dir`` reuses every image already cached.
    """
    if options is None:
        options = PrepareOptions.from_keywords(**keywords)
    elif keywords:
        raise ConfigError(f"give either a PrepareOptions or keywords, not both (got {sorted(keywords)})")
    return run_prepare(get_source(source), Path(input_dir).expanduser(), Path(output_dir).expanduser(), options, log)
