"""What a source adapter hands to the shared preparation pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

TextMode = Literal["sections", "whole", "auto"]


@dataclass
class RawPair:
    """One study as read from a raw layout, before any filtering.

    ``text`` is the raw report; when the layout already gives the sections separately (IU X-ray XML, a CSV with
    findings and impression columns) the adapter fills ``sections`` instead (canonical name -> text, report order)
    and no header parsing happens. ``images`` are absolute source paths (they need not exist: missing files are
    counted by the pipeline); ``unresolved`` names image references the adapter could not map to a file at all.
    """

    study_id: str
    patient_id: str
    images: list[Path]
    text: str = ""
    sections: dict[str, str] | None = None
    split: str | None = None
    unresolved: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)


@dataclass
class SourceData:
    """The adapter's output: the pairs, where images live, how to treat the text, and per-source counts."""

    pairs: list[RawPair]
    image_root: Path
    text_mode: TextMode
    stats: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
