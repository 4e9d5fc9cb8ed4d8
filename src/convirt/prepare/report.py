"""The prepare report: what came in, what was kept, what was dropped and why, and the paper's corpus figures."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from convirt.fileio import atomic_write_json

# Why a pair is dropped, checked in this order (a pair is counted once, under the first reason that applies).
DROP_REASONS: dict[str, str] = {
    "unreadable_report": "the study's report file cannot be read (e.g. an IU X-ray XML file that is not XML)",
    "empty_text": "no report text at all",
    "no_findings_impression": "no Findings or Impression section (or whichever sections were asked for)",
    "too_few_tokens": "kept text has fewer than min_tokens tokens",
    "duplicate_pair": "same images and same text as an earlier pair (kept once)",
    "no_image": "the study lists no image",
    # None of the study's images is usable; the first of these that applies to one of its images:
    "image_outside_input": "an image path leads outside the input folders and strict_paths=True refuses it",
    "unreadable_image": "an image file exists but cannot be decoded (or is too large to decode safely)",
    "image_too_small": "an image's shorter side is under min_image_size pixels (in the file or in the cache)",
    "blank_image": "an image has one value in every pixel (1x1, constant, empty or all-NaN)",
    "missing_image": "the image files are missing on disk",
}
# Per-image failures (kind in the report's ``images`` section) -> the pair's drop reason, in DROP_REASONS order.
IMAGE_FAILURES: dict[str, str] = {
    "outside_input": "image_outside_input",
    "unreadable": "unreadable_image",
    "too_small": "image_too_small",
    "blank": "blank_image",
    "missing": "missing_image",
}


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, median, min and max of ``values`` (zeros when empty)."""
    if not values:
        return {"mean": 0.0, "median": 0.0, "min": 0.0, "max": 0.0}
    return {
        "mean": round(float(statistics.fmean(values)), 3),
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
    }


@dataclass
class PrepareReport:
    """Everything ``convirt prepare`` did, written to ``prepare_report.json`` and printed as a table."""

    source: str
    input_dir: str
    output_dir: str
    manifest: str
    settings: dict[str, Any] = field(default_factory=dict)
    source_stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    pairs_in: int = 0
    pairs_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_examples: dict[str, list[str]] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    images: dict[str, Any] = field(default_factory=dict)
    images_per_pair: dict[str, float] = field(default_factory=dict)
    sentences_per_pair: dict[str, float] = field(default_factory=dict)
    tokens_per_sentence: dict[str, float] = field(default_factory=dict)
    tokens_per_pair: dict[str, float] = field(default_factory=dict)
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def pairs_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pairs_dropped"] = self.pairs_dropped
        return data

    def write_json(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    def format_table(self, max_names: int = 10) -> str:
        """A plain-text summary for the terminal (the JSON file has every name and number)."""
        rows: list[tuple[str, str]] = []

        def add(label: str, value: object = "") -> None:
            rows.append((label, str(value)))

        add("source", f"{self.source}  ({self.input_dir})")
        add("output", self.output_dir)
        for key, value in self.source_stats.items():
            add(f"  {key.replace('_', ' ')}", value)
        add("pairs in", self.pairs_in)
        add("pairs kept", f"{self.pairs_kept}  ({_share(self.pairs_kept, self.pairs_in)})")
        add("pairs dropped", self.pairs_dropped)
        for reason, count in self.dropped.items():
            if count:
                add(f"  {reason.replace('_', ' ')}", count)
        if self.text:
            for key in ("reports_with_findings", "reports_with_impression", "reports_with_findings_or_impression"):
                if key in self.text:
                    add(key.replace("_", " "), f"{self.text[key]}  ({_share(self.text[key], self.pairs_in)})")
        if "pairs_after_text_filters" in self.text:
            sentences, tokens = self.text["sentences_per_pair"], self.text["tokens_per_sentence"]
            add(
                "after text filters",
                f"{self.text['pairs_after_text_filters']} pairs, {sentences['mean']:.2f} sentences per pair, "
                f"{tokens['mean']:.2f} tokens per sentence",
            )
        images = self.images
        if images:
            recached = f" ({images['recached']} because the source changed)" if images.get("recached") else ""
            add(
                "images",
                f"{images.get('unique', 0)} referenced, {images.get('written', 0)} resized now{recached}, "
                f"{images.get('skipped', 0)} already cached, {len(images.get('missing', []))} missing, "
                f"{len(images.get('unreadable', []))} unreadable",
            )
            outside = "refused" if self.settings.get("strict_paths") else "read anyway"
            checks = [
                f"{len(images[kind])} {label}"
                for kind, label in (
                    ("too_small", "too small"),
                    ("blank", "blank"),
                    ("outside_input", f"outside the input folders ({outside})"),
                )
                if images.get(kind)
            ]
            if checks:
                add("images also", ", ".join(checks))
        for label, stats in (
            ("images per pair", self.images_per_pair),
            ("sentences per pair", self.sentences_per_pair),
            ("tokens per sentence", self.tokens_per_sentence),
        ):
            if stats:
                add(
                    label,
                    f"mean {stats['mean']:.2f}  median {stats['median']:g}  min {stats['min']:g}  max {stats['max']:g}",
                )
        for split, stats in self.splits.items():
            add(f"split {split}", f"{stats['pairs']} pairs, {stats['patients']} patients, {stats['images']} images")
        add("time", f"{self.seconds:.1f} s")
        width = max(len(label) for label, _ in rows)
        lines = [f"{label.ljust(width)}  {value}" for label, value in rows]
        for kind in ("missing", "unreadable", "too_small", "blank", "outside_input"):
            entries = images.get(kind, []) if images else []
            if entries:
                lines.append(f"{kind.replace('_', ' ')} images ({len(entries)}):")
                lines.extend(f"  {e['path']}: {e['reason']}" for e in entries[:max_names])
                if len(entries) > max_names:
                    lines.append(f"  ... and {len(entries) - max_names} more (see prepare_report.json)")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _share(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "n/a"
