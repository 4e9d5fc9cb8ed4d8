"""Every setting of a ``convirt prepare`` run in one typed object."""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from convirt.errors import ConfigError
from convirt.text.sections import DEFAULT_SECTIONS

from .image_cache import IMAGE_FORMATS
from .types import PrepareSource, ReadSettings, TextMode

VIEWS = ("frontal", "all")
TEXT_MODES = ("sections", "whole", "auto")
SPLIT_MODES = ("random", "official")


def parse_sections(value: str | Sequence[str] | None) -> list[str] | None:
    """``"findings,impression"`` -> ``["findings", "impression"]``; ``"all"`` or None -> None (every section)."""
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise ConfigError("sections is empty; give e.g. sections='findings,impression' or sections='all'")
    return None if [n.lower() for n in names] == ["all"] else names


@dataclass
class PrepareOptions:
    """How to prepare a source; ``None`` means the source's own default (see :mod:`convirt.prepare.sources`).

    ``val_size``/``test_size``: a number of pairs (``5000``) or a fraction (``0.1``). ``split_mode="official"``
    uses the dataset's own split. ``views``: ``frontal`` or ``all``. ``text_mode``: ``sections`` (keep
    ``sections``, default Findings + Impression), ``whole`` or ``auto``. ``sections``: a list, a comma-separated
    string, or ``"all"``. ``limit`` keeps the first N studies (smoke runs). ``workers``: resize processes (default:
    every usable CPU). ``progress``: a progress bar (default: when stderr is a terminal).
    ``min_image_size``: images whose shorter side is under this many pixels, in the file or in the cache, are
    refused (0: no minimum). ``strict_paths``: refuse image paths that lead outside the input folders (by ``..``,
    an absolute path or a symbolic link) instead of reading them with a warning. ``encoding``: of the source's
    tables and text files; ``delimiter``: of its CSV tables (default: detected from the header line).
    ``source_options``: the keywords of the source's reader (columns of a table, where the reports are, ...).
    """

    views: str | None = None
    val_size: float | int | None = None
    test_size: float | int | None = 0
    split_mode: str = "random"
    seed: int = 0
    text_mode: TextMode | None = None
    sections: Sequence[str] | str | None = DEFAULT_SECTIONS
    min_tokens: int = 3
    image_size: int = 256
    image_format: str = "png"
    jpeg_draft: bool = True
    workers: int | None = None
    limit: int | None = None
    progress: bool | None = None
    min_image_size: int = 16
    strict_paths: bool = False
    encoding: str = "utf-8"
    delimiter: str | None = None
    source_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sections = parse_sections(self.sections)
        for name, value, allowed in (
            ("views", self.views, VIEWS),
            ("text_mode", self.text_mode, TEXT_MODES),
            ("split_mode", self.split_mode, SPLIT_MODES),
            ("image_format", self.image_format, tuple(IMAGE_FORMATS)),
        ):
            if value is not None and value not in allowed:
                raise ConfigError(f"{name} must be one of {list(allowed)}, not {value!r}")
        self.source_options = {k: v for k, v in self.source_options.items() if v is not None}
        if not 0 <= self.min_image_size <= self.image_size:
            raise ConfigError(
                f"min_image_size must be between 0 and image_size ({self.image_size}), not {self.min_image_size}"
            )
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ConfigError(
                f"encoding={self.encoding!r} is not a text encoding Python knows (e.g. utf-8, cp1252)"
            ) from None
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ConfigError(f"delimiter must be one character (e.g. ';' or a tab), not {self.delimiter!r}")

    @classmethod
    def from_keywords(cls, **keywords: Any) -> PrepareOptions:
        """Options from keywords: the fields of this class; any other keyword is a source option."""
        general = {k: v for k, v in keywords.items() if k in _general_fields()}
        return cls(**general, source_options={k: v for k, v in keywords.items() if k not in general})

    def for_source(self, source: PrepareSource) -> PrepareOptions:
        """These options checked against ``source`` and with its defaults filled in (views, val size, text mode)."""
        accepted = source.keywords()
        unknown = sorted(set(self.source_options) - set(accepted))
        if unknown:
            raise ConfigError(
                f"source {source.name} does not take option(s) {unknown}; its own options are {accepted}, "
                f"and every source takes {sorted(_general_fields())}"
            )
        return dataclasses.replace(
            self,
            views=self.views or source.views,
            val_size=source.val_size if self.val_size is None else self.val_size,
            text_mode=self.text_mode or source.text_mode,
        )

    def read_settings(self) -> ReadSettings:
        return ReadSettings(views=self.views or "all", encoding=self.encoding, delimiter=self.delimiter)

    def settings(self, workers: int) -> dict[str, Any]:
        """What the report records (every option the run used)."""
        return {
            "text_mode": self.text_mode,
            "sections": list(self.sections) if self.sections is not None else "all",
            "min_tokens": self.min_tokens,
            "image_size": self.image_size,
            "image_format": self.image_format,
            "jpeg_draft": self.jpeg_draft,
            "workers": workers,
            "val_size": self.val_size,
            "test_size": self.test_size,
            "split_mode": self.split_mode,
            "seed": self.seed,
            "views": self.views,
            "min_image_size": self.min_image_size,
            "strict_paths": self.strict_paths,
            "encoding": self.encoding,
            "delimiter": self.delimiter,
            **self.source_options,
        }


def _general_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(PrepareOptions)} - {"source_options"}
