"""Zero-shot classification from text prompts (CLIP-style; beyond the paper) and the class-prompt file format.

A class's embedding is the mean of its prompts' L2-normalised text embeddings (``u``), normalised again. An image
is scored against every class by cosine similarity in the shared space (``v``); the predicted class is the most
similar one, and class probabilities are ``softmax(similarity / temperature)`` with the checkpoint's contrastive
temperature (tau = 0.1 in the paper). Reported: accuracy, balanced accuracy, one-vs-rest ROC AUC per class (the
probability of that class as the score) and their mean, and the confusion matrix.

**Prompt files** (``--prompts``) give text per class, in either form:

- CSV with a class column (``label``, ``class`` or ``Variable``) and a text column (``text``, ``prompt`` or
  ``Text``), one sentence per row: the official ``text_query.csv`` reads as it is;
- YAML mapping each class to a list of sentences (``Pneumonia: [Pneumonia is present., ...]``).

``builtin:NAME`` names a file shipped in ``convirt/resources/`` (``builtin:kermany``: the official CheXpert 8x200
"No Finding" and "Pneumonia" sentences, verbatim, labelled NORMAL and PNEUMONIA). A mapping ``{CLASS: PROMPT_LABEL}``
(``--prompt-map NORMAL="No Finding"``) uses the prompts of ``PROMPT_LABEL`` for the dataset's ``CLASS`` and drops
prompt classes that are not mapped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml

from convirt.analysis.encoders import Embedder
from convirt.errors import ConfigError, ManifestError

LABEL_COLUMNS = ("label", "class", "Variable")
TEXT_COLUMNS = ("text", "prompt", "Text")
BUILTIN_PREFIX = "builtin:"


def builtin_prompt_file(name: str) -> Path:
    """Path of a prompt file shipped with the package (``kermany`` -> ``resources/kermany_text_queries.csv``)."""
    file = resources.files("convirt").joinpath(f"resources/{name}_text_queries.csv")
    if not file.is_file():
        shipped = sorted(
            p.name.removesuffix("_text_queries.csv")
            for p in resources.files("convirt").joinpath("resources").iterdir()
            if p.name.endswith("_text_queries.csv")
        )
        raise ConfigError(f"no built-in prompt file {name!r}; shipped: {shipped}")
    return Path(str(file))


def read_prompts(source: str | os.PathLike, mapping: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Read class prompts (see the module docstring) -> {class: [sentences]} in file order."""
    text = str(source)
    path = builtin_prompt_file(text[len(BUILTIN_PREFIX) :]) if text.startswith(BUILTIN_PREFIX) else Path(source)
    if not path.is_file():
        raise ConfigError(f"prompt file {path} does not exist (CSV with label,text columns, or YAML class: [texts])")
    prompts: dict[str, list[str]] = {}
    if path.suffix.lower() in (".yaml", ".yml"):
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ManifestError(f"prompt file {path} must map each class to a list of sentences")
        for label, sentences in data.items():
            sentences = [sentences] if isinstance(sentences, str) else sentences
            if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
                raise ManifestError(f"prompt file {path}: class {label!r} must have a list of sentences")
            prompts[str(label)] = [s.strip() for s in sentences if s.strip()]
    else:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        label_column = next((c for c in LABEL_COLUMNS if c in frame.columns), None)
        text_column = next((c for c in TEXT_COLUMNS if c in frame.columns), None)
        if label_column is None or text_column is None:
            raise ManifestError(
                f"prompt file {path} needs a class column ({'/'.join(LABEL_COLUMNS)}) and a text column "
                f"({'/'.join(TEXT_COLUMNS)}); found {list(frame.columns)}"
            )
        for label, sentence in zip(frame[label_column], frame[text_column]):
            if sentence.strip():
                prompts.setdefault(label.strip(), []).append(sentence.strip())
    empty = [label for label, sentences in prompts.items() if not sentences]
    if empty or not prompts:
        raise ManifestError(f"prompt file {path}: no sentences for {empty or 'any class'}")
    return apply_prompt_map(prompts, mapping) if mapping else prompts


def apply_prompt_map(prompts: dict[str, list[str]], mapping: dict[str, str]) -> dict[str, list[str]]:
    """{dataset class: prompt label} -> the prompts keyed by dataset class (unmapped prompt classes dropped)."""
    unknown = [label for label in mapping.values() if label not in prompts]
    if unknown:
        raise ConfigError(f"--prompt-map names prompt class(es) {unknown} not in the prompt file ({list(prompts)})")
    return {target: list(prompts[label]) for target, label in mapping.items()}


def parse_prompt_map(items: Sequence[str] | None) -> dict[str, str] | None:
    """``["NORMAL=No Finding", "PNEUMONIA=Pneumonia"]`` -> ``{"NORMAL": "No Finding", ...}``."""
    if not items:
        return None
    mapping = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--prompt-map expects CLASS=PROMPT_LABEL, got {item!r}")
        target, label = item.split("=", 1)
        mapping[target.strip()] = label.strip()
    return mapping


def class_embeddings(embedder: Embedder, prompts: dict[str, list[str]]) -> tuple[list[str], torch.Tensor]:
    """(classes, (C, d)): each class embedding is the normalised mean of its prompts' normalised embeddings."""
    classes = list(prompts)
    texts = [sentence for c in classes for sentence in prompts[c]]
    embedded = F.normalize(embedder.embed_texts(texts).float(), dim=-1)
    rows, start = [], 0
    for c in classes:
        rows.append(embedded[start : start + len(prompts[c])].mean(0))
        start += len(prompts[c])
    return classes, F.normalize(torch.stack(rows), dim=-1)


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
