"""Shared pieces of the baseline objectives: typed parameters, the checkpoint payload, data plumbing.

Every objective's module subclasses the engine's :class:`~convirt.engine.module.ObjectiveModule` (optimisation,
validation-loss accumulation, the plateau rule, RNG and plateau state in checkpoints, channels-last batches) and
only supplies its loss of a batch, and its optimiser/schedule where the paper uses another.
:class:`ObjectiveDataModule` subclasses :class:`~convirt.engine.data.PairedDataModule` (manifest checks, resumable
sharded samplers, per-draw seeds) and only replaces the image transforms and the collate function.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from convirt.config import Config, from_mapping
from convirt.data.paired import PairedDataset
from convirt.encoders.checkpoint import checkpoint_payload
from convirt.engine.data import PairedDataModule
from convirt.errors import ConfigError

P = TypeVar("P")


def typed_params(config: Config, cls: type[P]) -> P:
    """``config.objective_params`` as the objective's parameter dataclass ``cls`` (its defaults: the paper's).

    Built by the config's own machinery, so unknown keys and wrong types are errors naming
    ``objective_params.<key>``; the dataclass's ``__post_init__`` checks the values (:func:`require`).
    """
    return from_mapping(cls, config.objective_params or {}, "objective_params", noun="key")


def require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"objective_params.{key} {message}")


def require_at_least_one(params: Any, *keys: str) -> None:
    """Sizes and counts: each named parameter of ``params`` must be at least 1."""
    for key in keys:
        value = getattr(params, key)
        require(value >= 1, key, f"must be at least 1, got {value}")


def baseline_payload(config: Config, params: Any, **extra: Any) -> dict[str, Any]:
    """The ``convirt`` checkpoint entry of a baseline: format version, the run's config, its parameters, extras."""
    return checkpoint_payload(config, objective_params=dataclasses.asdict(params), **extra)


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
