"""The Lightning wrapper around the plain-PyTorch ConVIRT model and loss.

Responsibilities: the optimisation step (Adam with weight decay, as the paper), the validation loss (averaged
over all validation pairs and processes), LR halving on plateau stepped once per validation, and the extra
checkpoint state that makes a resumed run continue identically (plateau scheduler, RNG states, the data needed
to rebuild the text model offline).
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist

from convirt.config import Config
from convirt.losses import ConVIRTLoss
from convirt.models.convirt import ConVIRT
from convirt.schedule import PlateauHalving


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


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class ConVIRTModule(L.LightningModule):
    def __init__(self, config: Config, model: ConVIRT, payload: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.model = model
        self.loss_fn = ConVIRTLoss(config.loss.temperature, config.loss.lambda_, config.loss.gather_distributed)
        self.payload = payload  # config + text model config + tokenizer files, stored in every checkpoint
        self.plateau: PlateauHalving | None = None
        self._pending_plateau: dict[str, Any] | None = None
        self._pending_rng: dict[str, Any] | None = None
        self.skipped_images: list[str] = []
        self._val_sum = torch.zeros(())
        self._val_count = torch.zeros(())
        self.evaluations = 0

    # -- optimisation -------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.config.optim
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(parameters, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self._attach_plateau(optimizer)
        return optimizer

    def _attach_plateau(self, optimizer: torch.optim.Optimizer) -> None:
        """LR x lr_factor after plateau_patience straight validations without a decrease (restored on resume)."""
        t = self.config.train
        self.plateau = PlateauHalving(optimizer, t.plateau_patience, t.lr_factor, t.min_lr)
        if self._pending_plateau is not None:
            self.plateau.load_state_dict(self._pending_plateau)
            self._pending_plateau = None

    def on_fit_start(self) -> None:
        if self.config.train.channels_last:
            self.model.image_encoder.to(memory_format=torch.channels_last)

    def on_train_start(self) -> None:
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng)
            self._pending_rng = None

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        images = batch["images"]
        if self.config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        out = self.model(images, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        return self.loss_fn(out.image_embeddings, out.text_embeddings)

    def train_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The loss of a training batch; objectives with per-step side effects (MoCo's queue) override this."""
        return self._loss(batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.train_loss(batch)
        size = batch["images"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=size)
        if batch["skipped"]:
            self.skipped_images.extend(batch["skipped"])
        return loss

    # -- validation ---------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self._val_count = torch.zeros((), device=self.device, dtype=torch.float64)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss = self._loss(batch)
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
        self.log("val/loss", val_loss, prog_bar=True, sync_dist=False)
        if self.trainer.sanity_checking:
            return
        self.evaluations += 1
        if self.plateau is not None:  # objectives with another schedule (SimCLR, MoCo) have none
            self.plateau.step(val_loss)
        self.log("val/evaluations", float(self.evaluations), sync_dist=False)

    # -- checkpoint state ---------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["convirt"] = self.payload
        checkpoint["convirt_state"] = {
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
            "rng": capture_rng_state(),
            "evaluations": self.evaluations,
            "skipped_images": list(self.skipped_images),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("convirt_state", {})
        self._pending_plateau = state.get("plateau")
        self._pending_rng = state.get("rng")
        self.evaluations = int(state.get("evaluations", 0))
        self.skipped_images = list(state.get("skipped_images", []))
        if self.plateau is not None and self._pending_plateau is not None:
            self.plateau.load_state_dict(self._pending_plateau)
            self._pending_plateau = None
