"""The export folder: written by ``convirt export CKPT OUT`` and by ``convirt evaluate classify --save-encoder``.

OUT/
    image_encoder.pt     torchvision state dict of the image encoder (classifier keys absent):
                         ``torchvision.models.get_model(arch).load_state_dict(sd, strict=False)`` reports only
                         the classifier (e.g. ``fc.weight``, ``fc.bias``) as missing
    image_encoder.json   {"architecture": ..., "feature_dim": ..., "weights": "image_encoder.pt", ...}
    text_encoder/        Hugging Face folder (config, safetensors weights, tokenizer): ``AutoModel.from_pretrained``
    heads.pt             {"image_head": state dict, "text_head": state dict, "config": {...}}
    convirt_config.yaml  the pretraining config

A checkpoint of another objective (contrastive_binary, caption_lstm, caption_transformer, simclr, moco_v2) exports
its image encoder only (image_encoder.pt, image_encoder.json with ``"objective"``, convirt_config.yaml): those
objectives have no ConVIRT text tower and heads.

A **fine-tuned** encoder (:func:`export_fine_tuned`) is the image encoder after supervised fine-tuning, with
``"fine_tuned"`` in ``image_encoder.json`` (dataset, paper key, label fraction, seed, the starting encoder, the
retrieval images excluded). When it started from a ConVIRT checkpoint or export, the text tower and heads of that
starting point are written beside it unchanged (fine-tuning trains the image encoder and a classifier on h_v only;
``"heads": "not fine-tuned"`` says so), so ``v`` and text-image retrieval can still be measured; the paper reports
the fine-tuned model's image-image retrieval only.

:class:`~convirt.encoders.spec.EncoderSpec` reads the image encoder of any export folder; :func:`load_export_model`
rebuilds the whole ConVIRT model of one with heads and text tower (tensors and plain data only: the heads with
``weights_only=True``, the text weights from safetensors).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from convirt.config import Config, load_config
from convirt.encoders.checkpoint import (
    Checkpoint,
    LoadedModel,
    as_checkpoint,
    load_image_encoder_from_checkpoint,
    load_model,
)
from convirt.encoders.spec import EXPORT_HEADS, EXPORT_META, EXPORT_TEXT_DIR, EncoderSpec
from convirt.errors import CheckpointError
from convirt.fileio import atomic_torch_save, atomic_write_json, atomic_write_text, load_torch_file
from convirt.models.image import ImageEncoder

CONFIG_FILE = "convirt_config.yaml"


def write_image_encoder(encoder: ImageEncoder, out: Path, input_size: int, **meta: Any) -> Path:
    """``image_encoder.pt`` (torchvision state dict) and ``image_encoder.json`` (its metadata plus ``meta``)."""
    out.mkdir(parents=True, exist_ok=True)
    image_path = out / "image_encoder.pt"
    atomic_torch_save(encoder.torchvision_state_dict(), image_path)
    description = {
        "architecture": encoder.name,
        "feature_dim": encoder.feature_dim,
        "weights": image_path.name,
        "removed_classifier": encoder.classifier_name,
        "input": {"size": input_size, "channels": 3, "normalization": "imagenet"},
        **meta,
    }
    atomic_write_json(out / EXPORT_META, description)
    return image_path


def _write_text_tower_and_heads(model, tokenizer, config: Config, out: Path) -> dict[str, str]:
    """The ConVIRT model's text encoder (Hugging Face folder), both heads and the config."""
    text_dir = out / EXPORT_TEXT_DIR
    text_dir.mkdir(parents=True, exist_ok=True)
    model.text_encoder.model.save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)
    atomic_write_json(
        text_dir / "convirt_text.json",
        {
            "pooling": model.text_encoder.pooling,
            "freeze_layers": model.text_encoder.freeze_layers,
            "max_length": config.model.max_length,
        },
    )
    heads = {
        "image_head": {k: v.detach().clone() for k, v in model.image_head.state_dict().items()},
        "text_head": {k: v.detach().clone() for k, v in model.text_head.state_dict().items()},
        "config": {
            "projection_dim": config.model.projection_dim,
            "head": config.model.head,
            "head_hidden_dim": config.model.head_hidden_dim,
            "image_in_dim": model.image_head.in_dim,
            "text_in_dim": model.text_head.in_dim,
        },
    }
    atomic_torch_save(heads, out / EXPORT_HEADS)
    atomic_write_text(out / CONFIG_FILE, config.to_yaml())
    return {"text_encoder": str(text_dir), "heads": str(out / EXPORT_HEADS)}


def _checkpoint_meta(checkpoint: Checkpoint) -> dict[str, Any]:
    return {"source_checkpoint": str(checkpoint.path), "objective": checkpoint.config.objective}


def export_image_encoder_only(
    checkpoint: Checkpoint | str | os.PathLike, output_dir: str | os.PathLike
) -> dict[str, Any]:
    """Export the image encoder (and config) of any objective's checkpoint."""
    checkpoint = as_checkpoint(checkpoint)
    config = checkpoint.config
    out = Path(output_dir)
    encoder = load_image_encoder_from_checkpoint(checkpoint)
    image_path = write_image_encoder(encoder, out, config.data.augment.output_size, **_checkpoint_meta(checkpoint))
    atomic_write_text(out / CONFIG_FILE, config.to_yaml())
    return {
        "image_encoder": str(image_path),
        "objective": config.objective,
        "note": f"objective {config.objective!r} has no ConVIRT text tower or heads: exported the image encoder only",
    }


def export_checkpoint(checkpoint: Checkpoint | str | os.PathLike, output_dir: str | os.PathLike) -> dict[str, Any]:
    """Export a pretraining checkpoint (read once); returns the paths written."""
    checkpoint = as_checkpoint(checkpoint)
    if checkpoint.objective != "convirt":
        return export_image_encoder_only(checkpoint, output_dir)
    loaded = load_model(checkpoint)
    out = Path(output_dir)
    size = loaded.config.data.augment.output_size
    image_path = write_image_encoder(loaded.model.image_encoder, out, size, **_checkpoint_meta(checkpoint))
    return {
        "image_encoder": str(image_path),
        **_write_text_tower_and_heads(loaded.model, loaded.tokenizer, loaded.config, out),
    }


def load_export_model(spec: EncoderSpec | str | os.PathLike) -> LoadedModel:
    """The ConVIRT model of an export folder with heads and text tower: its image encoder weights, text encoder and
    heads (``checkpoint`` is None)."""
    from transformers import AutoModel, AutoTokenizer

    from convirt.encoders.build import build_convirt

    spec = EncoderSpec.parse(spec)
    folder = spec.path
    if spec.kind != "export" or spec.text_tower != "convirt":
        raise CheckpointError(
            f"{spec.text}: not an export folder with {EXPORT_HEADS} and {EXPORT_TEXT_DIR}/ (`convirt export` of a "
            "ConVIRT checkpoint writes them)"
        )
    config = load_config(folder / CONFIG_FILE)
    text_dir = folder / EXPORT_TEXT_DIR
    try:
        text_model = AutoModel.from_pretrained(str(text_dir), use_safetensors=True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(str(text_dir), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{text_dir}: the exported text encoder cannot be read ({exc})") from exc
    model = build_convirt(config.model, image_weights=str(spec.export_weights()), text_model=text_model)
    heads = load_torch_file(folder / EXPORT_HEADS, "heads file", error=CheckpointError)
    try:
        model.image_head.load_state_dict(heads["image_head"])
        model.text_head.load_state_dict(heads["text_head"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{folder / EXPORT_HEADS} does not hold heads of {CONFIG_FILE}'s model: {exc}") from exc
    return LoadedModel(model.eval(), tokenizer, config, None)


def export_fine_tuned(
    encoder: ImageEncoder,
    start: EncoderSpec,
    output_dir: str | os.PathLike,
    fine_tuned: dict[str, Any],
    input_size: int,
) -> dict[str, Any]:
    """Export an image encoder fine-tuned from ``start``: the encoder, ``fine_tuned`` (what it was fine-tuned on) in
    its metadata, and, when ``start`` is a ConVIRT checkpoint or export, that starting point's text tower and heads
    (not fine-tuned). Returns the paths written."""
    out = Path(output_dir)
    tower = start.text_tower if start.kind in ("checkpoint", "export") else None
    meta = {"objective": start.init, "source": str(start.resolved()), "fine_tuned": fine_tuned}
    if tower == "convirt":
        meta["heads"] = "not fine-tuned: the starting encoder's projection heads and text tower"
    written: dict[str, Any] = {"image_encoder": str(write_image_encoder(encoder, out, input_size, **meta))}
    if tower == "convirt":
        loaded = load_model(start.checkpoint()) if start.kind == "checkpoint" else load_export_model(start)
        written.update(_write_text_tower_and_heads(loaded.model, loaded.tokenizer, loaded.config, out))
    return written
