"""`pretrain(config, objective)`: a pretraining run on Lightning, for any objective.

``objective`` builds the objective's parts from the config (:class:`~convirt.engine.module.ObjectiveParts`: its
:class:`~convirt.engine.module.ObjectiveModule` and data module); callers take it from the objective registry,
``pretrain(config, convirt.objectives.build_objective)``. The engine imports no objective.

Layout of ``train.output_dir``::

    config.yaml              the resolved config of the run
    checkpoints/last.ckpt    resume point, written every train.checkpoint_every_steps and at the end
    checkpoints/best.ckpt    best evaluation so far by the objective's monitor (lowest val/loss; captioners: val/cider)
    checkpoints/eval-NNNN.ckpt  with train.keep_checkpoints=every_eval: the weights at each evaluation
    logs/version_N/          CSV metrics, one folder per session (a resumed run adds one)
    tensorboard/version_N/   TensorBoard events
    loss_curve.png           train and validation loss against step (axis: the objective's loss_name)
    summary.json             best validation loss, steps, seconds, skipped images
    skipped_images.txt       unreadable images skipped during training (when any)

Stopping rule (paper): validation every ``val_every_steps``; LR x ``lr_factor`` after ``plateau_patience``
evaluations without a decrease; stop after ``max_evals`` evaluations (``max_steps = val_every_steps *
max_evals``); keep the best checkpoint by the objective's monitor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from convirt.config import Config, config_differences, config_from_dict
from convirt.engine.callbacks import (
    AtomicCheckpointIO,
    EvaluationCheckpoints,
    LossCurve,
    ResumeCheckpoint,
    finite_or_none,
)
from convirt.engine.module import ObjectiveBuilder
from convirt.errors import CheckpointError, ConfigError, OutputError, TrainingError
from convirt.fileio import (
    atomic_write_json,
    atomic_write_text,
    check_writable,
    load_torch_file,
    remove_stale_temp_files,
)
from convirt.runtime import bf16_supported, compile_unavailable

log = logging.getLogger("convirt")


@dataclass
class PretrainResult:
    output_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path
    best_val_loss: float | None
    final_val_loss: float | None
    steps: int
    seconds: float
    resumed_from: Path | None
    finished_before: str | None = None  # set when the run had nothing left to do: the line that says so

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items() if k != "finished_before"}


# Settings a resumed run may change (docs/pretraining.md, "Resume"): none changes the weights, the optimiser, the
# data stream or what the validation loss measures. Every other setting must equal the folder's config.yaml.
RESUME_MAY_CHANGE = (
    "train.output_dir",  # the folder itself, moved
    "train.resume",
    "train.max_evals",  # train longer (or stop earlier)
    "train.checkpoint_every_steps",
    "train.keep_checkpoints",  # every_eval from here on (earlier evaluations have none)
    "train.max_nonfinite_steps",
    "train.log_every_steps",
    "train.progress_bar",
    "train.tensorboard",
    "train.compile",  # how the same computation runs
    "data.num_workers",
)
# What a checkpoint of another run (train.resume=PATH) must share with the config: what shapes its weights.
CHECKPOINT_MUST_MATCH = ("objective", "objective_params", "model")


# Messages of the training framework that tell a user of convirt nothing to act on; a run's console holds progress
# and the project's own messages (tests/test_training_console.py). Lightning's INFO lines (devices, tips,
# "restoring states", "`Trainer.fit` stopped", "`weights_only` was not set") are dropped by level; these warnings
# by message:
FRAMEWORK_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning on newer torch
    r"Found \d+ module\(s\) in eval mode at the start of training",  # frozen layers are meant to be
    r"Checkpoint directory .* exists and is not empty",  # resuming into the run's own folder
    r"The '\w+_dataloader' does not have many workers",  # data.num_workers is the user's choice
    r"It is recommended to use `self\.log\(.*sync_dist=True\)`",  # val/loss is all-reduced before it is logged
)


@contextlib.contextmanager
def quiet_framework() -> Iterator[None]:
    """Lightning's informational lines and :data:`FRAMEWORK_WARNINGS` off, for the duration; every other warning
    and Lightning's warnings and errors stay."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for pattern in FRAMEWORK_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def resolve_accelerator(config: Config) -> str:
    """``gpu`` or ``cpu`` (or another Lightning accelerator named by ``train.accelerator``); checks that
    ``train.compile`` can run on it."""
    requested = config.train.accelerator
    if requested in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("train.accelerator=gpu but no CUDA GPU is visible; use train.accelerator=cpu")
    accelerator = ("gpu" if torch.cuda.is_available() else "cpu") if requested == "auto" else requested
    if config.train.compile:
        reason = compile_unavailable("cuda" if accelerator in ("gpu", "cuda") else "cpu")
        if reason:
            raise ConfigError(f"train.compile=true: {reason}; or set train.compile=false (eager, the default)")
    return accelerator


def resolve_precision(config: Config, accelerator: str) -> str:
    precision = config.train.precision
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    if precision == "mixed":
        if bf16_supported(device):
            return "bf16-mixed"
        return "16-mixed" if accelerator == "gpu" else "32-true"
    if precision == "16-mixed" and accelerator != "gpu":
        raise ConfigError("train.precision=16-mixed needs a CUDA GPU; on CPU use bf16-mixed (or mixed)")
    return {"32": "32-true"}.get(precision, precision)


def resolve_resume(config: Config, checkpoint_dir: Path) -> Path | None:
    resume = config.train.resume
    if resume == "never":
        return None
    if resume == "auto":
        last = checkpoint_dir / "last.ckpt"
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"train.resume={resume}: no such checkpoint (use auto, never or a .ckpt path)")
    return path


def inspect_run_folder(config: Config) -> tuple[Path | None, PretrainResult | None]:
    """What ``train.output_dir`` holds, read before anything is written: (the checkpoint to resume from, the
    stored result when the run is finished under this config, else None).

    Resuming a run of this folder, every setting outside :data:`RESUME_MAY_CHANGE` must equal the folder's
    ``config.yaml``; resuming a checkpoint of another run (``train.resume=PATH``), the settings of
    :data:`CHECKPOINT_MUST_MATCH` must equal the checkpoint's. Otherwise :class:`ConfigError` lists the differing
    keys. A resume file that is not a convirt pretraining checkpoint raises :class:`CheckpointError`.
    """
    output_dir = Path(config.train.output_dir)
    resume_from = resolve_resume(config, output_dir / "checkpoints")
    if resume_from is None:
        return None, None
    own = resume_from.resolve().parent == (output_dir / "checkpoints").resolve()
    stored = output_dir / "config.yaml"
    if own and stored.is_file():
        reference, source = _read_run_config(stored), str(stored)
    else:
        reference, source = _checkpoint_config(resume_from), f"checkpoint {resume_from}"
    differences = config_differences(reference, config)
    if own:
        refused = {k: v for k, v in differences.items() if k not in RESUME_MAY_CHANGE}
        advice = (
            f"resume with the values of {source}, or start afresh: train.resume=never (replaces this run's "
            "checkpoints) or another train.output_dir"
        )
    else:
        refused = {k: v for k, v in differences.items() if k.split(".")[0] in CHECKPOINT_MUST_MATCH}
        advice = "the checkpoint's weights have other shapes or another objective; use the checkpoint's values"
    if refused:
        shown = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in refused.items())
        raise ConfigError(
            f"train.output_dir={output_dir}: resuming from {resume_from} would change {len(refused)} setting(s) "
            f"of the run ({shown}); {advice}. Settings that may change on resume: {', '.join(RESUME_MAY_CHANGE)}"
        )
    return resume_from, _finished_result(config, output_dir) if own else None


def _read_run_config(path: Path) -> Config:
    import yaml

    try:
        return config_from_dict(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError, ConfigError) as exc:
        raise ConfigError(f"{path} (the config of the run in this folder) cannot be read: {exc}") from None


def _checkpoint_config(path: Path) -> Config:
    """The config stored in a pretraining checkpoint (its tensors memory-mapped, not read)."""
    try:
        checkpoint = load_torch_file(path, "checkpoint", mmap=True)
    except CheckpointError as exc:
        raise CheckpointError(f"train.resume={path}: {exc}") from None
    payload = checkpoint.get("convirt") if isinstance(checkpoint, dict) else None
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
        raise CheckpointError(f"train.resume={path} is not a convirt pretraining checkpoint (it has no convirt entry)")
    return config_from_dict(payload["config"])


def _finished_result(config: Config, output_dir: Path) -> PretrainResult | None:
    """The stored result of a run with nothing left to do (its summary.json reached ``config.max_steps``)."""
    try:
        summary = json.loads((output_dir / "summary.json").read_text())
        steps = int(summary["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if steps < config.max_steps:
        return None
    values = {f.name: summary.get(f.name) for f in dataclasses.fields(PretrainResult) if f.name != "finished_before"}
    for name in ("output_dir", "best_checkpoint", "last_checkpoint", "resumed_from"):
        values[name] = Path(values[name]) if values[name] else None
    metric = summary.get("best_checkpoint_metric") or {}
    best = f", best {metric.get('name')} {metric.get('value'):.4g}" if metric.get("value") is not None else ""
    line = (
        f"{output_dir} holds a finished run ({steps} of {config.max_steps} steps{best}); nothing was run or "
        f"changed. To train longer raise train.max_evals (now {config.train.max_evals}); to start again use "
        "train.resume=never or another train.output_dir"
    )
    return PretrainResult(**values, finished_before=line)


def _strategy(config: Config, accelerator: str):
    strategy = config.train.strategy
    if strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(
            process_group_backend="nccl" if accelerator == "gpu" else "gloo",
            gradient_as_bucket_view=True,
            static_graph=False,
        )
    return strategy


def build_trainer(
    config: Config,
    output_dir: Path,
    resuming: bool,
    extra_callbacks: list | None = None,
    monitor: tuple[str, str] = ("val/loss", "min"),
    loss_name: str = "loss",
) -> L.Trainer:
    """``monitor`` = (metric, min|max) that picks best.ckpt: val/loss for ConVIRT, val/cider for the captioners;
    ``loss_name`` labels the loss curve's axis. ``train.sync_batchnorm`` converts BatchNorm layers to SyncBatchNorm
    on GPUs (BatchNorm statistics over the global batch); with one process it changes nothing."""
    t = config.train
    accelerator = resolve_accelerator(config)
    checkpoint_dir = output_dir / "checkpoints"
    best = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best",
        monitor=monitor[0],
        mode=monitor[1],
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
        save_on_train_epoch_end=False,
    )
    last = ResumeCheckpoint(checkpoint_dir / "last.ckpt", t.checkpoint_every_steps, t.val_every_steps)
    callbacks: list[L.Callback] = [
        best,
        last,
        LossCurve(output_dir / "logs", output_dir / "loss_curve.png", loss_name),
    ]
    if t.keep_checkpoints == "every_eval":
        callbacks.append(EvaluationCheckpoints(checkpoint_dir))
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, min(20, t.log_every_steps))))
    loggers: list = [CSVLogger(save_dir=str(output_dir), name="logs")]
    if t.tensorboard:
        loggers.append(TensorBoardLogger(save_dir=str(output_dir), name="tensorboard", default_hp_metric=False))
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=_strategy(config, accelerator),
        sync_batchnorm=t.sync_batchnorm and accelerator == "gpu",
        precision=resolve_precision(config, accelerator),  # type: ignore[arg-type]
        max_steps=config.max_steps,
        max_epochs=-1,
        val_check_interval=t.val_every_steps,
        check_val_every_n_epoch=None,
        limit_val_batches=t.limit_val_batches if t.limit_val_batches is not None else 1.0,
        num_sanity_val_steps=0 if resuming else 1,
        callbacks=callbacks + list(extra_callbacks or []),
        logger=loggers,
        log_every_n_steps=t.log_every_steps,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,  # pretrain logs its own one-line summary
        use_distributed_sampler=False,  # the data module shards and resumes its own samplers
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(output_dir),
    )
    if t.sync_batchnorm and accelerator != "gpu" and trainer.world_size > 1:
        raise ConfigError(
            f"train.sync_batchnorm=true with {trainer.world_size} CPU processes: torch's SyncBatchNorm runs on CUDA "
            "GPUs only; set train.sync_batchnorm=false (each process then normalises over its own batch)"
        )
    return trainer


def last_checkpoint(trainer: L.Trainer) -> ResumeCheckpoint:
    return next(c for c in trainer.callbacks if isinstance(c, ResumeCheckpoint))


def _kept_checkpoints(trainer: L.Trainer, resume_from: Path | None) -> str:
    """Which checkpoints a stopped run leaves, for its message (nothing is written after the stop)."""
    last = last_checkpoint(trainer)
    kept = []
    if last.saved_step is not None:
        kept.append(f"{last.path} (step {last.saved_step})")
    elif resume_from is not None:
        kept.append(f"{resume_from} (the resume point, unchanged)")
    best = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    if best is not None and best.best_model_path:
        kept.append(f"{best.best_model_path} (best {best.monitor} {float(best.best_model_score):.4g})")
    return "kept: " + ", ".join(kept) if kept else "no checkpoint was written"


def run_line(config: Config, trainer: L.Trainer, module: L.LightningModule) -> str:
    """The project's one-line description of a run (in place of the framework's device lines and model table)."""
    parameters = list(module.parameters())
    total = sum(p.numel() for p in parameters)
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    return (
        f"pretraining {config.objective} for {config.max_steps} steps on {trainer.num_devices * trainer.num_nodes} "
        f"{type(trainer.accelerator).__name__.removesuffix('Accelerator').lower()} process(es), precision "
        f"{trainer.precision}; {total / 1e6:.1f} M parameters, {trainable / 1e6:.1f} M trainable"
    )


def pretrain(config: Config, objective: ObjectiveBuilder, extra_callbacks: list | None = None) -> PretrainResult:
    """Run (or resume) pretraining as configured; returns where the results are.

    ``objective(config)`` builds the objective's parts; it is called after the global seed is set, so the same
    config builds the same initial weights.
    """
    resume_from, finished = inspect_run_folder(config)  # reads only: a refused config writes nothing
    if finished is not None:
        return finished
    output_dir = Path(config.train.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    parts = objective(config)
    module, data, monitor = parts.module, parts.data, parts.monitor
    with quiet_framework():
        trainer = build_trainer(
            config,
            output_dir,
            resuming=resume_from is not None,
            extra_callbacks=extra_callbacks,
            monitor=monitor,
            loss_name=parts.loss_name,
        )
        if trainer.is_global_zero:  # the first write: the objective and the trainer were built without error
            try:
                check_writable(checkpoint_dir)
            except OutputError as exc:
                raise OutputError(f"train.output_dir={output_dir}: {exc}") from None
            stale = remove_stale_temp_files(checkpoint_dir)  # from checkpoint writes a killed run left unfinished
            if stale:
                log.warning("removed %d unfinished checkpoint write(s) a killed run left in %s", len(stale),
                            checkpoint_dir)  # fmt: skip
            atomic_write_text(output_dir / "config.yaml", config.to_yaml())
            if resume_from is not None:
                log.warning("resuming from %s", resume_from)
            log.info("%s", run_line(config, trainer, module))

        started = time.time()
        try:
            trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
        except TrainingError as exc:  # a NaN/inf loss: say which checkpoints hold the state before it
            raise TrainingError(f"{exc}; {_kept_checkpoints(trainer, resume_from)}") from None
        seconds = time.time() - started
        last_path = checkpoint_dir / "last.ckpt"
        last_checkpoint(trainer).save(trainer)  # the final state, so a finished run resumes to "nothing left to do"

    best_callback = next(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor == monitor[0])
    best_path = Path(best_callback.best_model_path) if best_callback.best_model_path else None
    best_score = finite_or_none(best_callback.best_model_score)
    result = PretrainResult(
        output_dir=output_dir,
        best_checkpoint=best_path,
        last_checkpoint=last_path,
        best_val_loss=best_score if monitor[0] == "val/loss" else None,
        final_val_loss=finite_or_none(trainer.callback_metrics.get("val/loss")),
        steps=int(trainer.global_step),
        seconds=round(seconds, 2),
        resumed_from=resume_from,
    )
    skipped = module.all_skipped_images()  # a collective: every process's skipped images
    if trainer.is_global_zero:
        summary = result.to_dict() | {
            "objective": config.objective,
            "best_checkpoint_metric": {"name": monitor[0], "mode": monitor[1], "value": best_score},
            "skipped_images": len(skipped),
            "dropped_pairs_missing_images": getattr(data, "dropped", {}),
            "train_pairs": len(data.train_set) if getattr(data, "train_set", None) is not None else None,
            "val_pairs": len(data.val_set) if getattr(data, "val_set", None) is not None else None,
            "precision": trainer.precision,
            "world_size": trainer.world_size,
        }
        atomic_write_json(output_dir / "summary.json", summary)
        if skipped:
            atomic_write_text(output_dir / "skipped_images.txt", "\n".join(sorted(set(skipped))) + "\n")
    return result
