"""Samplers that make a training run resumable to the exact batch, on one process or many.

:class:`ResumableStreamSampler` turns a dataset of ``n`` items into an endless stream of ``(index, seed)`` pairs:
epoch ``e`` is a permutation drawn from ``seed + e``; each process takes every ``world_size``-th item of it
(epochs truncated to a multiple of ``world_size`` so all processes stay in step); the per-draw seed is a hash
of (seed, epoch, position) that the dataset uses for all of the draw's randomness. Because the stream is a pure
function of its position, resuming after ``k`` consumed batches is just starting at position ``k * batch_size``.
Epoch boundaries do not align with batches: a batch may straddle two epochs, as in a stream.

:class:`ShardedEvalSampler` orders the validation pairs by one fixed permutation drawn from its seed (the same on
every run and for any number of processes), padded to a multiple of ``world_size`` by repeating its first items
(like ``DistributedSampler``); process ``r`` takes positions ``r, r + W, r + 2W, ...`` of it, and each pair's draw
seed depends on its index only. So validation batches are random mixtures of patients rather than runs of one
patient's near-duplicate pairs (manifest order), the loss is deterministic, and the ``k``-th batches of ``W``
processes at batch ``B`` together hold exactly the ``k``-th batch of one process at batch ``W * B``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

_MASK = (1 << 63) - 1


def draw_seed(seed: int, epoch: int, position: int) -> int:
    """A well-mixed 63-bit seed from (seed, epoch, position) (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + position * 0x94D049BB133111EB) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK


class ResumableStreamSampler(Sampler[tuple[int, int]]):
    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        if size < world_size:
            raise ValueError(f"dataset of {size} items is smaller than the number of processes ({world_size})")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.per_rank = size // world_size
        self.start = start  # position in this process's stream to begin at

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.size, generator=generator)[: self.per_rank * self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start
        epoch, offset = divmod(position, self.per_rank)
        while True:
            order = self._epoch_order(epoch).tolist()
            for local in range(offset, self.per_rank):
                global_position = local * self.world_size + self.rank
                yield order[local], draw_seed(self.seed, epoch, global_position)
            epoch, offset = epoch + 1, 0


class ShardedEvalSampler(Sampler[tuple[int, int]]):
    def __init__(self, size: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        self.size, self.rank, self.world_size, self.seed = size, rank, world_size, seed
        self.per_rank = -(-size // world_size)

    def __len__(self) -> int:
        return self.per_rank

    def order(self) -> list[int]:
        """The global validation order: a permutation of ``range(size)`` from the seed, padded to a multiple of
        ``world_size`` with its first items."""
        generator = torch.Generator().manual_seed(draw_seed(self.seed, -1, -1))
        order = torch.randperm(self.size, generator=generator).tolist()
        padding = self.per_rank * self.world_size - self.size
        return order + (order * (padding // max(self.size, 1) + 1))[:padding]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.order()[self.rank :: self.world_size]:
            yield index, draw_seed(self.seed, -1, index)
