"""Export a pretraining checkpoint (``convirt export CKPT OUT``) in formats other tools load directly.

OUT/
    image_encoder.pt     torchvision state dict of the image encoder (classifier keys absent):
                         ``torchvision.models.get_model(arch).load_state_dict(sd, strict=False)`` reports only
                         the classifier (e.g. ``fc.weight``, ``fc.bias``) as missing
    image_encoder.json   {"architecture": ..., "feature_dim": ..., "weights": "image_encoder.pt", ...}
    text_encoder/        Hugging Face folder (config, weights, tokenizer): ``AutoModel.from_pretrained(dir)``
    heads.pt             {"image_head": state dict, "text_head": state dict, "config": {...}}
    convirt_config.yaml  the pretraining config

A checkpoint of another objective (contrastive_binary, caption_lstm, caption_transformer, simclr, moco_v2) exports
its image encoder only (image_encoder.pt, image_encoder.json with ``"objective"``, convirt_config.yaml): those
objectives have no ConVIRT text tower and heads, and their own heads are not used by the evaluations.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from convirt.encoders.checkpoint import Checkpoint, as_checkpoint, load_image_encoder_from_checkpoint, load_model
from convirt.encoders.spec import EXPORT_META
from convirt.fileio import atomic_torch_save, atomic_write_json, atomic_write_text


def _write_image_encoder(encoder, config, checkpoint: Checkpoint, out: Path) -> Path:
    image_path = out / "image_encoder.pt"
    atomic_torch_save(encoder.torchvision_state_dict(), image_path)
    meta = {
        "architecture": encoder.name,
        "feature_dim": encoder.feature_dim,
        "weights": image_path.name,
        "removed_classifier": encoder.classifier_name,
        "input": {"size": config.data.augment.output_size, "channels": 3, "normalization": "imagenet"},
        "source_checkpoint": str(checkpoint.path),
        "objective": config.objective,
    }
    atomic_write_json(out / EXPORT_META, meta)
    return image_path


def export_image_encoder_only(
    checkpoint: Checkpoint | str | os.PathLike, output_dir: str | os.PathLike
) -> dict[str, Any]:
    """Export the image encoder (and config) of any objective's checkpoint."""
    checkpoint = as_checkpoint(checkpoint)
    config = checkpoint.config
    encoder = load_image_encoder_from_checkpoint(checkpoint)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    image_path = _write_image_encoder(encoder, config, checkpoint, out)
    atomic_write_text(out / "convirt_config.yaml", config.to_yaml())
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
    model, config = loaded.model, loaded.config
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    image_path = _write_image_encoder(model.image_encoder, config, checkpoint, out)

    text_dir = out / "text_encoder"
    text_dir.mkdir(exist_ok=True)
    model.text_encoder.model.save_pretrained(text_dir)
    loaded.tokenizer.save_pretrained(text_dir)
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
    atomic_torch_save(heads, out / "heads.pt")
    atomic_write_text(out / "convirt_config.yaml", config.to_yaml())
    return {"image_encoder": str(image_path), "text_encoder": str(text_dir), "heads": str(out / "heads.pt")}
