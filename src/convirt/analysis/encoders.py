"""Embedders: one interface over the encoders that retrieval, zero-shot, t-SNE and search evaluate.

An *encoder specification* (the ``--encoder`` option of the analysis and retrieval commands) is one of:

=============================== =====================================================================================
``PATH.ckpt``                   a ConVIRT pretraining checkpoint: image features ``h_v``, projected image embeddings
                                ``v`` and text embeddings ``u`` (text queries and zero-shot work); a checkpoint of
                                another objective (moco_v2, simclr, ...): its image encoder's ``h_v`` only
``random-like:PATH.ckpt``       the same architecture as that checkpoint with every weight freshly initialised
                                (image encoder, text encoder and both heads; seeded): the "random init" baseline of
                                the paper, with a text tower so text-image retrieval and zero-shot can run
``random:NAME``                 an image encoder only (``h_v``; random weights drawn from ``seed``), as
``imagenet:NAME``, folder, file :func:`convirt.api.load_image_encoder` resolves it (ImageNet weights, export
                                folder, torchvision state dict)
=============================== =====================================================================================

Every embedding returned here is L2-normalised, so a dot product is the cosine similarity.
The spaces are named as in the paper: ``h_v`` (image encoder output) and ``v`` (after the projection head g_v,
the space shared with the text embeddings ``u``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from convirt.api import ConvirtEncoder, ImageInput, batched, default_device, inference_context, load_image_encoder
from convirt.checkpoint import checkpoint_objective, read_checkpoint
from convirt.config import config_from_dict
from convirt.data.images import load_image
from convirt.data.transforms import pil_to_uint8_tensor, resize_transform
from convirt.errors import ConfigError
from convirt.models.image import ImageEncoder, create_image_encoder

SPACES = ("h_v", "v")
RANDOM_LIKE = "random-like:"

Progress = Callable[[int], None]  # called with the number of images just embedded


class Embedder:
    """Embeds images into ``h_v`` and (when it has a projection head) ``v``, and texts into ``u``."""

    label: str
    spec: str
    spaces: tuple[str, ...]
    has_text: bool
    image_size: int

    def preprocess(self, image: ImageInput) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def embed_images(
        self,
        images: Sequence[ImageInput],
        spaces: Sequence[str] | None = None,
        batch_size: int = 32,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        raise ConfigError(f"encoder {self.label!r} has no text tower; text queries need a ConVIRT checkpoint")

    def check_spaces(self, spaces: Sequence[str]) -> None:
        for space in spaces:
            if space not in SPACES:
                raise ConfigError(f"unknown embedding space {space!r}; use h_v or v")
            if space not in self.spaces:
                raise ConfigError(
                    f"encoder {self.label!r} has no {space!r} space (it has {', '.join(self.spaces)}); the projected "
                    "space v needs a ConVIRT checkpoint"
                )

    @property
    def image_module(self) -> ImageEncoder:  # pragma: no cover - interface
        raise NotImplementedError


class ConvirtEmbedder(Embedder):
    """A full ConVIRT model (:class:`convirt.api.ConvirtEncoder`): spaces ``h_v`` and ``v``, and text."""

    spaces = SPACES
    has_text = True

    def __init__(self, encoder: ConvirtEncoder, label: str = "convirt", spec: str = "") -> None:
        self.encoder = encoder
        self.label = label
        self.spec = spec or label

    @property
    def image_module(self) -> ImageEncoder:
        return self.encoder.model.image_encoder

    @property
    def image_size(self) -> int:
        return int(self.encoder.image_size)

    @property
    def temperature(self) -> float:
        return float(self.encoder.config.loss.temperature)

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        return self.encoder.preprocess(image)

    def embed_images(self, images, spaces=None, batch_size=32, progress=None):
        spaces = tuple(spaces or self.spaces)
        self.check_spaces(spaces)
        features, projected = [], []
        head = self.encoder.model.image_head
        for chunk in batched(list(images), batch_size):
            h_v = self.encoder.encode_images(chunk, batch_size=batch_size, project=False, normalize=False)
            features.append(h_v)
            if "v" in spaces:
                with torch.inference_mode():
                    projected.append(head(h_v.to(self.encoder.device)).float().cpu())
            if progress:
                progress(len(chunk))
        out = {}
        if "h_v" in spaces:
            out["h_v"] = _normalize_cat(features, self.image_module.feature_dim)
        if "v" in spaces:
            out["v"] = _normalize_cat(projected, head.out_dim)
        return out

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encoder.encode_texts(list(texts), project=True, normalize=True)


class ImageOnlyEmbedder(Embedder):
    """An image encoder without heads or text tower (random, ImageNet, exported): space ``h_v`` only."""

    spaces = ("h_v",)
    has_text = False
    temperature = 0.1

    def __init__(
        self,
        image_encoder: ImageEncoder,
        label: str,
        spec: str = "",
        image_size: int = 224,
        device: str | torch.device | None = None,
        fast: bool = True,
    ) -> None:
        self.device = torch.device(device) if device else default_device()
        self.model = image_encoder.to(self.device).eval()
        self.label = label
        self.spec = spec or label
        self.fast = fast
        self.image_size = image_size
        self.transform = resize_transform(image_size)
        if fast:
            self.model.to(memory_format=torch.channels_last)

    @property
    def image_module(self) -> ImageEncoder:
        return self.model

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """Same loading rules as :meth:`ConvirtEncoder.preprocess`: by content, one channel, resized square."""
        if isinstance(image, torch.Tensor):
            return image
        image = image.convert("L") if isinstance(image, Image.Image) else load_image(image, mode="L")
        return self.transform(pil_to_uint8_tensor(image))

    def embed_images(self, images, spaces=None, batch_size=32, progress=None):
        spaces = tuple(spaces or self.spaces)
        self.check_spaces(spaces)
        outputs = []
        for chunk in batched(list(images), batch_size):
            batch = torch.stack([self.preprocess(x) for x in chunk]).to(self.device)
            batch = batch.to(memory_format=torch.channels_last) if self.fast else batch
            with inference_context(self.device, self.fast):
                outputs.append(self.model(batch).float().cpu())
            if progress:
                progress(len(chunk))
        return {"h_v": _normalize_cat(outputs, self.model.feature_dim)}


def _normalize_cat(chunks: list[torch.Tensor], dim: int) -> torch.Tensor:
    if not chunks:
        return torch.empty(0, dim)
    return F.normalize(torch.cat(chunks).float(), dim=-1)


def random_convirt_like(checkpoint: str | os.PathLike, seed: int = 0, device=None, fast: bool = True):
    """A :class:`ConvirtEncoder` with the architecture of ``checkpoint`` and all weights freshly initialised."""
    from convirt.checkpoint import read_checkpoint, restore_text_model
    from convirt.config import config_from_dict
    from convirt.models.convirt import ConVIRT
    from convirt.models.image import create_image_encoder
    from convirt.models.text import TextEncoder

    payload = read_checkpoint(checkpoint)["convirt"]
    config = config_from_dict(payload["config"])
    m = config.model
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        text_model, tokenizer = restore_text_model(payload)  # built from its config: random weights
        model = ConVIRT(
            create_image_encoder(m.image_encoder, None),
            TextEncoder(text_model, freeze_layers=m.freeze_layers, pooling=m.pooling),  # type: ignore[arg-type]
            m.projection_dim,
            m.head,  # type: ignore[arg-type]
            m.head_hidden_dim,
        )
    finally:
        torch.random.set_rng_state(state)
    return ConvirtEncoder(model.eval(), tokenizer, config, device=device, fast=fast)


def default_label(spec: str) -> str:
    if spec.startswith(RANDOM_LIKE):
        return "random init"
    if spec.startswith(("random:", "imagenet:")):
        kind, name = spec.split(":", 1)
        return f"{'random init' if kind == 'random' else 'ImageNet'} ({name})"
    return "ConVIRT" if spec.endswith(".ckpt") else Path(spec).name


def load_embedder(
    spec: str,
    label: str | None = None,
    seed: int = 0,
    image_size: int = 224,
    device: str | torch.device | None = None,
    fast: bool = True,
) -> Embedder:
    """Resolve an encoder specification (see the module docstring) into an :class:`Embedder`."""
    label = label or default_label(spec)
    if spec.startswith(RANDOM_LIKE) and checkpoint_objective(spec[len(RANDOM_LIKE) :]) != "convirt":
        # another objective's checkpoint has no ConVIRT text tower: its architecture, image encoder only
        config = config_from_dict(read_checkpoint(spec[len(RANDOM_LIKE) :], mmap=True)["convirt"]["config"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = create_image_encoder(config.model.image_encoder, None)
        return ImageOnlyEmbedder(encoder, label, spec, image_size=image_size, device=device, fast=fast)
    if spec.startswith(RANDOM_LIKE):
        encoder = random_convirt_like(spec[len(RANDOM_LIKE) :], seed=seed, device=device, fast=fast)
        return ConvirtEmbedder(encoder, label, spec)
    if spec.endswith(".ckpt") and checkpoint_objective(spec) == "convirt":
        return ConvirtEmbedder(ConvirtEncoder.from_checkpoint(spec, device=device, fast=fast), label, spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # random:NAME is drawn from the seed, so a rerun ranks the same way
        encoder = load_image_encoder(spec)
    return ImageOnlyEmbedder(encoder, label, spec, image_size=image_size, device=device, fast=fast)


def encoder_fingerprint(spec: str, seed: int = 0) -> str:
    """Identifies the weights behind ``spec``: the spec, plus path, size and mtime of any file it names."""
    parts = [spec, f"seed={seed}" if spec.startswith(RANDOM_LIKE) else ""]
    target = spec[len(RANDOM_LIKE) :] if spec.startswith(RANDOM_LIKE) else spec.split("=", 1)[-1]
    path = Path(target)
    if ":" not in spec or spec.startswith(RANDOM_LIKE):
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.is_file():
                stat = file.stat()
                parts.append(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
