"""Helpers shared by the explorer tests (tests/test_serve*.py): a small image collection with a planted
near-duplicate and labels, indexed with a tiny real checkpoint, and the ranking the explorer must reproduce."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from convirt.analysis.search import ImageIndex, build_index
from convirt.encoders.embedders import load_embedder

PLANTED = "img3.png"
DUPLICATE = "img3_copy.png"  # img3 with +-2 grey levels of noise: its nearest neighbour by far


def write_collection(folder: Path, count: int = 8) -> dict[str, list[str]]:
    """``count`` 64-px noise images of rising brightness and the planted near-duplicate; returns their labels
    ({resolved path: labels}: odd images "Effusion", even ones "Normal", the duplicate unlabelled)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = np.clip(rng.normal(40 + 22 * i, 30, (64, 64)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    base = np.asarray(Image.open(folder / PLANTED)).astype(int)
    noisy = np.clip(base + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(folder / DUPLICATE)
    return {str((folder / f"img{i}.png").resolve()): ["Effusion" if i % 2 else "Normal"] for i in range(count)}


def index_collection(folder: Path, checkpoint: Path, output: Path) -> ImageIndex:
    labels = write_collection(folder)
    return build_index(folder, str(checkpoint), output, progress=False, labels=labels, label_source="test labels")


def text_ranking(index: ImageIndex, checkpoint: Path, text: str) -> list[str]:
    """File names of the index ordered by cosine similarity to ``text``, computed directly."""
    query = load_embedder(str(checkpoint)).embed_texts([text])[0]
    scores = index.embeddings @ query
    return [Path(index.paths[i]).name for i in torch.argsort(scores, descending=True).tolist()]


def image_ranking(index: ImageIndex, row: int) -> list[str]:
    """File names of the index (``row`` itself left out) ordered by similarity to image ``row``."""
    scores = index.embeddings @ index.embeddings[row]
    return [Path(index.paths[i]).name for i in torch.argsort(scores, descending=True).tolist() if i != row]
