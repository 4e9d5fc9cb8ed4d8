"""SimCLR (Chen et al., 2020a), image-only, with Appendix E's settings.

Two augmented views of each image (:func:`~convirt.objectives.augment.simclr_augmentation`), the image encoder,
an MLP projection head (h -> h -> ``out_dim``, ReLU), and the NT-Xent loss: cosine similarities over the 2N views
divided by ``temperature``, each view's positive being the other view of its image and the 2N - 2 other views its
negatives. Paper: ResNet50, temperature 0.1, out_dim 128, Adam 3e-4 with weight decay 1e-4, batch 128, 100
epochs; the LR is constant (``objective_params.lr_schedule: plateau`` uses the engine's plateau halving instead).
Validation uses the same augmentation with per-image fixed seeds, so val/loss is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convirt.config import Config
from convirt.engine.module import ObjectiveModule, ObjectiveParts
from convirt.models.heads import ProjectionHead
from convirt.models.image import ImageEncoder
from convirt.objectives.augment import simclr_augmentation
from convirt.objectives.common import (
    baseline_payload,
    require,
    require_at_least_one,
    two_view_image_parts,
    typed_params,
)


@dataclass
class SimCLRParams:
    temperature: float = 0.1
    out_dim: int = 128
    lr_schedule: str = "constant"  # constant | plateau (the engine's plateau rule)

    def __post_init__(self) -> None:
        require(self.temperature > 0, "temperature", f"must be positive, got {self.temperature}")
        require_at_least_one(self, "out_dim")
        require(self.lr_schedule in ("plateau", "constant"), "lr_schedule", "must be plateau or constant")


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over two views (N, d) each: mean over the 2N anchors of -log softmax of their positive."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    similarity = z @ z.t() / temperature
    similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(similarity, targets)


class SimCLRModel(nn.Module):
    def __init__(self, image_encoder: ImageEncoder, out_dim: int = 128) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.head = ProjectionHead(image_encoder.feature_dim, out_dim, "mlp")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.image_encoder(images))


class SimCLRModule(ObjectiveModule):
    loss_name = "NT-Xent loss (SimCLR)"

    def __init__(self, config: Config, model: SimCLRModel, payload: dict[str, Any], params: SimCLRParams) -> None:
        super().__init__(config, model, payload)
        self.temperature = params.temperature
        self.lr_schedule = params.lr_schedule

    def batch_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        views = batch["images"]  # (N, 2, 3, H, W)
        n = views.shape[0]
        z = self.model(self.image_batch(torch.cat([views[:, 0], views[:, 1]])))
        return nt_xent_loss(z[:n], z[n:], self.temperature)


def build(config: Config) -> ObjectiveParts:
    params = typed_params(config, SimCLRParams)
    data, encoder = two_view_image_parts(config, simclr_augmentation(config.data.augment.output_size))
    model = SimCLRModel(encoder, params.out_dim)
    return ObjectiveParts(SimCLRModule(config, model, baseline_payload(config, params), params), data)
