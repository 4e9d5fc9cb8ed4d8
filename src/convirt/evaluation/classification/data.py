"""Images for classification: the Appendix B input (zero-pad to square, resize to 224) and seeded batch orders.

:func:`epoch_batches` gives the batches of one epoch as index arrays, from a generator seeded with (seed, epoch),
so the cached-feature and the image recipes of the linear probe see exactly the same batches in the same order.
A trailing batch of one example is merged into the previous batch (BatchNorm cannot train on a batch of one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from convirt.encoders.embedders import ImagePreprocessor


class ClassificationImages(Dataset):
    """Image paths -> (normalised (3, S, S) tensor, position); the Appendix B deterministic input pipeline."""

    def __init__(self, images: Sequence[str], image_size: int = 224) -> None:
        self.images = images
        self.preprocess = ImagePreprocessor(image_size, pad=True)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.preprocess(self.images[index]), index


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[np.ndarray]:
    """Index batches of one epoch (shuffled with a generator seeded by (seed, epoch) when ``shuffle``)."""
    if n == 0:
        return []
    if shuffle:
        order = np.random.default_rng([int(seed), int(epoch) + 1_000_003]).permutation(n)
    else:
        order = np.arange(n)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2] = np.concatenate([batches[-2], batches[-1]])
        batches.pop()
    return batches


def image_batches(
    images: Sequence[str], batches: Sequence[np.ndarray], image_size: int = 224, workers: int = 0
) -> DataLoader:
    """A DataLoader yielding ``(images, positions)`` for the given index batches, in order."""
    return DataLoader(
        ClassificationImages(images, image_size),
        batch_sampler=[b.tolist() for b in batches],
        num_workers=workers,
        pin_memory=False,
        generator=torch.Generator().manual_seed(0),  # leave the global RNG (dropout masks) untouched
    )


def training_epochs(split, batch_size: int, seed: int, image_size: int = 224, workers: int = 0):
    """``epoch -> batches`` over an :class:`EvalSplit`'s images, shuffled per ``(seed, epoch)``."""
    return lambda epoch: image_batches(
        split.images, epoch_batches(len(split), batch_size, seed, epoch), image_size, workers
    )


def evaluation_pass(split, batch_size: int, image_size: int = 224, workers: int = 0):
    """``() -> batches`` over an :class:`EvalSplit`'s images, in order."""
    batches = epoch_batches(len(split), batch_size, 0, 0, shuffle=False)
    return lambda: image_batches(split.images, batches, image_size, workers)
