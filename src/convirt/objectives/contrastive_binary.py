"""Contrastive-Binary: is this (image, sentence) pair real? (the paper's binary contrastive baseline).

The model is :class:`convirt.models.pair_classifier.PairClassifier`: ConVIRT's image and text encoders (same config
keys: ``model.image_encoder``, ``model.text_encoder``, ``model.freeze_layers``, ``model.pooling``); h_v and h_u are
each projected linearly to ``model.projection_dim``, concatenated, and an MLP (2d -> ``hidden_dim`` -> 1, ReLU) gives
the logit that the pair is real. The checkpoint keeps all of it (the text tower's config and tokenizer files in the
payload, every weight in the state dict), so text-image retrieval can rank images by that logit. Every real pair
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

from convirt.config import Config
from convirt.data.paired import PairedCollator
from convirt.encoders.build import build_pair_classifier, create_tokenizer
from convirt.encoders.checkpoint import text_model_payload
from convirt.engine.module import ObjectiveModule, ObjectiveParts
from convirt.models.pair_classifier import random_derangement
from convirt.objectives.common import ObjectiveDataModule, baseline_payload, require_at_least_one, typed_params


@dataclass
class ContrastiveBinaryParams:
    hidden_dim: int = 512  # hidden width of the pair classifier MLP (not given by the paper)

    def __post_init__(self) -> None:
        require_at_least_one(self, "hidden_dim")


def binary_pair_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Mean BCE with label 1 for real pairs and 0 for fake ones."""
    logits = torch.cat([real_logits, fake_logits]).float()
    labels = torch.cat([torch.ones_like(real_logits), torch.zeros_like(fake_logits)]).float()
    return F.binary_cross_entropy_with_logits(logits, labels)


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
    model = build_pair_classifier(config.model, params.hidden_dim).train()
    payload = baseline_payload(config, params, **text_model_payload(model.text_encoder.model, tokenizer))
    return ObjectiveParts(ContrastiveBinaryModule(config, model, payload), data)
