"""Zero-shot classification from text prompts (CLIP-style; beyond the paper).

A class's embedding is the mean of its prompts' L2-normalised text embeddings (``u``), normalised again. An image
is scored against every class by cosine similarity in the shared space (``v``); the predicted class is the most
similar one, and class probabilities are ``softmax(similarity / temperature)`` with the checkpoint's contrastive
temperature (tau = 0.1 in the paper). Reported: accuracy, balanced accuracy, one-vs-rest ROC AUC per class (the
probability of that class as the score) and their mean, and the confusion matrix.

Prompt files are read by :mod:`convirt.encoders.prompts`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from convirt.encoders.embedders import Embedder
from convirt.encoders.prompts import class_embeddings
from convirt.errors import ConfigError


def zero_shot_scores(
    image_embeddings: torch.Tensor, class_embeddings_: torch.Tensor, temperature: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities (N, C) and class probabilities softmax(similarity / temperature)."""
    similarity = F.normalize(image_embeddings.float(), dim=-1) @ F.normalize(class_embeddings_.float(), dim=-1).T
    return similarity, torch.softmax(similarity / temperature, dim=-1)


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for the ``positive`` mask; None when one side is empty (AUC undefined)."""
    from sklearn.metrics import roc_auc_score

    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, scores))


@dataclass
class ZeroShotResult:
    encoder: str
    classes: list[str]
    n_images: int
    accuracy: float
    balanced_accuracy: float
    auc_per_class: dict[str, float | None]
    mean_auc: float | None
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    temperature: float
    probabilities: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "encoder": self.encoder,
            "classes": self.classes,
            "n_images": self.n_images,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "auc_per_class": self.auc_per_class,
            "mean_auc": self.mean_auc,
            "confusion_matrix": {"rows_true_columns_predicted": self.classes, "counts": self.confusion},
            "temperature": self.temperature,
        }


def zero_shot_metrics(
    probabilities: torch.Tensor | np.ndarray,
    labels: Sequence[str],
    classes: Sequence[str],
    encoder: str = "",
    temperature: float = 0.1,
) -> ZeroShotResult:
    """Accuracy, balanced accuracy, one-vs-rest AUC per class and mean AUC, confusion matrix."""
    probs = np.asarray(probabilities, dtype=np.float64)
    classes = list(classes)
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ConfigError(f"images have class(es) {unknown} without prompts (prompt classes: {classes})")
    truth = np.array([classes.index(x) for x in labels])
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    present = confusion.sum(axis=1) > 0
    recall = np.diag(confusion)[present] / confusion.sum(axis=1)[present]
    aucs = {c: _binary_auc(probs[:, i], truth == i) for i, c in enumerate(classes)}
    valid = [a for a in aucs.values() if a is not None]
    return ZeroShotResult(
        encoder,
        classes,
        len(truth),
        float((predicted == truth).mean()),
        float(recall.mean()),
        aucs,
        float(np.mean(valid)) if valid else None,
        confusion.tolist(),
        temperature,
        probs,
    )


def evaluate_zeroshot(
    embedders: Sequence[Embedder],
    paths: Sequence[str | os.PathLike],
    labels: Sequence[str],
    prompts: dict[str, list[str]],
    temperature: float | None = None,
    batch_size: int = 32,
) -> list[ZeroShotResult]:
    """Zero-shot classification of ``paths`` (true classes ``labels``) with each encoder that has a text tower."""
    results = []
    for embedder in embedders:
        if not embedder.has_text:
            raise ConfigError(f"zero-shot needs text embeddings; encoder {embedder.label!r} has no text tower")
        classes, class_emb = class_embeddings(embedder, prompts)
        images = embedder.embed_images(list(paths), ["v"], batch_size)["v"]
        tau = float(temperature if temperature is not None else getattr(embedder, "temperature", 0.1))
        _, probs = zero_shot_scores(images, class_emb, tau)
        results.append(zero_shot_metrics(probs, labels, classes, embedder.label, tau))
    return results


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def zeroshot_markdown(
    results: Sequence[ZeroShotResult], prompts: dict[str, list[str]], command: str = "", data: dict | None = None
) -> str:
    classes = results[0].classes if results else list(prompts)
    lines = ["# Zero-shot classification from text prompts", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [
        "Class embedding = normalised mean of its prompts' text embeddings; image score = cosine similarity in the "
        "shared space; probabilities = softmax(similarity / tau). Percent.",
        "",
        "| Encoder | images | accuracy | balanced accuracy | mean AUC | "
        + " | ".join(f"AUC {c}" for c in classes)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(classes),
    ]
    for r in results:
        lines.append(
            f"| {r.encoder} | {r.n_images} | {_pct(r.accuracy)} | {_pct(r.balanced_accuracy)} | {_pct(r.mean_auc)} | "
            + " | ".join(_pct(r.auc_per_class[c]) for c in classes)
            + " |"
        )
    lines.append("")
    for r in results:
        lines += [f"Confusion matrix, {r.encoder} (rows true, columns predicted):", ""]
        lines += ["| | " + " | ".join(r.classes) + " |", "|---|" + "---|" * len(r.classes)]
        lines += [f"| {c} | " + " | ".join(str(n) for n in row) + " |" for c, row in zip(r.classes, r.confusion)]
        lines.append("")
    lines += ["Prompts:", ""]
    for c, sentences in prompts.items():
        lines += [f"- {c}: " + " / ".join(f'"{s}"' for s in sentences)]
    if data:
        lines += ["", "Data: " + ", ".join(f"{k}={v}" for k, v in data.items())]
    return "\n".join(lines) + "\n"


def write_zeroshot_report(
    results: Sequence[ZeroShotResult],
    prompts: dict[str, list[str]],
    output_dir: str | os.PathLike,
    command: str = "",
    data: dict | None = None,
) -> dict[str, Path]:
    """Write ``zeroshot.csv`` (one row per encoder and class), ``zeroshot.md`` and ``metrics.json``."""
    from convirt.fileio import atomic_open, atomic_write_json, atomic_write_text

    out = Path(output_dir)
    files = {"csv": out / "zeroshot.csv", "markdown": out / "zeroshot.md", "metrics": out / "metrics.json"}
    rows = []
    for r in results:
        for c in r.classes:
            rows.append(
                {
                    "encoder": r.encoder,
                    "class": c,
                    "auc": r.auc_per_class[c],
                    "accuracy": r.accuracy,
                    "balanced_accuracy": r.balanced_accuracy,
                    "mean_auc": r.mean_auc,
                    "n_images": r.n_images,
                }
            )
    with atomic_open(files["csv"]) as handle:
        pd.DataFrame(rows).to_csv(handle, index=False)
    atomic_write_text(files["markdown"], zeroshot_markdown(results, prompts, command, data))
    atomic_write_json(
        files["metrics"],
        {"command": command, "data": data or {}, "prompts": prompts, "results": [r.to_dict() for r in results]},
    )
    return files
