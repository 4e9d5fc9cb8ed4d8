"""The generic objective module: what every pretraining objective shares, on Lightning.

:class:`ObjectiveModule` wraps a plain-PyTorch model whose image encoder is ``model.image_encoder``, and owns
everything that is not the objective's loss:

- optimisation: Adam with weight decay (as the paper) over the trainable parameters
  (:meth:`~ObjectiveModule.build_optimizer`); the LR schedule is the plateau rule
  (:class:`convirt.schedule.PlateauHalving`, stepped once per validation) unless the objective sets
  ``lr_schedule`` to another and returns its per-step scheduler from :meth:`~ObjectiveModule.step_scheduler`
  (SimCLR: constant, MoCo v2: multistep);
- the image batch and the image encoders in channels-last layout when ``train.channels_last``, decided in one
  place (:meth:`~ObjectiveModule.image_batch`, :meth:`~ObjectiveModule.image_encoders`), and ``torch.compile`` of
  the encoders when ``train.compile`` (:meth:`~ObjectiveModule.compiled_encoders`, in :meth:`on_fit_start`);
- the validation loss, averaged over all validation pairs and processes, and the evaluation count;
- the guard against a NaN or infinite loss (:meth:`~ObjectiveModule.training_step`, :func:`nonfinite_anywhere`):
  every process takes the same decision; the run stops with :class:`~convirt.errors.TrainingError` at the first
  one, or skips up to ``train.max_nonfinite_steps`` such steps (the update and any buffer change undone); a
  non-finite validation loss always stops, and no checkpoint is written of weights that are not finite;
- the checkpoint entries a resumed run needs to continue identically (``convirt_state``: plateau, the RNG states
  of every process, evaluations, skipped images of every process) and the objective's ``convirt`` payload (config
  + what rebuilds the model offline).

An objective (:mod:`convirt.objectives`) subclasses it and implements :meth:`~ObjectiveModule.batch_loss`; the
engine's :func:`~convirt.engine.train.pretrain` takes a builder returning :class:`ObjectiveParts`.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist

from convirt.config import Config
from convirt.errors import TrainingError
from convirt.runtime import compile_encoders
from convirt.schedule import PlateauHalving

log = logging.getLogger("convirt")


def capture_rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain Python values, so checkpoints load with ``weights_only=True``."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def all_processes(value: Any) -> list[Any]:
    """``value`` of every process in global-rank order (``[value]`` without a process group); a collective: every
    process must call it at the same point."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(values, value)
        return values
    return [value]


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def nonfinite_anywhere(value: torch.Tensor) -> bool:
    """Whether ``value`` holds a NaN or an infinity on this process or on any other.

    The rank-local flag is all-reduced (max) when ``torch.distributed`` is up, so every process takes the same
    decision (stopping or skipping on one process alone would hang the others in their next collective).
    """
    flag = (~torch.isfinite(value.detach())).any().to(torch.float32).reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def nonfinite_message(what: str, value: float | str, step: str, config: Config, precision: str) -> str:
    """The one line a NaN or infinite loss stops training with: where, and the likely causes to check
    (``precision``: the precision training runs in, e.g. ``16-mixed``)."""
    causes = [f"a learning rate too high (optim.lr={config.optim.lr:g})"]
    if "16" in precision and "bf16" not in precision:
        causes.append(f"an fp16 overflow (precision {precision}: try train.precision=bf16-mixed or 32)")
    causes.append(f"bad data (blank or corrupt images, empty text in {config.data.manifest})")
    return f"{what} is {value} at {step}; likely causes: {', '.join(causes[:-1])} or {causes[-1]}"


class ObjectiveModule(L.LightningModule):
    """The engine's side of an objective; subclasses implement :meth:`batch_loss` and may set the class attributes.

    ``monitor``: (metric, min|max) that picks ``best.ckpt``. ``loss_name``: the objective's loss as the loss-curve
    axis names it. ``lr_schedule``: ``plateau`` (the engine's rule on val/loss) or the name of another schedule,
    whose per-step scheduler :meth:`step_scheduler` returns (None: a constant LR).
    """

    monitor: tuple[str, str] = ("val/loss", "min")
    loss_name: str = "loss"
    lr_schedule: str = "plateau"

    def __init__(self, config: Config, model: torch.nn.Module, payload: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.payload = payload  # the checkpoint's ``convirt`` entry: config + what rebuilds the model offline
        self.plateau: PlateauHalving | None = None
        self._pending_plateau: dict[str, Any] | None = None
        self._pending_rng: dict[str, Any] | None = None
        self.skipped_images: list[str] = []
        self.nonfinite_steps = 0  # training steps skipped for a NaN/inf loss (train.max_nonfinite_steps)
        self._skip_update = False
        self._saved_buffers: list[torch.Tensor] = []
        self._val_sum = torch.zeros(())
        self._val_count = torch.zeros(())
        self.evaluations = 0

    # -- the objective ------------------------------------------------------------------------------------------
    def batch_loss(self, batch: dict[str, Any]) -> torch.Tensor:  # pragma: no cover - abstract
        """The objective's loss of a batch (a scalar), as validated: no side effects."""
        raise NotImplementedError

    def train_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The loss of a training batch; objectives with per-step side effects (MoCo's queue) override this."""
        return self.batch_loss(batch)

    # -- layout -------------------------------------------------------------------------------------------------
    def image_encoders(self) -> list[torch.nn.Module]:
        """The image encoders the batches of :meth:`image_batch` go through (MoCo adds its key encoder)."""
        return [self.model.image_encoder]

    def image_batch(self, images: torch.Tensor) -> torch.Tensor:
        """A (N, C, H, W) batch in the layout of :meth:`image_encoders` (channels-last when train.channels_last)."""
        return images.contiguous(memory_format=torch.channels_last) if self.config.train.channels_last else images

    def compiled_encoders(self) -> list[torch.nn.Module]:
        """The encoders ``train.compile`` compiles: :meth:`image_encoders` and ``model.text_encoder`` if any."""
        text = getattr(self.model, "text_encoder", None)
        return self.image_encoders() + ([text] if isinstance(text, torch.nn.Module) else [])

    def on_fit_start(self) -> None:
        if self.config.train.channels_last:
            for encoder in self.image_encoders():
                encoder.to(memory_format=torch.channels_last)
        if self.config.train.compile:  # after the layout change, so the compiled graphs see channels-last weights
            compile_encoders(self.compiled_encoders())

    # -- optimisation -------------------------------------------------------------------------------------------
    def build_optimizer(self, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """Adam with weight decay (L2, as the paper's Adam) from ``optim``; MoCo v2 uses SGD."""
        o = self.config.optim
        return torch.optim.Adam(parameters, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)

    def step_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """The per-step LR scheduler of a schedule other than ``plateau``; None keeps the LR constant."""
        return None

    def configure_optimizers(self):
        optimizer = self.build_optimizer([p for p in self.model.parameters() if p.requires_grad])
        self.plateau = None
        if self.lr_schedule == "plateau":
            self._attach_plateau(optimizer)
            return optimizer
        scheduler = self.step_scheduler(optimizer)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _attach_plateau(self, optimizer: torch.optim.Optimizer) -> None:
        """LR x lr_factor after plateau_patience straight validations without a decrease (restored on resume)."""
        t = self.config.train
        self.plateau = PlateauHalving(optimizer, t.plateau_patience, t.lr_factor, t.min_lr)
        if self._pending_plateau is not None:
            self.plateau.load_state_dict(self._pending_plateau)
            self._pending_plateau = None

    def on_train_start(self) -> None:
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng)
            self._pending_rng = None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # Buffers (batch-norm statistics, MoCo's queue) change in the forward pass: kept to undo a skipped step.
        self._saved_buffers = (
            [b.detach().clone() for b in self.buffers()] if self.config.train.max_nonfinite_steps else []
        )
        loss = self.train_loss(batch)
        self._skip_update = self._nonfinite_step(loss)
        size = batch["images"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=size)
        if batch["skipped"]:
            self.skipped_images.extend(batch["skipped"])
        return loss

    def _nonfinite_step(self, loss: torch.Tensor) -> bool:
        """True when this step's loss is NaN or infinite on any process and the step is to be skipped; raises
        :class:`TrainingError` once more than ``train.max_nonfinite_steps`` steps had such a loss."""
        if not nonfinite_anywhere(loss):
            return False
        self.nonfinite_steps += 1
        limit = self.config.train.max_nonfinite_steps
        step = f"training step {self.global_step + 1}"
        if self.nonfinite_steps > limit:
            skipped = f" ({limit} such step(s) skipped before, train.max_nonfinite_steps={limit})" if limit else ""
            raise self._nonfinite("the training loss", float(loss.detach()), step, skipped)
        log.warning(
            "%s: the training loss is %s; update skipped (%d of train.max_nonfinite_steps=%d)",
            step,
            float(loss.detach()),
            self.nonfinite_steps,
            limit,
        )
        return True

    def _nonfinite(self, what: str, value: float | str, step: str, note: str = "") -> TrainingError:
        precision = str(self.trainer.precision) if self._trainer is not None else self.config.train.precision
        return TrainingError(nonfinite_message(what, value, step, self.config, precision) + note)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A skipped step (after its backward pass): the buffers as before its forward pass, and no gradient, so
        the optimiser leaves every parameter and its state as they are."""
        if not self._skip_update:
            return
        with torch.no_grad():
            for buffer, value in zip(self.buffers(), self._saved_buffers):
                buffer.copy_(value)
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                parameter.grad = None

    # -- validation ---------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self._val_count = torch.zeros((), device=self.device, dtype=torch.float64)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss = self.batch_loss(batch)
        size = batch["images"].shape[0]
        self._val_sum += loss.detach().double() * size
        self._val_count += size

    def on_validation_epoch_end(self) -> None:
        totals = torch.stack([self._val_sum, self._val_count])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        if totals[1] == 0:
            return
        val_loss = float(totals[0] / totals[1])
        if not math.isfinite(val_loss):  # the same on every process (all-reduced): all stop, best.ckpt untouched
            when = "the sanity check before training" if self.trainer.sanity_checking else f"step {self.global_step}"
            raise self._nonfinite("the validation loss", val_loss, when)
        self.log("val/loss", val_loss, prog_bar=True, sync_dist=False)
        if self.trainer.sanity_checking:
            return
        self.evaluations += 1
        if self.plateau is not None:  # objectives with another lr_schedule (SimCLR, MoCo) have none
            self.plateau.step(val_loss)
        self.log("val/evaluations", float(self.evaluations), sync_dist=False)

    # -- checkpoint state ---------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite_state()
        # Lightning calls this on every process (only process 0 writes the file): the RNG states and the skipped
        # images of all processes are gathered, so each process continues from its own state on resume.
        checkpoint["convirt"] = self.payload
        checkpoint["convirt_state"] = {
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
            "rng_per_rank": all_processes(capture_rng_state()),
            "evaluations": self.evaluations,
            "skipped_images": self.all_skipped_images(),
            "nonfinite_steps": self.nonfinite_steps,
        }

    def check_finite_state(self) -> None:
        """Raise :class:`TrainingError` when a parameter or buffer holds a NaN or an infinity: such a state is
        never written over a checkpoint (the same on every process: DDP keeps the weights identical)."""
        tensors = [(n, t) for n, t in [*self.named_parameters(), *self.named_buffers()] if t.is_floating_point()]
        finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in tensors]) if tensors else None
        if finite is None or bool(finite.all()):
            return
        bad = [name for (name, _), ok in zip(tensors, finite.tolist()) if not ok]
        what = f"{bad[0]} (and {len(bad) - 1} other weight tensor(s))"
        raise self._nonfinite(what, "not finite", f"step {self.global_step}", "; the checkpoint was not written")

    def all_skipped_images(self) -> list[str]:
        """The unreadable images skipped by every process so far, sorted (a collective, like saving)."""
        return sorted(path for paths in all_processes(self.skipped_images) for path in paths)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("convirt_state", {})
        self._pending_plateau = state.get("plateau")
        self._pending_rng = self._rng_state_of_this_process(state)
        self.evaluations = int(state.get("evaluations", 0))
        # Every process's skipped images were gathered into the file: process 0 carries them on, the others
        # start empty, so the next gathering counts each once.
        self.skipped_images = list(state.get("skipped_images", [])) if self.global_rank == 0 else []
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        if self.plateau is not None and self._pending_plateau is not None:
            self.plateau.load_state_dict(self._pending_plateau)
            self._pending_plateau = None

    def _rng_state_of_this_process(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """The saved RNG state this process restores: its own (same global rank) when the checkpoint has one.

        A checkpoint written by another number of processes cannot continue identically; process ``r`` restores
        the state saved by process ``r`` where there was one, the others keep the state the run started with
        (seeded by ``train.seed``), and process 0 says so. Checkpoints written before per-process states were saved
        hold process 0's only, which every process restores.
        """
        rank = self.global_rank
        world_size = self.trainer.world_size if self._trainer is not None else 1
        per_rank = state.get("rng_per_rank")
        if per_rank is None:
            if state.get("rng") is not None and world_size > 1 and rank == 0:
                log.warning(
                    "this checkpoint holds the RNG state of process 0 only (written by an older convirt): every "
                    "process restores it, so the random draws of processes 1..%d differ from the uninterrupted run",
                    world_size - 1,
                )
            return state.get("rng")
        if len(per_rank) != world_size and rank == 0:
            log.warning(
                "resuming a checkpoint written by %d process(es) on %d: the continuation differs from an "
                "uninterrupted run. Each process restores the RNG state of the saved process with its rank (ranks "
                "without one keep the state seeded by train.seed), and each process's share of the training stream "
                "restarts at global_step x data.batch_size of the new %d-way split, so pairs are skipped or repeated",
                len(per_rank),
                world_size,
                world_size,
            )
        return per_rank[rank] if rank < len(per_rank) else None


@dataclass
class ObjectiveParts:
    """What :func:`~convirt.engine.train.pretrain` trains: an objective's module and data module (set up for fit).

    The checkpoint payload, the metric that picks ``best.ckpt`` and the loss's name are the module's.
    """

    module: ObjectiveModule
    data: L.LightningDataModule

    @property
    def payload(self) -> dict[str, Any]:
        return self.module.payload

    @property
    def monitor(self) -> tuple[str, str]:
        return self.module.monitor

    @property
    def loss_name(self) -> str:
        return self.module.loss_name


ObjectiveBuilder = Callable[[Config], ObjectiveParts]
"""Builds an objective's parts from a config (e.g. :func:`convirt.objectives.build_objective`)."""
