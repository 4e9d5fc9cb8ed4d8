"""Pretraining objectives selectable with ``objective:`` in the config: ConVIRT and the paper's baselines.

Each objective is a builder ``config -> ObjectiveParts``: the objective's
:class:`~convirt.engine.module.ObjectiveModule` subclass (its loss of a batch, wrapping a plain PyTorch model whose
image encoder is ``model.image_encoder``, an :class:`~convirt.models.image.ImageEncoder`; the module holds the
``convirt`` checkpoint payload, the metric that picks ``best.ckpt`` and the loss's name) and its Lightning data
module, set up for fit. Its settings are a dataclass built from ``config.objective_params``
(:func:`~convirt.objectives.common.typed_params`). Because every objective keeps its image encoder at
``model.image_encoder``, every checkpoint exports and evaluates the same way
(:func:`convirt.encoders.checkpoint.load_image_encoder_from_checkpoint`).

The engine trains whatever it is given and imports nothing from here; callers pick the objective::

    from convirt.engine.train import pretrain
    from convirt.objectives import build_objective
    pretrain(config, build_objective)

Register a new objective by adding its builder to :data:`OBJECTIVES` ("module:function").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from convirt.errors import ConfigError

if TYPE_CHECKING:
    from convirt.config import Config
    from convirt.engine.module import ObjectiveBuilder, ObjectiveParts

OBJECTIVES: dict[str, str] = {
    "convirt": "convirt.objectives.convirt:build",
    "contrastive_binary": "convirt.objectives.contrastive_binary:build",
    "caption_lstm": "convirt.objectives.captioning:build_lstm",
    "caption_transformer": "convirt.objectives.captioning:build_transformer",
    "simclr": "convirt.objectives.simclr:build",
    "moco_v2": "convirt.objectives.moco:build",
}


def objective_builder(name: str) -> ObjectiveBuilder:
    """The builder of objective ``name``; a :class:`ConfigError` naming the valid ones when there is none."""
    target = OBJECTIVES.get(name)
    if target is None:
        raise ConfigError(f"objective {name!r} is not available; choose one of {sorted(OBJECTIVES)}")
    module_name, function = target.split(":")
    return getattr(importlib.import_module(module_name), function)


def build_objective(config: Config) -> ObjectiveParts:
    """Build the module and data module of ``config.objective`` (an :data:`~convirt.engine.module.ObjectiveBuilder`)."""
    return objective_builder(config.objective)(config)
