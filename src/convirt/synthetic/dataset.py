"""Synthetic paired datasets: sample studies, render images, write reports and labels in the ``csv`` prepare layout.

:func:`generate_dataset` writes::

    OUT/images/<study>.png       8-bit grey radiographs (``image_size`` square, 128 px by default)
    OUT/pairs.csv                image | text (the full report) | patient_id | study_id   <- `convirt prepare csv`
    OUT/labels.csv               a labelled manifest (convirt.data.labelled): image | patient_id | study_id | split |
                                 one 0/1 column per CheXpert 8x200 category | category | findings (details)
    OUT/labels.csv.task.json     its task side-car (multilabel, mean AUC)
    OUT/text_queries.csv         five text queries per category (label,text: a prompt file; convirt.synthetic.queries)
    OUT/synthetic.json           settings, counts per category, seconds, pairs/s

Each study is drawn from its own generator ``default_rng([seed, index])``, so the output does not depend on the
number of worker processes, and ``--size 100`` is the first 100 studies of ``--size 1000`` (same seed).

Label mix: 20 % No Finding; otherwise one of the 7 findings uniformly, and in 20 % of the abnormal studies a
second, different finding. Severity is uniform in [0, 1]; side, zone and rib vary.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from convirt.errors import ConfigError
from convirt.fileio import atomic_write_json, atomic_write_text
from convirt.synthetic.queries import text_queries_csv
from convirt.synthetic.render import (
    CARDIOMEGALY_CTR,
    CATEGORIES,
    FINDINGS,
    Anatomy,
    Devices,
    Finding,
    render,
    sample_anatomy,
)
from convirt.synthetic.reports import write_report

NO_FINDING = "No Finding"
MULTIPLE = "Multiple"
P_NO_FINDING = 0.2
P_SECOND_FINDING = 0.2
DEFAULT_SPLIT = (0.7, 0.1, 0.2)  # train / val / test of labels.csv


@dataclass
class Study:
    index: int
    study_id: str
    anatomy: Anatomy
    findings: list[Finding]
    devices: Devices | None
    split: str
    render_seed: int
    report: str = ""
    labels: dict[str, int] = field(default_factory=dict)

    @property
    def category(self) -> str:
        """The single category (for retrieval and zero-shot), or ``Multiple`` for a two-finding study."""
        if not self.findings:
            return NO_FINDING
        return self.findings[0].category if len(self.findings) == 1 else MULTIPLE

    @property
    def ctr(self) -> float:
        for f in self.findings:
            if f.category == "Cardiomegaly":
                return CARDIOMEGALY_CTR[0] + (CARDIOMEGALY_CTR[1] - CARDIOMEGALY_CTR[0]) * f.severity
        return self.anatomy.ctr


def sample_finding(category: str, rng: np.random.Generator) -> Finding:
    side = "both" if category in ("Cardiomegaly", "Edema") else ("right" if rng.random() < 0.5 else "left")
    finding = Finding(category, side, float(rng.uniform(0.0, 1.0)))
    if category == "Pneumonia":
        finding.zone = ("upper", "middle", "lower")[int(rng.integers(3))]
        finding.position = float(rng.uniform(-0.6, 0.6))
        finding.bronchograms = bool(rng.random() < 0.5)
    elif category == "Fracture":
        finding.rib = int(rng.integers(4, 10))
        finding.position = float(rng.uniform(0.0, 1.0))
    return finding


def sample_study(seed: int, index: int, split: tuple[float, float, float] = DEFAULT_SPLIT) -> Study:
    """Study ``index`` of the dataset drawn with ``seed`` (anatomy, findings, devices, report, labels)."""
    rng = np.random.default_rng([int(seed), int(index)])
    anatomy = sample_anatomy(rng)
    findings: list[Finding] = []
    if rng.random() >= P_NO_FINDING:
        first = FINDINGS[int(rng.integers(len(FINDINGS)))]
        findings.append(sample_finding(first, rng))
        if rng.random() < P_SECOND_FINDING:
            others = [c for c in FINDINGS if c != first]
            findings.append(sample_finding(others[int(rng.integers(len(others)))], rng))
    devices = None
    if rng.random() < 0.2:
        devices = Devices(
            ecg_leads=int(rng.integers(2, 5)) if rng.random() < 0.7 else 0,
            central_line=("right", "left")[int(rng.integers(2))] if rng.random() < 0.5 else "",
        )
        if not devices.ecg_leads and not devices.central_line:
            devices.ecg_leads = 3
    u = rng.random()
    split_name = "train" if u < split[0] else ("val" if u < split[0] + split[1] else "test")
    study = Study(
        index=index,
        study_id=f"s{seed}-{index:06d}",
        anatomy=anatomy,
        findings=findings,
        devices=devices,
        split=split_name,
        render_seed=int(rng.integers(0, 2**31 - 1)),
    )
    study.report = write_report(findings, devices, rng, ctr=study.ctr)
    present = {f.category for f in findings}
    study.labels = {c: int(c in present) for c in FINDINGS}
    study.labels[NO_FINDING] = int(not present)
    return study


def render_study(study: Study, image_size: int = 128) -> np.ndarray:
    return render(study.anatomy, study.findings, study.devices, image_size, seed=study.render_seed)


def _describe(findings: list[Finding]) -> str:
    return ";".join(json.dumps(f.to_dict(), sort_keys=True) for f in findings)


def _make_chunk(task: tuple[int, list[int], int, str, tuple[float, float, float]]) -> list[dict]:
    seed, indices, image_size, images_dir, split = task
    rows = []
    for index in indices:
        study = sample_study(seed, index, split)
        pixels = render_study(study, image_size)
        name = f"{study.study_id}.png"
        # compress_level 0: speed (`prepare` re-encodes the images into its cache anyway)
        Image.fromarray(pixels).save(os.path.join(images_dir, name), compress_level=0)
        rows.append(
            {
                "image": f"images/{name}",
                "text": study.report,
                "patient_id": f"p{seed}-{index:06d}",
                "study_id": study.study_id,
                "split": study.split,
                **{c: study.labels[c] for c in CATEGORIES},
                "category": study.category,
                "findings": _describe(study.findings),
                "devices": "" if study.devices is None else json.dumps(study.devices.__dict__),
            }
        )
    return rows


@dataclass
class SyntheticDataset:
    folder: Path
    size: int
    seed: int
    image_size: int
    seconds: float
    category_counts: dict[str, int]

    @property
    def pairs(self) -> Path:
        return self.folder / "pairs.csv"

    @property
    def labels(self) -> Path:
        return self.folder / "labels.csv"

    @property
    def pairs_per_second(self) -> float:
        return self.size / max(self.seconds, 1e-9)


def generate_dataset(
    output_dir: str | os.PathLike,
    size: int,
    seed: int = 0,
    image_size: int = 128,
    workers: int | None = None,
    split: tuple[float, float, float] = DEFAULT_SPLIT,
    log: Callable[[str], None] | None = None,
) -> SyntheticDataset:
    """Generate ``size`` paired studies into ``output_dir`` (see the module docstring); returns a summary."""
    if size < 1:
        raise ConfigError(f"the number of studies must be at least 1, not {size}", setting="size")
    if image_size < 64:
        raise ConfigError(f"the image size must be at least 64 px, not {image_size}", setting="image_size")
    if len(split) != 3 or abs(sum(split) - 1.0) > 1e-6 or min(split) < 0:
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, not {split}")
    out = Path(output_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(os.cpu_count() or 1, 8) if workers is None else int(workers))
    started = time.perf_counter()
    chunk = max(16, min(256, size // (4 * workers) + 1))
    tasks = [(seed, list(range(i, min(i + chunk, size))), image_size, str(images_dir), tuple(split))
             for i in range(0, size, chunk)]  # fmt: skip
    rows: list[dict] = []
    if workers == 1 or len(tasks) == 1:
        for task in tasks:
            rows.extend(_make_chunk(task))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for part in pool.map(_make_chunk, tasks):
                rows.extend(part)
    frame = pd.DataFrame(rows)
    atomic_write_text(out / "pairs.csv", frame[["image", "text", "patient_id", "study_id"]].to_csv(index=False))
    labels = frame.drop(columns=["text"])
    atomic_write_text(out / "labels.csv", labels.to_csv(index=False))
    task = {
        "name": "synthetic-cxr",
        "kind": "multilabel",
        "class_names": list(CATEGORIES),
        "label_columns": list(CATEGORIES),
        "metric": "mean_auc",
        "scoring_level": "image",
        "paper_key": None,
        "notes": "convirt synthetic chest radiographs; labels are the generator's ground truth",
    }
    atomic_write_json(out / "labels.csv.task.json", task)
    atomic_write_text(out / "text_queries.csv", text_queries_csv())
    seconds = time.perf_counter() - started
    counts = {c: int(frame[c].sum()) for c in CATEGORIES}
    summary = SyntheticDataset(out, size, seed, image_size, seconds, counts)
    atomic_write_json(
        out / "synthetic.json",
        {
            "size": size,
            "seed": seed,
            "image_size": image_size,
            "workers": workers,
            "split_fractions": list(split),
            "seconds": round(seconds, 3),
            "pairs_per_second": round(summary.pairs_per_second, 1),
            "positives_per_category": counts,
            "single_category_counts": frame["category"].value_counts().to_dict(),
            "splits": frame["split"].value_counts().to_dict(),
        },
    )
    if log:
        log(f"synthetic: {size} pairs ({image_size} px, seed {seed}) in {seconds:.1f} s "
            f"({summary.pairs_per_second:.0f} pairs/s, {workers} worker(s)) -> {out}")  # fmt: skip
    return summary
