"""Figures and tables of docs/results/real-covid.md from the runs' own output files.

    python docs/results/real-covid/figures.py --runs runs/real-covid --out docs/results/real-covid

Reads ``classify-*/runs.csv`` (from `convirt evaluate classify`) and ``pretrain*/logs/*/metrics.csv`` (from
`convirt pretrain`); writes ``data_efficiency.png`` (test metric against label fraction, one line per encoder, error
bars = sample std over seeds), ``loss_curves.png`` (train and validation loss of every final pretraining run),
``classify-runs.csv`` (every downstream run, all tasks) and ``summary.md`` (mean ± std tables).
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

ORDER = ["ConVIRT", "ImageNet init", "random init"]
COLORS = {"ConVIRT": "#d94801", "ImageNet init": "#2171b5", "random init": "#737373"}


def encoder_family(name: str) -> str:
    """``ConVIRT seed 1`` -> ``ConVIRT``: the pretraining seeds of one recipe are one line."""
    return next((f for f in ORDER if name.startswith(f)), name)


def read_runs(runs: Path) -> pd.DataFrame:
    frames = []
    for path in sorted(runs.glob("classify-*/runs.csv")):
        frame = pd.read_csv(path)
        # classify-kermany-finetune-{1,10}-{convirt,imagenet,random}[-seedN]: one experiment, run as several commands
        frame["experiment"] = re.sub(
            r"(-(1|10))?-(convirt|imagenet|random)(-seed\d+)?$", "", path.parent.name.removeprefix("classify-")
        )
        frames.append(frame)
    if not frames:
        raise SystemExit(f"no classify-*/runs.csv under {runs}")
    return pd.concat(frames, ignore_index=True)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean ± sample std over seeds per encoder, plus one row pooling all ConVIRT pretraining seeds' runs."""
    convirt = frame[frame["encoder"].map(encoder_family) == "ConVIRT"]
    seeds = convirt.groupby(["experiment", "protocol"])["encoder"].transform("nunique")
    pooled = convirt[seeds > 1].assign(encoder=lambda f: "ConVIRT, pretraining seeds pooled")
    frame = pd.concat([frame, pooled], ignore_index=True)
    grouped = frame.groupby(["experiment", "protocol", "encoder", "fraction"])["test"]
    table = grouped.agg(mean="mean", std=lambda s: s.std(ddof=1), n="count").reset_index()
    table["cell"] = [
        f"{100 * m:.1f} ± {100 * s:.1f}" if n > 1 else f"{100 * m:.1f}"
        for m, s, n in zip(table["mean"], table["std"].fillna(0), table["n"], strict=True)
    ]
    return table


def markdown(table: pd.DataFrame) -> str:
    lines = []
    for (experiment, protocol), part in table.groupby(["experiment", "protocol"], sort=False):
        fractions = sorted(part["fraction"].unique())
        lines += [f"### {experiment} ({protocol})", ""]
        lines.append("| encoder | " + " | ".join(f"{100 * f:g} %" for f in fractions) + " |")
        lines.append("|---|" + "---|" * len(fractions))
        for encoder in sorted(part["encoder"].unique(), key=lambda e: (ORDER.index(encoder_family(e)), e)):
            row = part[part["encoder"] == encoder].set_index("fraction")["cell"]
            lines.append(f"| {encoder} | " + " | ".join(row.get(f, "–") for f in fractions) + " |")
        lines.append("")
    return "\n".join(lines)


def data_efficiency(frame: pd.DataFrame, prefix: str, path: Path) -> None:
    """One panel per protocol; ConVIRT pretraining seeds pooled (each seed's probe seeds are all points)."""
    part = frame[frame["experiment"].str.startswith(prefix)].copy()
    part["family"] = part["encoder"].map(encoder_family)
    protocols = [p for p in ("linear", "finetune") if p in set(part["protocol"])]
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.2 * len(protocols), 4.0), squeeze=False)
    for axis, protocol in zip(axes[0], protocols, strict=True):
        sub = part[part["protocol"] == protocol]
        for k, family in enumerate(f for f in ORDER if f in set(sub["family"])):
            stats = sub[sub["family"] == family].groupby("fraction")["test"].agg(["mean", "std", "count"])
            x = [f * 100 * (1 + 0.04 * (k - 1)) for f in stats.index]  # a small offset so error bars do not overlap
            label = f"{family} (n={int(stats['count'].min())} per fraction)"
            axis.errorbar(x, 100 * stats["mean"], yerr=100 * stats["std"].fillna(0), marker="o", capsize=3,
                          color=COLORS.get(family), label=label)  # fmt: skip
        axis.set_xscale("log")
        axis.set_xlim(0.7, 140)  # keep the 1 % and 100 % points (offset for the error bars) inside the panel
        axis.set_xticks([1, 10, 100], ["1 %", "10 %", "100 %"])
        axis.set_xlabel("labelled training images (fraction)")
        axis.set_ylabel("test AUC (%)")
        axis.set_title(f"Kermany pneumonia, {'linear probe' if protocol == 'linear' else 'fine-tuning'}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def loss_curves(runs: Path, path: Path) -> bool:
    folders = sorted(p for p in runs.glob("pretrain*") if (p / "logs").is_dir())
    if not folders:
        return False
    fig, axis = plt.subplots(figsize=(6.4, 4.0))
    for k, folder in enumerate(folders):
        metrics = pd.concat([pd.read_csv(f) for f in sorted(folder.glob("logs/*/metrics.csv"))], ignore_index=True)
        train = metrics.dropna(subset=["train/loss"]).groupby("step")["train/loss"].last()
        val = metrics.dropna(subset=["val/loss"]).groupby("step")["val/loss"].last()
        color = plt.cm.tab10(k)
        axis.plot(train.index, train.rolling(5, min_periods=1).mean(), color=color, alpha=0.6, linewidth=1,
                  label=f"{folder.name} train (5-log mean)")  # fmt: skip
        axis.plot(val.index, val.values, "o-", color=color, linewidth=1.8, markersize=3, label=f"{folder.name} val")
    axis.axhline(math.log(32), color="black", linestyle=":", linewidth=1, label="chance, ln 32")
    axis.set_xlabel("step (batch 32)")
    axis.set_ylabel("ConVIRT loss")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def frame_markdown(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += [
        "| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def tuning_table(runs: Path) -> pd.DataFrame | None:
    """Every tuning try: its overrides, validation-loss curve and best, and the tuning probe (Kermany validation)."""
    rows = []
    for probe in sorted((runs / "tune-probe").glob("*/runs.csv")):
        name, size = probe.parent.name.rsplit("-", 1)
        scores = pd.read_csv(probe).groupby(["encoder", "fraction"])["test"].agg(["mean", "std"])
        for (encoder, fraction), (mean, std) in scores.iterrows():
            label = f"{encoder}{name.removeprefix('reference')}" if name.startswith("reference") else name
            rows.append({"try": label, "probe_size": int(size),
                         "fraction": fraction, "auc": f"{100 * mean:.1f} ± {100 * std:.1f}"})  # fmt: skip
    if not rows:
        return None
    table = pd.DataFrame(rows).pivot_table(index=["try", "probe_size"], columns="fraction", values="auc",
                                          aggfunc="first").reset_index()  # fmt: skip
    table.columns = [f"tune AUC {100 * c:g} %" if isinstance(c, float) else c for c in table.columns]
    curves, best = [], []
    for name in table["try"]:
        folder = runs / "tune" / name
        logs = sorted(folder.glob("logs/*/metrics.csv"))
        if not logs:
            curves.append("")
            best.append("")
            continue
        metrics = pd.read_csv(logs[-1])
        val = metrics.dropna(subset=["val/loss"]).groupby("step")["val/loss"].last()
        curves.append(" ".join(f"{v:.3f}" for v in val.values))
        best.append(f"{val.min():.3f} @ {val.idxmin() + 1}")
    table["val loss at each evaluation"] = curves
    table["best val loss @ step"] = best
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/real-covid")
    parser.add_argument("--out", default="docs/results/real-covid")
    parser.add_argument("--experiment", default="kermany", help="classify-<experiment>* drawn in data_efficiency.png")
    args = parser.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame = read_runs(runs)
    frame.to_csv(out / "classify-runs.csv", index=False)
    table = summary_table(frame)
    (out / "summary.md").write_text(markdown(table))
    if frame["experiment"].str.startswith(args.experiment).any():
        data_efficiency(frame, args.experiment, out / "data_efficiency.png")
    loss_curves(runs, out / "loss_curves.png")
    tuning = tuning_table(runs)
    if tuning is not None:
        tuning.to_csv(out / "tuning.csv", index=False)
        (out / "tuning.md").write_text(frame_markdown(tuning))
        print(frame_markdown(tuning))
    print(markdown(table))


if __name__ == "__main__":
    main()
