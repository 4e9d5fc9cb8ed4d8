"""Python API: load a pretrained ConVIRT checkpoint (or any image encoder) and embed images and texts.

>>> encoder = ConvirtEncoder.from_checkpoint("runs/convirt/checkpoints/best.ckpt")
>>> image_embeddings = encoder.encode_images(["a.png", "b.jpg"])          # (2, 512), L2-normalised
>>> text_embeddings = encoder.encode_texts(["No pleural effusion."])      # (1, 512)
>>> similarity = image_embeddings @ text_embeddings.T

Encoding is batched, runs without gradients and in eval mode; with ``fast=True`` (the default) it uses
channels_last, and bf16 autocast where the hardware runs it natively (CPUs with AMX/AVX512-BF16, CUDA GPUs).

:func:`load_image_encoder` resolves the image-encoder specifications used by the evaluation commands:
``random:NAME`` (random init), ``imagenet:NAME`` (torchvision weights, needs a network once), a convirt
checkpoint (``.ckpt``), an exported folder (from ``convirt export``), or a torchvision-compatible state dict
(``NAME=PATH`` to name the architecture; ``PATH`` alone assumes resnet50). Both live in :mod:`convirt.encoders`;
this module is their stable public name.
"""

from __future__ import annotations

from convirt.encoders.embedders import ConvirtEncoder
from convirt.encoders.spec import load_image_encoder
from convirt.runtime import bf16_supported, default_device, inference_context

__all__ = [
    "ConvirtEncoder",
    "bf16_supported",
    "default_device",
    "inference_context",
    "load_image_encoder",
]
