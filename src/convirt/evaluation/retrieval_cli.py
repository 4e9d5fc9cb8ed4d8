"""`convirt evaluate retrieval`: zero-shot retrieval, official CheXpert 8x200 protocol or any labelled dataset.

Official protocol (needs a CheXpert-v1.0-small download)::

    convirt evaluate retrieval --chexpert-root /data --encoder runs/convirt/checkpoints/best.ckpt \\
        --encoder imagenet:resnet50 --output results/retrieval

Generic (a labelled dataset with text queries per class)::

    convirt evaluate retrieval --dataset ../shared/data/kermany-pneumonia --split test \\
        --prompts ../shared/data/convirt-retrieval/text_query.csv \\
        --prompt-map "NORMAL=No Finding" --prompt-map PNEUMONIA=Pneumonia \\
        --encoder best.ckpt --encoder random-like:best.ckpt --output results/kermany-retrieval

Writes ``retrieval.csv``, ``retrieval.md`` (the paper's Table 2 layout) and ``metrics.json`` to ``--output``.
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
        "retrieval",
        help="zero-shot image-image and text-image retrieval (CheXpert 8x200 or a labelled dataset)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    official = parser.add_argument_group("official CheXpert 8x200 protocol")
    official.add_argument(
        "--chexpert-root", metavar="DIR", help="folder containing CheXpert-v1.0-small/ (or that folder itself)"
    )
    official.add_argument(
        "--lists", metavar="DIR", help="folder of candidate.csv, image_query.csv, text_query.csv (default: shared data)"
    )
    add_dataset_options(parser)
    parser.add_argument(
        "--image-queries-per-class",
        type=int,
        metavar="N",
        help="labelled data: draw N query images per class (removed from the candidates); default: every image "
        "queries all the others",
    )
    add_encoder_options(parser)
    parser.add_argument(
        "--space", choices=("both", "h_v", "v"), default="both", help="image space for image-image retrieval"
    )
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 50, 100], help="Precision@k cut-offs")
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for CSV, Markdown, metrics.json")
    parser.add_argument("--title", default=None, help="Markdown title")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convirt.evaluation.retrieval import evaluate_labelled, evaluate_official, read_official_lists, write_report
    from convirt.evaluation.zeroshot import parse_prompt_map, read_prompts

    if bool(args.chexpert_root) == bool(args.dataset):
        raise ConfigError("give either --chexpert-root (official CheXpert 8x200 lists) or --dataset (labelled data)")
    spaces = ("h_v", "v") if args.space == "both" else (args.space,)
    if args.chexpert_root:
        # The released lists are checked for their official sizes; a custom --lists folder only for its categories.
        lists = read_official_lists(args.lists, strict=args.lists is None)
        # Check the images before loading any model: a wrong root fails in a second, not after a minute.
        from convirt.evaluation.retrieval import resolve_chexpert_paths

        resolve_chexpert_paths(lists.image_paths(), args.chexpert_root)
        embedders = load_embedders(args)
        report = evaluate_official(embedders, args.chexpert_root, lists, args.k, spaces, args.batch_size)
        title = args.title or "Zero-shot retrieval, CheXpert 8x200 (official lists)"
    else:
        paths, labels, info = labelled_images(args.dataset, args.split)
        prompts = read_prompts(args.prompts, parse_prompt_map(args.prompt_map)) if args.prompts else None
        embedders = load_embedders(args)
        report = evaluate_labelled(
            embedders,
            paths,
            labels,
            prompts,
            args.k,
            spaces,
            args.image_queries_per_class,
            args.seed,
            args.batch_size,
            source=args.dataset,
        )
        report.data.update({k: v for k, v in info.items() if k not in report.data})
        if args.prompts:
            report.data["prompts"] = args.prompts
        title = args.title or f"Zero-shot retrieval, {info['task']} ({args.split})"
    report.data["encoders"] = {e.label: e.spec for e in embedders}
    files = write_report(report, args.output, command_line(), title)
    for result in report.results:
        means = ", ".join(f"P@{k} {result.mean[k]:.1f}" for k in result.ks)
        print(f"{result.encoder:>24}  {result.task:<11} {result.space:<4} {means}")
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    return 0
