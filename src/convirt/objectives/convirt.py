"""The ConVIRT objective: paired images and report sentences, bidirectional contrastive loss (ConVIRTLoss)."""

from __future__ import annotations

from typing import Any

import torch

from convirt.config import Config
from convirt.encoders.build import create_model, create_tokenizer
from convirt.encoders.checkpoint import convirt_payload
from convirt.engine.data import PairedDataModule
from convirt.engine.module import ObjectiveModule, ObjectiveParts
from convirt.losses import ConVIRTLoss
from convirt.models.convirt import ConVIRT


class ConVIRTModule(ObjectiveModule):
    """ConVIRT's loss of a batch (``loss`` settings: tau, lambda, negatives gathered over processes)."""

    loss_name = "ConVIRT loss"

    def __init__(self, config: Config, model: ConVIRT, payload: dict[str, Any]) -> None:
        super().__init__(config, model, payload)
        self.loss_fn = ConVIRTLoss(config.loss.temperature, config.loss.lambda_, config.loss.gather_distributed)

    def batch_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        images = self.image_batch(batch["images"])
        out = self.model(images, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        return self.loss_fn(out.image_embeddings, out.text_embeddings)


def build(config: Config) -> ObjectiveParts:
    tokenizer = create_tokenizer(config)
    data = PairedDataModule(config, tokenizer)
    data.setup("fit")  # read and check the manifests before building the model: bad data fails fast
    model = create_model(config)
    payload = convirt_payload(config, model.text_encoder.model, tokenizer)
    return ObjectiveParts(ConVIRTModule(config, model, payload), data)
