"""Shared pieces of the baseline objectives: parameter checking, the Lightning module base, data plumbing.

Every baseline reuses the ConVIRT engine: :class:`BaselineModule` subclasses
:class:`~convirt.engine.module.ConVIRTModule` (validation-loss accumulation, RNG and plateau state in checkpoints,
the ``convirt`` payload) and only replaces the loss of a batch, the optimiser/schedule where the paper uses another,
and what is checked at validation. :class:`ObjectiveDataModule` subclasses
:class:`~convirt.engine.data.PairedDataModule` (manifest checks, resumable sharded samplers, per-draw seeds) and
only replaces the image transforms and the collate function.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch

from convirt.config import Config
from convirt.data.paired import PairedDataset
from convirt.encoders.checkpoint import checkpoint_payload
from convirt.engine.data import PairedDataModule
from convirt.engine.module import ConVIRTModule
from convirt.errors import ConfigError

LR_SCHEDULES = ("plateau", "constant", "multistep")


def objective_params(config: Config, defaults: dict[str, Any]) -> dict[str, Any]:
    """``config.objective_params`` merged over ``defaults``; unknown keys and wrong types name the key."""
    given = dict(config.objective_params or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(
            f"objective_params: unknown key(s) {unknown} for objective {config.objective!r}; "
            f"valid keys: {sorted(defaults)}"
        )
    out = dict(defaults)
    for key, value in given.items():
        default = defaults[key]
        name = f"objective_params.{key}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not (
                isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            ):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
            value = int(value)
        elif isinstance(default, float):
            if isinstance(value, str):
                with contextlib.suppress(ValueError):
                    value = float(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            value = float(value)
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise ConfigError(f"{name} must be a string, got {value!r}")
        elif isinstance(default, list):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{name} must be a list, got {value!r}")
            value = list(value)
        out[key] = value
    return out


def require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"objective_params.{key} {message}")


def baseline_payload(config: Config, **extra: Any) -> dict[str, Any]:
    """The ``convirt`` checkpoint entry of a baseline: format version, the run's config, objective extras."""
    return checkpoint_payload(config, **extra)


class BaselineModule(ConVIRTModule):
    """ConVIRT's engine module with the loss, optimiser and LR schedule made replaceable.

    Subclasses implement :meth:`_loss` (a scalar for a batch) and may set :attr:`monitor` (the metric that picks
    ``best.ckpt``) and ``lr_schedule``: ``plateau`` (the engine's: LR x lr_factor after plateau_patience
    evaluations without a lower val/loss), ``constant``, or ``multistep`` (per-step LambdaLR, see MoCo v2).
    """

    monitor: tuple[str, str] = ("val/loss", "min")
    lr_schedule: str = "plateau"

    def _optimizer(self, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        o = self.config.optim
        return torch.optim.Adam(parameters, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)

    def _multistep_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def configure_optimizers(self):
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self._optimizer(parameters)
        if self.lr_schedule == "plateau":
            self._attach_plateau(optimizer)
            return optimizer
        self.plateau = None
        if self.lr_schedule == "multistep":
            scheduler = self._multistep_scheduler(optimizer)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        return optimizer

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:  # pragma: no cover - abstract
        """The loss of a batch as validated (no side effects)."""
        raise NotImplementedError


def steps_per_epoch(train_pairs: int, batch_size: int, world_size: int = 1) -> int:
    """Optimiser steps in one pass over the training pairs (the stream sampler drops no pair; at least 1)."""
    return max(1, math.floor(train_pairs / (batch_size * world_size)))


class ImageCollator:
    """Image-only batches: stacked views (N, ...) plus row index and skipped paths (no tokenisation)."""

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "images": torch.stack([s["image"] for s in samples]),
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
            "skipped": [path for s in samples for path in s["skipped"]],
        }


class TwoViews(torch.nn.Module):
    """Two independent random views of one image, stacked (2, C, H, W) (SimCLR / MoCo positive pairs)."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.transform(image), self.transform(image)])


class ObjectiveDataModule(PairedDataModule):
    """The engine's paired data module with other transforms and a collate function built per dataset.

    ``collate_factory(dataset)`` returns the collate function for that split's dataset (so a captioner can look up
    full reports of the split's manifest by row). ``train_transform``/``val_transform`` replace the datasets'
    image transforms when given (image-only objectives validate on seeded augmented views, which the evaluation
    sampler makes deterministic).
    """

    def __init__(
        self,
        config: Config,
        collate_factory: Callable[[PairedDataset], Callable[[list[dict[str, Any]]], dict[str, Any]]],
        train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        val_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(config, tokenizer=None)
        self.collate_factory = collate_factory
        self.train_transform, self.val_transform = train_transform, val_transform

    def setup(self, stage: str | None = None) -> None:
        fresh = self.train_set is None
        super().setup(stage)
        if fresh:
            assert self.train_set is not None and self.val_set is not None
            if self.train_transform is not None:
                self.train_set.transform = self.train_transform
            if self.val_transform is not None:
                self.val_set.transform = self.val_transform

    def _loader(self, dataset, sampler, batch_size: int, drop_last: bool):
        self.collate = self.collate_factory(dataset)
        return super()._loader(dataset, sampler, batch_size, drop_last)


def two_view_image_parts(config: Config, augmentation: Callable[[torch.Tensor], torch.Tensor]):
    """Data and image encoder of an image-only objective (SimCLR, MoCo): two ``augmentation`` views per image for
    training and validation, no text; returns ``(data module set up for fit, image encoder)``."""
    from convirt.models.image import create_image_encoder

    views = TwoViews(augmentation)
    data = ObjectiveDataModule(config, lambda _dataset: ImageCollator(), views, views)
    data.setup("fit")
    assert data.train_set is not None
    return data, create_image_encoder(config.model.image_encoder, config.model.image_weights)
