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
    frozen_text_cache: int = 0  # cache the frozen layers' output of up to N sentences (0: off; they lose dropout)
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


AUGMENT_PIPELINES = ("fused", "torchvision")


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
    pipeline: str = "fused"  # fused: one warp (convirt.data.views) | torchvision: the reference modules in sequence


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
    max_nonfinite_steps: int = 0  # training steps with a NaN/inf loss to skip before stopping (0: stop at the first)
    keep_checkpoints: str = "best_last"  # best_last | every_eval (also checkpoints/eval-NNNN.ckpt per evaluation)
    resume: str = "auto"  # auto (resume from OUTPUT/checkpoints/last.ckpt if present) | never | a checkpoint path
    precision: str = "mixed"  # 32 | bf16-mixed | 16-mixed | mixed (bf16 where supported, else fp16 on GPU)
    channels_last: bool = True
    compile: bool = False  # torch.compile of the image and text encoders (needs a C++ compiler on CPU, triton on GPU)
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: Any = "auto"  # number of devices per node, or a list of ids
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_find_unused_parameters_true | ...
    sync_batchnorm: bool = False  # several GPUs: BatchNorm statistics over the global batch (CUDA only)
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


def flat_items(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"seed": 0}}`` -> ``{"train.seed": 0}``: nested mappings as dotted keys."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flat_items(value, name))
        else:
            out[name] = value
    return out


def config_differences(old: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old value, new value) of every setting that differs between two configs."""
    before, after = flat_items(old.to_dict()), flat_items(new.to_dict())
    missing = object()
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(set(before) | set(after))
        if before.get(key, missing) != after.get(key, missing)
    }


# Why a smallest value is what it is, where that is not obvious (appended to the error).
_WHY_AT_LEAST = {
    "data.batch_size": ": the contrastive loss needs negatives",
    "data.val_batch_size": ": the contrastive loss needs negatives",
    "data.max_val_pairs": " (a validation loss needs negatives; null validates on every validation pair)",
    "train.limit_val_batches": " (null evaluates every validation batch)",
}


def validate_config(config: Config) -> None:
    """Every value against its valid range, and the checks across keys: the one place a config is judged.

    The error names the key, the valid range and the value given. The objective's name and ``objective_params`` are
    checked when the objective is built (:func:`convirt.objectives.objective_builder`); files and folders named by
    the config are checked where they are opened.
    """
    t, d, a, m, o = config.train, config.data, config.data.augment, config.model, config.optim
    at_least: dict[str, tuple[float | None, float]] = {  # key: (value, smallest valid value); None: not set
        "train.val_every_steps": (t.val_every_steps, 1),
        "train.max_evals": (t.max_evals, 1),
        "train.checkpoint_every_steps": (t.checkpoint_every_steps, 1),
        "train.log_every_steps": (t.log_every_steps, 1),
        "train.plateau_patience": (t.plateau_patience, 1),
        "train.num_nodes": (t.num_nodes, 1),
        "train.limit_val_batches": (t.limit_val_batches, 1),
        "train.max_nonfinite_steps": (t.max_nonfinite_steps, 0),
        "train.min_lr": (t.min_lr, 0),
        "train.seed": (t.seed, 0),
        "data.batch_size": (d.batch_size, 2),
        "data.val_batch_size": (d.val_batch_size, 2),
        "data.max_val_pairs": (d.max_val_pairs, 2),
        "data.num_workers": (d.num_workers, 0),
        "data.augment.output_size": (a.output_size, 1),
        "data.augment.rotation_degrees": (a.rotation_degrees, 0),
        "model.projection_dim": (m.projection_dim, 1),
        "model.head_hidden_dim": (m.head_hidden_dim, 1),
        "model.freeze_layers": (m.freeze_layers, 0),
        "model.frozen_text_cache": (m.frozen_text_cache, 0),
        "model.max_length": (m.max_length, 1),
        "optim.weight_decay": (o.weight_decay, 0),
    }
    for name, (value, low) in at_least.items():
        if value is not None and value < low:
            raise ConfigError(f"{name} must be at least {low:g}, got {value}{_WHY_AT_LEAST.get(name, '')}")
    if t.seed >= 2**32:
        raise ConfigError(f"train.seed must be below 2**32, got {t.seed}")
    for name, value in (("optim.lr", o.lr), ("loss.temperature", config.loss.temperature)):
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    for name, value in (
        ("loss.lambda_", config.loss.lambda_),
        ("data.augment.hflip_p", a.hflip_p),
        ("data.augment.translate", a.translate),
    ):
        if not 0 <= value <= 1:
            raise ConfigError(f"{name} must be in [0, 1], got {value}")
    if not 0 < t.lr_factor <= 1:
        raise ConfigError(f"train.lr_factor must be in (0, 1] (it multiplies the learning rate), got {t.lr_factor}")
    if len(o.betas) != 2 or not all(0 <= beta < 1 for beta in o.betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1) (e.g. [0.9, 0.999]), got {o.betas}")
    for name, pair, low, high, open_low in (  # [lo, hi] ranges: low <= lo <= hi <= high (low < lo if open_low)
        ("data.augment.crop_area", a.crop_area, 0, 1, True),
        ("data.augment.crop_aspect_ratio", a.crop_aspect_ratio, 0, None, True),
        ("data.augment.affine_scale", a.affine_scale, 0, None, True),
        ("data.augment.brightness", a.brightness, 0, None, False),
        ("data.augment.contrast", a.contrast, 0, None, False),
        ("data.augment.blur_sigma", a.blur_sigma, 0, None, True),
    ):
        first_ok = len(pair) == 2 and (pair[0] > low if open_low else pair[0] >= low)
        if not first_ok or pair[0] > pair[1] or (high is not None and pair[1] > high):
            bound = f"{'>' if open_low else '>='} {low}" + (f" and hi <= {high}" if high is not None else "")
            raise ConfigError(f"{name} must be a range [lo, hi] with lo <= hi, lo {bound}; got {pair}")
    if a.blur_kernel_size < 3 or a.blur_kernel_size % 2 == 0:
        raise ConfigError(f"data.augment.blur_kernel_size must be odd and at least 3, got {a.blur_kernel_size}")
    if t.precision not in ("32", "32-true", "bf16-mixed", "16-mixed", "mixed", "bf16-true"):
        raise ConfigError(f"train.precision {t.precision!r}: use 32, bf16-mixed, 16-mixed or mixed")
    if config.model.pooling not in ("max", "mean", "cls"):
        raise ConfigError(f"model.pooling {config.model.pooling!r}: use max, mean or cls")
    if config.model.head not in ("mlp", "linear"):
        raise ConfigError(f"model.head {config.model.head!r}: use mlp or linear")
    if t.keep_checkpoints not in KEEP_CHECKPOINTS:
        raise ConfigError(f"train.keep_checkpoints {t.keep_checkpoints!r}: use one of {', '.join(KEEP_CHECKPOINTS)}")
    if a.pipeline not in AUGMENT_PIPELINES:
        raise ConfigError(f"data.augment.pipeline {a.pipeline!r}: use {' or '.join(AUGMENT_PIPELINES)}")
    if d.on_bad_image not in ("skip", "fail"):
        raise ConfigError(f"data.on_bad_image {d.on_bad_image!r}: use skip or fail")
