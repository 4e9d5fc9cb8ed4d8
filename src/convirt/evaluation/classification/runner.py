"""The whole classification evaluation: encoders x label fractions x seeds, then tables, curves and metrics.

>>> manifest = load_labelled_dataset("imagefolder:../shared/data/kermany-pneumonia")
>>> settings = ClassificationSettings(protocol="linear", recipe="features", fractions=(0.01, 0.1, 1.0), seeds=5)
>>> runs = evaluate_classification(manifest, ["random:resnet18", "runs/x/checkpoints/best.ckpt"], settings, "out/")

Writes into the output folder: ``runs.csv`` (one row per encoder x fraction x seed, rewritten after every run),
``predictions/<run_key>.npy`` (each run's test probabilities), ``summary.md`` (Table 1 layout, mean ± std over
seeds, the paper's numbers beside ours for the paper's datasets), ``metrics.json`` (settings, dataset, encoders,
summary and runs), ``roc/<encoder>-<fraction>.png`` (test ROC curves of every seed) and ``manifest.csv`` (+
``.task.json``: the exact labelled manifest, splits included). With ``save_encoders`` (fine-tuning), each run's
fine-tuned encoder is written as an export folder.

**Resumable, run by run.** Each run has a ``run_key``: a hash of everything its result depends on (the settings
except the list of fractions and seeds, the labelled data with its splits, the encoder's weight fingerprint, the
fraction and the seed). A run whose key is already in the output's ``runs.csv``, with its predictions file, is
reused instead of trained again, so a killed evaluation continues where it stopped, and adding an encoder or a
fraction to a finished evaluation trains only the new runs. Rows of other settings are dropped from ``runs.csv``.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from convirt.data.labelled import LabelledManifest, write_labelled_manifest
from convirt.encoders.embedders import encoder_fingerprint
from convirt.encoders.export import export_fine_tuned
from convirt.encoders.spec import EncoderSpec
from convirt.errors import ConfigError, ManifestError
from convirt.evaluation.classification.features import cached_features
from convirt.evaluation.classification.finetune import finetune
from convirt.evaluation.classification.linear import linear_probe_features, linear_probe_images
from convirt.evaluation.classification.metrics import aggregate_by_group, roc_auc, roc_curves
from convirt.evaluation.classification.report import (
    fraction_label,
    markdown_table,
    paper_reference_note,
    paper_values,
    plot_roc,
    slug,
    summarize,
)
from convirt.evaluation.classification.subsets import label_fraction_subset
from convirt.evaluation.classification.training import EvalSplit, Recipe, RunOutcome
from convirt.fileio import atomic_open, atomic_write_json, atomic_write_text
from convirt.models.image import ImageEncoder
from convirt.runtime import bf16_supported, default_device

PROTOCOLS = ("linear", "finetune")
RECIPES = ("features", "paper")


@dataclass
class EncoderChoice:
    """An encoder to evaluate: its specification, a display name, and its kind of initialisation."""

    spec: EncoderSpec | str
    name: str
    init: str  # random | imagenet | convirt (or the baseline objective of a checkpoint) | custom

    def __post_init__(self) -> None:
        self.spec = EncoderSpec.parse(self.spec)

    def to_dict(self) -> dict[str, str]:
        return {"spec": str(self.spec), "name": self.name, "init": self.init}


def encoder_choice(spec: str | EncoderSpec, name: str | None = None) -> EncoderChoice:
    """An encoder spec (``random:NAME``, ``imagenet:NAME``, ``.ckpt``/export folder, ``NAME=PATH``) to evaluate."""
    parsed = EncoderSpec.parse(spec)
    return EncoderChoice(parsed, name or parsed.text, parsed.init)


def load_encoder(choice: EncoderChoice, seed: int = 0) -> ImageEncoder:
    """Load the encoder; random initialisation is drawn from ``seed`` so runs are reproducible."""
    return choice.spec.image_encoder(seed).float().eval()  # type: ignore[union-attr]


@dataclass
class ClassificationSettings:
    """Everything that defines an evaluation besides the data and the encoders."""

    protocol: str = "linear"  # linear | finetune
    recipe: str = "features"  # linear only: features (cached) | paper (encoder runs every step)
    fractions: Sequence[float] = (0.01, 0.1, 1.0)
    seeds: int | Sequence[int] = 5  # a count (seeds 0..n-1) or explicit seeds
    image_size: int = 224
    device: str | None = None
    fast: bool = True  # bf16 autocast + channels_last where supported
    workers: int = 0
    cache_dir: str | None = None  # default: <output>/features
    encoder_seed: int = 0  # random-init encoders
    training: Recipe = field(default_factory=Recipe)
    save_encoders: str | None = None  # fine-tuning: write each fine-tuned encoder as an export folder in here

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, not {self.protocol!r}")
        if self.recipe not in RECIPES:
            raise ConfigError(f"linear-probe recipe must be one of {RECIPES}, not {self.recipe!r}")
        self.fractions = tuple(float(f) for f in self.fractions)
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ConfigError(f"label fractions must be in (0, 1], got {list(self.fractions)}")
        if isinstance(self.seeds, int):
            if self.seeds < 1:
                raise ConfigError("the number of seeds must be at least 1")
            self.seeds = tuple(range(self.seeds))
        self.seeds = tuple(int(s) for s in self.seeds)
        if self.save_encoders and self.protocol != "finetune":
            raise ConfigError("saving encoders keeps fine-tuned encoders: it needs the finetune protocol")
        if self.training.standardize and (self.protocol, self.recipe) != ("linear", "features"):
            raise ConfigError(
                "feature standardisation is for the linear probe on cached features only", setting="standardize"
            )

    @property
    def method(self) -> str:
        if self.protocol == "finetune":
            return "fine-tune"
        if self.recipe == "paper":
            return "linear probe (paper recipe)"
        features = "cached, standardised features" if self.training.standardize else "cached features"
        return f"linear probe ({features})"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["training"] = self.training.to_dict()
        return data


def scoring_groups(manifest: LabelledManifest) -> list[str] | None:
    level = manifest.task.scoring_level
    if level == "study":
        return list(manifest.study_ids)
    if level == "patient":
        return list(manifest.patient_ids)
    return None


def _split(manifest: LabelledManifest, name: str) -> LabelledManifest:
    part = manifest.split(name)
    if len(part) == 0:
        raise ManifestError(f"the dataset has no {name} images ({manifest.counts()}); classification needs all three")
    return part


def _subset_id(indices: np.ndarray) -> str:
    return hashlib.sha1(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:10]


def dataset_key(manifest: LabelledManifest) -> str:
    """A hash of the labelled data a run depends on: task, images, splits and targets."""
    digest = hashlib.sha1(json.dumps(manifest.task.to_dict(), sort_keys=True).encode())
    for column in (manifest.images, manifest.splits):
        digest.update("\0".join(str(x) for x in column).encode())
    digest.update(np.ascontiguousarray(manifest.targets, dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


def run_key(settings: ClassificationSettings, device: torch.device, fast: bool, data: str, fingerprint: str,
            fraction: float, seed: int) -> str:  # fmt: skip
    """The identity of one run's result (see the module docstring): equal keys give equal results."""
    varying = {k: v for k, v in settings.to_dict().items() if k not in ("fractions", "seeds", "workers", "cache_dir",
                                                                          "device", "fast")}  # fmt: skip
    identity = {"settings": varying, "device": device.type, "fast": fast, "data": data, "encoder": fingerprint,
                "fraction": float(fraction), "seed": int(seed)}  # fmt: skip
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finished_runs(out: Path | None) -> dict[str, tuple[dict, np.ndarray]]:
    """The runs of an earlier (possibly killed) evaluation into ``out``: run_key -> (record, test probabilities)."""
    if out is None or not (out / "runs.csv").is_file():
        return {}
    try:
        frame = pd.read_csv(out / "runs.csv", dtype={"run_key": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return {}
    finished = {}
    for record in frame.to_dict(orient="records") if "run_key" in frame.columns else []:
        file = out / "predictions" / f"{record['run_key']}.npy"
        if file.is_file():
            finished[str(record["run_key"])] = (record, np.load(file, allow_pickle=False))
    return finished


def _save_predictions(out: Path, key: str, probabilities: np.ndarray) -> None:
    with atomic_open(out / "predictions" / f"{key}.npy", "wb", encoding=None) as handle:
        np.save(handle, np.asarray(probabilities), allow_pickle=False)


def _curves(task, split: EvalSplit, probabilities: np.ndarray) -> dict:
    targets = split.targets
    if split.groups is not None:
        _, targets, probabilities = aggregate_by_group(task, targets, probabilities, split.groups)
    out = {}
    for name, (fpr, tpr) in roc_curves(task, targets, probabilities).items():
        if task.kind == "binary":
            y, s = targets, probabilities
        elif task.kind == "multilabel":
            k = task.class_names.index(name)
            y, s = targets[:, k], probabilities[:, k]
        else:
            k = task.class_names.index(name)
            y, s = (targets == k).astype(float), probabilities[:, k]
        out[name] = (fpr, tpr, roc_auc(y, s))
    return out


def evaluate_classification(
    manifest: LabelledManifest,
    encoders: Sequence[str | EncoderChoice],
    settings: ClassificationSettings | None = None,
    output_dir: str | Path | None = None,
    command: str | None = None,
    log: Callable[[str], None] | None = print,
) -> pd.DataFrame:
    """Run every encoder x fraction x seed; returns the per-run table (and writes the outputs when asked)."""
    settings = settings or ClassificationSettings()
    log = log or (lambda message: None)
    task = manifest.task
    choices = [e if isinstance(e, EncoderChoice) else encoder_choice(e) for e in encoders]
    if not choices:
        raise ConfigError("no encoder to evaluate (give at least one)", setting="encoder")
    if len({c.name for c in choices}) != len(choices):
        raise ConfigError(f"encoder names must be distinct: {[c.name for c in choices]}")
    device = torch.device(settings.device) if settings.device else default_device()
    fast = settings.fast and bf16_supported(device)
    out = Path(output_dir) if output_dir is not None else None
    cache_dir = settings.cache_dir or (str(out / "features") if out is not None else None)
    finished = _finished_runs(out)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_labelled_manifest(manifest, out / "manifest.csv")
    data = dataset_key(manifest)
    splits = {name: _split(manifest, name) for name in ("train", "val", "test")}
    groups = {name: scoring_groups(part) for name, part in splits.items()}
    subset_groups = groups["train"]
    log(
        f"{task.name}: {task.kind}, {task.metric} at {task.scoring_level} level; "
        f"train/val/test = {len(splits['train'])}/{len(splits['val'])}/{len(splits['test'])}; {settings.method}; "
        f"fractions {[fraction_label(f) for f in settings.fractions]} x seeds {list(settings.seeds)}; "
        f"device {device}{' (bf16)' if fast else ''}"
    )
    records: list[dict] = []
    encoder_info: list[dict] = []
    curves: dict[tuple[str, float], list] = {}
    loaded = [load_encoder(choice, settings.encoder_seed) for choice in choices]  # fail early on a bad spec
    for choice, encoder in zip(choices, loaded):
        started = time.perf_counter()
        fingerprint = encoder_fingerprint(encoder)
        info = {**choice.to_dict(), "architecture": encoder.name, "feature_dim": encoder.feature_dim}
        info["fingerprint"] = fingerprint
        features: dict[str, torch.Tensor] = {}
        if settings.protocol == "linear" and settings.recipe == "features":
            for name, part in splits.items():
                features[name] = cached_features(
                    encoder, list(part.images), cache_dir, settings.image_size, fingerprint,
                    batch_size=settings.training.batch_size, device=device, fast=fast, workers=settings.workers,
                    progress=True, description=f"{choice.name} {name}",
                )  # fmt: skip
            info["feature_seconds"] = round(time.perf_counter() - started, 2)
            log(f"{choice.name}: features {tuple(features['train'].shape)} in {info['feature_seconds']:.0f} s")
        encoder_info.append(info)

        def evaluation_split(name: str, indices: np.ndarray | None = None, features=features) -> EvalSplit:
            part = splits[name]
            rows = np.arange(len(part)) if indices is None else indices
            g = groups[name]
            return EvalSplit(
                targets=part.targets[rows],
                groups=None if g is None else [g[i] for i in rows],
                images=[part.images[int(i)] for i in rows],
                features=features[name][torch.as_tensor(rows)] if name in features else None,
            )

        val_split, test_split = evaluation_split("val"), evaluation_split("test")
        for fraction in settings.fractions:
            for seed in settings.seeds:
                key = run_key(settings, device, fast, data, fingerprint, fraction, seed)
                if key in finished:
                    record, probabilities = finished[key]
                    record = {**record, "encoder": choice.name, "init": choice.init}
                    records.append(record)
                    curves.setdefault((choice.name, fraction), []).append(
                        (seed, _curves(task, test_split, probabilities))
                    )
                    log(f"{choice.name} {fraction_label(fraction)} seed {seed}: finished earlier (runs.csv), reused")
                    continue
                indices = label_fraction_subset(task, splits["train"].targets, fraction, seed, subset_groups)
                train_split = evaluation_split("train", indices)
                outcome = _run_one(task, choice, encoder, settings, train_split, val_split, test_split, seed, device,
                                   fast)  # fmt: skip
                record = _record(task, choice, settings, fraction, seed, train_split, val_split, test_split, outcome)
                record["subset_id"] = _subset_id(indices)
                if settings.save_encoders:
                    record["saved_encoder"] = _save_encoder(task, choice, settings, fraction, seed, record, outcome)
                    log(f"{choice.name} {fraction_label(fraction)} seed {seed}: saved {record['saved_encoder']}")
                record["run_key"] = key
                outcome.encoder = None
                records.append(record)
                curves.setdefault((choice.name, fraction), []).append(
                    (seed, _curves(task, test_split, outcome.test_probabilities))
                )
                if out is not None:
                    _save_predictions(out, key, outcome.test_probabilities)
                    _write_runs(pd.DataFrame(records), out / "runs.csv")
                log(
                    f"{choice.name} {fraction_label(fraction)} seed {seed}: n_train {len(train_split)}, "
                    f"val {outcome.val.value:.4f}, test {task.metric} {outcome.test.value:.4f} "
                    f"(best epoch {outcome.best_epoch}/{outcome.epochs}, {outcome.seconds:.1f} s)"
                )
    runs = pd.DataFrame(records)
    if out is not None:
        write_outputs(out, runs, curves, manifest, settings, encoder_info, command)
    return runs


def _run_one(task, choice, encoder, settings, train, val, test, seed, device, fast) -> RunOutcome:
    if settings.protocol == "finetune":
        return finetune(
            task, encoder, train, val, test, settings.training, seed, settings.image_size, device, fast,
            settings.workers,
        )  # fmt: skip
    if settings.recipe == "paper":
        return linear_probe_images(
            task, encoder, train, val, test, settings.training, seed, settings.image_size, device, fast,
            settings.workers,
        )  # fmt: skip
    return linear_probe_features(task, train, val, test, settings.training, seed)


def _save_encoder(task, choice, settings, fraction, seed, record, outcome: RunOutcome) -> str:
    """Write the fine-tuned encoder of one run as an export folder ``<save_encoders>/<encoder>-<fraction>-seed<N>``
    (:func:`convirt.encoders.export.export_fine_tuned`); returns the folder."""
    folder = Path(settings.save_encoders) / f"{slug(choice.name)}-{fraction:g}-seed{seed}"
    fine_tuned = {
        "dataset": task.name,
        "paper_key": task.paper_key,
        "data_notes": task.notes,
        "fraction": fraction,
        "seed": seed,
        "n_train": record["n_train"],
        "best_epoch": outcome.best_epoch,
        "metric": task.metric,
        "val": outcome.val.value,
        "test": outcome.test.value,
        "recipe": settings.training.to_dict(),
    }
    export_fine_tuned(outcome.encoder, choice.spec, folder, _clean(fine_tuned), settings.image_size)
    return str(folder)


def _record(task, choice, settings, fraction, seed, train, val, test, outcome: RunOutcome) -> dict:
    record = {
        "dataset": task.name,
        "encoder": choice.name,
        "init": choice.init,
        "protocol": settings.protocol,
        "recipe": settings.recipe if settings.protocol == "linear" else "paper",
        "fraction": fraction,
        "seed": seed,
        "n_train": len(train),
        "n_val": len(val),
        "n_test": len(test),
        "metric": task.metric,
        "level": outcome.test.level,
        "n_test_scored": outcome.test.n,
        "val": outcome.val.value,
        "test": outcome.test.value,
        "lr": outcome.lr,
        "best_epoch": outcome.best_epoch,
        "epochs": outcome.epochs,
        "seconds": round(outcome.seconds, 3),
    }
    if len(outcome.test.per_class) > 1:
        for name, value in outcome.test.per_class.items():
            record[f"test_auc_{name}"] = value
    return record


def _write_runs(runs: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, runs.to_csv(index=False))


def _clean(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def write_outputs(
    out: Path,
    runs: pd.DataFrame,
    curves: dict,
    manifest: LabelledManifest,
    settings: ClassificationSettings,
    encoder_info: list[dict],
    command: str | None,
) -> None:
    task = manifest.task
    summary = summarize(runs)
    table = markdown_table(summary, task, settings.protocol, settings.fractions)
    metric = {"auc": "AUC", "mean_auc": "mean AUC", "accuracy": "accuracy"}[task.metric]
    counts = manifest.counts()
    recipe = settings.training
    lines = [
        f"# {task.name}: {settings.method}",
        "",
        f"Test {metric} (%, {task.scoring_level} level), mean ± sample std over {len(settings.seeds)} seed(s); each "
        f"seed draws its own stratified training subset of the given label fraction.",
        "",
        table,
        "",
        f"- Data: train/val/test = {counts['train']}/{counts['val']}/{counts['test']} images; classes "
        f"{task.class_names}.",
        f"- Recipe: Adam lr {recipe.task_lr(task):g}, weight decay {recipe.weight_decay:g}, dropout "
        f"{recipe.dropout:g}, batch {recipe.batch_size}, lr x{recipe.lr_factor:g} after {recipe.lr_patience} epochs "
        f"without improvement, stop after {recipe.stop_patience}, at most {recipe.max_epochs} epochs, best validation "
        f"checkpoint tested; input zero-padded to square and resized to {settings.image_size}."
        + (
            f" Fine-tuning starts with {recipe.warmup_steps} head-only steps at lr {recipe.warmup_lr:g}."
            if settings.protocol == "finetune"
            else ""
        ),
    ]
    note = paper_reference_note(task, settings.protocol)
    if note:
        lines += ["", note]
    if command:
        lines += ["", "Command:", "", "```", command, "```"]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    _write_runs(runs, out / "runs.csv")
    for (encoder, fraction), per_seed in curves.items():
        title = f"{task.name} test ROC: {encoder}, {fraction * 100:g}% labels, {settings.method}"
        plot_roc(per_seed, task, title, out / "roc" / f"{slug(encoder)}-{fraction:g}.png")
    paper = {}
    for info in encoder_info:
        values = paper_values(task.paper_key, settings.protocol, info["init"]) or {}
        paper[info["name"]] = {fraction_label(k): v for k, v in values.items()}
    metrics = {
        "command": command,
        "dataset": {
            "task": task.to_dict(),
            "counts": counts,
            "class_counts": manifest.class_counts(),
            "manifest": "manifest.csv",
        },
        "settings": settings.to_dict(),
        "encoders": encoder_info,
        "summary": summary.to_dict(orient="records"),
        "paper": paper,
        "runs": runs.to_dict(orient="records"),
        "environment": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
    }
    atomic_write_json(out / "metrics.json", _clean(metrics))
