"""Trained encoders: reading checkpoints, building models, naming encoders, embedding images and texts.

The layer between the plain models/data and everything that runs a trained encoder (pretraining writes its
checkpoints through it; evaluation, analysis, the demo and the CLI read them through it). One module per decision:

- :mod:`.checkpoint`: the checkpoint format, its one writer (the ``convirt`` payload) and one safe reader
  (:func:`load_checkpoint`), tokenizer files, rebuilding a checkpoint's models.
- :mod:`.build`: :func:`build_convirt`, the one assembly of a ConVIRT model from ``config.model``.
- :mod:`.spec`: :class:`EncoderSpec`, the one parser of encoder specifications (``best.ckpt``, ``random:NAME``,
  ``imagenet:NAME``, ``random-like:CKPT``, export folders, state dicts).
- :mod:`.embedders`: the one preprocessing and batching path, the embedder hierarchy, the feature-cache fingerprint.
- :mod:`.prompts`: class prompt files and zero-shot class embeddings.
- :mod:`.export`: the export folder (torchvision state dict, Hugging Face text encoder, heads).
"""

from convirt.encoders.build import build_convirt, create_model, create_tokenizer
from convirt.encoders.checkpoint import Checkpoint, load_checkpoint, load_model
from convirt.encoders.embedders import (
    ConvirtEncoder,
    Embedder,
    ImageEmbedder,
    ImagePreprocessor,
    encoder_fingerprint,
    load_embedder,
)
from convirt.encoders.spec import EncoderSpec, load_image_encoder

__all__ = [
    "Checkpoint",
    "ConvirtEncoder",
    "Embedder",
    "EncoderSpec",
    "ImageEmbedder",
    "ImagePreprocessor",
    "build_convirt",
    "create_model",
    "create_tokenizer",
    "encoder_fingerprint",
    "load_checkpoint",
    "load_embedder",
    "load_image_encoder",
    "load_model",
]
