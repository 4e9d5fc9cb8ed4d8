"""Options and data loading shared by the retrieval, zero-shot, t-SNE and saliency commands."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from convirt.analysis.encoders import Embedder, load_embedder
from convirt.errors import ConfigError


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
            help="class prompts: CSV (label,text; the official text_query.csv works), YAML, or builtin:kermany",
        )
        group.add_argument(
            "--prompt-map",
            action="append",
            metavar="CLASS=PROMPT_LABEL",
            help="repeatable: use the prompts of PROMPT_LABEL for dataset class CLASS (e.g. 'NORMAL=No Finding')",
        )


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
        for i, spec in enumerate(args.encoder)
    ]


def labelled_images(spec: str, split: str | None = "test") -> tuple[list[str], list[str], dict]:
    """(paths, class names, description) of a labelled dataset's split, one class per image.

    Multi-label datasets keep the images positive for exactly one label and known negative for all others (as
    CheXpert 8x200 was drawn), labelled by that label.
    """
    from convirt.data.sources import load_labelled_dataset, parse_dataset_spec

    kind, path = parse_dataset_spec(str(spec))
    # An absolute path: adapters resolve image paths against the dataset root, which a relative root breaks.
    manifest = load_labelled_dataset(f"{kind}:{path.expanduser().resolve()}")
    if split and split != "all":
        manifest = manifest.split(split)
    if len(manifest) == 0:
        raise ConfigError(f"dataset {spec} has no images in split {split!r}")
    names = manifest.task.class_names
    paths = list(manifest.images)
    if manifest.task.kind == "multilabel":
        targets = manifest.targets
        exclusive = (np.nansum(targets == 1, axis=1) == 1) & ~np.isnan(targets).any(axis=1)
        rows = np.flatnonzero(exclusive)
        labels = [names[int(np.argmax(targets[i]))] for i in rows]
        paths = [paths[i] for i in rows]
    else:
        labels = [names[int(t)] for t in manifest.targets]
    info = {
        "dataset": str(spec),
        "split": split,
        "task": manifest.task.name,
        "n_images": len(paths),
        "images_per_class": {c: labels.count(c) for c in names if c in labels},
    }
    return paths, labels, info


def command_line() -> str:
    """The command as typed, when run through the ``convirt`` entry point (else empty)."""
    program = Path(sys.argv[0]).name if sys.argv else ""
    if program in ("convirt", "cli.py", "__main__.py"):
        return shlex.join(["convirt", *sys.argv[1:]])
    return ""
