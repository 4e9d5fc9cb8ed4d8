"""``convirt demo`` and ``convirt synthesize``.

::

    convirt demo --out runs/demo                 # the full demo (~10-15 min on 2 CPU cores)
    convirt demo --out /tmp/demo --quick         # every stage at a smoke-test size (about a minute)
    convirt synthesize --size 1000 --seed 0 --out data/synthetic
    convirt prepare csv --input data/synthetic --table pairs.csv --output data/synthetic-prepared
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="the whole method on synthetic data: generate, prepare, pretrain, evaluate, write a report",
        description="Generate synthetic paired radiographs and reports, prepare them, pretrain ConVIRT, evaluate "
        "(retrieval, zero-shot, linear probe vs random init) and write OUT/report.md and OUT/metrics.json. "
        "Needs no data and no network.",
    )
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--size", type=int, default=None, help="pretraining pairs (default 4000; --quick 64)")
    demo.add_argument("--eval-size", type=int, default=None, help="labelled evaluation studies (default 2000)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--steps", type=int, default=None, help="pretraining steps (default: from the config, 400)")
    demo.add_argument("--probe-seeds", type=int, default=None, help="linear-probe seeds (default 3)")
    demo.add_argument("--workers", type=int, default=2, help="processes for generation and preparation")
    demo.add_argument("--config", default=None, help="a pretraining YAML instead of the built-in demo settings")
    demo.add_argument("--quick", action="store_true", help="a tiny run of every stage (tests, smoke checks)")
    demo.add_argument("overrides", nargs="*", metavar="section.key=value", help="pretraining config overrides")
    demo.set_defaults(func=_run_demo)

    synth = subparsers.add_parser(
        "synthesize",
        help="write a synthetic paired dataset (images, pairs.csv, labels.csv)",
        description="Synthetic chest radiographs with findings, their reports and ground-truth labels, in the "
        "layout `convirt prepare csv --table pairs.csv` reads; labels.csv is a labelled manifest for evaluation.",
    )
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--size", type=int, required=True, help="number of studies")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, default=128, help="square image size in px (default 128)")
    synth.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, at most 8)")
    synth.set_defaults(func=_run_synthesize)


def _run_demo(args: argparse.Namespace) -> int:
    from convirt.demo.report import targets
    from convirt.demo.run import DemoSettings, run_demo

    settings = DemoSettings.quick_settings() if args.quick else DemoSettings()
    for name, value in (
        ("pretrain_size", args.size),
        ("eval_size", args.eval_size),
        ("steps", args.steps),
        ("probe_seeds", args.probe_seeds),
    ):
        if value is not None:
            setattr(settings, name, value)
    settings.seed, settings.workers, settings.config = args.seed, args.workers, args.config
    settings.overrides = list(args.overrides)
    metrics = run_demo(args.out, settings)
    print()
    for key in ("retrieval.text_image.p@10", "retrieval.image_image.p@10", "linear_probe.convirt.auc@0.01",
                "linear_probe.random_init.auc@0.01", "pretrain.final_val_loss", "pretrain.seconds"):  # fmt: skip
        print(f"{key:40s} {metrics[key]}")
    for name, t in targets(metrics).items():
        print(f"target {name:30s} {t['value']} (needs {t['target']}): {'met' if t['met'] else 'NOT met'}")
    print(f"\nexplore the test images in a browser: {metrics['explorer']['command']}")
    return 0


def _run_synthesize(args: argparse.Namespace) -> int:
    from convirt.synthetic.dataset import generate_dataset

    summary = generate_dataset(args.out, args.size, args.seed, args.image_size, args.workers, log=print)
    print(f"pairs:  {summary.pairs}\nlabels: {summary.labels}")
    print(f"next:   convirt prepare csv --input {summary.folder} --table pairs.csv --output PREPARED")
    return 0
