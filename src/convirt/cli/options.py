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


def add_dataset_options(parser: argparse.ArgumentParser, prompts: bool = True) -> None:
    group = parser.add_argument_group("labelled data")
    group.add_argument(
        "--dataset",
        metavar="SPEC",
        help="labelled images: KIND:PATH (imagefolder:, csv:, chexpert:, ...), an image folder or a manifest "
        "(see convirt.data.sources)",
    )
    group.add_argument("--split", default="test", help="split to use (train/val/test; 'all' for every row)")
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
