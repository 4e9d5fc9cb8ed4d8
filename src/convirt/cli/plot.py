"""``convirt plot tsne|saliency``: figures of embeddings and saliency maps.

::

    convirt plot tsne --chexpert-root /data --encoder imagenet:resnet50 --encoder best.ckpt -o tsne.png
    convirt plot tsne --dataset ../shared/data/kermany-pneumonia --encoder random-like:best.ckpt \\
        --encoder best.ckpt -o tsne.png
    convirt plot saliency --encoder best.ckpt --text "Pneumonia is present." img1.png img2.png -o saliency.png
    convirt plot saliency --encoder best.ckpt --dataset ../shared/data/kermany-pneumonia --per-class 4 \\
        --prompts builtin:kermany -o gradcam.png                       # Grad-CAM of the zero-shot classifier
    convirt plot saliency --encoder best.ckpt --head probe.pt IMAGES... -o gradcam.png   # a linear classifier
"""

from __future__ import annotations

import argparse
from pathlib import Path

from convirt.cli.options import (
    add_dataset_options,
    add_encoder_options,
    dataset_images,
    load_embedders,
    read_prompt_options,
)
from convirt.data.sources import sample_per_class
from convirt.errors import ConfigError


def register(subparsers) -> None:
    plot = subparsers.add_parser("plot", help="figures: t-SNE of embeddings, saliency maps")
    plots = plot.add_subparsers(dest="plot", metavar="PLOT")
    _register_tsne(plots)
    _register_saliency(plots)
    plot.set_defaults(func=lambda args: plot.print_help() or 1)


# ---------------------------------------------------------------------------------------------------------------
# plot tsne


def _register_tsne(plots) -> None:
    parser = plots.add_parser("tsne", help="t-SNE of image embeddings coloured by category, encoders side by side")
    parser.add_argument("--chexpert-root", metavar="DIR", help="embed the CheXpert 8x200 candidate images")
    parser.add_argument("--lists", metavar="DIR", help="folder of the official lists (default: shared data)")
    add_dataset_options(parser, prompts=False)
    add_encoder_options(parser)
    parser.add_argument("--categories", nargs="+", metavar="NAME", help="only these categories (default: all)")
    parser.add_argument("--max-per-class", type=int, default=None, help="sample at most N images per category")
    parser.add_argument("--space", choices=("h_v", "v"), default="h_v", help="embedding space (h_v if absent)")
    parser.add_argument("--perplexity", type=float, default=30.0)
    parser.add_argument("--output", "-o", required=True, metavar="PNG")
    parser.set_defaults(func=_run_tsne)


def _run_tsne(args: argparse.Namespace) -> int:
    from convirt.analysis.tsne import plot_tsne, tsne_panels

    if bool(args.chexpert_root) == bool(args.dataset):
        raise ConfigError("give either --chexpert-root (CheXpert 8x200 candidates) or --dataset")
    if args.chexpert_root:
        from convirt.data.chexpert8x200 import read_official_lists, resolve_chexpert_paths

        lists = read_official_lists(args.lists)
        paths = [str(p) for p in resolve_chexpert_paths(lists.candidate_paths, args.chexpert_root)]
        labels, name = lists.candidate_labels, "CheXpert 8x200 candidates"
    else:
        paths, labels, info = dataset_images(args)
        name = f"{info['task']} ({args.split})"
    categories = args.categories or sorted(set(labels), key=lambda c: (labels.index(c), c))
    unknown = sorted(set(categories) - set(labels))
    if unknown:
        raise ConfigError(f"--categories {unknown} not in the data (categories: {sorted(set(labels))})")
    paths, labels = sample_per_class(paths, labels, categories, args.max_per_class, args.seed)
    panels = tsne_panels(load_embedders(args), paths, labels, args.space, args.seed, args.perplexity, args.batch_size)
    files = plot_tsne(panels, args.output, categories, title=f"t-SNE of {name}")
    print(f"wrote {files['png']} and {files['csv']}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# plot saliency


def _register_saliency(plots) -> None:
    parser = plots.add_parser(
        "saliency", help="Grad-CAM overlays: text-query saliency, zero-shot or linear classifier Grad-CAM"
    )
    parser.add_argument("images", nargs="*", help="image files (or use --dataset)")
    add_dataset_options(parser)
    parser.add_argument("--per-class", type=int, default=4, help="with --dataset: images drawn per class")
    parser.add_argument("--encoder", required=True, metavar="SPEC", help="a ConVIRT .ckpt or any image encoder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default=None)
    mode = parser.add_argument_group("what to explain (one)")
    mode.add_argument("--text", action="append", metavar="SENTENCE", help="text query saliency (repeatable)")
    mode.add_argument(
        "--head",
        metavar="FILE",
        help="a linear classifier on h_v: torch file with 'weight' (C, D) and optional 'bias' (C,) "
        "(also under a 'head' or 'state_dict' key)",
    )
    mode.add_argument("--class-names", nargs="+", metavar="NAME", help="names of the --head classes")
    mode.add_argument("--target", default=None, help="class to explain (name or index; default: the prediction)")
    parser.add_argument(
        "--layer",
        default=None,
        metavar="MODULE",
        help="backbone block to explain, by dotted name (e.g. layer3, features.13), or 'finer': the block at twice "
        "the resolution of the default last block (stride 16), for small inputs",
    )
    parser.add_argument("--columns", type=int, default=4)
    parser.add_argument("--output", "-o", required=True, metavar="PNG")
    parser.set_defaults(func=_run_saliency)


def _run_saliency(args: argparse.Namespace) -> int:
    from convirt.analysis.saliency import (
        classifier_saliency,
        load_linear_head,
        saliency_grid,
        text_saliency,
        zero_shot_classifier,
    )
    from convirt.encoders.embedders import load_embedder

    modes = [bool(args.text), bool(args.head), bool(args.prompts)]
    if sum(modes) != 1:
        raise ConfigError("explain one thing: --text SENTENCE, --head FILE (linear classifier) or --prompts FILE")
    if args.images and args.dataset:
        raise ConfigError("give image files or --dataset, not both")
    truths: list[str | None]
    if args.dataset:
        paths, labels, _ = dataset_images(args)
        paths, truths = sample_per_class(paths, labels, sorted(set(labels)), args.per_class, args.seed)
    elif args.images:
        paths, truths = list(args.images), [None] * len(args.images)
    else:
        raise ConfigError("no images: give image files or --dataset")
    embedder = load_embedder(args.encoder, seed=args.seed, image_size=args.image_size, device=args.device)
    if args.text:
        items = text_saliency(embedder, paths, args.text, args.layer)
        title = "Text-query saliency (Grad-CAM of cos(v, u))"
    else:
        if args.prompts:
            head, classes = zero_shot_classifier(embedder, read_prompt_options(args))
            title = "Grad-CAM, zero-shot classifier"
        else:
            head = load_linear_head(args.head)
            classes = args.class_names
            title = f"Grad-CAM, classifier {Path(args.head).name}"
        items = classifier_saliency(embedder, paths, head, classes, args.target, truths, args.layer)
    output = saliency_grid(items, args.output, title=title, columns=args.columns)
    print(f"wrote {output}")
    return 0
