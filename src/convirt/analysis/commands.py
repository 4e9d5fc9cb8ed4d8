"""Top-level commands: ``convirt plot tsne|saliency``, ``convirt index``, ``convirt search``.

::

    convirt plot tsne --chexpert-root /data --encoder imagenet:resnet50 --encoder best.ckpt -o tsne.png
    convirt plot tsne --dataset ../shared/data/kermany-pneumonia --encoder random-like:best.ckpt \\
        --encoder best.ckpt -o tsne.png
    convirt plot saliency --encoder best.ckpt --text "Pneumonia is present." img1.png img2.png -o saliency.png
    convirt plot saliency --encoder best.ckpt --dataset ../shared/data/kermany-pneumonia --per-class 4 \\
        --prompts builtin:kermany -o gradcam.png                       # Grad-CAM of the zero-shot classifier
    convirt plot saliency --encoder best.ckpt --head probe.pt IMAGES... -o gradcam.png   # a linear classifier

    convirt index IMAGE_DIR --checkpoint best.ckpt -o images.index.pt
    convirt search images.index.pt "Pleural effusion is present." -k 10 --contact-sheet hits.png
    convirt search images.index.pt --image query.png -k 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from convirt.analysis.cli_common import (
    add_dataset_options,
    add_encoder_options,
    labelled_images,
    load_embedders,
)
from convirt.errors import ConfigError


def register(subparsers) -> None:
    plot = subparsers.add_parser("plot", help="figures: t-SNE of embeddings, saliency maps")
    plots = plot.add_subparsers(dest="plot", metavar="PLOT")
    _register_tsne(plots)
    _register_saliency(plots)
    plot.set_defaults(func=lambda args: plot.print_help() or 1)
    _register_index(subparsers)
    _register_search(subparsers)


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


def _sample_per_class(paths, labels, categories, max_per_class, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    keep = []
    for category in categories:
        rows = [i for i, label in enumerate(labels) if label == category]
        if max_per_class is not None and len(rows) > max_per_class:
            rows = sorted(rng.choice(rows, size=max_per_class, replace=False).tolist())
        keep += rows
    return [paths[i] for i in keep], [labels[i] for i in keep]


def _run_tsne(args: argparse.Namespace) -> int:
    from convirt.analysis.tsne import plot_tsne, tsne_panels

    if bool(args.chexpert_root) == bool(args.dataset):
        raise ConfigError("give either --chexpert-root (CheXpert 8x200 candidates) or --dataset")
    if args.chexpert_root:
        from convirt.evaluation.retrieval import read_official_lists, resolve_chexpert_paths

        lists = read_official_lists(args.lists)
        paths = [str(p) for p in resolve_chexpert_paths(lists.candidate_paths, args.chexpert_root)]
        labels, name = lists.candidate_labels, "CheXpert 8x200 candidates"
    else:
        paths, labels, info = labelled_images(args.dataset, args.split)
        name = f"{info['task']} ({args.split})"
    categories = args.categories or sorted(set(labels), key=lambda c: (labels.index(c), c))
    unknown = sorted(set(categories) - set(labels))
    if unknown:
        raise ConfigError(f"--categories {unknown} not in the data (categories: {sorted(set(labels))})")
    paths, labels = _sample_per_class(paths, labels, categories, args.max_per_class, args.seed)
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


def _load_head(path: str):
    import torch

    data = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("head", "state_dict", "classifier"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if isinstance(data, dict):
        weights = {k.rsplit(".", 1)[-1]: v for k, v in data.items() if k.endswith(("weight", "bias"))}
        if "weight" in weights and weights["weight"].ndim == 2:
            layer = torch.nn.Linear(weights["weight"].shape[1], weights["weight"].shape[0], bias="bias" in weights)
            layer.load_state_dict(weights)
            return layer
    raise ConfigError(f"{path} holds no linear classifier ('weight' (C, D) and optional 'bias')")


def _run_saliency(args: argparse.Namespace) -> int:
    import torch

    from convirt.analysis.encoders import load_embedder
    from convirt.analysis.saliency import (
        SaliencyItem,
        classifier_grad_cam,
        saliency_grid,
        text_grad_cam,
        zero_shot_head,
    )
    from convirt.data.images import load_image

    modes = [bool(args.text), bool(args.head), bool(args.prompts)]
    if sum(modes) != 1:
        raise ConfigError("explain one thing: --text SENTENCE, --head FILE (linear classifier) or --prompts FILE")
    if args.images and args.dataset:
        raise ConfigError("give image files or --dataset, not both")
    truths: list[str | None]
    if args.dataset:
        paths, labels, _ = labelled_images(args.dataset, args.split)
        paths, truths = _sample_per_class(paths, labels, sorted(set(labels)), args.per_class, args.seed)
    elif args.images:
        paths, truths = list(args.images), [None] * len(args.images)
    else:
        raise ConfigError("no images: give image files or --dataset")
    embedder = load_embedder(args.encoder, seed=args.seed, image_size=args.image_size, device=args.device)
    originals = [load_image(p, mode="L") for p in paths]
    batch = torch.stack([embedder.preprocess(image) for image in originals])
    items: list[SaliencyItem] = []
    if args.text:
        if not embedder.has_text:
            raise ConfigError("text saliency needs a ConVIRT checkpoint (--encoder CKPT)")
        for sentence in args.text:
            cams, sims = text_grad_cam(embedder.encoder.model, batch, embedder.embed_texts([sentence])[0], args.layer)
            for path, image, cam, sim in zip(paths, originals, cams, sims):
                items.append(SaliencyItem(image, cam, f'{Path(path).name}\n"{sentence[:40]}" cos {sim:.3f}'))
        title = "Text-query saliency (Grad-CAM of cos(v, u))"
    else:
        if args.prompts:
            from convirt.evaluation.zeroshot import class_embeddings, parse_prompt_map, read_prompts

            if not embedder.has_text:
                raise ConfigError("the zero-shot classifier needs a ConVIRT checkpoint (--encoder CKPT)")
            classes, class_emb = class_embeddings(
                embedder, read_prompts(args.prompts, parse_prompt_map(args.prompt_map))
            )
            head = zero_shot_head(class_emb, embedder.encoder.model.image_head, embedder.temperature)
            title = "Grad-CAM, zero-shot classifier"
        else:
            head = _load_head(args.head)
            classes = args.class_names or [str(i) for i in range(head.out_features)]
            title = f"Grad-CAM, classifier {Path(args.head).name}"
        target = None
        if args.target is not None:
            target = classes.index(args.target) if args.target in classes else int(args.target)
        cams, chosen, logits = classifier_grad_cam(embedder.image_module, head, batch, target, args.layer)
        probs = logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(dim=1)
        for i, (path, image, cam, c, truth) in enumerate(zip(paths, originals, cams, chosen, truths)):
            name = classes[int(c)] if int(c) < len(classes) else str(int(c))
            truth_text = f" (true {truth})" if truth else ""
            caption = f"{Path(path).name}{truth_text}\nexplains: {name} p={float(probs[i, int(c)]):.2f}"
            items.append(SaliencyItem(image, cam, caption))
    output = saliency_grid(items, args.output, title=title, columns=args.columns)
    print(f"wrote {output}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# index / search


def _register_index(subparsers) -> None:
    parser = subparsers.add_parser("index", help="embed a folder of images into a searchable index file")
    parser.add_argument("image_dir", metavar="IMAGE_DIR")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT", help="ConVIRT checkpoint (text and image search)")
    source.add_argument("--encoder", metavar="SPEC", help="any encoder specification (image-only: image search)")
    parser.add_argument("--output", "-o", metavar="FILE", help="index file (default: ./<IMAGE_DIR name>.index.pt)")
    parser.add_argument("--space", choices=("h_v", "v"), default=None, help="default: v with a checkpoint, else h_v")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=512, help="images per resumable part file")
    parser.add_argument("--restart", action="store_true", help="ignore partial work and a previous index")
    parser.add_argument("--seed", type=int, default=0, help="for random-like: encoders")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=_run_index)


def _run_index(args: argparse.Namespace) -> int:
    from convirt.analysis.search import build_index

    output = args.output or f"{Path(args.image_dir).resolve().name}.index.pt"
    spec = args.checkpoint or args.encoder
    index = build_index(
        args.image_dir,
        spec,
        output,
        args.space,
        args.batch_size,
        args.chunk_size,
        args.restart,
        args.seed,
        progress=not args.no_progress,
    )
    print(f"indexed {len(index)} images ({index.space}, {tuple(index.embeddings.shape)}) into {output}")
    if index.failed:
        shown = "; ".join(f"{p}: {r}" for p, r in index.failed[:5])
        print(f"skipped {len(index.failed)} unreadable file(s): {shown}")
    return 0


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
