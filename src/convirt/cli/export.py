"""``convirt export CKPT OUT``: see :mod:`convirt.encoders.export` for what is written."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint: torchvision image encoder (+ Hugging Face text encoder and heads for ConVIRT)",
    )
    parser.add_argument("checkpoint", help="a convirt pretraining checkpoint (.ckpt)")
    parser.add_argument("output", help="output folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from convirt.encoders.export import export_checkpoint

    with torch.no_grad():  # local: the CLI also runs in-process (tests, notebooks)
        written = export_checkpoint(args.checkpoint, args.output)
    print(json.dumps(written, indent=2))
    return 0
