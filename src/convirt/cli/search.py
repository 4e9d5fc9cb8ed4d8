"""``convirt index`` and ``convirt search``: embedding search over a folder of images.

::

    convirt index IMAGE_DIR --checkpoint best.ckpt -o images.index.pt
    convirt index IMAGE_DIR --checkpoint best.ckpt --labels labels.csv --split test -o test.index.pt
    convirt index --dataset csv:table.csv --split-column fold --split test --checkpoint best.ckpt
    convirt search images.index.pt "Pleural effusion is present." -k 10 --contact-sheet hits.png
    convirt search images.index.pt --image query.png -k 10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from convirt.cli.options import add_labelled_options, labelled_options
from convirt.errors import ConfigError


def register(subparsers) -> None:
    _register_index(subparsers)
    _register_search(subparsers)


def _register_index(subparsers) -> None:
    parser = subparsers.add_parser(
        "index", help="embed a folder of images (or a labelled dataset's split) into a searchable index file"
    )
    parser.add_argument("image_dir", metavar="IMAGE_DIR", nargs="?", help="every image under this folder")
    parser.add_argument(
        "--dataset",
        metavar="DATASET",
        help="instead of IMAGE_DIR: the images of a labelled dataset's --split (default all), with their labels",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT", help="ConVIRT checkpoint (text and image search)")
    source.add_argument("--encoder", metavar="SPEC", help="any encoder specification (image-only: image search)")
    parser.add_argument("--output", "-o", metavar="FILE", help="index file (default: ./<IMAGE_DIR name>.index.pt, "
                        "or <dataset name>-<split>.index.pt)")  # fmt: skip
    parser.add_argument("--space", choices=("h_v", "v"), default=None, help="default: v with a checkpoint, else h_v")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=512, help="images per resumable part file")
    parser.add_argument("--restart", action="store_true", help="ignore partial work and a previous index")
    parser.add_argument("--seed", type=int, default=0, help="for random-like: encoders")
    parser.add_argument("--no-progress", action="store_true")
    add_label_options(parser)
    parser.set_defaults(func=_run_index)


def add_label_options(parser: argparse.ArgumentParser) -> None:
    """``--labels``, ``--split`` and the labelled-dataset options (``--split-column`` ...): the labels an index
    stores (``convirt index`` and ``convirt serve --images``)."""
    parser.add_argument(
        "--labels",
        metavar="DATASET",
        help="a labelled dataset (labelled manifest, imagefolder:, csv:, ...) whose images get their labels in the "
        "index (convirt serve shows them and Precision@k)",
    )
    parser.add_argument(
        "--split", help="index only the images of this split (train/val/test) of --labels or --dataset (default all)"
    )
    add_labelled_options(parser)


def _run_index(args: argparse.Namespace) -> int:
    if (args.image_dir is None) == (args.dataset is None):
        raise ConfigError("give an IMAGE_DIR or --dataset (the images of a labelled dataset's --split)")
    if args.dataset and args.labels:
        raise ConfigError("--dataset indexes its images with their own labels; --labels labels the images of an "
                          "IMAGE_DIR")  # fmt: skip
    if args.dataset:
        from convirt.data.sources import parse_dataset_spec

        name = f"{parse_dataset_spec(args.dataset)[1].resolve().stem}-{args.split or 'all'}"
    else:
        name = Path(args.image_dir).resolve().name
    index_images(args.checkpoint or args.encoder, args.output or f"{name}.index.pt", image_dir=args.image_dir,
                 dataset=args.dataset, labels_spec=args.labels, split=args.split,
                 dataset_options=labelled_options(args), space=args.space, batch_size=args.batch_size,
                 chunk_size=args.chunk_size, restart=args.restart, seed=args.seed,
                 progress=not args.no_progress)  # fmt: skip
    return 0


def index_images(
    spec: str,
    output: str,
    image_dir: str | None = None,
    dataset: str | None = None,
    labels_spec: str | None = None,
    split: str | None = None,
    dataset_options: dict | None = None,
    **options,
):
    """``build_index`` over ``image_dir`` (labelled by ``labels_spec``, only its ``split`` when given) or over the
    images of ``dataset``'s ``split`` (labelled by it), reporting what it did (``convirt index`` and ``convirt
    serve --images``). ``dataset_options`` go to the labelled-dataset adapter."""
    from convirt.analysis.search import build_index
    from convirt.data.sources import image_labels

    split = None if split == "all" else split
    if split and not (labels_spec or dataset):
        raise ConfigError("--split selects images of a labelled dataset: give it with --labels DATASET")
    labelled_by = dataset or labels_spec
    labels = image_labels(labelled_by, split, **(dataset_options or {})) if labelled_by else None
    index = build_index(
        image_dir,
        spec,
        output,
        images=list(labels) if dataset else None,
        labels=labels,
        label_source=f"{labelled_by} ({split or 'all'} split)" if labelled_by else "",
        only_labelled=bool(split),
        **options,
    )
    print(f"indexed {len(index)} images ({index.space}, {tuple(index.embeddings.shape)}) into {output}")
    if labels is not None:
        print(f"labels: {sum(map(bool, index.labels))} of {len(index)} images, {len(index.label_names)} label names")
    if index.failed:
        shown = "; ".join(f"{p}: {r}" for p, r in index.failed[:5])
        print(f"skipped {len(index.failed)} unreadable file(s): {shown}")
    return index


def _register_search(subparsers) -> None:
    parser = subparsers.add_parser("search", help="search an index by text or by image")
    parser.add_argument("index", metavar="INDEX")
    parser.add_argument("query", nargs="?", help="text query (in quotes)")
    parser.add_argument("--image", metavar="PATH", help="query image instead of text")
    parser.add_argument("-k", type=int, default=10, help="number of results")
    parser.add_argument("--checkpoint", metavar="CKPT", help="encoder for the query (default: the index's own)")
    parser.add_argument("--backend", choices=("torch", "faiss"), default="torch")
    parser.add_argument("--contact-sheet", metavar="PNG", help="also write the results as an image grid")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=_run_search)


def _run_search(args: argparse.Namespace) -> int:
    from convirt.analysis.search import ImageIndex, embedder_for_index, format_hits, search_index

    if (args.query is None) == (args.image is None):
        raise ConfigError('give a text query ("...") or --image PATH')
    index = ImageIndex.load(args.index)
    if args.checkpoint is None:  # the index names its encoder: say which file that loads (it may be anywhere)
        print(f"loading the encoder stored in the index: {index.encoder_spec}", file=sys.stderr)
    embedder = embedder_for_index(index, args.checkpoint)
    hits = search_index(index, args.query, args.image, args.k, embedder, args.backend)
    if args.json:
        print(json.dumps([{"rank": h.rank, "score": h.score, "path": h.path} for h in hits], indent=2))
    else:
        print(format_hits(hits))
    if args.contact_sheet:
        from convirt.analysis.contact_sheet import contact_sheet

        contact_sheet(hits, args.contact_sheet, query_text=args.query, query_image=args.image)
        if not args.json:
            print(f"wrote {args.contact_sheet}")
    return 0
