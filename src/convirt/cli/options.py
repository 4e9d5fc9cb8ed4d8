"""Option blocks shared by the commands, and the command line's own wording of library errors."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from convirt.encoders.embedders import Embedder, load_embedder
from convirt.encoders.spec import parse_specs
from convirt.errors import ConfigError, ConvirtError

# Library errors name the setting to change (ConvirtError.setting); this is the option that sets it.
OPTION_HINTS = {
    "prompt_map": "--prompt-map CLASS=PROMPT_LABEL",
    "lists": "--lists DIR",
    "chexpert_root": "--chexpert-root DIR",
    "restart": "--restart",
    "encoder": "--encoder SPEC",
    "index": "build one with `convirt index IMAGE_DIR --checkpoint CKPT`",
    "size": "--size N",
    "image_size": "--image-size N",
    "standardize": "--standardize",
    "steps": "--steps N",
    "backend": "--backend torch",
    "k": "--k with cut-offs up to the candidates per query, or no --k for the defaults that fit",
    "labels": "--labels DATASET",
}


def option_hint(exc: ConvirtError) -> str | None:
    """The command-line option that fixes ``exc``, as a short phrase (None when there is none)."""
    spec = getattr(exc, "encoder_spec", None)
    if spec is not None and spec.kind == "imagenet":
        return f"pass the downloaded file as --encoder {spec.name}=/path/to/file"
    setting = getattr(exc, "setting", None)
    return OPTION_HINTS.get(setting) if setting else None


def add_encoder_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("encoders")
    group.add_argument(
        "--encoder",
        action="append",
        required=required,
        metavar="SPEC",
        help="repeatable: a ConVIRT .ckpt, random-like:CKPT (same architecture, random init), random:NAME, "
        "imagenet:NAME, an export folder or a state dict (image-only)",
    )
    group.add_argument("--label", action="append", metavar="TEXT", help="display name per --encoder, in order")
    group.add_argument("--seed", type=int, default=0, help="seed for random-like: weights and sampled queries")
    group.add_argument("--image-size", type=int, default=224, help="input size of image-only encoders")
    group.add_argument("--batch-size", type=int, default=32)
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    group.add_argument("--no-fast", action="store_true", help="disable bf16 autocast + channels_last")


# The labelled-dataset adapters' options (convirt.data.sources), offered by every command that reads --dataset.
LABELLED_OPTIONS = {
    "val_size": "validation size: a count or a fraction of train (default: per dataset, the paper's)",
    "test_size": "test size where the dataset has no official test split (imagefolder, csv, rsna)",
    "split_seed": "seed of the validation/test draw (default 0)",
    "uncertain": "CheXpert/CSV uncertain-label policy: mixed (CheXpert default), zeros, ones, ignore",
    "positive": "positive class of a binary imagefolder/csv task (default: the second in sorted order)",
    "patient_pattern": "imagefolder: regex whose first group (or group 'patient') is the patient id in a file name",
    "scoring_level": "MURA: study (default) or patient (average image probabilities per group) or image",
    "image_column": "csv: image path column (default image)",
    "label_columns": "csv: label column, or comma-separated multi-label columns (default label)",
    "patient_column": "csv: patient id column",
    "study_column": "csv: study id column",
    "split_column": "csv: split column (train/val/test)",
    "image_root": "csv: folder that relative image paths start from",
}


def _number(text: str) -> float:
    value = float(text)
    return int(value) if value >= 1 and value == int(value) else value


def add_labelled_options(parser: argparse.ArgumentParser) -> None:
    """The options of :data:`LABELLED_OPTIONS` (``--split-column``, ``--label-columns``, ``--val-size`` ...)."""
    group = parser.add_argument_group("labelled dataset options (None: the adapter's default)")
    for option, text in LABELLED_OPTIONS.items():
        kind = _number if option in ("val_size", "test_size") else int if option == "split_seed" else str
        group.add_argument("--" + option.replace("_", "-"), type=kind, help=text)


def labelled_options(args: argparse.Namespace) -> dict:
    """The labelled-dataset options given on the command line, as the adapters name them."""
    options = {k: getattr(args, k) for k in LABELLED_OPTIONS if getattr(args, k) is not None}
    if "split_seed" in options:
        options["seed"] = options.pop("split_seed")
    return options


def add_dataset_options(parser: argparse.ArgumentParser, prompts: bool = True, split: str = "test") -> None:
    """``--dataset``, ``--split`` (default ``split``), the labelled-dataset options and (``prompts``) the class
    prompts: the one block of every command that reads a labelled dataset."""
    group = parser.add_argument_group("labelled data")
    group.add_argument(
        "--dataset",
        metavar="SPEC",
        help="labelled images: KIND:PATH (imagefolder:, csv:, chexpert:, ...), an image folder or a manifest "
        "(see convirt.data.sources)",
    )
    group.add_argument("--split", default=split, help=f"split to use (train/val/test; 'all' for every row; "
                       f"default {split})")  # fmt: skip
    add_labelled_options(parser)
    if prompts:
        group.add_argument(
            "--prompts",
            metavar="FILE",
            help="class prompts: CSV (label,text; the official text_query.csv works), YAML, builtin:kermany or "
            "builtin:chexpert",
        )
        group.add_argument(
            "--prompt-map",
            action="append",
            metavar="CLASS=PROMPT_LABEL",
            help="repeatable: use the prompts of PROMPT_LABEL for dataset class CLASS (e.g. 'NORMAL=No Finding')",
        )


def dataset_images(args: argparse.Namespace) -> tuple[list[str], list[str], dict]:
    """(paths, class names, description) of ``--dataset``'s ``--split``, read with the labelled-dataset options."""
    from convirt.data.sources import labelled_images

    return labelled_images(args.dataset, args.split, **labelled_options(args))


def parse_prompt_map(items: Sequence[str] | None) -> dict[str, str] | None:
    """``["NORMAL=No Finding", "PNEUMONIA=Pneumonia"]`` (``--prompt-map``) -> ``{"NORMAL": "No Finding", ...}``."""
    if not items:
        return None
    mapping = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--prompt-map expects CLASS=PROMPT_LABEL, got {item!r}")
        target, label = item.split("=", 1)
        mapping[target.strip()] = label.strip()
    return mapping


def read_prompt_options(args: argparse.Namespace) -> dict[str, list[str]]:
    """The class prompts of ``--prompts`` with ``--prompt-map`` applied."""
    from convirt.encoders.prompts import read_prompts

    return read_prompts(args.prompts, parse_prompt_map(args.prompt_map))


def load_embedders(args: argparse.Namespace) -> list[Embedder]:
    labels = args.label or []
    if labels and len(labels) != len(args.encoder):
        raise ConfigError(f"give one --label per --encoder ({len(args.encoder)} encoders, {len(labels)} labels)")
    return [
        load_embedder(
            spec,
            labels[i] if labels else None,
            seed=args.seed,
            image_size=args.image_size,
            device=args.device,
            fast=not args.no_fast,
        )
        for i, spec in enumerate(parse_specs(args.encoder))
    ]


def command_line() -> str:
    """The command as typed, when run through the ``convirt`` entry point (else empty)."""
    program = Path(sys.argv[0]).name if sys.argv else ""
    if program in ("convirt", "cli.py", "__main__.py"):
        return shlex.join(["convirt", *sys.argv[1:]])
    return ""
