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

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from convirt.config import Config
from convirt.engine.callbacks import (
    AtomicCheckpointIO,
    EvaluationCheckpoints,
    LossCurve,
    ResumeCheckpoint,
    finite_or_none,
)
from convirt.engine.module import ObjectiveBuilder
from convirt.errors import CheckpointError, ConfigError
from convirt.fileio import atomic_write_json, atomic_write_text
from convirt.runtime import bf16_supported

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

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def resolve_accelerator(config: Config) -> str:
    requested = config.train.accelerator
    if requested in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("train.accelerator=gpu but no CUDA GPU is visible; use train.accelerator=cpu")
    if requested == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return requested


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
    ``loss_name`` labels the loss curve's axis."""
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
    return L.Trainer(
        accelerator=accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=_strategy(config, accelerator),
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
        enable_model_summary=not resuming,
        use_distributed_sampler=False,  # the data module shards and resumes its own samplers
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(output_dir),
    )


def pretrain(config: Config, objective: ObjectiveBuilder, extra_callbacks: list | None = None) -> PretrainResult:
    """Run (or resume) pretraining as configured; returns where the results are.

    ``objective(config)`` builds the objective's parts; it is called after the global seed is set, so the same
    config builds the same initial weights.
    """
    output_dir = Path(config.train.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = output_dir / "checkpoints"
    resume_from = resolve_resume(config, checkpoint_dir)
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    parts = objective(config)
    module, data, monitor = parts.module, parts.data, parts.monitor
    trainer = build_trainer(
        config,
        output_dir,
        resuming=resume_from is not None,
        extra_callbacks=extra_callbacks,
        monitor=monitor,
        loss_name=parts.loss_name,
    )
    if trainer.is_global_zero:
        atomic_write_text(output_dir / "config.yaml", config.to_yaml())
        if resume_from is not None:
            log.warning("resuming from %s", resume_from)

    started = time.time()
    trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
    seconds = time.time() - started
    last_path = checkpoint_dir / "last.ckpt"
    trainer.save_checkpoint(last_path)  # the final state, so a finished run resumes to "nothing left to do"

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
    if trainer.is_global_zero:
        skipped = list(module.skipped_images)
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
