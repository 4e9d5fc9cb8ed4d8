"""Helpers for the retrieval, zero-shot, search and analysis tests (no tests here).

- :func:`write_tiny_checkpoint`: a real convirt checkpoint file (ResNet18 at 64 px + a tiny BERT, random weights)
  in the format :func:`convirt.encoders.checkpoint.load_model` reads, without running pretraining.
- :class:`LookupEmbedder`: a fake encoder whose embeddings are looked up per image path / sentence (e.g. one-hot
  of the true label: a "perfect" encoder), implementing the :class:`convirt.encoders.embedders.Embedder` interface.
- :func:`copy_kermany`: a few real Kermany test images copied into a temporary folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from convirt.encoders.embedders import Embedder


def write_tiny_checkpoint(path: Path, text_encoder_dir: Path, seed: int = 0, projection_dim: int = 32) -> Path:
    from convirt.config import load_config
    from convirt.encoders.build import create_model, create_tokenizer
    from convirt.encoders.checkpoint import convirt_payload

    config = load_config(
        None,
        [
            "model.image_encoder=resnet18",
            "model.image_weights=none",
            f"model.text_encoder={text_encoder_dir}",
            "model.freeze_layers=2",
            f"model.projection_dim={projection_dim}",
            "data.augment.output_size=64",
        ],
    )
    torch.manual_seed(seed)
    model = create_model(config)
    tokenizer = create_tokenizer(config)
    checkpoint = {
        "convirt": convirt_payload(config, model.text_encoder.model, tokenizer),
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
    }
    torch.save(checkpoint, path)
    return path


class LookupEmbedder(Embedder):
    """Embeddings from tables: ``images[path]`` (both spaces) and ``texts[sentence]``; counts embedded images."""

    spaces = ("h_v", "v")
    image_size = 64
    temperature = 0.1

    def __init__(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor] | None = None, label="fake"):
        self.images = {str(k): v.float() for k, v in images.items()}
        self.texts = {k: v.float() for k, v in (texts or {}).items()}
        self.has_text = texts is not None
        self.label = self.spec = label
        self.embedded = 0

    def preprocess(self, image):
        return image

    def embed_images(self, images, spaces=None, batch_size=32, progress=None):
        spaces = tuple(spaces or self.spaces)
        self.check_spaces(spaces)
        self.embedded += len(images)
        stacked = F.normalize(torch.stack([self.images[str(p)] for p in images]), dim=-1)
        return dict.fromkeys(spaces, stacked)

    def embed_texts(self, texts):
        return F.normalize(torch.stack([self.texts[t] for t in texts]), dim=-1)


def one_hot(index: int, size: int) -> torch.Tensor:
    return F.one_hot(torch.tensor(index), size).float()


def copy_kermany(shared_data: Path, destination: Path, per_class: int, split: str = "test") -> list[Path]:
    """Copy the first ``per_class`` images of each class of a Kermany split into ``destination/split/CLASS``."""
    copied = []
    for class_dir in sorted(p for p in (shared_data / "kermany-pneumonia" / split).iterdir() if p.is_dir()):
        target = destination / split / class_dir.name
        target.mkdir(parents=True, exist_ok=True)
        images = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        for image in images[:per_class]:
            copied.append(Path(shutil.copy(image, target / image.name)))
    return copied
