"""Frozen-encoder features, extracted once per (encoder, image list, input size) and cached on disk.

The cache key hashes the encoder's weights (so a retrained checkpoint never reuses stale features), the image
paths in order and the input size. Files are ``<cache_dir>/<encoder>-<images>-<size>.pt`` holding a float32
(N, D) tensor, written atomically.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from convirt.api import inference_context
from convirt.evaluation.classification.data import epoch_batches, image_batches
from convirt.fileio import atomic_torch_save
from convirt.models.image import ImageEncoder


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """Short hash of an encoder's architecture name and weights."""
    digest = hashlib.sha1(str(getattr(encoder, "name", type(encoder).__name__)).encode())
    for key, value in sorted(encoder.state_dict().items()):
        digest.update(key.encode())
        tensor = value.detach().cpu().contiguous()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def images_fingerprint(images: Sequence[str], image_size: int) -> str:
    digest = hashlib.sha1(f"{image_size}\n".encode())
    for path in images:
        digest.update(os.path.abspath(path).encode() + b"\n")
    return digest.hexdigest()[:16]


def prepare_encoder(encoder: ImageEncoder, device: torch.device, fast: bool) -> ImageEncoder:
    encoder = encoder.to(device).eval()
    if fast:
        encoder = encoder.to(memory_format=torch.channels_last)
    return encoder


def prepare_batch(images: torch.Tensor, device: torch.device, fast: bool) -> torch.Tensor:
    """A batch on ``device``, channels_last when ``fast`` (the layout :func:`prepare_encoder` gives the encoder)."""
    images = images.to(device)
    return images.to(memory_format=torch.channels_last) if fast else images


def encode_images(
    encoder: ImageEncoder,
    images: Sequence[str],
    image_size: int = 224,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    fast: bool = True,
    workers: int = 0,
    progress: bool = False,
    description: str = "features",
) -> torch.Tensor:
    """Pooled features h_v of ``images`` through the frozen ``encoder`` (eval mode): float32 (N, D) on CPU."""
    device = torch.device(device)
    encoder = prepare_encoder(encoder, device, fast)
    loader = image_batches(images, epoch_batches(len(images), batch_size, 0, 0, shuffle=False), image_size, workers)
    outputs = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(images), desc=description, unit="img", file=sys.stderr, leave=False)
    for batch, _ in loader:
        batch = prepare_batch(batch, device, fast)
        with inference_context(device, fast):
            outputs.append(encoder(batch).float().cpu())
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    if not outputs:
        return torch.empty(0, encoder.feature_dim)
    return torch.cat(outputs).clone()


def cached_features(
    encoder: ImageEncoder,
    images: Sequence[str],
    cache_dir: str | os.PathLike | None,
    image_size: int = 224,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    fast: bool = True,
    workers: int = 0,
    progress: bool = False,
    description: str = "features",
    fingerprint: str | None = None,
) -> torch.Tensor:
    """:func:`encode_images`, reading/writing ``cache_dir`` (None disables the cache)."""
    if cache_dir is None:
        return encode_images(encoder, images, image_size, batch_size, device, fast, workers, progress, description)
    key = f"{fingerprint or encoder_fingerprint(encoder)}-{images_fingerprint(images, image_size)}-{image_size}"
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        try:
            features = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(features, torch.Tensor) and features.shape[0] == len(images):
                return features
        except Exception:  # a corrupt cache file is recomputed
            pass
    features = encode_images(encoder, images, image_size, batch_size, device, fast, workers, progress, description)
    atomic_torch_save(features, path)
    return features


def as_numpy(features: torch.Tensor) -> np.ndarray:
    return features.detach().cpu().numpy()
