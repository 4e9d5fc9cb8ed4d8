"""Assemble a model from the config's ``model`` section: the one place that decides how.

:func:`build_convirt` is used by pretraining (:func:`create_model`: pretrained or random text weights as
configured), by checkpoint loading (the text model rebuilt from the checkpoint, then its weights loaded) and by the
``random-like:`` baseline (everything freshly initialised). :func:`build_pair_classifier` does the same for the
Contrastive-Binary baseline's model (its objective and checkpoint loading).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from convirt.config import Config, ModelConfig
from convirt.errors import CheckpointError, ModelLoadError
from convirt.models.convirt import ConVIRT
from convirt.models.image import ImageEncoder, create_image_encoder
from convirt.models.pair_classifier import PairClassifier
from convirt.models.text import TextEncoder, load_pretrained_text_model, load_tokenizer

FROM_CONFIG = "from-config"


def _encoders(
    model_config: ModelConfig, image_weights: str | None, text_model: nn.Module | None
) -> tuple[ImageEncoder, TextEncoder]:
    """The image and text encoders ``model_config`` describes (see :func:`build_convirt` for the arguments)."""
    m = model_config
    weights = m.image_weights if image_weights == FROM_CONFIG else image_weights
    try:
        image_encoder = create_image_encoder(m.image_encoder, weights)
    except (ModelLoadError, CheckpointError) as exc:
        if image_weights != FROM_CONFIG:
            raise
        raise type(exc)(f"model.image_weights={weights}: {exc}") from None
    if text_model is None:
        text_model = load_pretrained_text_model(m.text_encoder, random_init=m.text_weights == "random")
    text_encoder = TextEncoder(text_model, freeze_layers=m.freeze_layers, pooling=m.pooling,  # type: ignore[arg-type]
                               frozen_cache=m.frozen_text_cache)  # fmt: skip
    return image_encoder, text_encoder


def build_convirt(
    model_config: ModelConfig, image_weights: str | None = FROM_CONFIG, text_model: nn.Module | None = None
) -> ConVIRT:
    """The ConVIRT model ``model_config`` describes.

    ``image_weights`` overrides ``model.image_weights`` (None: random init). ``text_model`` is the Hugging Face
    model under the text encoder; by default it is loaded from ``model.text_encoder`` (re-initialised when
    ``model.text_weights=random``).
    """
    m = model_config
    image_encoder, text_encoder = _encoders(m, image_weights, text_model)
    return ConVIRT(
        image_encoder,
        text_encoder,
        projection_dim=m.projection_dim,
        head=m.head,  # type: ignore[arg-type]
        head_hidden_dim=m.head_hidden_dim,
    )


def build_pair_classifier(
    model_config: ModelConfig,
    hidden_dim: int,
    image_weights: str | None = FROM_CONFIG,
    text_model: nn.Module | None = None,
) -> PairClassifier:
    """The Contrastive-Binary baseline's model (ConVIRT's encoders + the pair classifier), as :func:`build_convirt`."""
    image_encoder, text_encoder = _encoders(model_config, image_weights, text_model)
    return PairClassifier(image_encoder, text_encoder, model_config.projection_dim, hidden_dim)


def create_model(config: Config | ModelConfig, image_weights: str | None = FROM_CONFIG) -> ConVIRT:
    """The ConVIRT model to pretrain (``image_weights`` overrides ``model.image_weights``), in training mode."""
    model_config = config.model if isinstance(config, Config) else config
    model = build_convirt(model_config, image_weights)
    return model.train()  # Hugging Face returns models in eval mode; the text tower trains with its dropout


def create_tokenizer(config: Config | ModelConfig) -> Any:
    model_config = config.model if isinstance(config, Config) else config
    return load_tokenizer(model_config.text_encoder, model_config.text_lowercase)
