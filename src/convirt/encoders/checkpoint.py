"""Self-contained convirt checkpoints: the one writer of their ``convirt`` entry and the one reader of the files.

A pretraining checkpoint is a Lightning checkpoint (``state_dict`` with keys ``model.<module key>``, optimizer,
scheduler, loop and RNG state) plus a ``convirt`` entry holding everything needed to rebuild the model with no
network and no original files: the format version, the run's config, and per objective the Hugging Face config of
the text encoder with its tokenizer files (ConVIRT, contrastive_binary) or a vocabulary (captioning).

Everything in a checkpoint is tensors and plain data, so :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)`` (:func:`convirt.fileio.load_torch_file`): a file holding anything else is refused
before any of it runs. Tokenizer files are written back only under the plain names of :data:`TOKENIZER_FILES`,
into a temporary folder.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convirt.config import Config, config_from_dict
from convirt.errors import CheckpointError, ConfigError
from convirt.fileio import load_torch_file

FORMAT_VERSION = 1
MODEL_PREFIX = "model."
IMAGE_ENCODER_PREFIX = MODEL_PREFIX + "image_encoder."

# The files a Hugging Face tokenizer's ``save_pretrained`` writes (transformers' VOCAB_FILES_NAMES of the
# BERT, RoBERTa, ELECTRA, DistilBERT, XLNet, ALBERT, T5 and XLM-R families, plus the shared config files). A
# checkpoint's tokenizer files are stored and restored under these plain names only.
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "spiece.model",
        "sentencepiece.bpe.model",
        "tokenizer.model",
        "chat_template.jinja",
        "chat_template.json",
    }
)


# ---------------------------------------------------------------------------------------------------------------
# Writing (the engine and the objectives call these when they build their checkpoint payload)


def checkpoint_payload(config: Config, **extra: Any) -> dict[str, Any]:
    """The ``convirt`` entry of a checkpoint: format version, the run's config, objective extras (plain data)."""
    return {"format_version": FORMAT_VERSION, "config": config.to_dict(), **extra}


def text_model_payload(model: torch.nn.Module, tokenizer: Any) -> dict[str, Any]:
    """The text encoder's HF config and tokenizer files, as plain data for a checkpoint."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        names = sorted(os.listdir(folder))
        other = [name for name in names if name not in TOKENIZER_FILES]
        if other:
            raise ConfigError(
                f"the tokenizer saved {other}, which convirt checkpoints do not store (they keep only "
                f"{', '.join(sorted(TOKENIZER_FILES))}); use a BERT-family text encoder"
            )
        files = {name: (Path(folder) / name).read_bytes() for name in names}
    return {"text_config": model.config.to_dict(), "tokenizer_files": files}


def convirt_payload(config: Config, text_model: torch.nn.Module, tokenizer: Any) -> dict[str, Any]:
    """The ``convirt`` entry of a ConVIRT checkpoint: config + text model config + tokenizer files."""
    return checkpoint_payload(config, **text_model_payload(text_model, tokenizer))


# ---------------------------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class Checkpoint:
    """What a convirt checkpoint holds for inference: the run's config, the ``convirt`` entry, the model weights.

    ``state_dict`` keeps the Lightning keys (``model.<module key>``); optimizer and loop state are not kept.
    """

    path: Path
    config: Config
    payload: dict[str, Any]
    state_dict: dict[str, torch.Tensor]

    @property
    def objective(self) -> str:
        return self.config.objective

    def module_state(self, prefix: str = MODEL_PREFIX) -> dict[str, torch.Tensor]:
        """The weights under ``prefix`` with the prefix removed (default: the whole model)."""
        return {k[len(prefix) :]: v for k, v in self.state_dict.items() if k.startswith(prefix)}


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a convirt pretraining checkpoint safely (tensors and plain data only, mapped, on CPU).

    A missing, truncated or foreign file gives a :class:`CheckpointError`; a file holding other objects gives an
    :class:`~convirt.errors.UnsafeFileError` and nothing in it runs.
    """
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint {file} does not exist")
    data = load_torch_file(file, "checkpoint", mmap=True)
    if not isinstance(data, dict) or not isinstance(data.get("convirt"), dict) or "state_dict" not in data:
        raise CheckpointError(
            f"{file} is not a convirt pretraining checkpoint (no 'convirt' entry). A plain image-encoder state dict "
            "is used as image weights instead (model.image_weights=FILE, or the file as the encoder)."
        )
    payload = data["convirt"]
    if not isinstance(payload.get("config"), dict):
        raise CheckpointError(f"checkpoint {file} has no config in its 'convirt' entry")
    try:
        config = config_from_dict(payload["config"])
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {file} holds a config this version cannot read: {exc}") from exc
    return Checkpoint(file, config, payload, dict(data["state_dict"]))


def as_checkpoint(checkpoint: Checkpoint | str | os.PathLike) -> Checkpoint:
    return checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)


def _tokenizer_files(checkpoint_path: Path, files: Any) -> dict[str, bytes]:
    """The stored tokenizer files, checked: plain allow-listed names, bytes contents."""
    if not isinstance(files, dict):
        raise CheckpointError(f"checkpoint {checkpoint_path}: its tokenizer files are not a name -> bytes mapping")
    for name, data in files.items():
        if name not in TOKENIZER_FILES:
            raise CheckpointError(
                f"checkpoint {checkpoint_path} stores a tokenizer file named {str(name)!r}; only the plain names "
                f"{', '.join(sorted(TOKENIZER_FILES))} are accepted (nothing was written)"
            )
        if not isinstance(data, bytes):
            raise CheckpointError(f"checkpoint {checkpoint_path}: tokenizer file {name} is not bytes")
    return files


def restore_text_model(checkpoint: Checkpoint) -> tuple[torch.nn.Module, Any]:
    """Rebuild the (randomly initialised) text model and its tokenizer from a checkpoint's ``convirt`` entry.

    The tokenizer files are written under their checked names into a temporary folder, read back, and removed.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    payload = checkpoint.payload
    if not isinstance(payload.get("text_config"), dict) or "tokenizer_files" not in payload:
        raise CheckpointError(f"checkpoint {checkpoint.path} stores no text model (objective {checkpoint.objective})")
    files = _tokenizer_files(checkpoint.path, payload["tokenizer_files"])
    hf_logging.set_verbosity_error()
    text_config = dict(payload["text_config"])
    model_type = text_config.pop("model_type", None)
    try:
        model = AutoModel.from_config(AutoConfig.for_model(model_type, **text_config), trust_remote_code=False)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {checkpoint.path}: its text model config cannot be used: {exc}") from exc
    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    return model, tokenizer


def load_image_encoder_from_checkpoint(checkpoint: Checkpoint | str | os.PathLike):
    """The image encoder of any objective's pretraining checkpoint (all keep it at ``model.image_encoder``)."""
    from convirt.models.image import create_image_encoder

    checkpoint = as_checkpoint(checkpoint)
    name = checkpoint.config.model.image_encoder
    encoder = create_image_encoder(name, None)
    state = checkpoint.module_state(IMAGE_ENCODER_PREFIX)
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys or not state:
        raise CheckpointError(
            f"checkpoint {checkpoint.path}: the image encoder weights do not match {name} "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    return encoder.eval()


PAIR_CLASSIFIER_OBJECTIVE = "contrastive_binary"  # the objective whose checkpoint holds a pair classifier


@dataclass
class LoadedModel:
    model: Any  # ConVIRT, or the Contrastive-Binary baseline's PairClassifier
    tokenizer: Any
    config: Config
    checkpoint: Checkpoint | None  # None: rebuilt from an export folder


def _rebuild_with_text_tower(checkpoint: Checkpoint, build: Any) -> LoadedModel:
    """``build(text_model)`` with the text model restored from the checkpoint, then every trained weight loaded."""
    text_model, tokenizer = restore_text_model(checkpoint)
    model = build(text_model)
    # Parameters unused by the forward pass (e.g. a text pooler) may be absent from older files: allow only those.
    result = model.load_state_dict(checkpoint.module_state(), strict=False)
    missing = [k for k in result.missing_keys if ".pooler." not in k]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} does not match its own config: missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    return LoadedModel(model.eval(), tokenizer, checkpoint.config, checkpoint)


def load_model(checkpoint: Checkpoint | str | os.PathLike) -> LoadedModel:
    """Rebuild the ConVIRT model of a pretraining checkpoint with its trained weights (eval mode, CPU)."""
    from convirt.encoders.build import build_convirt

    checkpoint = as_checkpoint(checkpoint)
    if checkpoint.objective != "convirt":
        raise CheckpointError(
            f"{checkpoint.path} was pretrained with objective {checkpoint.objective!r}, which has no text tower to "
            "load here; its image encoder loads with convirt.api.load_image_encoder or `convirt export`"
        )
    model_config = checkpoint.config.model
    return _rebuild_with_text_tower(checkpoint, lambda text: build_convirt(model_config, None, text))


def load_pair_classifier(checkpoint: Checkpoint | str | os.PathLike) -> LoadedModel:
    """Rebuild the Contrastive-Binary baseline's model (encoders, projections, pair classifier) from its checkpoint."""
    from convirt.encoders.build import build_pair_classifier

    checkpoint = as_checkpoint(checkpoint)
    if checkpoint.objective != PAIR_CLASSIFIER_OBJECTIVE:
        raise CheckpointError(
            f"{checkpoint.path} was pretrained with objective {checkpoint.objective!r}, not "
            f"{PAIR_CLASSIFIER_OBJECTIVE!r}: it has no pair classifier"
        )
    first_layer = checkpoint.state_dict.get(MODEL_PREFIX + "classifier.0.weight")
    if first_layer is None:
        raise CheckpointError(f"checkpoint {checkpoint.path} holds no pair-classifier weights (model.classifier.*)")
    model_config, hidden_dim = checkpoint.config.model, int(first_layer.shape[0])
    return _rebuild_with_text_tower(
        checkpoint, lambda text: build_pair_classifier(model_config, hidden_dim, None, text)
    )
