"""`convirt export CKPT OUT`: write a pretrained model in formats other tools load directly.

OUT/
    image_encoder.pt     torchvision state dict of the image encoder (classifier keys absent):
                         ``torchvision.models.get_model(arch).load_state_dict(sd, strict=False)`` reports only
                         the classifier (e.g. ``fc.weight``, ``fc.bias``) as missing
    image_encoder.json   {"architecture": ..., "feature_dim": ..., "weights": "image_encoder.pt", ...}
    text_encoder/        Hugging Face folder (config, weights, tokenizer): ``AutoModel.from_pretrained(dir)``
    heads.pt             {"image_head": state dict, "text_head": state dict, "config": {...}}
    convirt_config.yaml  the pretraining config
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from convirt.checkpoint import load_model
from convirt.fileio import atomic_torch_save, atomic_write_json, atomic_write_text


def export_checkpoint(checkpoint: str | os.PathLike, output_dir: str | os.PathLike) -> dict[str, Any]:
    """Export a pretraining checkpoint; returns the paths written."""
    loaded = load_model(checkpoint)
    model, config = loaded.model, loaded.config
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    image_path = out / "image_encoder.pt"
    atomic_torch_save(model.image_encoder.torchvision_state_dict(), image_path)
    meta = {
        "architecture": model.image_encoder.name,
        "feature_dim": model.image_encoder.feature_dim,
        "weights": image_path.name,
        "removed_classifier": model.image_encoder.classifier_name,
        "input": {"size": config.data.augment.output_size, "channels": 3, "normalization": "imagenet"},
        "source_checkpoint": str(checkpoint),
    }
    atomic_write_json(out / "image_encoder.json", meta)

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


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export a checkpoint: torchvision image encoder, Hugging Face text encoder, heads"
    )
    parser.add_argument("checkpoint", help="a convirt pretraining checkpoint (.ckpt)")
    parser.add_argument("output", help="output folder")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    torch.set_grad_enabled(False)
    print(json.dumps(export_checkpoint(args.checkpoint, args.output), indent=2))
    return 0
