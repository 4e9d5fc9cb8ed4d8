"""The ConVIRT objective: paired images and report sentences, bidirectional contrastive loss."""

from __future__ import annotations

from convirt.config import Config
from convirt.encoders.build import create_model, create_tokenizer
from convirt.encoders.checkpoint import convirt_payload
from convirt.engine.data import PairedDataModule
from convirt.engine.module import ConVIRTModule
from convirt.objectives import ObjectiveParts


def build(config: Config) -> ObjectiveParts:
    tokenizer = create_tokenizer(config)
    data = PairedDataModule(config, tokenizer)
    data.setup("fit")  # read and check the manifests before building the model: bad data fails fast
    model = create_model(config)
    payload = convirt_payload(config, model.text_encoder.model, tokenizer)
    return ObjectiveParts(ConVIRTModule(config, model, payload), data, payload)
