"""Result tables laid out like the paper's Table 1, ROC curve figures, and ``metrics.json``."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from convirt.data.labelled import LabelledTask
from convirt.evaluation.paper_numbers import CLASSIFICATION, CLASSIFICATION_METRIC
from convirt.fileio import atomic_savefig

METRIC_NAMES = {"auc": "AUC", "mean_auc": "mean AUC", "accuracy": "accuracy"}
PAPER_INIT_NAMES = {"convirt": "ConVIRT", "imagenet": "ImageNet", "random": "Random"}


def fraction_label(fraction: float) -> str:
    percent = float(fraction) * 100
    return f"{percent:g} %"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "encoder"


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample standard deviation (ddof=1) and count of the test metric (in percent) per encoder and fraction."""
    rows = []
    for (encoder, fraction), group in runs.groupby(["encoder", "fraction"], sort=False):
        values = group["test"].to_numpy(dtype=float) * 100
        finite = values[~np.isnan(values)]
        rows.append(
            {
                "encoder": encoder,
                "init": group["init"].iloc[0],
                "fraction": float(fraction),
                "mean": float(finite.mean()) if len(finite) else math.nan,
                "std": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
                "runs": len(finite),
                "n_train_mean": float(group["n_train"].mean()),
            }
        )
    return pd.DataFrame(rows)


def paper_values(paper_key: str | None, protocol: str, init: str) -> dict[float, float] | None:
    if not paper_key:
        return None
    return CLASSIFICATION.get((paper_key, protocol, init))


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def markdown_table(summary: pd.DataFrame, task: LabelledTask, protocol: str, fractions: Sequence[float]) -> str:
    """Table 1 layout: one row per encoder, one column per label fraction (mean ± std over seeds, percent); with
    the paper's number beside ours when the dataset is one of the paper's four."""
    with_paper = task.paper_key is not None and any(
        paper_values(task.paper_key, protocol, init) for init in summary["init"].unique()
    )
    header = ["Encoder"]
    for fraction in fractions:
        header.append(fraction_label(fraction))
        if with_paper:
            header.append(f"paper {fraction_label(fraction)}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for encoder, group in summary.groupby("encoder", sort=False):
        init = group["init"].iloc[0]
        paper = paper_values(task.paper_key, protocol, init) or {}
        cells = [f"{encoder} ({init})" if init not in encoder else encoder]
        for fraction in fractions:
            row = group[np.isclose(group["fraction"], fraction)]
            cells.append(_cell(row["mean"].iloc[0], row["std"].iloc[0]) if len(row) else "n/a")
            if with_paper:
                value = next((v for f, v in paper.items() if math.isclose(f, fraction)), None)
                cells.append("—" if value is None else f"{value:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_reference_note(task: LabelledTask, protocol: str) -> str:
    """For a dataset outside the paper: the paper's pneumonia (RSNA) numbers, for orientation only."""
    if task.paper_key:
        return ""
    rows = []
    for init in ("convirt", "imagenet", "random"):
        values = CLASSIFICATION.get(("rsna", protocol, init))
        if values:
            cells = ", ".join(f"{fraction_label(f)}: {v:.1f}" for f, v in values.items())
            rows.append(f"{PAPER_INIT_NAMES[init]} {cells}")
    if not rows:
        return ""
    return (
        f"This dataset is not one of the paper's four, so no paper number sits beside ours. For orientation only, "
        f"the paper's {protocol} results on RSNA pneumonia ({CLASSIFICATION_METRIC['rsna']}, ResNet50, pretrained on "
        f"MIMIC-CXR for ConVIRT) are: " + "; ".join(rows) + "."
    )


def plot_roc(curves: Sequence[tuple[int, dict]], task: LabelledTask, title: str, path: str | Path) -> None:
    """One panel per positive class / label; one line per seed (AUC in the legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [task.class_names[1]] if task.kind == "binary" else list(task.class_names)
    columns = min(len(names), 3)
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.0 * rows), squeeze=False)
    for panel, name in enumerate(names):
        ax = axes[panel // columns][panel % columns]
        for seed, per_class in curves:
            if name in per_class:
                fpr, tpr, auc = per_class[name]
                ax.plot(fpr, tpr, linewidth=1.2, label=f"seed {seed} (AUC {auc:.3f})")
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(name if task.kind != "binary" else f"{name} vs {task.class_names[0]}")
        ax.legend(loc="lower right", fontsize=7)
    for panel in range(len(names), rows * columns):
        axes[panel // columns][panel % columns].axis("off")
    import textwrap

    figure.suptitle("\n".join(textwrap.wrap(title, 48 * columns)), fontsize=9)
    figure.tight_layout()
    atomic_savefig(figure, path, dpi=110)
    plt.close(figure)
