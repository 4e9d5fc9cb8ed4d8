"""Encoder specifications: the strings that name an encoder to evaluate, parsed once into an :class:`EncoderSpec`.

=============================== =====================================================================================
``PATH.ckpt``                   a pretraining checkpoint. ConVIRT: image features ``h_v``, projected image embeddings
                                ``v`` and text embeddings ``u``; another objective (moco_v2, simclr, ...): its image
                                encoder's ``h_v`` only
``random-like:PATH.ckpt``       the architecture of that checkpoint with every weight freshly initialised (seeded):
                                the paper's "random init" baseline, with a text tower for a ConVIRT checkpoint
``random:NAME``, ``none:NAME``  a torchvision image encoder with random weights (seeded)
``imagenet:NAME``               torchvision's ImageNet weights (needs a network once)
``FOLDER``                      an export folder written by ``convirt export`` (``image_encoder.json`` + weights;
                                with ``heads.pt`` and ``text_encoder/`` also ``v`` and text ``u``) or by
                                ``convirt evaluate classify --save-encoder`` (a fine-tuned image encoder)
``NAME=PATH``, ``PATH``         a torchvision-compatible state dict (``PATH`` alone: resnet50); ``NAME=FOLDER``
                                overrides an export folder's architecture
=============================== =====================================================================================

An :class:`EncoderSpec` knows its kind, file, architecture, default display label, the kind of initialisation
the classification tables group by (:attr:`EncoderSpec.init`), whether it was fine-tuned
(:attr:`EncoderSpec.fine_tuned`), what scores sentences against its images (:attr:`EncoderSpec.text_tower`), and
reads its checkpoint at most once (:meth:`EncoderSpec.checkpoint`), however many of those are asked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from convirt.encoders.checkpoint import (
    PAIR_CLASSIFIER_OBJECTIVE,
    Checkpoint,
    load_checkpoint,
    load_image_encoder_from_checkpoint,
)
from convirt.errors import ConfigError, ModelLoadError
from convirt.models.image import ImageEncoder, create_image_encoder

RANDOM_LIKE = "random-like"
NAMED_KINDS = ("random", "imagenet", "none")  # KIND:NAME
KINDS = ("checkpoint", RANDOM_LIKE, *NAMED_KINDS, "export", "state-dict")
DEFAULT_STATE_DICT_ARCHITECTURE = "resnet50"
# The export folder layout (written by convirt.encoders.export): image encoder metadata, ConVIRT heads, text tower.
EXPORT_META = "image_encoder.json"
EXPORT_HEADS = "heads.pt"
EXPORT_TEXT_DIR = "text_encoder"


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed encoder specification (see the module docstring); build one with :meth:`parse`."""

    text: str  # as given
    kind: str  # one of KINDS
    path: Path | None = None  # checkpoint, export folder or state-dict file
    name: str | None = None  # the architecture the spec names (KIND:NAME, NAME=PATH), if any
    _loaded: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # checkpoint read once

    @classmethod
    def parse(cls, spec: str | os.PathLike | EncoderSpec) -> EncoderSpec:
        if isinstance(spec, EncoderSpec):
            return spec
        text = str(spec)
        prefix, _, rest = text.partition(":")
        if prefix == RANDOM_LIKE and rest:
            return cls(text, RANDOM_LIKE, Path(rest))
        if prefix in NAMED_KINDS and rest:
            return cls(text, prefix, name=rest)
        name, path_text = text.split("=", 1) if "=" in text else (None, text)
        path = Path(path_text)
        if path.is_dir():
            return cls(text, "export", path, name)
        if path.suffix == ".ckpt":
            return cls(text, "checkpoint", path)
        return cls(text, "state-dict", path, name)

    def __str__(self) -> str:
        return self.text

    # -- what the spec says -------------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """Default display name: ``ConVIRT`` (or a baseline checkpoint's objective), ``random init``,
        ``ImageNet (resnet50)``, or the file's name."""
        if self.kind == RANDOM_LIKE:
            return "random init"
        if self.kind in ("random", "imagenet"):
            return f"{'random init' if self.kind == 'random' else 'ImageNet'} ({self.name})"
        if self.kind == "checkpoint":
            return "ConVIRT" if self.init == "convirt" else self.init
        return "ConVIRT" if self.text.endswith(".ckpt") else Path(self.text).name

    @property
    def init(self) -> str:
        """The initialisation a classification table groups by: random | imagenet | custom | convirt, or the
        objective a checkpoint (or the checkpoint behind an export) was pretrained with."""
        if self.kind in ("random", "none", RANDOM_LIKE):
            return "random"
        if self.kind == "imagenet":
            return "imagenet"
        if self.kind == "checkpoint":  # a missing file fails when it is loaded
            return self.checkpoint().objective if self.path.is_file() else "convirt"
        if self.kind == "export" and (self.path / EXPORT_META).is_file():
            return str(self.export_meta().get("objective", "convirt"))
        return "custom"

    @property
    def fine_tuned(self) -> dict[str, Any] | None:
        """What an export folder of a fine-tuned encoder records about the fine-tuning (``dataset``, ``paper_key``,
        ...; written by ``convirt evaluate classify --save-encoder``), None for anything else."""
        if self.kind == "export" and (self.path / EXPORT_META).is_file():
            value = self.export_meta().get("fine_tuned")
            return value if isinstance(value, dict) else None
        return None

    @property
    def text_tower(self) -> str | None:
        """What scores sentences against this encoder's images: ``convirt`` (text embeddings ``u`` against ``v``: a
        ConVIRT checkpoint, its ``random-like:`` and an export folder with heads and text tower), ``pair_classifier``
        (a Contrastive-Binary checkpoint's binary classifier), or None (an image encoder alone)."""
        if self.kind in ("checkpoint", RANDOM_LIKE):
            objective = self.checkpoint().objective
            if objective == "convirt":
                return "convirt"
            return "pair_classifier" if objective == PAIR_CLASSIFIER_OBJECTIVE and self.kind == "checkpoint" else None
        if self.kind == "export" and (self.path / EXPORT_HEADS).is_file() and (self.path / EXPORT_TEXT_DIR).is_dir():
            return "convirt"
        return None

    @property
    def seeded(self) -> bool:
        """Whether the weights are drawn from a seed (random init of some kind)."""
        return self.kind in ("random", "none", RANDOM_LIKE)

    def random_like(self) -> EncoderSpec:
        """``random-like:`` this checkpoint, sharing the checkpoint already read."""
        if self.kind not in ("checkpoint", RANDOM_LIKE):
            raise ConfigError(f"random-like needs a checkpoint, not {self.text!r}")
        return replace(self, text=f"{RANDOM_LIKE}:{self.path}", kind=RANDOM_LIKE)

    def resolved(self) -> EncoderSpec:
        """The same spec with its file as an absolute path (a spec stored in an index must not depend on the
        folder a later command runs in)."""
        if self.path is None:
            return self
        path = self.path.resolve()
        if self.kind == RANDOM_LIKE:
            text = f"{RANDOM_LIKE}:{path}"
        else:
            text = f"{self.name}={path}" if self.name and self.kind != "checkpoint" else str(path)
        return replace(self, text=text, path=path)

    # -- reading its files --------------------------------------------------------------------------------------
    def checkpoint(self) -> Checkpoint:
        """The checkpoint behind a ``.ckpt`` or ``random-like:`` spec, read on first use only."""
        if self.kind not in ("checkpoint", RANDOM_LIKE):
            raise ConfigError(f"encoder {self.text!r} is not a checkpoint")
        if "checkpoint" not in self._loaded:
            self._loaded["checkpoint"] = load_checkpoint(self.path)
        return self._loaded["checkpoint"]

    def export_meta(self) -> dict[str, Any]:
        meta_file = self.path / EXPORT_META
        if not meta_file.is_file():
            raise ConfigError(f"{self.path} is not a convirt export folder (no {EXPORT_META}); see `convirt export`")
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{meta_file} cannot be read as JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise ConfigError(f"{meta_file} must hold a JSON object")
        return meta

    @property
    def architecture(self) -> str:
        """The image encoder's architecture name (reads the checkpoint or export metadata when needed)."""
        if self.kind in ("checkpoint", RANDOM_LIKE):
            return self.checkpoint().config.model.image_encoder
        if self.kind == "export":
            return self.name or str(self.export_meta()["architecture"])
        return self.name or DEFAULT_STATE_DICT_ARCHITECTURE

    def export_weights(self) -> Path:
        meta = self.export_meta()
        weights = str(meta.get("weights", ""))
        if not weights or Path(weights).name != weights or weights in (".", ".."):
            raise ConfigError(
                f"{self.path / EXPORT_META}: 'weights' must be the plain name of a file in that folder, not {weights!r}"
            )
        return self.path / weights

    def image_encoder(self, seed: int | None = None) -> ImageEncoder:
        """The image encoder (train mode, CPU). With ``seed``, random weights are drawn from it and the global RNG
        is left as it was."""
        if seed is None:
            return self._image_encoder()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._image_encoder()

    def _image_encoder(self) -> ImageEncoder:
        try:
            if self.kind in ("random", "none"):
                return create_image_encoder(self.name, None)
            if self.kind == "imagenet":
                return create_image_encoder(self.name, "imagenet")
            if self.kind == RANDOM_LIKE:
                return create_image_encoder(self.architecture, None)
            if self.kind == "checkpoint":
                return load_image_encoder_from_checkpoint(self.checkpoint())
            if self.kind == "export":
                return create_image_encoder(self.architecture, self.export_weights())
            if not self.path.is_file():
                raise ConfigError(
                    f"image encoder {self.text!r} is neither random:NAME, imagenet:NAME, a .ckpt, an export folder "
                    "nor a file"
                )
            return create_image_encoder(self.architecture, self.path)
        except ModelLoadError as exc:
            exc.encoder_spec = self  # lets a command line say which option to change
            raise


def parse_specs(specs: Sequence[str | os.PathLike | EncoderSpec]) -> list[EncoderSpec]:
    """Parse several specifications; those naming the same checkpoint file (``best.ckpt``,
    ``random-like:best.ckpt``) share its one read."""
    parsed, shared = [], {}
    for spec in specs:
        one = EncoderSpec.parse(spec)
        if one.kind in ("checkpoint", RANDOM_LIKE):
            key = one.path.resolve()
            if key in shared:
                one = replace(one, _loaded=shared[key])
            shared[key] = one._loaded
        parsed.append(one)
    return parsed


def initial_weights_spec(architecture: str, weights: str | None) -> str | None:
    """The image encoder a pretraining run starts from (``model.image_encoder`` + ``model.image_weights``), as an
    encoder specification: ``NAME=FILE`` for the offline built-in weights or a local file, ``imagenet:NAME`` for
    torchvision's download, None for random weights. The paper's "ImageNet init" row."""
    from convirt.models.image import offline_imagenet_file, weights_kind

    kind = weights_kind(weights)
    if kind == "random":
        return None
    if kind == "builtin":
        return f"{architecture}={offline_imagenet_file(architecture)}"
    return f"imagenet:{architecture}" if kind == "imagenet" else f"{architecture}={weights}"


def load_image_encoder(spec: str | os.PathLike | EncoderSpec, seed: int | None = None) -> ImageEncoder:
    """Resolve an encoder specification to its :class:`ImageEncoder` (see :class:`EncoderSpec`)."""
    return EncoderSpec.parse(spec).image_encoder(seed)
