"""Self-contained convirt checkpoints: weights + config + text model config + tokenizer files.

A pretraining checkpoint is a Lightning checkpoint (``state_dict`` with keys ``model.<ConVIRT key>``, optimizer,
scheduler, loop and RNG state) plus a ``convirt`` entry holding everything needed to rebuild the model with no
network and no original files: the run's config, the Hugging Face config of the text encoder and the tokenizer
files. :func:`load_model` rebuilds a :class:`~convirt.models.ConVIRT` from it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convirt.config import Config, config_from_dict
from convirt.errors import CheckpointError

FORMAT_VERSION = 1
MODEL_PREFIX = "model."


def text_model_payload(model: torch.nn.Module, tokenizer: Any) -> dict[str, Any]:
    """The text encoder's HF config and tokenizer files, as plain data for a checkpoint."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        files = {name: (Path(folder) / name).read_bytes() for name in os.listdir(folder)}
    return {"text_config": model.config.to_dict(), "tokenizer_files": files}


def convirt_payload(config: Config, text_model: torch.nn.Module, tokenizer: Any) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "config": config.to_dict(), **text_model_payload(text_model, tokenizer)}


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint file on CPU; a missing, truncated or foreign file gives a :class:`CheckpointError`.

    ``mmap=True`` maps the tensors instead of reading them: cheap when only the config is needed.
    """
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint {file} does not exist")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {file} cannot be read (truncated or not a torch file): {exc}") from exc
    if not isinstance(checkpoint, dict) or "convirt" not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{file} is not a convirt pretraining checkpoint (no 'convirt' entry). For a plain image encoder "
            "state dict use it as image weights instead (model.image_weights=FILE or --encoder FILE)."
        )
    return checkpoint


def restore_text_model(payload: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
    """Rebuild (randomly initialised) text model and tokenizer from a checkpoint's ``convirt`` entry."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    text_config = dict(payload["text_config"])
    model_type = text_config.pop("model_type")
    model = AutoModel.from_config(AutoConfig.for_model(model_type, **text_config))
    with tempfile.TemporaryDirectory() as folder:
        for name, data in payload["tokenizer_files"].items():
            (Path(folder) / name).write_bytes(data)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


IMAGE_ENCODER_PREFIX = MODEL_PREFIX + "image_encoder."


def checkpoint_objective(path: str | os.PathLike) -> str:
    """The pretraining objective (``convirt``, ``moco_v2``, ...) a checkpoint was trained with."""
    return str(read_checkpoint(path, mmap=True)["convirt"]["config"].get("objective", "convirt"))


def load_image_encoder_from_checkpoint(path: str | os.PathLike):
    """The image encoder of any objective's pretraining checkpoint (all keep it at ``model.image_encoder``)."""
    from convirt.models.image import create_image_encoder

    checkpoint = read_checkpoint(path)
    config = config_from_dict(checkpoint["convirt"]["config"])
    encoder = create_image_encoder(config.model.image_encoder, None)
    state = {
        k[len(IMAGE_ENCODER_PREFIX) :]: v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith(IMAGE_ENCODER_PREFIX)
    }
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys or not state:
        raise CheckpointError(
            f"checkpoint {path}: the image encoder weights do not match {config.model.image_encoder} "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    return encoder.eval()


@dataclass
class LoadedModel:
    model: Any  # ConVIRT
    tokenizer: Any
    config: Config
    checkpoint: dict[str, Any]


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Rebuild the ConVIRT model of a pretraining checkpoint (eval mode, CPU)."""
    from convirt.models.convirt import ConVIRT
    from convirt.models.image import create_image_encoder
    from convirt.models.text import TextEncoder

    checkpoint = read_checkpoint(path)
    payload = checkpoint["convirt"]
    config = config_from_dict(payload["config"])
    if config.objective != "convirt":
        raise CheckpointError(
            f"{path} was pretrained with objective {config.objective!r}, which has no text tower to load here; "
            "its image encoder loads with convirt.api.load_image_encoder or `convirt export`"
        )
    text_model, tokenizer = restore_text_model(payload)
    m = config.model
    text_encoder = TextEncoder(text_model, freeze_layers=m.freeze_layers, pooling=m.pooling)  # type: ignore[arg-type]
    model = ConVIRT(
        create_image_encoder(m.image_encoder, None), text_encoder, m.projection_dim, m.head, m.head_hidden_dim
    )  # type: ignore[arg-type]
    state = {k[len(MODEL_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    # Parameters unused by the forward pass (e.g. a text pooler) may be absent from older files: allow only those.
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if ".pooler." not in k]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint {path} does not match its own config: missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    return LoadedModel(model.eval(), tokenizer, config, checkpoint)
