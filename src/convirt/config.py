"""Typed configuration: dataclasses loaded from YAML, overridable from the command line (``section.key=value``).

Defaults are the paper's settings (Appendix A) except where they need a network or a GPU; ``configs/paper.yaml``
spells every one out line by line. Unknown keys and wrongly typed values are errors that name the key.
:func:`from_mapping` is that machinery for any dataclass: the objectives build their typed ``objective_params``
with it. Which objective names exist is the objective registry's business (:mod:`convirt.objectives`), not this
module's: the config imports no part of the training code.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from convirt.errors import ConfigError

T = TypeVar("T")
KEEP_CHECKPOINTS = ("best_last", "every_eval")


@dataclass
class ModelConfig:
    image_encoder: str = "resnet50"  # any torchvision classification model name, or timm/<name>
    image_weights: str | None = (
        "imagenet"  # none | imagenet (V1, the paper's) | imagenet:v2 | builtin:imagenet | a file
    )
    text_encoder: str = "emilyalsentzer/Bio_ClinicalBERT"  # hub name or local folder (BERT family)
    text_weights: str = "pretrained"  # pretrained | random (keep the architecture, re-initialise)
    freeze_layers: int = 6  # embeddings + the first K transformer layers are frozen
    pooling: str = "max"  # max | mean | cls (padding excluded for max and mean)
    projection_dim: int = 512  # d
    head: str = "mlp"  # mlp: W2 ReLU(W1 h) | linear
    head_hidden_dim: int | None = None  # hidden width of the MLP head; None = input width
    max_length: int = 128  # tokens per sentence after truncation
    text_lowercase: bool | None = None  # tokenizer casing; None: as the tokenizer files say (warns on a mismatch)


@dataclass
class LossConfig:
    temperature: float = 0.1  # tau, fixed
    lambda_: float = 0.75  # weight of the image->text term
    gather_distributed: bool = True  # negatives from all processes (with gradients)


@dataclass
class AugmentConfig:
    crop_area: list[float] = field(default_factory=lambda: [0.6, 1.0])
    crop_aspect_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip_p: float = 0.5
    rotation_degrees: float = 20.0
    translate: float = 0.1
    affine_scale: list[float] = field(default_factory=lambda: [0.95, 1.05])
    brightness: list[float] = field(default_factory=lambda: [0.6, 1.4])
    contrast: list[float] = field(default_factory=lambda: [0.6, 1.4])
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 3.0])
    blur_kernel_size: int = 23
    output_size: int = 224


@dataclass
class DataConfig:
    manifest: str | None = None  # canonical paired manifest (from `convirt prepare`)
    image_root: str | None = None  # base for relative image paths; default: the manifest's folder
    batch_size: int = 32  # per process
    val_batch_size: int | None = None  # default: batch_size
    num_workers: int = 4
    on_bad_image: str = "skip"  # skip (count and list) | fail
    check_images: bool = True  # check every image file exists before training
    max_val_pairs: int | None = None  # cap the validation set (None: all val rows)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class TrainConfig:
    output_dir: str = "runs/convirt"
    seed: int = 0
    val_every_steps: int = 5000  # validation loss every K steps
    max_evals: int = 200  # stop after M evaluations (max steps = K * M)
    plateau_patience: int = 5  # halve the LR after P evaluations without a decrease
    lr_factor: float = 0.5
    min_lr: float = 0.0
    limit_val_batches: int | None = None  # evaluate on at most this many val batches (None: all)
    checkpoint_every_steps: int = 1000  # write last.ckpt this often (resume point); best.ckpt at evaluations
    keep_checkpoints: str = "best_last"  # best_last | every_eval (also checkpoints/eval-NNNN.ckpt per evaluation)
    resume: str = "auto"  # auto (resume from OUTPUT/checkpoints/last.ckpt if present) | never | a checkpoint path
    precision: str = "mixed"  # 32 | bf16-mixed | 16-mixed | mixed (bf16 where supported, else fp16 on GPU)
    channels_last: bool = True
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: Any = "auto"  # number of devices per node, or a list of ids
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_find_unused_parameters_true | ...
    log_every_steps: int = 50
    progress_bar: bool = True
    tensorboard: bool = True


@dataclass
class Config:
    objective: str = "convirt"  # convirt, or a baseline registered in convirt.objectives
    objective_params: dict[str, Any] = field(default_factory=dict)  # settings specific to a baseline objective
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def max_steps(self) -> int:
        return self.train.val_every_steps * self.train.max_evals


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check/convert ``value`` to the field's annotated type (strings from the command line included)."""
    if dataclasses.is_dataclass(annotation):
        return from_mapping(annotation, value, key)  # type: ignore[arg-type]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[]") for v in value] if args else value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no decimal point) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def from_mapping(cls: type[T], data: Any, prefix: str = "", noun: str = "config key") -> T:
    """An instance of the dataclass ``cls`` from a mapping, every value checked against its annotation.

    Keys are named ``prefix.key`` in errors (``train.seed must be an integer, got 'x'``); unknown keys are an error
    listing the valid ones (``unknown config key(s) ['sed'] in section 'train'``, ``noun`` being the words before
    "(s)"). Missing keys take the dataclass defaults, and ``cls.__post_init__`` may check values further.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'the config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"section '{prefix}'" if prefix else "the top level"
        raise ConfigError(f"unknown {noun}(s) {unknown} in {where}; valid keys: {sorted(names)}")
    kwargs = {name: _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name) for name, value in data.items()}
    return cls(**kwargs)


def merge_mappings(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, nested mappings merged key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_mappings(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.seed=3", "data.manifest=x.csv"]`` -> nested dict; values parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.seed=1)")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse the value of override {item!r}: {exc}") from exc
        node = nested
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return nested


def config_from_dict(data: dict[str, Any]) -> Config:
    return from_mapping(Config, data or {})


def read_yaml_mapping(path: str | os.PathLike | None, noun: str = "config file") -> dict[str, Any]:
    """The mapping a YAML file holds (``{}`` for an empty file or no path); errors name the file as ``noun``."""
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"{noun} {file} does not exist")
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{noun} {file} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{noun} {file} must contain a mapping at the top level")
    return data


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    data = merge_mappings(read_yaml_mapping(path), parse_overrides(overrides or []))
    config = config_from_dict(data)
    validate_config(config)
    return config


def validate_config(config: Config) -> None:
    """Checks across keys. The objective's name and ``objective_params`` are checked when the objective is built
    (:func:`convirt.objectives.objective_builder`)."""
    t, d = config.train, config.data
    for name, value in (
        ("train.val_every_steps", t.val_every_steps),
        ("train.max_evals", t.max_evals),
        ("data.batch_size", d.batch_size),
        ("train.checkpoint_every_steps", t.checkpoint_every_steps),
    ):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if d.batch_size < 2:
        raise ConfigError("data.batch_size must be at least 2: the contrastive loss needs negatives")
    if t.precision not in ("32", "32-true", "bf16-mixed", "16-mixed", "mixed", "bf16-true"):
        raise ConfigError(f"train.precision {t.precision!r}: use 32, bf16-mixed, 16-mixed or mixed")
    if config.model.pooling not in ("max", "mean", "cls"):
        raise ConfigError(f"model.pooling {config.model.pooling!r}: use max, mean or cls")
    if config.model.head not in ("mlp", "linear"):
        raise ConfigError(f"model.head {config.model.head!r}: use mlp or linear")
    if t.keep_checkpoints not in KEEP_CHECKPOINTS:
        raise ConfigError(f"train.keep_checkpoints {t.keep_checkpoints!r}: use one of {', '.join(KEEP_CHECKPOINTS)}")
    if d.on_bad_image not in ("skip", "fail"):
        raise ConfigError(f"data.on_bad_image {d.on_bad_image!r}: use skip or fail")
    if not 0.0 <= config.loss.lambda_ <= 1.0:
        raise ConfigError("loss.lambda_ must be in [0, 1]")
    if config.loss.temperature <= 0:
        raise ConfigError("loss.temperature must be positive")
