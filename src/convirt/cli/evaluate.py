"""``convirt evaluate classify | retrieval | zeroshot | trajectory``: one sub-command per evaluation (descriptions
below)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from convirt.cli.options import (
    add_dataset_options,
    add_encoder_options,
    add_labelled_options,
    command_line,
    dataset_images,
    labelled_options,
    load_embedders,
    read_prompt_options,
)
from convirt.errors import ConfigError

CLASSIFY_DESCRIPTION = """`convirt evaluate classify`: linear probe / fine-tuning of image encoders on a labelled
dataset (the paper's Appendix B). Examples::

    convirt evaluate classify --dataset imagefolder:../shared/data/kermany-pneumonia \\
        --encoder random:resnet18 --encoder runs/covid/checkpoints/best.ckpt \\
        --protocol linear --fractions 0.01,0.1,1 --seeds 5 --output runs/classify/kermany
    convirt evaluate classify --dataset chexpert:/data/CheXpert-v1.0 --uncertain zeros --save-manifest chexpert.csv
    convirt evaluate classify --dataset mura:/data/MURA-v1.1 --encoder export/ --protocol finetune
    convirt evaluate classify --dataset chexpert:/data --encoder best.ckpt --protocol finetune --fractions 1 \\
        --seeds 1 --save-encoder runs/finetuned      # the "ConVIRT + CheXpert Supervised" encoder of Table 2

``--dataset`` is ``KIND:PATH`` with KIND one of imagefolder, csv, rsna, chexpert, covidx, mura, manifest (see
:mod:`convirt.data.sources`); the dataset options below apply to the kinds that take them. Without
``--encoder``, ``--save-manifest`` only writes the labelled manifest.
"""


def _fractions(text: str) -> list[float]:
    try:
        return [float(f) for f in text.split(",") if f.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"fractions must be numbers like 0.01,0.1,1 ({exc})") from exc


def _seeds(text: str) -> int | list[int]:
    try:
        # "0,1,2" or "2," (a list of one seed); a bare "5" is a count
        seeds = [int(s) for s in text.split(",") if s.strip()] if "," in text else int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("seeds: a count (5) or a list (0,1,2; one seed: 2,)") from exc
    if seeds == [] or seeds == 0:
        raise argparse.ArgumentTypeError("seeds: a count (5) or a list (0,1,2; one seed: 2,)")
    return seeds


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate an encoder (classification, retrieval, zero-shot)")
    evaluations = parser.add_subparsers(dest="evaluation", metavar="EVALUATION")
    _register_classify(evaluations)
    _register_retrieval(evaluations)
    _register_zeroshot(evaluations)
    _register_trajectory(evaluations)
    parser.set_defaults(func=lambda args: parser.print_help() or 1)


def _evaluation_parser(subparsers, name: str, description: str, help_text: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name, help=help_text, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


# ---------------------------------------------------------------------------------------------------------------
# classify


def _register_classify(subparsers) -> None:
    parser = _evaluation_parser(
        subparsers,
        "classify",
        CLASSIFY_DESCRIPTION,
        "linear probe / fine-tune an image encoder on a labelled dataset (paper Appendix B)",
    )
    parser.add_argument(
        "--dataset", required=True, help="KIND:PATH (imagefolder|csv|rsna|chexpert|covidx|mura|manifest)"
    )
    parser.add_argument("--encoder", action="append", default=[], help="encoder spec (repeatable): random:NAME, "
                        "imagenet:NAME, a convirt .ckpt, an export folder, or NAME=STATE_DICT")  # fmt: skip
    parser.add_argument("--name", action="append", default=[], help="display name per --encoder (same order)")
    parser.add_argument("--protocol", choices=["linear", "finetune"], default="linear")
    parser.add_argument("--recipe", choices=["features", "paper"], default="features",
                        help="linear probe: 'features' trains on cached features (fast, default); 'paper' runs the "
                        "frozen encoder on the images every step")  # fmt: skip
    parser.add_argument("--fractions", type=_fractions, default=[0.01, 0.1, 1.0], help="label fractions (0.01,0.1,1)")
    parser.add_argument("--seeds", type=_seeds, default=5, help="number of seeds (5) or a list of seeds (0,1,2)")
    parser.add_argument("--output", "-o", help="output folder (default runs/classify/<dataset>-<protocol>)")
    parser.add_argument("--save-manifest", help="also write the labelled manifest (CSV/Parquet + .task.json) here")
    parser.add_argument("--save-encoder", metavar="DIR", help="fine-tune: write each fine-tuned encoder as an export "
                        "folder DIR/<encoder>-<fraction>-seed<N> (evaluate retrieval takes it as --encoder); with a "
                        "chexpert: dataset the CheXpert 8x200 retrieval images leave its training data")  # fmt: skip
    parser.add_argument("--lists", metavar="DIR", help="with --save-encoder on chexpert: the retrieval lists whose "
                        "images are left out (default: the official lists in the shared data)")  # fmt: skip
    add_training_options(parser)
    add_labelled_options(parser)
    parser.set_defaults(func=run_classify, classify_parser=parser)


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """The classification recipe's options (``evaluate classify`` and ``evaluate trajectory``)."""
    training = parser.add_argument_group("training (defaults: the paper's)")
    training.add_argument("--lr", type=float, help="Adam lr (default 1e-3 for COVIDx, 1e-4 otherwise)")
    training.add_argument("--weight-decay", type=float, default=1e-6)
    training.add_argument("--dropout", type=float, default=0.2)
    training.add_argument("--batch-size", type=int, default=64)
    training.add_argument("--max-epochs", type=int, default=100)
    training.add_argument("--warmup-steps", type=int, default=200, help="fine-tune: head-only steps at --warmup-lr")
    training.add_argument("--warmup-lr", type=float, default=1e-3)
    training.add_argument("--monitor", choices=["metric", "loss"], default="metric", help="what 'improvement' means")
    training.add_argument("--standardize", action="store_true", help="linear probe on cached features: z-score "
                          "each feature with the training subset's mean/std first (not in the paper)")  # fmt: skip
    training.add_argument("--image-size", type=int, default=224)
    training.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    training.add_argument("--no-fast", action="store_true", help="disable bf16 autocast + channels_last")
    training.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for image decoding")
    training.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a CPU shared with others)")
    training.add_argument("--cache-dir", help="feature cache (default <output>/features)")
    training.add_argument("--encoder-seed", type=int, default=0, help="seed of random-init encoders")


def classification_settings(args: argparse.Namespace, protocol: str, fractions, seeds):
    """The ClassificationSettings the training options describe."""
    from convirt.evaluation.classification import ClassificationSettings, Recipe

    recipe = Recipe(
        lr=args.lr, weight_decay=args.weight_decay, dropout=args.dropout, batch_size=args.batch_size,
        max_epochs=args.max_epochs, warmup_steps=args.warmup_steps, warmup_lr=args.warmup_lr, monitor=args.monitor,
        standardize=args.standardize,
    )  # fmt: skip
    return ClassificationSettings(
        protocol=protocol, recipe=getattr(args, "recipe", "features"), fractions=fractions, seeds=seeds,
        image_size=args.image_size, device=args.device, fast=not args.no_fast, workers=args.workers,
        cache_dir=args.cache_dir, encoder_seed=args.encoder_seed, training=recipe,
        save_encoders=getattr(args, "save_encoder", None),
    )  # fmt: skip


def classify_command_line(args: argparse.Namespace) -> str:
    """The command as a user would type it (options that differ from their defaults), for the result files."""
    parser = args.classify_parser
    words = ["convirt", "evaluate", "classify"]
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help",):
            continue
        value = getattr(args, action.dest, None)
        if value is None or value == action.default or value is False:
            continue
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if value is True:
            words.append(flag)
        elif isinstance(value, list) and action.dest in ("encoder", "name"):
            for item in value:
                words += [flag, shlex.quote(str(item))]
        else:
            text = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(
                value, (list, tuple)) else str(value)  # fmt: skip
            if action.dest == "seeds" and isinstance(value, list) and len(value) == 1:
                text += ","  # a list of one seed, not a count
            words += [flag, shlex.quote(text)]
    return " ".join(words)


def run_classify(args: argparse.Namespace) -> int:
    import torch

    threads = torch.get_num_threads()
    try:
        return _run_classify(args)
    finally:
        torch.set_num_threads(threads)  # --threads applies to this command only (it may run in-process)


def _run_classify(args: argparse.Namespace) -> int:
    from convirt.data.labelled import write_labelled_manifest
    from convirt.data.sources import load_labelled_dataset, parse_dataset_spec
    from convirt.encoders.spec import parse_specs
    from convirt.evaluation.classification import encoder_choice
    from convirt.evaluation.classification.runner import evaluate_classification

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = labelled_options(args)
    if args.save_encoder and parse_dataset_spec(args.dataset)[0] == "chexpert":
        # A CheXpert-fine-tuned encoder is the upper bound of CheXpert 8x200 retrieval: never train on its images.
        options.update(exclude_retrieval=True, retrieval_lists=args.lists)
    manifest = load_labelled_dataset(args.dataset, **options)
    print(f"{args.dataset}: {manifest.task.kind} task {manifest.task.class_names}, splits {manifest.counts()}")
    if manifest.task.notes:
        print(f"  {manifest.task.notes}")
    if args.save_manifest:
        write_labelled_manifest(manifest, args.save_manifest)
        print(f"wrote {args.save_manifest}")
    if not args.encoder:
        if args.save_manifest:
            return 0
        raise ConfigError("give at least one --encoder (or --save-manifest to only write the labelled manifest)")
    if args.name and len(args.name) != len(args.encoder):
        raise ConfigError(f"{len(args.name)} --name for {len(args.encoder)} --encoder; give one per encoder or none")
    names = args.name or [None] * len(args.encoder)
    choices = [encoder_choice(spec, name) for spec, name in zip(parse_specs(args.encoder), names)]
    settings = classification_settings(args, args.protocol, args.fractions, args.seeds)
    output = args.output or str(Path("runs") / "classify" / f"{manifest.task.name}-{args.protocol}")
    command = classify_command_line(args)
    evaluate_classification(manifest, choices, settings, output, command=command)
    print(f"wrote {output}/summary.md, runs.csv, metrics.json and roc/*.png")
    print(Path(output, "summary.md").read_text())
    return 0


# ---------------------------------------------------------------------------------------------------------------
# retrieval

RETRIEVAL_DESCRIPTION = """`convirt evaluate retrieval`: zero-shot retrieval, official CheXpert 8x200 protocol or any
labelled dataset.

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


def _register_retrieval(subparsers) -> None:
    parser = _evaluation_parser(
        subparsers,
        "retrieval",
        RETRIEVAL_DESCRIPTION,
        "zero-shot image-image and text-image retrieval (CheXpert 8x200 or a labelled dataset)",
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
    parser.add_argument("--k", type=int, nargs="+", default=None, help="Precision@k cut-offs (default: those of "
                        "5 10 50 100 that the candidates per query allow; the others are named)")  # fmt: skip
    parser.add_argument("--output", "-o", required=True, metavar="DIR", help="folder for CSV, Markdown, metrics.json")
    parser.add_argument("--title", default=None, help="Markdown title")
    parser.set_defaults(func=run_retrieval)


def run_retrieval(args: argparse.Namespace) -> int:
    from convirt.data.chexpert8x200 import read_official_lists, resolve_chexpert_paths
    from convirt.evaluation.retrieval import dropped_cutoffs_note, evaluate_labelled, evaluate_official, write_report

    if bool(args.chexpert_root) == bool(args.dataset):
        raise ConfigError("give either --chexpert-root (official CheXpert 8x200 lists) or --dataset (labelled data)")
    spaces = ("h_v", "v") if args.space == "both" else (args.space,)
    if args.chexpert_root:
        # The released lists are checked for their official sizes; a custom --lists folder only for its categories.
        lists = read_official_lists(args.lists, strict=args.lists is None)
        # Check the images before loading any model: a wrong root fails in a second, not after a minute.
        resolve_chexpert_paths(lists.image_paths(), args.chexpert_root)
        embedders = load_embedders(args)
        report = evaluate_official(embedders, args.chexpert_root, lists, args.k, spaces, args.batch_size)
        title = args.title or "Zero-shot retrieval, CheXpert 8x200 (official lists)"
    else:
        paths, labels, info = dataset_images(args)
        prompts = read_prompt_options(args) if args.prompts else None
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
    if dropped_cutoffs_note(report):
        print(dropped_cutoffs_note(report).strip())
    for result in report.results:
        means = ", ".join(f"P@{k} {result.mean[k]:.1f}" for k in result.ks)
        print(f"{result.encoder:>24}  {result.task:<11} {result.space:<4} {means}")
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# zeroshot

ZEROSHOT_DESCRIPTION = """`convirt evaluate zeroshot`: zero-shot classification of a labelled dataset from text
prompts per class.

::

    convirt evaluate zeroshot --dataset ../shared/data/kermany-pneumonia --split test --prompts builtin:kermany \\
        --encoder runs/convirt/checkpoints/best.ckpt --encoder random-like:runs/convirt/checkpoints/best.ckpt \\
        --output results/kermany-zeroshot

Writes ``zeroshot.csv``, ``zeroshot.md`` and ``metrics.json`` to ``--output``.
"""


def _register_zeroshot(subparsers) -> None:
    parser = _evaluation_parser(
        subparsers,
        "zeroshot",
        ZEROSHOT_DESCRIPTION,
        "zero-shot classification from text prompts (class embedding = mean of its prompts)",
    )
    add_dataset_options(parser)
    add_encoder_options(parser)
    parser.add_argument(
        "--temperature", type=float, default=None, help="softmax temperature (default: the checkpoint's tau)"
    )
    parser.add_argument("--output", "-o", required=True, metavar="DIR")
    parser.set_defaults(func=run_zeroshot)


def run_zeroshot(args: argparse.Namespace) -> int:
    from convirt.evaluation.zeroshot import evaluate_zeroshot, write_zeroshot_report

    if not args.dataset or not args.prompts:
        raise ConfigError("zero-shot classification needs --dataset and --prompts")
    prompts = read_prompt_options(args)
    paths, labels, info = dataset_images(args)
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


# ---------------------------------------------------------------------------------------------------------------
# trajectory

TRAJECTORY_DESCRIPTION = """`convirt evaluate trajectory`: the paper's Figure 4. Every checkpoint a pretraining run
kept (train.keep_checkpoints=every_eval: checkpoints/eval-NNNN.ckpt) scored downstream, against the run's
validation loss::

    convirt evaluate trajectory runs/convirt --output results/figure4 \\
        --classify rsna:/data/rsna --fraction 0.01 --seeds 5 --chexpert-root /data
    convirt evaluate trajectory runs/demo --output results/figure4 --classify manifest:labels.csv --standardize \\
        --dataset manifest:labels.csv --prompts text_queries.csv

Writes trajectory.csv (one row per checkpoint), correlations.csv (Pearson and Spearman r of -L against each end
task), figure4.png and trajectory.md. Run it again to continue: a scored checkpoint is not scored again.
"""


def _register_trajectory(subparsers) -> None:
    parser = _evaluation_parser(
        subparsers,
        "trajectory",
        TRAJECTORY_DESCRIPTION,
        "score every kept pretraining checkpoint downstream; validation loss vs end tasks (paper Figure 4)",
    )
    parser.add_argument("run", metavar="RUN_DIR", help="a pretraining run's output folder")
    parser.add_argument("--output", "-o", required=True, metavar="DIR")
    parser.add_argument("--every", type=int, default=1, metavar="N", help="score every N-th kept checkpoint (and "
                        "the last)")  # fmt: skip
    probe = parser.add_argument_group("linear probe")
    probe.add_argument("--classify", metavar="DATASET", help="labelled dataset (KIND:PATH or manifest:FILE)")
    probe.add_argument("--fraction", type=float, default=0.01, help="label fraction (default 0.01, the paper's)")
    probe.add_argument("--seeds", type=_seeds, default=1, help="probe seeds per checkpoint (default 1)")
    add_training_options(parser)
    official = parser.add_argument_group("retrieval: official CheXpert 8x200 protocol")
    official.add_argument("--chexpert-root", metavar="DIR", help="folder containing CheXpert-v1.0-small/")
    official.add_argument("--lists", metavar="DIR", help="folder of the 8x200 lists (default: shared data)")
    add_dataset_options(parser)
    parser.add_argument("--space", choices=("h_v", "v"), default="h_v", help="image space for image-image retrieval")
    parser.add_argument("--k", type=int, default=10, help="Precision@k cut-off (default 10, the paper's)")
    parser.set_defaults(func=run_trajectory)


def run_trajectory(args: argparse.Namespace) -> int:
    from convirt.cli.options import parse_prompt_map
    from convirt.evaluation.trajectory import TrajectoryTasks, score_trajectory

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = classification_settings(args, "linear", [args.fraction], args.seeds) if args.classify else None
    tasks = TrajectoryTasks(
        classify=args.classify, settings=settings, chexpert_root=args.chexpert_root, lists=args.lists,
        retrieval=args.dataset, prompts=args.prompts, prompt_map=parse_prompt_map(args.prompt_map), split=args.split,
        space=args.space, k=args.k, image_size=args.image_size, device=args.device, fast=not args.no_fast,
    )  # fmt: skip
    frame = score_trajectory(args.run, args.output, tasks, every=args.every)
    print(Path(args.output, "trajectory.md").read_text())
    print(
        f"wrote {args.output}/trajectory.csv, correlations.csv, figure4.png, trajectory.md ({len(frame)} checkpoints)"
    )
    return 0
