"""MoCo v2 (Chen et al., 2020b), image-only, with Appendix E's settings.

Query encoder = the image encoder + an MLP head (h -> h -> ``out_dim``); key encoder = a copy of both whose
parameters are an exponential moving average of the query side (``momentum``), never trained by gradient; a
queue of the last ``queue_size`` keys (L2-normalised) supplies the negatives. Loss: InfoNCE over
[q.k+, q.queue] / ``temperature``, the positive at index 0. After each training step's loss the batch's keys
replace the oldest queue entries (the queue wraps around). Paper: ResNet50, temperature 0.07, out_dim 128, SGD
(momentum 0.9) LR 0.0075, weight decay 1e-4, batch 64, queue 4096, 100 epochs, LR x 0.1 at epochs 60 and 80
(``lr_milestones_epochs``; epochs are converted to optimiser steps from the training set size).

Shuffling BN: MoCo shuffles the key batch across GPUs so batch-norm statistics cannot leak which key matches
which query. This implementation emulates it on one process: queries are encoded in ``bn_groups`` contiguous
chunks and keys in ``bn_groups`` chunks of a random permutation (each chunk with its own BN statistics), as the
authors' single-GPU demo does with split batch norm; the paper trained on two GPUs, hence ``bn_groups: 2``.
Multi-process training is not supported (the queue would need keys gathered from every process).

Validation loss: the same InfoNCE on seeded augmented val views against the current queue, which is not updated.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convirt.config import Config
from convirt.engine.module import ObjectiveModule, ObjectiveParts
from convirt.errors import ConfigError
from convirt.models.heads import ProjectionHead
from convirt.models.image import ImageEncoder
from convirt.objectives.augment import moco_v2_augmentation
from convirt.objectives.common import (
    baseline_payload,
    require,
    require_at_least_one,
    steps_per_epoch,
    two_view_image_parts,
    typed_params,
)


@dataclass
class MoCoParams:
    temperature: float = 0.07
    out_dim: int = 128
    queue_size: int = 4096
    momentum: float = 0.999  # key encoder EMA
    sgd_momentum: float = 0.9
    lr_milestones_epochs: list[int] = field(default_factory=lambda: [60, 80])
    lr_gamma: float = 0.1
    bn_groups: int = 2

    def __post_init__(self) -> None:
        require(self.temperature > 0, "temperature", f"must be positive, got {self.temperature}")
        require_at_least_one(self, "out_dim", "queue_size", "bn_groups")
        require(0.0 <= self.momentum < 1.0, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(self.lr_gamma > 0, "lr_gamma", f"must be positive, got {self.lr_gamma}")
        milestones = self.lr_milestones_epochs
        require(
            all(m >= 0 for m in milestones),
            "lr_milestones_epochs",
            f"must be a list of epoch numbers, got {milestones!r}",
        )


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of normalised queries (N, d) against their keys (N, d) and the queue (K, d) of negatives."""
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.t().float()
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class MoCoModel(nn.Module):
    def __init__(
        self,
        image_encoder: ImageEncoder,
        out_dim: int = 128,
        queue_size: int = 4096,
        momentum: float = 0.999,
        bn_groups: int = 2,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.head = ProjectionHead(image_encoder.feature_dim, out_dim, "mlp")
        self.key_encoder = copy.deepcopy(image_encoder)
        self.key_head = copy.deepcopy(self.head)
        for parameter in list(self.key_encoder.parameters()) + list(self.key_head.parameters()):
            parameter.requires_grad_(False)
        self.momentum, self.bn_groups = momentum, bn_groups
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, out_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def _key_pairs(self):
        query = list(self.image_encoder.parameters()) + list(self.head.parameters())
        key = list(self.key_encoder.parameters()) + list(self.key_head.parameters())
        return zip(query, key, strict=True)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key <- m * key + (1 - m) * query, parameter by parameter."""
        for query, key in self._key_pairs():
            key.mul_(self.momentum).add_(query.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write normalised keys over the oldest entries, wrapping around the end of the queue."""
        size = self.queue.shape[0]
        keys = F.normalize(keys.detach().float(), dim=1)[-size:]
        positions = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[positions] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_(int((self.queue_ptr + keys.shape[0]) % size))

    def _grouped(self, encoder: nn.Module, head: nn.Module, images: torch.Tensor) -> torch.Tensor:
        groups = min(self.bn_groups, images.shape[0])
        return torch.cat([head(encoder(chunk)) for chunk in images.chunk(groups)])

    def queries(self, images: torch.Tensor) -> torch.Tensor:
        return self._grouped(self.image_encoder, self.head, images)

    @torch.no_grad()
    def keys(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        order = torch.randperm(images.shape[0], generator=generator).to(images.device)
        shuffled = self._grouped(self.key_encoder, self.key_head, images[order])
        return shuffled[torch.argsort(order)]


class MoCoModule(ObjectiveModule):
    lr_schedule = "multistep"
    loss_name = "InfoNCE loss (MoCo v2)"

    def __init__(
        self, config: Config, model: MoCoModel, payload: dict[str, Any], params: MoCoParams, train_pairs: int
    ) -> None:
        super().__init__(config, model, payload)
        self.params = params
        self.temperature = params.temperature
        self.train_pairs = train_pairs

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:
            raise ConfigError("objective moco_v2 runs on one process (its queue is per process); set train.devices=1")
        super().on_fit_start()

    def image_encoders(self) -> list[nn.Module]:
        return [self.model.image_encoder, self.model.key_encoder]

    def build_optimizer(self, parameters):
        o = self.config.optim
        return torch.optim.SGD(parameters, lr=o.lr, momentum=self.params.sgd_momentum, weight_decay=o.weight_decay)

    def milestone_steps(self) -> list[int]:
        per_epoch = steps_per_epoch(self.train_pairs, self.config.data.batch_size)
        return [epoch * per_epoch for epoch in self.params.lr_milestones_epochs]

    def step_scheduler(self, optimizer):
        milestones, gamma = self.milestone_steps(), self.params.lr_gamma
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: gamma ** sum(step >= m for m in milestones))

    def _views(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        views = batch["images"]
        return self.image_batch(views[:, 0]), self.image_batch(views[:, 1])

    def batch_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Validation loss: a fixed key shuffle per batch (no global RNG consumed), the queue left as it is."""
        first, second = self._views(batch)
        q = self.model.queries(first)
        k = self.model.keys(second, torch.Generator().manual_seed(int(batch["index"][0])))
        return moco_loss(q, k, self.model.queue, self.temperature)

    def train_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        self.model.momentum_update()  # as MoCo: update the key encoder first, then compute this step's keys with it
        first, second = self._views(batch)
        q = self.model.queries(first)
        k = self.model.keys(second)
        loss = moco_loss(q, k, self.model.queue.clone(), self.temperature)  # a copy: enqueue writes in place
        self.model.enqueue(k)
        return loss


def build(config: Config) -> ObjectiveParts:
    params = typed_params(config, MoCoParams)
    data, encoder = two_view_image_parts(config, moco_v2_augmentation(config.data.augment.output_size))
    assert data.train_set is not None
    model = MoCoModel(encoder, params.out_dim, params.queue_size, params.momentum, params.bn_groups)
    module = MoCoModule(config, model, baseline_payload(config, params), params, len(data.train_set))
    return ObjectiveParts(module, data)
