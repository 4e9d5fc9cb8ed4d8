"""Wall time of the cached-feature linear probe against the paper-recipe linear probe (same encoder, same data).

Both recipes train the same head with the same optimiser, schedule, seeded batches and early stopping; the paper
recipe runs the frozen encoder on every training batch and every validation pass, the cached recipe runs it once
per image and trains on the stored features. The script draws a stratified subset of a labelled dataset (default:
``../shared/data/kermany-pneumonia``), runs ``--seeds`` seeds of each recipe at each ``--fractions`` and prints:

- measured wall times (cached: feature extraction once + all head trainings; paper: all runs) and the speed-up;
- the test AUCs of both (they should agree within noise);
- a projection for a full sweep (fractions x seeds on the whole dataset) from the measured per-image encoder time
  and the epoch counts of a cached run (``--runs-csv``, e.g. a ``runs.csv`` from ``convirt evaluate classify``).

    python benchmarks/linear_probe_speed.py --threads 1
    python benchmarks/linear_probe_speed.py --runs-csv runs/classify/kermany/runs.csv --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from convirt.api import bf16_supported
from convirt.data.sources import load_labelled_dataset
from convirt.evaluation.classification.features import encode_images
from convirt.evaluation.classification.linear import linear_probe_features, linear_probe_images
from convirt.evaluation.classification.runner import encoder_choice, load_encoder
from convirt.evaluation.classification.subsets import label_fraction_subset
from convirt.evaluation.classification.training import EvalSplit, Recipe
from convirt.paths import shared_data_dir


def stratified(manifest, split: str, n: int, seed: int):
    part = manifest.split(split)
    if n >= len(part):
        return part
    keep = label_fraction_subset(manifest.task, part.targets, n / len(part), seed)
    return part.subset(keep)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=f"imagefolder:{shared_data_dir() / 'kermany-pneumonia'}")
    parser.add_argument("--encoder", default="random:resnet18")
    parser.add_argument("--train", type=int, default=128, help="training images drawn (stratified)")
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--test", type=int, default=64)
    parser.add_argument("--fractions", default="1", help="label fractions of the drawn training images")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=5, help="cap, so the paper recipe finishes in minutes")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--no-fast", action="store_true", help="fp32 instead of bf16 autocast + channels_last")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--runs-csv", help="runs.csv of a cached sweep, to project the paper recipe's cost on it")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    fast = not args.no_fast and bf16_supported(device)
    manifest = load_labelled_dataset(args.dataset)
    task = manifest.task
    splits = {
        "train": stratified(manifest, "train", args.train, 0),
        "val": stratified(manifest, "val", args.val, 1),
        "test": stratified(manifest, "test", args.test, 2),
    }
    encoder = load_encoder(encoder_choice(args.encoder))
    recipe = Recipe(max_epochs=args.max_epochs)
    fractions = [float(f) for f in args.fractions.split(",")]

    started = time.perf_counter()
    features = {k: encode_images(encoder, list(v.images), args.image_size, 64, device, fast) for k, v in splits.items()}
    extraction = time.perf_counter() - started
    n_images = sum(len(v) for v in splits.values())
    per_image = extraction / n_images

    def split(name, indices=None, with_features=True):
        part = splits[name]
        rows = np.arange(len(part)) if indices is None else indices
        return EvalSplit(
            part.targets[rows], None, [part.images[int(i)] for i in rows],
            features[name][torch.as_tensor(rows)] if with_features else None,
        )  # fmt: skip

    rows = []
    for fraction in fractions:
        for seed in range(args.seeds):
            indices = label_fraction_subset(task, splits["train"].targets, fraction, seed)
            cached = linear_probe_features(task, split("train", indices), split("val"), split("test"), recipe, seed)
            paper = linear_probe_images(
                task, encoder, split("train", indices, False), split("val", None, False), split("test", None, False),
                recipe, seed, args.image_size, device, fast,
            )  # fmt: skip
            rows.append(
                {
                    "fraction": fraction,
                    "seed": seed,
                    "n_train": len(indices),
                    "cached_s": cached.seconds,
                    "paper_s": paper.seconds,
                    "cached_epochs": cached.epochs,
                    "paper_epochs": paper.epochs,
                    "cached_auc": cached.test.value,
                    "paper_auc": paper.test.value,
                }
            )
            print(
                f"fraction {fraction:g} seed {seed}: cached {cached.seconds:.2f} s ({cached.epochs} epochs, "
                f"AUC {cached.test.value:.4f}) | paper {paper.seconds:.1f} s ({paper.epochs} epochs, "
                f"AUC {paper.test.value:.4f})",
                file=sys.stderr,
            )
    table = pd.DataFrame(rows)
    cached_total = extraction + table["cached_s"].sum()
    paper_total = table["paper_s"].sum()
    print(
        f"\nEncoder {args.encoder}, {args.image_size} px, {'bf16 + channels_last' if fast else 'fp32'}, "
        f"{torch.get_num_threads()} CPU thread(s); train/val/test = {len(splits['train'])}/{len(splits['val'])}/"
        f"{len(splits['test'])} images of {task.name}; fractions {fractions} x {args.seeds} seeds; at most "
        f"{args.max_epochs} epochs.\n"
    )
    print("| recipe | runs | feature extraction (s) | head training (s) | total (s) | speed-up | mean test AUC |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| paper (encoder every step) | {len(table)} | — | {paper_total:.1f} | {paper_total:.1f} | 1.0x | "
        f"{table['paper_auc'].mean():.4f} |"
    )
    print(
        f"| cached features | {len(table)} | {extraction:.1f} | {table['cached_s'].sum():.2f} | {cached_total:.1f} | "
        f"{paper_total / cached_total:.1f}x | {table['cached_auc'].mean():.4f} |"
    )
    difference = (table["cached_auc"] - table["paper_auc"]).abs().max()
    print(f"\nmax |AUC difference| between recipes over runs: {difference:.4f}")
    print(f"encoder time per image (extraction): {per_image * 1000:.0f} ms")
    if args.runs_csv:
        runs = pd.read_csv(args.runs_csv)
        runs = runs[runs["encoder"] == runs["encoder"].iloc[0]]
        forwards = (runs["epochs"] * (runs["n_train"] + runs["n_val"]) + runs["n_test"]).sum()
        sweep_images = int(runs["n_train"].max() + runs["n_val"].iloc[0] + runs["n_test"].iloc[0])
        cached_sweep = sweep_images * per_image + runs["seconds"].sum()
        paper_sweep = forwards * per_image
        print(
            f"\nProjection for {Path(args.runs_csv)} ({len(runs)} runs of {runs['encoder'].iloc[0]}): the paper "
            f"recipe needs {forwards:,} encoder passes ~ {paper_sweep / 3600:.1f} h; the cached recipe "
            f"{sweep_images:,} passes + {runs['seconds'].sum():.0f} s of head training ~ {cached_sweep / 60:.1f} min "
            f"({paper_sweep / cached_sweep:.0f}x)."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
