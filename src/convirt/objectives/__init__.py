"""Pretraining objectives selectable with ``objective:`` in the config.

Each objective builds the three things the engine needs from a config: the Lightning module (wrapping a plain
PyTorch model whose image encoder is ``model.image_encoder``, an :class:`~convirt.models.image.ImageEncoder`), the
Lightning data module, and the ``convirt`` checkpoint payload (config + whatever is needed to rebuild the model
offline). Because every objective keeps its image encoder at ``model.image_encoder``, every checkpoint exports
and evaluates the same way (:func:`convirt.encoders.checkpoint.load_image_encoder_from_checkpoint`).

Register a new objective by adding its builder to :data:`OBJECTIVES` ("module:function").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import lightning as L

from convirt.config import Config
from convirt.errors import ConfigError


@dataclass
class ObjectiveParts:
    module: L.LightningModule
    data: L.LightningDataModule
    payload: dict[str, Any]


OBJECTIVES: dict[str, str] = {
    "convirt": "convirt.objectives.convirt:build",
    "contrastive_binary": "convirt.objectives.contrastive_binary:build",
    "caption_lstm": "convirt.objectives.captioning:build_lstm",
    "caption_transformer": "convirt.objectives.captioning:build_transformer",
    "simclr": "convirt.objectives.simclr:build",
    "moco_v2": "convirt.objectives.moco:build",
}


def build_objective(config: Config) -> ObjectiveParts:
    """Build the module, data module and checkpoint payload for ``config.objective``."""
    target = OBJECTIVES.get(config.objective)
    if target is None:
        raise ConfigError(f"objective {config.objective!r} is not available; choose one of {sorted(OBJECTIVES)}")
    module_name, function = target.split(":")
    return getattr(importlib.import_module(module_name), function)(config)
