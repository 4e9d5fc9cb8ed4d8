"""Python API: load a pretrained ConVIRT checkpoint (or any image encoder) and embed images and texts.

>>> encoder = ConvirtEncoder.from_checkpoint("runs/convirt/checkpoints/best.ckpt")
>>> image_embeddings = encoder.encode_images(["a.png", "b.jpg"])          # (2, 512), L2-normalised
>>> text_embeddings = encoder.encode_texts(["No pleural effusion."])      # (1, 512)
>>> similarity = image_embeddings @ text_embeddings.T

Encoding is batched, runs without gradients and in eval mode; with ``fast=True`` (the default) it uses
channels_last, and bf16 autocast where the hardware runs it natively (CPUs with AMX/AVX512-BF16, CUDA GPUs).

:func:`load_image_encoder` resolves the image-encoder specifications used by the evaluation commands:
``random:NAME`` (random init), ``imagenet:NAME`` (torchvision weights, needs a network once), a convirt
checkpoint (``.ckpt``), an exported folder (from ``convirt export``), or a torchvision-compatible state dict
(``NAME=PATH`` to name the architecture; ``PATH`` alone assumes resnet50).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from convirt.data.images import load_image
from convirt.data.transforms import pil_to_uint8_tensor, resize_transform
from convirt.errors import ConfigError
from convirt.models.image import ImageEncoder, create_image_encoder
from convirt.runtime import bf16_supported, default_device, inference_context

__all__ = [
    "ConvirtEncoder",
    "bf16_supported",
    "default_device",
    "inference_context",
    "load_image_encoder",
]

ImageInput = str | os.PathLike | Image.Image | torch.Tensor


def batched(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ConvirtEncoder:
    """A pretrained ConVIRT model ready to embed images and texts."""

    def __init__(self, model, tokenizer, config, device: str | torch.device | None = None, fast: bool = True):
        self.device = torch.device(device) if device else default_device()
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.config = config
        self.fast = fast
        self.image_size = config.data.augment.output_size
        self.max_length = config.model.max_length
        self.transform = resize_transform(self.image_size)
        if fast:
            self.model.image_encoder.to(memory_format=torch.channels_last)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device | None = None, fast: bool = True):
        from convirt.checkpoint import load_model

        loaded = load_model(path)
        return cls(loaded.model, loaded.tokenizer, loaded.config, device=device, fast=fast)

    @property
    def image_encoder(self) -> ImageEncoder:
        return self.model.image_encoder

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            return image
        if isinstance(image, Image.Image):
            image = image.convert("L")
        else:
            image = load_image(image, mode="L")
        return self.transform(pil_to_uint8_tensor(image))

    def encode_images(
        self, images: Sequence[ImageInput], batch_size: int = 32, project: bool = True, normalize: bool = True
    ) -> torch.Tensor:
        """Embed images (paths, PIL images or preprocessed tensors) -> (N, d) or (N, D_v) with ``project=False``."""
        outputs = []
        for chunk in batched(list(images), batch_size):
            batch = torch.stack([self.preprocess(x) for x in chunk]).to(self.device)
            batch = batch.to(memory_format=torch.channels_last) if self.fast else batch
            with inference_context(self.device, self.fast):
                out = self.model.encode_image(batch, project=project)
            outputs.append(out.float().cpu())
        result = torch.cat(outputs) if outputs else torch.empty(0, self._dim(project, image=True))
        return F.normalize(result, dim=-1) if normalize and len(result) else result

    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 64, project: bool = True, normalize: bool = True
    ) -> torch.Tensor:
        """Embed sentences -> (N, d) or (N, D_u) with ``project=False``."""
        outputs = []
        for chunk in batched(list(texts), batch_size):
            tokens = self.tokenizer(
                list(chunk), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            with inference_context(self.device, self.fast):
                out = self.model.encode_text(
                    tokens["input_ids"], tokens["attention_mask"], tokens.get("token_type_ids"), project=project
                )
            outputs.append(out.float().cpu())
        result = torch.cat(outputs) if outputs else torch.empty(0, self._dim(project, image=False))
        return F.normalize(result, dim=-1) if normalize and len(result) else result

    def _dim(self, project: bool, image: bool) -> int:
        if project:
            return self.model.image_head.out_dim
        return (self.model.image_encoder if image else self.model.text_encoder).feature_dim


def load_image_encoder(spec: str) -> ImageEncoder:
    """Resolve an image-encoder specification (see the module docstring) to an :class:`ImageEncoder`."""
    if ":" in spec and spec.split(":", 1)[0] in ("random", "imagenet", "none"):
        kind, name = spec.split(":", 1)
        return create_image_encoder(name, None if kind in ("random", "none") else "imagenet")
    name, path_text = spec.split("=", 1) if "=" in spec else (None, spec)
    path = Path(path_text)
    if path.is_dir():
        meta_file = path / "image_encoder.json"
        if not meta_file.is_file():
            raise ConfigError(f"{path} is not a convirt export folder (no image_encoder.json); see `convirt export`")
        meta = json.loads(meta_file.read_text())
        return create_image_encoder(name or meta["architecture"], path / meta["weights"])
    if path.suffix == ".ckpt":
        from convirt.checkpoint import load_image_encoder_from_checkpoint

        return load_image_encoder_from_checkpoint(path)
    if not path.is_file():
        raise ConfigError(
            f"image encoder {spec!r} is neither random:NAME, imagenet:NAME, a .ckpt, an export folder nor a file"
        )
    return create_image_encoder(name or "resnet50", path)
