"""What a prepare source is, what it receives, and what it hands to the shared preparation pipeline."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

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
    problem: str = ""  # why the adapter could not read this study's report (dropped as unreadable_report)


@dataclass
class SourceData:
    """The adapter's output: the pairs, where images live, and per-source counts and notes."""

    pairs: list[RawPair]
    image_root: Path
    stats: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReadSettings:
    """What every source reader receives besides its own options."""

    views: str = "all"  # "frontal" or "all"
    encoding: str = "utf-8"  # of the source's tables and text files
    delimiter: str | None = None  # of its CSV tables; None: detected from the header line


@dataclass(frozen=True)
class SourceOption:
    """One source-specific option: the reader keyword it fills and the command-line flag that sets it."""

    keyword: str
    flag: str
    help: str
    repeatable: bool = False  # the flag may be given several times (a list of values)


@dataclass(frozen=True)
class PrepareSource:
    """A raw layout ``convirt prepare`` reads: its reader, its defaults and its own options.

    ``read(input_dir, settings, **options) -> SourceData``; ``fixed`` are keywords always passed to the reader
    (one reader serving two sources). ``options`` are the reader keywords the command line exposes; the Python API
    accepts every keyword of the reader (:meth:`keywords`).
    """

    name: str
    summary: str
    read: Callable[..., SourceData]
    views: str = "all"
    val_size: float | int = 0.1
    text_mode: TextMode = "sections"
    options: tuple[SourceOption, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def keywords(self) -> list[str]:
        """Source-specific keywords the reader accepts."""
        parameters = list(inspect.signature(self.read).parameters)[2:]  # after input_dir, settings
        return [p for p in parameters if p not in self.fixed]

    def run(self, input_dir: Path, settings: ReadSettings, options: Mapping[str, Any]) -> SourceData:
        return self.read(input_dir, settings, **self.fixed, **options)
