"""The shared preparation pipeline: adapter output -> filtered pairs -> image cache -> patient splits -> manifest.

Order of work (each step only sees what the previous one kept, so no image of a dropped report is resized):

1. the source adapter reads the raw layout into :class:`~convirt.prepare.types.RawPair` studies;
2. text: sections kept, sentences split, pairs with no kept text or fewer than ``min_tokens`` tokens dropped;
   exact duplicates (same image files and same sentences) are kept once;
3. images: every image of the remaining pairs resized once into ``OUTPUT/images/`` (parallel, resumable); a pair
   keeps the images that worked and is dropped only when none did;
4. splits by patient (patients sharing an image file are kept together), seeded;
5. ``OUTPUT/manifest.csv`` (atomic), ``OUTPUT/dropped.csv`` (every dropped study and why) and
   ``OUTPUT/prepare_report.json``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from convirt.data.manifest import IMAGE_SEPARATOR, PAIRED_COLUMNS, write_table
from convirt.data.splits import assign_splits, patient_groups
from convirt.errors import ConfigError
from convirt.text.sections import DEFAULT_SECTIONS
from convirt.text.tokenize import count_tokens

from .image_cache import IMAGE_FORMATS, CacheSettings, build_cache, target_names
from .report import DROP_REASONS, PrepareReport, summarize
from .textproc import process_text
from .types import SourceData, TextMode

MANIFEST_NAME = "manifest.csv"
REPORT_NAME = "prepare_report.json"
DROPPED_NAME = "dropped.csv"
IMAGES_DIR = "images"
MAX_EXAMPLES = 20


def default_workers() -> int:
    """Worker processes for the image cache: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def run_pipeline(
    source: str,
    data: SourceData,
    input_dir: Path,
    output_dir: Path,
    *,
    text_mode: TextMode | None = None,
    sections: Sequence[str] | None = DEFAULT_SECTIONS,
    min_tokens: int = 3,
    image_size: int = 256,
    image_format: str = "png",
    jpeg_draft: bool = True,
    workers: int | None = None,
    val_size: float | int | None = 0.1,
    test_size: float | int | None = 0,
    split_mode: str = "random",
    seed: int = 0,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    settings: dict[str, Any] | None = None,
) -> PrepareReport:
    """Filter, cache, split and write the manifest for ``data``; returns the report (also written as JSON)."""
    started = time.perf_counter()
    say = log or (lambda message: None)
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"--image-format must be one of {sorted(IMAGE_FORMATS)}, not {image_format!r}")
    if split_mode not in ("random", "official"):
        raise ConfigError(f"--split must be 'random' or 'official', not {split_mode!r}")
    mode: TextMode = text_mode or data.text_mode
    if mode not in ("sections", "whole", "auto"):
        raise ConfigError(f"--text-mode must be sections, whole or auto, not {mode!r}")
    output_dir.mkdir(parents=True, exist_ok=True)
    workers = default_workers() if not workers else int(workers)

    report = PrepareReport(
        source=source,
        input_dir=str(input_dir),
        output_dir=str(output_dir),
        manifest=str(output_dir / MANIFEST_NAME),
        source_stats=dict(data.stats),
        notes=list(data.notes),
    )
    report.settings = {
        "text_mode": mode,
        "sections": list(sections) if sections is not None else "all",
        "min_tokens": min_tokens,
        "image_size": image_size,
        "image_format": image_format,
        "jpeg_draft": jpeg_draft,
        "workers": workers,
        "val_size": val_size,
        "test_size": test_size,
        "split_mode": split_mode,
        "seed": seed,
        **(settings or {}),
    }
    report.pairs_in = len(data.pairs)
    dropped: list[dict[str, str]] = []
    counts: Counter[str] = Counter()

    def drop(pair, reason: str, detail: str = "") -> None:
        counts[reason] += 1
        examples = report.dropped_examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(pair.study_id)
        dropped.append({"study_id": pair.study_id, "patient_id": pair.patient_id, "reason": reason, "detail": detail})

    # 2. text
    say(f"{source}: {len(data.pairs)} studies read; filtering report text ({mode})")
    n_findings = n_impression = n_either = 0
    text_kept = []
    seen: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    for pair in data.pairs:
        processed = process_text(pair, mode, sections, min_tokens)
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
        text_kept.append((pair, processed.sentences))
    if mode != "whole":
        report.text = {
            "reports_with_findings": n_findings,
            "reports_with_impression": n_impression,
            "reports_with_findings_or_impression": n_either,
            "share_with_findings_or_impression": round(n_either / len(data.pairs), 4) if data.pairs else 0.0,
        }
    # Text figures before the image step (what the corpus looks like even when images are missing).
    report.text["pairs_after_text_filters"] = len(text_kept)
    report.text["sentences_per_pair"] = summarize([len(s) for _, s in text_kept])
    report.text["tokens_per_sentence"] = summarize([count_tokens(x) for _, s in text_kept for x in s])

    with_images = []
    # Image references no file was found for, named for the pairs that passed the text filters.
    unresolved = sorted({ref for pair, _ in text_kept for ref in pair.unresolved})
    for pair, sentences in text_kept:
        if pair.images:
            with_images.append((pair, sentences))
        elif pair.unresolved:
            drop(pair, "missing_image", "no file for: " + ", ".join(pair.unresolved[:5]))
        else:
            drop(pair, "no_image")
    text_kept = with_images

    # 3. images
    sources = sorted({p for pair, _ in text_kept for p in pair.images}, key=str)
    targets = target_names(sources, data.image_root, IMAGE_FORMATS[image_format])
    cache_dir = output_dir / IMAGES_DIR
    say(
        f"{source}: {len(text_kept)} pairs pass the text filters; "
        f"caching {len(sources)} images with {workers} worker(s)"
    )
    cache = build_cache(
        sources,
        targets,
        cache_dir,
        CacheSettings(size=image_size, image_format=image_format, jpeg_draft=jpeg_draft),
        workers,
        progress,
    )
    report.images = {
        "unique": len(sources),
        "written": cache.written,
        "skipped": cache.skipped,
        "seconds": round(cache.seconds, 2),
        "images_per_second": round(cache.written / cache.seconds, 2) if cache.written and cache.seconds else None,
        "missing": [{"path": p, "reason": r} for p, r in sorted(cache.missing.items())]
        + [{"path": ref, "reason": "no file found for this image reference"} for ref in unresolved],
        "unreadable": [{"path": p, "reason": r} for p, r in sorted(cache.unreadable.items())],
    }

    kept_rows: list[dict[str, Any]] = []
    for pair, sentences in text_kept:
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
        kept_rows.append(row)

    # 4. splits
    if kept_rows:
        if split_mode == "official":
            missing_split = [r["study_id"] for r in kept_rows if r["_official"] not in ("train", "val", "test")]
            if missing_split:
                raise ConfigError(
                    f"--split official: {len(missing_split)} studies have no official split "
                    f"(e.g. {missing_split[:3]}); this source has none or its split file is missing, use --split random"
                )
            splits = [r["_official"] for r in kept_rows]
        else:
            groups = patient_groups([r["patient_id"] for r in kept_rows], [r["_sources"] for r in kept_rows])
            splits = assign_splits(groups, val_size, test_size, seed)
        for row, split in zip(kept_rows, splits, strict=True):
            row["split"] = split

    # 5. outputs
    extra = [
        c for c in dict.fromkeys(k for r in kept_rows for k in r) if c not in PAIRED_COLUMNS and not c.startswith("_")
    ]
    frame = pd.DataFrame(
        [{k: v for k, v in r.items() if not k.startswith("_")} for r in kept_rows], columns=[*PAIRED_COLUMNS, *extra]
    )
    write_table(frame, output_dir / MANIFEST_NAME)
    write_table(
        pd.DataFrame(dropped, columns=["study_id", "patient_id", "reason", "detail"]), output_dir / DROPPED_NAME
    )

    report.pairs_kept = len(kept_rows)
    report.dropped = {reason: counts.get(reason, 0) for reason in DROP_REASONS}
    report.images_per_pair = summarize([r["n_images"] for r in kept_rows])
    report.sentences_per_pair = summarize([r["n_sentences"] for r in kept_rows])
    sentence_tokens = [count_tokens(s) for r in kept_rows for s in r["text"].split("\n")]
    report.tokens_per_sentence = summarize(sentence_tokens)
    report.tokens_per_pair = summarize([sum(count_tokens(s) for s in r["text"].split("\n")) for r in kept_rows])
    for split in ("train", "val", "test"):
        rows = [r for r in kept_rows if r["split"] == split]
        report.splits[split] = {
            "pairs": len(rows),
            "patients": len({r["patient_id"] for r in rows}),
            "images": sum(r["n_images"] for r in rows),
        }
    report.seconds = round(time.perf_counter() - started, 2)
    report.write_json(output_dir / REPORT_NAME)
    return report
