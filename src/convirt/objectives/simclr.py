"""SimCLR (Chen et al., 2020a), image-only, with Appendix E's settings.

Two augmented views of each image (:func:`~convirt.objectives.augment.simclr_augmentation`), the image encoder,
an MLP projection head (h -> h -> ``out_dim``, ReLU), and the NT-Xent loss: cosine similarities over the 2N views
divided by ``temperature``, each view's positive being the other view of its image and the 2N - 2 other views its
negatives. Paper: ResNet50, temperature 0.1, out_dim 128, Adam 3e-4 with weight decay 1e-4, batch 128, 100
epochs; the LR is constant (``objective_params.lr_schedule: plateau`` uses the engine's plateau halving instead).
Validation uses the same augmentation with per-image fixed seeds, so val/loss is deterministic.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convirt.config import Config
from convirt.models.heads import ProjectionHead
from convirt.models.image import ImageEncoder
from convirt.objectives import ObjectiveParts
from convirt.objectives.augment import simclr_augmentation
from convirt.objectives.common import (
    LR_SCHEDULES,
    BaselineModule,
    baseline_payload,
    objective_params,
    require,
    two_view_image_parts,
)

DEFAULTS: dict[str, Any] = {"temperature": 0.1, "out_dim": 128, "lr_schedule": "constant"}


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


class SimCLRModule(BaselineModule):
    def __init__(self, config: Config, model: SimCLRModel, payload: dict[str, Any], params: dict[str, Any]) -> None:
        super().__init__(config, model, payload)  # type: ignore[arg-type]
        self.temperature = float(params["temperature"])
        self.lr_schedule = params["lr_schedule"]

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        views = batch["images"]  # (N, 2, 3, H, W)
        n = views.shape[0]
        images = torch.cat([views[:, 0], views[:, 1]])
        if self.config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        z = self.model(images)
        return nt_xent_loss(z[:n], z[n:], self.temperature)


def check_params(config: Config) -> dict[str, Any]:
    params = objective_params(config, DEFAULTS)
    require(params["temperature"] > 0, "temperature", f"must be positive, got {params['temperature']}")
    require(params["out_dim"] >= 1, "out_dim", f"must be at least 1, got {params['out_dim']}")
    require(params["lr_schedule"] in ("plateau", "constant"), "lr_schedule", "must be plateau or constant")
    assert set(LR_SCHEDULES) >= {"plateau", "constant"}
    return params


def build(config: Config) -> ObjectiveParts:
    params = check_params(config)
    data, encoder = two_view_image_parts(config, simclr_augmentation(config.data.augment.output_size))
    model = SimCLRModel(encoder, params["out_dim"])
    payload = baseline_payload(config, objective_params=params)
    return ObjectiveParts(SimCLRModule(config, model, payload, params), data, payload)
