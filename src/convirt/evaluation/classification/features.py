"""Frozen-encoder features, extracted once per (encoder, image list, input size) and cached on disk.

The cache key hashes the encoder's weights (:func:`convirt.encoders.embedders.encoder_fingerprint`: a retrained
checkpoint never reuses stale features), the image paths in order and the input size. Files are
``<cache_dir>/<encoder>-<images>-<size>.pt`` holding a float32 (N, D) tensor, written atomically and read with
``weights_only=True``. The batches run through the shared inference loop
(:func:`convirt.encoders.embedders.embed_batches`).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convirt.encoders.embedders import concat, embed_batches, encoder_fingerprint, prepare_module
from convirt.evaluation.classification.data import epoch_batches, image_batches
from convirt.fileio import atomic_torch_save, load_torch_file
from convirt.models.image import ImageEncoder


def images_fingerprint(images: Sequence[str], image_size: int) -> str:
    digest = hashlib.sha1(f"{image_size}\n".encode())
    for path in images:
        digest.update(os.path.abspath(path).encode() + b"\n")
    return digest.hexdigest()[:16]


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
    encoder = prepare_module(encoder, device, fast)
    loader = image_batches(images, epoch_batches(len(images), batch_size, 0, 0, shuffle=False), image_size, workers)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(images), desc=description, unit="img", file=sys.stderr, leave=False)
    chunks = embed_batches(
        lambda batch: {"h_v": encoder(batch)}, (batch for batch, _ in loader), device, fast, bar.update if bar else None
    )
    if bar is not None:
        bar.close()
    return concat(chunks.get("h_v"), encoder.feature_dim, normalize=False).clone()


def cached_features(
    encoder: ImageEncoder,
    images: Sequence[str],
    cache_dir: str | os.PathLike | None,
    image_size: int = 224,
    fingerprint: str | None = None,
    **options: Any,
) -> torch.Tensor:
    """:func:`encode_images` (``options``: its keyword arguments), reading/writing ``cache_dir`` (None: no cache).

    ``fingerprint``: the encoder's :func:`encoder_fingerprint`, when the caller has it already."""
    if cache_dir is None:
        return encode_images(encoder, images, image_size, **options)
    key = f"{fingerprint or encoder_fingerprint(encoder)}-{images_fingerprint(images, image_size)}-{image_size}"
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        try:
            features = load_torch_file(path, "feature cache")
            if isinstance(features, torch.Tensor) and features.shape[0] == len(images):
                return features
        except Exception:  # a corrupt or foreign cache file (never run: UnsafeFileError) is recomputed
            pass
    features = encode_images(encoder, images, image_size, **options)
    atomic_torch_save(features, path)
    return features


def as_numpy(features: torch.Tensor) -> np.ndarray:
    return features.detach().cpu().numpy()
