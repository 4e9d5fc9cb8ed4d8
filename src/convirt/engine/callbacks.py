"""Engine plumbing: atomic checkpoint writes, safe checkpoint reads on resume, and the loss-curve figure."""

from __future__ import annotations

import glob
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from convirt.fileio import atomic_open, atomic_savefig, load_torch_file


class ResumeCheckpoint(Checkpoint):
    """Writes the resume point ``last.ckpt`` every ``every`` steps, and after each validation.

    At a step where validation is due, the file is written after validation (not before, as a step-interval
    checkpoint would be), so it holds the evaluation count, the plateau scheduler and the best-so-far that the
    uninterrupted run has at that point: resuming from it continues identically. Being a ``Checkpoint``, it
    runs after the other callbacks, the best-checkpoint tracker included.
    """

    def __init__(self, path: str | os.PathLike, every: int, val_every: int) -> None:
        self.path, self.every, self.val_every = str(path), every, val_every
        self.saved_step: int | None = None  # the step of the last write in this session

    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state (explicit: Lightning logs a default)
        self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every == 0 and step % self.val_every != 0:
            self.save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.save(trainer)


class EvaluationCheckpoints(Checkpoint):
    """Keeps one weights-only checkpoint per evaluation, ``checkpoints/eval-NNNN.ckpt`` (``train.keep_checkpoints:
    every_eval``), for scoring the run's trajectory downstream (``convirt evaluate trajectory``).

    Written atomically after each validation (NNNN: the evaluation count, 1-based); a resumed run writes the
    evaluations after its resume point again, so the files always match the uninterrupted run's.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            evaluation = int(getattr(pl_module, "evaluations", 0))
            trainer.save_checkpoint(self.directory / f"eval-{evaluation:04d}.ckpt", weights_only=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file, fsyncs it and renames it into place: a process killed while
    saving leaves the previous checkpoint intact, never a truncated one. Reads (resuming: ``train.resume``,
    ``last.ckpt``) load tensors and plain data only, whatever Lightning or torch default to."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        with atomic_open(path, "wb") as handle:
            torch.save(checkpoint, handle)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: Any = None) -> Any:
        return load_torch_file(path, "checkpoint")


def read_metric_logs(log_dir: str | os.PathLike) -> pd.DataFrame:
    """All CSV logs of a run (one ``version_N`` folder per session, resumed sessions included), merged by step."""
    frames = []
    for file in sorted(glob.glob(os.path.join(str(log_dir), "version_*", "metrics.csv")), key=_version_number):
        try:
            frame = pd.read_csv(file)
        except (pd.errors.EmptyDataError, OSError):
            continue
        frame["_session"] = _version_number(file)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["step"])
    merged = pd.concat(frames, ignore_index=True)
    # A resumed session repeats the steps after its checkpoint: keep the latest session's values.
    return merged.sort_values(["step", "_session"]).reset_index(drop=True)


def _version_number(path: str) -> int:
    part = Path(path).parent.name.removeprefix("version_")
    return int(part) if part.isdigit() else -1


def _latest_per_step(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame:
        return pd.Series(dtype=float)
    rows = frame[["step", "_session", column]].dropna()
    rows = rows.sort_values(["step", "_session"]).groupby("step").last()
    return rows[column]


def plot_loss_curve(log_dir: str | os.PathLike, output: str | os.PathLike, loss_name: str = "loss") -> bool:
    """Train loss (raw + smoothed) and validation loss against step, the axis labelled ``loss_name``; returns False
    when there is nothing yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = read_metric_logs(log_dir)
    train = _latest_per_step(frame, "train/loss")
    val = _latest_per_step(frame, "val/loss")
    if train.empty and val.empty:
        return False
    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=120)
    if not train.empty:
        axis.plot(train.index, train.values, color="#9ecae1", linewidth=0.8, label="train (per logged step)")
        span = max(2, len(train) // 20)
        axis.plot(
            train.index, train.ewm(span=span).mean().values, color="#08519c", linewidth=1.8, label="train (smoothed)"
        )
    if not val.empty:
        axis.plot(val.index, val.values, "o-", color="#d94801", linewidth=1.8, markersize=4, label="validation")
    axis.set_xlabel("step")
    axis.set_ylabel(loss_name)
    axis.set_title("Pretraining loss")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    atomic_savefig(figure, output)
    plt.close(figure)
    return True


class LossCurve(L.Callback):
    """Writes OUTPUT/loss_curve.png at the end of training (and after each validation, so it is never stale); the
    axis names the objective's loss (``loss_name``)."""

    def __init__(self, log_dir: str | os.PathLike, output: str | os.PathLike, loss_name: str = "loss") -> None:
        self.log_dir, self.output, self.loss_name = log_dir, output, loss_name

    def _draw(self, trainer: L.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.save()
        plot_loss_curve(self.log_dir, self.output, self.loss_name)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._draw(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer)


def finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
