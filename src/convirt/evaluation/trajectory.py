"""The paper's Figure 4: a pretraining run's kept checkpoints, each scored downstream, against its validation loss.

A run pretrained with ``train.keep_checkpoints: every_eval`` keeps ``checkpoints/eval-NNNN.ckpt`` at every
evaluation. :func:`score_trajectory` scores each on the chosen end tasks: a linear probe (cached features, at one
label fraction, over seeds) on a labelled dataset, and image-image / text-image Precision@k (CheXpert 8x200 or a
labelled dataset with text queries). The validation loss of each checkpoint comes from the run's logs (the value
the engine computed at that evaluation, resumed sessions included).

Outputs in the output folder: ``trajectory.csv`` (one row per checkpoint: evaluation, step, epoch, val_loss, -L,
each metric; rewritten after every checkpoint), ``correlations.csv`` (Pearson and Spearman r of -L against each
metric, with p-values), ``figure4.png`` ((a) validation loss over training; (b)... each metric against -L),
``trajectory.md``. **Resumable**: a checkpoint already in ``trajectory.csv`` with the same tasks and the same file
(size and modification time) is not scored again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from convirt.encoders.spec import EncoderSpec
from convirt.errors import ConfigError
from convirt.evaluation.classification import ClassificationSettings, EncoderChoice, evaluate_classification
from convirt.fileio import atomic_savefig, atomic_write_text, load_torch_file

CHECKPOINT_PATTERN = re.compile(r"^eval-(\d+)\.ckpt$")


@dataclass
class TrajectoryTasks:
    """The end tasks every checkpoint is scored on (at least one of classification and retrieval)."""

    classify: str | None = None  # a labelled dataset spec (KIND:PATH or manifest:FILE)
    settings: ClassificationSettings | None = None  # the linear probe (one fraction, cached features)
    chexpert_root: str | None = None  # CheXpert 8x200 retrieval
    lists: str | None = None
    retrieval: str | None = None  # or retrieval on a labelled dataset ...
    prompts: str | None = None  # ... with a prompt file (text-image)
    prompt_map: dict[str, str] | None = None
    split: str = "test"
    space: str = "h_v"  # image-image space
    k: int = 10
    batch_size: int = 32
    image_size: int = 224
    device: str | None = None
    fast: bool = True

    def __post_init__(self) -> None:
        if self.classify is None and self.chexpert_root is None and self.retrieval is None:
            raise ConfigError("give at least one end task: a classification dataset or a retrieval set")
        if self.chexpert_root is not None and self.retrieval is not None:
            raise ConfigError("give either the CheXpert 8x200 root or a labelled retrieval dataset, not both")
        if self.classify is not None:
            self.settings = self.settings or ClassificationSettings(fractions=(0.01,), seeds=1)
            if self.settings.protocol != "linear" or len(self.settings.fractions) != 1:
                raise ConfigError("the trajectory's classification is a linear probe at one label fraction")

    def identity(self) -> dict:
        settings = self.settings.to_dict() if self.settings is not None else None
        if settings is not None:
            settings = {k: v for k, v in settings.items() if k not in ("workers", "cache_dir")}
        return {
            "classify": self.classify, "settings": settings, "chexpert_root": self.chexpert_root,
            "lists": self.lists, "retrieval": self.retrieval, "prompts": self.prompts,
            "prompt_map": self.prompt_map, "split": self.split, "space": self.space, "k": self.k,
            "image_size": self.image_size,
        }  # fmt: skip


def kept_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(evaluation, file) of every ``checkpoints/eval-NNNN.ckpt`` of a run, in order."""
    folder = Path(run_dir) / "checkpoints"
    found = []
    for file in folder.glob("eval-*.ckpt") if folder.is_dir() else []:
        match = CHECKPOINT_PATTERN.match(file.name)
        if match:
            found.append((int(match.group(1)), file))
    if not found:
        raise ConfigError(
            f"{folder} holds no eval-NNNN.ckpt: pretrain with train.keep_checkpoints=every_eval to keep one "
            "checkpoint per evaluation"
        )
    return sorted(found)


def validation_losses(run_dir: str | os.PathLike) -> dict[int, float]:
    """evaluation (1-based, the NNNN of ``eval-NNNN.ckpt``) -> validation loss, from the run's CSV logs (the
    latest session's value where resumed sessions repeat an evaluation).

    Keyed by the evaluation count the engine logs beside the loss (``val/evaluations``), not by step: the logger
    writes a validation at the step before the checkpoint's ``global_step``."""
    from convirt.engine.callbacks import read_metric_logs

    frame = read_metric_logs(Path(run_dir) / "logs")
    if "val/loss" not in frame or "val/evaluations" not in frame:
        return {}
    rows = frame[["val/evaluations", "_session", "val/loss"]].dropna().sort_values(["val/evaluations", "_session"])
    return {int(n): float(value) for n, value in rows.groupby("val/evaluations")["val/loss"].last().items()}


def _epochs_per_step(run_dir: Path, config) -> float | None:
    """Epochs of the training split per optimiser step (global batch / training pairs), when the run says."""
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return None
    data = json.loads(summary.read_text())
    pairs, world = data.get("train_pairs"), data.get("world_size") or 1
    if not pairs:
        return None
    return config.data.batch_size * world / pairs


def _key(tasks: TrajectoryTasks, file: Path) -> str:
    stat = file.stat()
    identity = {"tasks": tasks.identity(), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def score_trajectory(
    run_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    tasks: TrajectoryTasks,
    every: int = 1,
    log: Callable[[str], None] | None = print,
) -> pd.DataFrame:
    """Score every ``every``-th kept checkpoint of ``run_dir`` (and the last) on ``tasks``; see the module
    docstring for the outputs. Returns the trajectory table."""
    log = log or (lambda message: None)
    run_dir, out = Path(run_dir), Path(output_dir)
    kept = kept_checkpoints(run_dir)
    kept = [c for i, c in enumerate(kept) if i % max(1, every) == every - 1 or i == len(kept) - 1]
    losses = validation_losses(run_dir)
    table_file = out / "trajectory.csv"
    previous = pd.read_csv(table_file, dtype={"key": str}) if table_file.is_file() else pd.DataFrame()
    done = {str(r["key"]): r for r in previous.to_dict(orient="records")} if "key" in previous else {}
    manifest = _classification_manifest(tasks)
    retrieval = _retrieval_data(tasks)
    rows: list[dict] = []
    for evaluation, file in kept:
        key = _key(tasks, file)
        val_loss = losses.get(evaluation, math.nan)
        if key in done:  # the scores are reused; the loss is read from the logs again
            rows.append({**done[key], "val_loss": val_loss, "neg_val_loss": -val_loss})
            log(f"{file.name}: scored earlier (trajectory.csv), reused")
            continue
        spec = EncoderSpec.parse(file)
        checkpoint = spec.checkpoint()
        step = int(load_torch_file(file, "checkpoint", mmap=True).get("global_step", -1))
        per_step = _epochs_per_step(run_dir, checkpoint.config)
        row = {"checkpoint": file.name, "evaluation": evaluation, "step": step,
               "epoch": round(step * per_step, 4) if per_step else math.nan, "val_loss": val_loss,
               "neg_val_loss": -val_loss}  # fmt: skip
        if manifest is not None:
            row.update(_classification_scores(spec, manifest, tasks, out / "classify" / file.stem))
        if retrieval is not None:
            row.update(_retrieval_scores(spec, tasks, retrieval))
        row["key"] = key
        rows.append(row)
        atomic_write_text(table_file, pd.DataFrame(rows).to_csv(index=False))
        scores = ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k in metric_columns(pd.DataFrame([row])))
        log(f"{file.name} (step {step}, val loss {val_loss:.4f}): {scores}")
    frame = pd.DataFrame(rows)
    atomic_write_text(table_file, frame.to_csv(index=False))
    write_figure(frame, out, run_dir)
    return frame


def _classification_manifest(tasks: TrajectoryTasks):
    if tasks.classify is None:
        return None
    from convirt.data.sources import load_labelled_dataset

    return load_labelled_dataset(tasks.classify)


def _classification_scores(spec: EncoderSpec, manifest, tasks: TrajectoryTasks, out: Path) -> dict[str, float]:
    settings = tasks.settings
    assert settings is not None
    runs = evaluate_classification(manifest, [EncoderChoice(spec, "checkpoint", "convirt")], settings, out, log=None)
    fraction = settings.fractions[0]
    name = f"{manifest.task.name} linear {fraction * 100:g} % ({manifest.task.metric})"
    return {name: float(runs["test"].mean() * 100)}


def _retrieval_data(tasks: TrajectoryTasks) -> dict | None:
    """The retrieval data, read and checked once before any checkpoint: the CheXpert 8x200 lists with their
    image files, or a labelled split's images, labels and text queries."""
    if tasks.chexpert_root is not None:
        from convirt.data.chexpert8x200 import read_official_lists, resolve_chexpert_paths

        lists = read_official_lists(tasks.lists, strict=tasks.lists is None)
        relative = lists.image_paths()
        return {"lists": lists, "paths": dict(zip(relative, resolve_chexpert_paths(relative, tasks.chexpert_root)))}
    if tasks.retrieval is not None:
        from convirt.data.sources import labelled_images
        from convirt.encoders.prompts import read_prompts

        paths, labels, _ = labelled_images(tasks.retrieval, tasks.split)
        prompts = read_prompts(tasks.prompts, tasks.prompt_map) if tasks.prompts else None
        return {"images": paths, "labels": labels, "prompts": prompts}
    return None


def _retrieval_scores(spec: EncoderSpec, tasks: TrajectoryTasks, data: dict) -> dict[str, float]:
    from convirt.encoders.embedders import load_embedder
    from convirt.evaluation.retrieval import evaluate_labelled, evaluate_lists

    embedder = load_embedder(spec, "checkpoint", image_size=tasks.image_size, device=tasks.device, fast=tasks.fast)
    ks, spaces = (tasks.k,), (tasks.space,)
    if "lists" in data:
        report = evaluate_lists([embedder], data["lists"], data["paths"], ks, spaces, tasks.batch_size)
    else:  # leave-one-out over the labelled images, as `convirt evaluate retrieval --dataset` ranks them
        report = evaluate_labelled([embedder], data["images"], data["labels"], data["prompts"], ks, spaces,
                                   batch_size=tasks.batch_size)  # fmt: skip
    return {
        f"{'image-image' if r.task == 'image_image' else 'text-image'} P@{tasks.k}": float(r.mean[tasks.k])
        for r in report.results
    }


# ---------------------------------------------------------------------------------------------------------------
# Correlations and the figure

FIXED_COLUMNS = ("checkpoint", "evaluation", "step", "epoch", "val_loss", "neg_val_loss", "key")


def metric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in FIXED_COLUMNS]


def correlations(frame: pd.DataFrame) -> pd.DataFrame:
    """Pearson and Spearman r (with two-sided p-values) of -L against each metric, over the checkpoints."""
    from scipy import stats

    rows = []
    for metric in metric_columns(frame):
        valid = frame[["neg_val_loss", metric]].dropna()
        x, y = valid["neg_val_loss"].to_numpy(float), valid[metric].to_numpy(float)
        if len(valid) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
            pearson, spearman = stats.pearsonr(x, y), stats.spearmanr(x, y)
            values = (float(pearson[0]), float(pearson[1]), float(spearman[0]), float(spearman[1]))
        else:  # fewer than 3 points, or a constant: no correlation to speak of
            values = (math.nan,) * 4
        rows.append(dict(zip(("metric", "n", "pearson_r", "pearson_p", "spearman_r", "spearman_p"),
                             (metric, len(valid), *values))))  # fmt: skip
    return pd.DataFrame(rows, columns=["metric", "n", "pearson_r", "pearson_p", "spearman_r", "spearman_p"])


def write_figure(frame: pd.DataFrame, out: Path, run_dir: Path) -> pd.DataFrame:
    """``figure4.png``, ``correlations.csv`` and ``trajectory.md`` from the trajectory table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = correlations(frame)
    atomic_write_text(out / "correlations.csv", table.to_csv(index=False))
    metrics = metric_columns(frame)
    figure, axes = plt.subplots(1, 1 + len(metrics), figsize=(4.2 * (1 + len(metrics)), 3.8), squeeze=False)
    use_epoch = frame["epoch"].notna().all()
    x = frame["epoch"] if use_epoch else frame["step"]
    ax = axes[0][0]
    ax.plot(x, frame["val_loss"], "o-", color="#d94801", markersize=4)
    ax.set_xlabel("epoch" if use_epoch else "step")
    ax.set_ylabel("validation loss")
    ax.set_title("(a) pretraining validation loss")
    ax.grid(alpha=0.3)
    for index, (metric, row) in enumerate(zip(metrics, table.itertuples()), start=1):
        ax = axes[0][index]
        ax.scatter(frame["neg_val_loss"], frame[metric], s=18, color="#08519c")
        valid = frame[["neg_val_loss", metric]].dropna()
        if len(valid) >= 2 and np.ptp(valid["neg_val_loss"]) > 0:
            slope, intercept = np.polyfit(valid["neg_val_loss"], valid[metric], 1)
            xs = np.linspace(valid["neg_val_loss"].min(), valid["neg_val_loss"].max(), 2)
            ax.plot(xs, slope * xs + intercept, color="grey", linewidth=1)
        ax.set_xlabel("-L (negative validation loss)")
        ax.set_ylabel(metric)
        ax.set_title(f"({chr(ord('a') + index)}) Pearson {row.pearson_r:.2f}, Spearman {row.spearman_r:.2f}",
                     fontsize=9)  # fmt: skip
        ax.grid(alpha=0.3)
    figure.tight_layout()
    atomic_savefig(figure, out / "figure4.png", dpi=110)
    plt.close(figure)
    lines = [
        f"# Figure 4: {run_dir}",
        "",
        "| end task | points | Pearson r (p) | Spearman r (p) |",
        "|---|---|---|---|",
    ]
    for row in table.itertuples():
        lines.append(f"| {row.metric} | {row.n} | {row.pearson_r:.3f} ({row.pearson_p:.2g}) | "
                     f"{row.spearman_r:.3f} ({row.spearman_p:.2g}) |")  # fmt: skip
    columns = ["evaluation", "step", "epoch", "val_loss", *metrics]
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in frame[columns].to_dict(orient="records"):
        lines.append("| " + " | ".join(_format(record[c]) for c in columns) + " |")
    atomic_write_text(out / "trajectory.md", "\n".join(lines) + "\n")
    return table


def _format(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)
