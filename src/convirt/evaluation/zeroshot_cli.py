"""`convirt evaluate zeroshot`: zero-shot classification of a labelled dataset from text prompts per class.

::

    convirt evaluate zeroshot --dataset ../shared/data/kermany-pneumonia --split test --prompts builtin:kermany \\
        --encoder runs/convirt/checkpoints/best.ckpt --encoder random-like:runs/convirt/checkpoints/best.ckpt \\
        --output results/kermany-zeroshot

Writes ``zeroshot.csv``, ``zeroshot.md`` and ``metrics.json`` to ``--output``.
"""

from __future__ import annotations

import argparse

from convirt.analysis.cli_common import (
    add_dataset_options,
    add_encoder_options,
    command_line,
    labelled_images,
    load_embedders,
)
from convirt.errors import ConfigError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "zeroshot",
        help="zero-shot classification from text prompts (class embedding = mean of its prompts)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataset_options(parser)
    add_encoder_options(parser)
    parser.add_argument(
        "--temperature", type=float, default=None, help="softmax temperature (default: the checkpoint's tau)"
    )
    parser.add_argument("--output", "-o", required=True, metavar="DIR")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convirt.evaluation.zeroshot import evaluate_zeroshot, parse_prompt_map, read_prompts, write_zeroshot_report

    if not args.dataset or not args.prompts:
        raise ConfigError("zero-shot classification needs --dataset and --prompts")
    prompts = read_prompts(args.prompts, parse_prompt_map(args.prompt_map))
    paths, labels, info = labelled_images(args.dataset, args.split)
    embedders = load_embedders(args)
    results = evaluate_zeroshot(embedders, paths, labels, prompts, args.temperature, args.batch_size)
    info["prompts"] = args.prompts
    info["encoders"] = {e.label: e.spec for e in embedders}
    files = write_zeroshot_report(results, prompts, args.output, command_line(), info)
    for r in results:
        auc = "–" if r.mean_auc is None else f"{100 * r.mean_auc:.1f}"
        print(f"{r.encoder:>24}  accuracy {100 * r.accuracy:.1f}  mean AUC {auc}")
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    return 0
