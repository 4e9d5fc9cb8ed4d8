"""The shared preparation pipeline: raw layout -> filtered pairs -> image cache -> patient splits -> manifest.

Stages (each only sees what the previous one kept, so no image of a dropped report is resized):

1. :func:`read_source`: the source's reader turns the raw layout into :class:`~convirt.prepare.types.RawPair`
   studies;
2. :func:`filter_text`: sections kept, sentences split, pairs with no kept text or fewer than ``min_tokens``
   tokens dropped; exact duplicates (same image files and same sentences) are kept once;
3. :func:`require_images`: pairs that list no image file at all are dropped; :func:`check_paths`: image paths
   that lead outside the input folders are named (and refused with ``strict_paths``);
4. :func:`cache_images`: every image of the remaining pairs resized once into ``OUTPUT/images/`` (parallel,
   resumable; images too small or blank are refused); :func:`manifest_rows`: a pair keeps the images that worked
   and is dropped only when none did;
5. :func:`assign_split_column`: splits by patient (patients sharing an image file are kept together), seeded;
   a split without validation pairs is warned about (pretraining needs them);
6. :func:`write_outputs`: ``OUTPUT/manifest.csv`` (atomic), ``OUTPUT/dropped.csv`` (every dropped study and why)
   and ``OUTPUT/prepare_report.json``.
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from convirt.data.manifest import IMAGE_SEPARATOR, PAIRED_COLUMNS, write_table
from convirt.data.splits import assign_splits, patient_groups
from convirt.errors import ConfigError
from convirt.text.tokenize import count_tokens

from .image_cache import FAILURES, IMAGE_FORMATS, CacheResult, CacheSettings, build_cache, target_names
from .options import PrepareOptions
from .report import DROP_REASONS, IMAGE_FAILURES, PrepareReport, summarize
from .textproc import process_text
from .types import PrepareSource, RawPair, SourceData

MANIFEST_NAME = "manifest.csv"
REPORT_NAME = "prepare_report.json"
DROPPED_NAME = "dropped.csv"
IMAGES_DIR = "images"
MAX_EXAMPLES = 20

Kept = list[tuple[RawPair, list[str]]]  # pairs still in the running, with their kept sentences
Failures = dict[str, tuple[str, str]]  # image source path -> (kind in IMAGE_FAILURES, reason)
FAILED = tuple(k for k in FAILURES if k != "missing")  # listed as they are; "missing" adds unresolved references


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
        if pair.problem:
            drop(pair, "unreadable_report", pair.problem)
            continue
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


def input_roots(input_dir: Path, image_root: Path) -> list[Path]:
    """The folders image paths may lead into: the input folder (a table's folder) and the source's image folder."""
    return [input_dir.parent if input_dir.is_file() else input_dir, image_root]


def outside_reason(path: Path, roots: list[Path], real_dir: Callable[[str], str] = os.path.realpath) -> str | None:
    """Why ``path`` lies outside every folder of ``roots`` (by ``..``, absolute path or symbolic link), or None.

    ``real_dir`` resolves a folder's links (pass a memoised one when checking many files of few folders)."""
    lexical = os.path.abspath(path)
    if not any(_within(lexical, os.path.abspath(root)) for root in roots):
        return "outside the input folders"
    folder, name = os.path.split(lexical)
    real = os.path.realpath(lexical) if os.path.islink(lexical) else os.path.join(real_dir(folder), name)
    if not any(_within(real, os.path.realpath(root)) for root in roots):
        return f"a symbolic link to {real}, outside the input folders"
    return None


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_paths(kept: Kept, roots: list[Path], strict: bool) -> tuple[dict[str, str], str | None]:
    """Stage 3b: the image paths outside the input folders with why (refused when ``strict``), and a warning."""
    outside = {}
    real_dir = functools.lru_cache(maxsize=None)(os.path.realpath)
    for path in sorted({p for pair, _ in kept for p in pair.images}, key=str):
        reason = outside_reason(path, roots, real_dir)
        if reason is not None:
            outside[str(path)] = reason + ("; refused (strict_paths)" if strict else "; read anyway")
    if not outside:
        return outside, None
    shown = ", ".join(list(outside)[:3]) + (f" and {len(outside) - 3} more" if len(outside) > 3 else "")
    folders = ", ".join(dict.fromkeys(str(r) for r in roots))
    action = "refused" if strict else "read anyway; strict_paths=True refuses them"
    return outside, f"{len(outside)} image path(s) lead outside the input folders ({folders}): {shown}; {action}"


def cache_images(
    kept: Kept, refused: Failures, image_root: Path, output_dir: Path, options: PrepareOptions, workers: int
) -> tuple[CacheResult, dict[Path, str]]:
    """Stage 4a: resize every image of the kept pairs into ``OUTPUT/images`` (resumable); the cache names."""
    sources = sorted({p for pair, _ in kept for p in pair.images if str(p) not in refused}, key=str)
    targets = target_names(sources, image_root, IMAGE_FORMATS[options.image_format])
    settings = CacheSettings(size=options.image_size, image_format=options.image_format, jpeg_draft=options.jpeg_draft)
    cache = build_cache(
        sources, targets, output_dir / IMAGES_DIR, settings, workers, options.progress, min_side=options.min_image_size
    )
    return cache, targets


def manifest_rows(kept: Kept, failed: Failures, targets: dict[Path, str], drop: Drops) -> list[dict[str, Any]]:
    """Stage 4b: one manifest row per pair with at least one cached image; the others are dropped with why (the
    first of IMAGE_FAILURES that one of their images has, every image named in the detail)."""
    rows: list[dict[str, Any]] = []
    for pair, sentences in kept:
        good = [p for p in pair.images if str(p) not in failed]
        if not good:
            kinds = {failed[str(p)][0] for p in pair.images}
            reason = next(IMAGE_FAILURES[k] for k in IMAGE_FAILURES if k in kinds)
            drop(pair, reason, "; ".join(f"{p}: {failed[str(p)][1]}" for p in pair.images))
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


def assign_split_column(rows: list[dict[str, Any]], options: PrepareOptions) -> str | None:
    """Stage 5: fill each row's ``split``: the dataset's own split, or a seeded split by patient. Returns a warning
    when asked-for validation pairs do not come out (too few pairs or patients): ``convirt pretrain`` needs them."""
    if not rows:
        return None
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
    if "val" in splits:
        return None
    if options.split_mode == "official":
        return "no validation pairs: the official split has none; `convirt pretrain` needs validation rows"
    if (options.val_size or 0) > 0:
        return (
            f"no validation pairs: val_size={options.val_size} of {len(rows)} pairs gives none; `convirt pretrain` "
            "needs validation rows: give a count such as val_size=1, or more data"
        )
    return None


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

    def warn(message: str | None) -> None:
        if message:
            report.notes.append("warning: " + message)
            say(f"{source.name}: warning: {message}")

    say(f"{source.name}: {len(data.pairs)} studies read; filtering report text ({options.text_mode})")
    kept = filter_text(data.pairs, options, report, drop)
    kept, unresolved = require_images(kept, drop)

    n_images = len({p for pair, _ in kept for p in pair.images})
    say(f"{source.name}: {len(kept)} pairs pass the text filters; caching {n_images} images with {workers} worker(s)")
    outside, warning = check_paths(kept, input_roots(input_dir, data.image_root), options.strict_paths)
    warn(warning)
    refused = {p: ("outside_input", r) for p, r in outside.items()} if options.strict_paths else {}
    cache, targets = cache_images(kept, refused, data.image_root, output_dir, options, workers)
    report.images = {
        "unique": n_images,
        "written": cache.written,
        "skipped": cache.skipped,
        "recached": cache.recached,
        "seconds": round(cache.seconds, 2),
        "images_per_second": round(cache.written / cache.seconds, 2) if cache.written and cache.seconds else None,
        "missing": [{"path": p, "reason": r} for p, r in sorted(cache.missing.items())]
        + [{"path": ref, "reason": "no file found for this image reference"} for ref in unresolved],
        **{kind: [{"path": p, "reason": r} for p, r in sorted(cache.of_kind(kind).items())] for kind in FAILED},
        "outside_input": [{"path": p, "reason": r} for p, r in outside.items()],
    }
    rows = manifest_rows(kept, {**refused, **cache.failed}, targets, drop)
    warn(assign_split_column(rows, options))
    write_outputs(rows, drop, report, output_dir)
    report.seconds = round(time.perf_counter() - started, 2)
    report.write_json(output_dir / REPORT_NAME)
    return report
