"""The shared preparation pipeline: raw layout -> filtered pairs -> image cache -> patient splits -> manifest.

Stages (each only sees what the previous one kept, so no image of a dropped report is resized):

1. :func:`read_source`: the source's reader turns the raw layout into :class:`~convirt.prepare.types.RawPair`
   studies;
2. :func:`filter_text`: sections kept, sentences split, pairs with no kept text or fewer than ``min_tokens``
   tokens dropped; exact duplicates (same image files and same sentences) are kept once;
3. :func:`require_images`: pairs that list no image file at all are dropped;
4. :func:`cache_images`: every image of the remaining pairs resized once into ``OUTPUT/images/`` (parallel,
   resumable); :func:`manifest_rows`: a pair keeps the images that worked and is dropped only when none did;
5. :func:`assign_split_column`: splits by patient (patients sharing an image file are kept together), seeded;
6. :func:`write_outputs`: ``OUTPUT/manifest.csv`` (atomic), ``OUTPUT/dropped.csv`` (every dropped study and why)
   and ``OUTPUT/prepare_report.json``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from convirt.data.manifest import IMAGE_SEPARATOR, PAIRED_COLUMNS, write_table
from convirt.errors import ConfigError
from convirt.text.tokenize import count_tokens

from .image_cache import IMAGE_FORMATS, CacheResult, CacheSettings, build_cache, target_names
from .options import PrepareOptions
from .report import DROP_REASONS, PrepareReport, summarize
from .splits import assign_splits, patient_groups
from .textproc import process_text
from .types import PrepareSource, RawPair, SourceData

MANIFEST_NAME = "manifest.csv"
REPORT_NAME = "prepare_report.json"
DROPPED_NAME = "dropped.csv"
IMAGES_DIR = "images"
MAX_EXAMPLES = 20

Kept = list[tuple[RawPair, list[str]]]  # pairs still in the running, with their kept sentences


def default_workers() -> int:
    """Worker processes for the image cache: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class Drops:
    """Dropped pairs: counted per reason, each named in ``dropped.csv``, a few ids per reason in the report."""

    COLUMNS = ("study_id", "patient_id", "reason", "detail")

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def __call__(self, pair: RawPair, reason: str, detail: str = "") -> None:
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(pair.study_id)
        self.rows.append({"study_id": pair.study_id, "patient_id": pair.patient_id, "reason": reason, "detail": detail})

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=list(self.COLUMNS))


def read_source(source: PrepareSource, input_dir: Path, options: PrepareOptions) -> SourceData:
    """Stage 1: run the source's reader on ``input_dir`` (and keep the first ``limit`` studies)."""
    if not input_dir.exists():
        raise ConfigError(f"input {input_dir} does not exist")
    data = source.run(input_dir, options.read_settings(), options.source_options)
    if options.limit is not None:
        data.pairs = data.pairs[: int(options.limit)]
        data.notes.append(f"limit={options.limit}: only the first {len(data.pairs)} studies were prepared")
    return data


def filter_text(pairs: list[RawPair], options: PrepareOptions, report: PrepareReport, drop: Drops) -> Kept:
    """Stage 2: the paper's text filters and the duplicate filter; fills the report's text figures."""
    mode = options.text_mode or "sections"
    n_findings = n_impression = n_either = 0
    kept: Kept = []
    seen: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    for pair in pairs:
        processed = process_text(pair, mode, options.sections, options.min_tokens)
        n_findings += processed.has_findings
        n_impression += processed.has_impression
        n_either += processed.has_findings or processed.has_impression
        if processed.drop_reason:
            drop(pair, processed.drop_reason, f"{processed.tokens} tokens" if processed.tokens else "")
            continue
        key = (tuple(sorted(str(p) for p in pair.images)), tuple(processed.sentences))
        if pair.images and key in seen:
            drop(pair, "duplicate_pair")
            continue
        seen.add(key)
        kept.append((pair, processed.sentences))
    if mode != "whole":
        report.text = {
            "reports_with_findings": n_findings,
            "reports_with_impression": n_impression,
            "reports_with_findings_or_impression": n_either,
            "share_with_findings_or_impression": round(n_either / len(pairs), 4) if pairs else 0.0,
        }
    # Text figures before the image step (what the corpus looks like even when images are missing).
    report.text["pairs_after_text_filters"] = len(kept)
    report.text["sentences_per_pair"] = summarize([len(s) for _, s in kept])
    report.text["tokens_per_sentence"] = summarize([count_tokens(x) for _, s in kept for x in s])
    return kept


def require_images(kept: Kept, drop: Drops) -> tuple[Kept, list[str]]:
    """Stage 3: drop pairs with no image file; returns the rest and the image references no file was found for."""
    unresolved = sorted({ref for pair, _ in kept for ref in pair.unresolved})
    with_images: Kept = []
    for pair, sentences in kept:
        if pair.images:
            with_images.append((pair, sentences))
        elif pair.unresolved:
            drop(pair, "missing_image", "no file for: " + ", ".join(pair.unresolved[:5]))
        else:
            drop(pair, "no_image")
    return with_images, unresolved


def cache_images(
    kept: Kept, image_root: Path, output_dir: Path, options: PrepareOptions, workers: int
) -> tuple[CacheResult, dict[Path, str]]:
    """Stage 4a: resize every image of the kept pairs into ``OUTPUT/images`` (resumable); the cache names."""
    sources = sorted({p for pair, _ in kept for p in pair.images}, key=str)
    targets = target_names(sources, image_root, IMAGE_FORMATS[options.image_format])
    settings = CacheSettings(size=options.image_size, image_format=options.image_format, jpeg_draft=options.jpeg_draft)
    cache = build_cache(sources, targets, output_dir / IMAGES_DIR, settings, workers, options.progress)
    return cache, targets


def manifest_rows(kept: Kept, cache: CacheResult, targets: dict[Path, str], drop: Drops) -> list[dict[str, Any]]:
    """Stage 4b: one manifest row per pair with at least one cached image; the others are dropped with why."""
    rows: list[dict[str, Any]] = []
    for pair, sentences in kept:
        good = [p for p in pair.images if str(p) not in cache.missing and str(p) not in cache.unreadable]
        if not good:
            bad_unreadable = [str(p) for p in pair.images if str(p) in cache.unreadable]
            if bad_unreadable:
                drop(pair, "unreadable_image", "; ".join(f"{p}: {cache.unreadable[p]}" for p in bad_unreadable))
            else:
                drop(pair, "missing_image", "; ".join(str(p) for p in pair.images))
            continue
        row = {
            "images": IMAGE_SEPARATOR.join(f"{IMAGES_DIR}/{targets[p]}" for p in good),
            "text": "\n".join(sentences),
            "patient_id": pair.patient_id,
            "study_id": pair.study_id,
            "split": "",
            "_sources": [str(p) for p in pair.images],
            "_official": pair.split,
            "n_images": len(good),
            "n_sentences": len(sentences),
        }
        row.update(pair.meta)
        rows.append(row)
    return rows


def assign_split_column(rows: list[dict[str, Any]], options: PrepareOptions) -> None:
    """Stage 5: fill each row's ``split``: the dataset's own split, or a seeded split by patient."""
    if not rows:
        return
    if options.split_mode == "official":
        missing_split = [r["study_id"] for r in rows if r["_official"] not in ("train", "val", "test")]
        if missing_split:
            raise ConfigError(
                f"split_mode='official': {len(missing_split)} studies have no official split (e.g. "
                f"{missing_split[:3]}); this source has none or its split file is missing, use split_mode='random'"
            )
        splits = [r["_official"] for r in rows]
    else:
        groups = patient_groups([r["patient_id"] for r in rows], [r["_sources"] for r in rows])
        splits = assign_splits(groups, options.val_size, options.test_size, options.seed)
    for row, split in zip(rows, splits, strict=True):
        row["split"] = split


def write_outputs(rows: list[dict[str, Any]], drop: Drops, report: PrepareReport, output_dir: Path) -> None:
    """Stage 6: manifest, dropped pairs and the report's corpus figures, written atomically."""
    extra = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in PAIRED_COLUMNS and not c.startswith("_")]
    frame = pd.DataFrame(
        [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], columns=[*PAIRED_COLUMNS, *extra]
    )
    write_table(frame, output_dir / MANIFEST_NAME)
    write_table(drop.frame(), output_dir / DROPPED_NAME)

    report.pairs_kept = len(rows)
    report.dropped = {reason: drop.counts.get(reason, 0) for reason in DROP_REASONS}
    report.dropped_examples = drop.examples
    report.images_per_pair = summarize([r["n_images"] for r in rows])
    report.sentences_per_pair = summarize([r["n_sentences"] for r in rows])
    sentence_tokens = [[count_tokens(s) for s in r["text"].split("\n")] for r in rows]
    report.tokens_per_sentence = summarize([n for tokens in sentence_tokens for n in tokens])
    report.tokens_per_pair = summarize([sum(tokens) for tokens in sentence_tokens])
    for split in ("train", "val", "test"):
        in_split = [r for r in rows if r["split"] == split]
        report.splits[split] = {
            "pairs": len(in_split),
            "patients": len({r["patient_id"] for r in in_split}),
            "images": sum(r["n_images"] for r in in_split),
        }


def run_prepare(
    source: PrepareSource,
    input_dir: Path,
    output_dir: Path,
    options: PrepareOptions,
    log: Callable[[str], None] | None = None,
) -> PrepareReport:
    """Prepare ``source`` from ``input_dir`` into ``output_dir``; returns the report (also written as JSON)."""
    started = time.perf_counter()
    say = log or (lambda message: None)
    options = options.for_source(source)
    data = read_source(source, input_dir, options)
    output_dir.mkdir(parents=True, exist_ok=True)
    workers = default_workers() if not options.workers else int(options.workers)
    report = PrepareReport(
        source=source.name,
        input_dir=str(input_dir),
        output_dir=str(output_dir),
        manifest=str(output_dir / MANIFEST_NAME),
        settings=options.settings(workers),
        source_stats=dict(data.stats),
        notes=list(data.notes),
        pairs_in=len(data.pairs),
    )
    drop = Drops()

    say(f"{source.name}: {len(data.pairs)} studies read; filtering report text ({options.text_mode})")
    kept = filter_text(data.pairs, options, report, drop)
    kept, unresolved = require_images(kept, drop)

    n_images = len({p for pair, _ in kept for p in pair.images})
    say(f"{source.name}: {len(kept)} pairs pass the text filters; caching {n_images} images with {workers} worker(s)")
    cache, targets = cache_images(kept, data.image_root, output_dir, options, workers)
    report.images = {
        "unique": n_images,
        "written": cache.written,
        "skipped": cache.skipped,
        "seconds": round(cache.seconds, 2),
        "images_per_second": round(cache.written / cache.seconds, 2) if cache.written and cache.seconds else None,
        "missing": [{"path": p, "reason": r} for p, r in sorted(cache.missing.items())]
        + [{"path": ref, "reason": "no file found for this image reference"} for ref in unresolved],
        "unreadable": [{"path": p, "reason": r} for p, r in sorted(cache.unreadable.items())],
    }
    rows = manifest_rows(kept, cache, targets, drop)
    assign_split_column(rows, options)
    write_outputs(rows, drop, report, output_dir)
    report.seconds = round(time.perf_counter() - started, 2)
    report.write_json(output_dir / REPORT_NAME)
    return report
