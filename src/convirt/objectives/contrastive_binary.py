"""Contrastive-Binary: is this (image, sentence) pair real? (the paper's binary contrastive baseline).

The image and text encoders are ConVIRT's (same config keys: ``model.image_encoder``, ``model.text_encoder``,
``model.freeze_layers``, ``model.pooling``). h_v and h_u are each projected linearly to ``model.projection_dim``,
concatenated, and an MLP (2d -> ``hidden_dim`` -> 1, ReLU) gives the logit that the pair is real. Every real pair
of a batch gets one fake partner: the same image with the sentence of another pair, chosen by a random
derangement of the batch (each image gets a different pair's sentence; the batch is a uniform draw from the
dataset, so this is a random sentence from the dataset that is not the image's own). Loss: binary cross-entropy
over the N real and N fake pairs (mean). Validation uses a derangement fixed per batch, so val/loss is
deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convirt.config import Config
from convirt.data.paired import PairedCollator
from convirt.encoders.build import create_tokenizer
from convirt.encoders.checkpoint import text_model_payload
from convirt.engine.module import ObjectiveModule, ObjectiveParts
from convirt.models.image import ImageEncoder, create_image_encoder
from convirt.models.text import TextEncoder, create_text_encoder
from convirt.objectives.common import ObjectiveDataModule, baseline_payload, require_at_least_one, typed_params


@dataclass
class ContrastiveBinaryParams:
    hidden_dim: int = 512  # hidden width of the pair classifier MLP (not given by the paper)

    def __post_init__(self) -> None:
        require_at_least_one(self, "hidden_dim")


def random_derangement(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random permutation of range(n) with no fixed point (n >= 2), by rejection."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 items")
    while True:
        order = torch.randperm(n, generator=generator)
        if not bool((order == torch.arange(n)).any()):
            return order


def binary_pair_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Mean BCE with label 1 for real pairs and 0 for fake ones."""
    logits = torch.cat([real_logits, fake_logits]).float()
    labels = torch.cat([torch.ones_like(real_logits), torch.zeros_like(fake_logits)]).float()
    return F.binary_cross_entropy_with_logits(logits, labels)


class ContrastiveBinaryModel(nn.Module):
    def __init__(
        self, image_encoder: ImageEncoder, text_encoder: TextEncoder, projection_dim: int = 512, hidden_dim: int = 512
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_proj = nn.Linear(image_encoder.feature_dim, projection_dim)
        self.text_proj = nn.Linear(text_encoder.feature_dim, projection_dim)
        self.classifier = nn.Sequential(
            nn.Linear(2 * projection_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, 1)
        )

    def pair_logits(self, image_projected: torch.Tensor, text_projected: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([image_projected, text_projected], dim=1)).squeeze(1)

    def forward(self, images, input_ids, attention_mask, token_type_ids=None, fake_order=None):
        """(real logits, fake logits): the fake pairs match image i with text ``fake_order[i]``."""
        v = self.image_proj(self.image_encoder(images))
        u = self.text_proj(self.text_encoder(input_ids, attention_mask, token_type_ids))
        if fake_order is None:
            fake_order = random_derangement(v.shape[0])
        return self.pair_logits(v, u), self.pair_logits(v, u[fake_order.to(u.device)])


class ContrastiveBinaryModule(ObjectiveModule):
    loss_name = "binary cross-entropy (real vs swapped pairs)"

    def batch_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        images = self.image_batch(batch["images"])
        n = images.shape[0]
        # Training: a fresh derangement from the global RNG (restored on resume); validation: fixed per batch.
        generator = None if self.training else torch.Generator().manual_seed(int(batch["index"][0]))
        real, fake = self.model(
            images,
            batch["input_ids"],
            batch["attention_mask"],
            batch.get("token_type_ids"),
            random_derangement(n, generator),
        )
        return binary_pair_loss(real, fake)


def build(config: Config) -> ObjectiveParts:
    params = typed_params(config, ContrastiveBinaryParams)
    tokenizer = create_tokenizer(config)
    collate = PairedCollator(tokenizer, config.model.max_length)
    data = ObjectiveDataModule(config, lambda _dataset: collate)
    data.setup("fit")
    m = config.model
    text_encoder = create_text_encoder(m.text_encoder, m.freeze_layers, m.pooling, m.text_weights == "random")  # type: ignore[arg-type]
    model = ContrastiveBinaryModel(
        create_image_encoder(m.image_encoder, m.image_weights), text_encoder, m.projection_dim, params.hidden_dim
    ).train()
    payload = baseline_payload(config, params, **text_model_payload(text_encoder.model, tokenizer))
    return ObjectiveParts(ContrastiveBinaryModule(config, model, payload), data)
