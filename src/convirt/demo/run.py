"""``convirt demo``: the whole method on synthetic data, from nothing to a readable report, offline.

Stages (each reuses the project's library, so the demo exercises the real paths):

1. **generate** a paired set (``convirt.synthetic``: radiographs + reports) and a separate labelled evaluation set
   (another seed, so no evaluation study was seen in pretraining);
2. **prepare** the paired set with the ``csv`` source (``convirt.prepare.prepare``): sections, sentences, cache,
   patient split;
3. **pretrain** ConVIRT (``convirt.engine.train.pretrain``) with :data:`convirt.demo.config.DEMO_SETTINGS`;
4. **evaluate** on the evaluation set's test split (single-category studies for retrieval and zero-shot, all studies
   for the multi-label linear probe):

   - text-image and image-image Precision@5/10/50 (``convirt.evaluation.retrieval.evaluate_labelled``), ConVIRT
     against the same architecture with every weight freshly initialised (``random-like:``);
   - zero-shot classification from the text queries (``convirt.evaluation.zeroshot``);
   - linear probe at 1 / 10 / 100 % of the training labels, ConVIRT image encoder against the same architecture
     with random init and against the ImageNet weights pretraining started from (the paper's two baselines;
     ``convirt.evaluation.classification``), mean AUC over the 8 labels, mean over seeds;
   - t-SNE, Grad-CAM saliency for the text queries, a text-query retrieval contact sheet (``convirt.analysis``);

5. **index** the test images with their labels (``OUT/work/test-images.index.pt``) for ``convirt serve``;
6. **report**: ``OUT/report.md`` and ``OUT/metrics.json`` (flat keys such as ``retrieval.text_image.p@10``), with the
   figures beside them. Everything bulky (data, checkpoints, feature caches) goes to ``OUT/work/``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convirt.config import flat_items
from convirt.demo.config import DEMO_SETTINGS, QUICK_SETTINGS, TEXT_QUERIES
from convirt.encoders.spec import EncoderSpec, initial_weights_spec
from convirt.errors import ConfigError
from convirt.fileio import atomic_write_json
from convirt.synthetic.dataset import MULTIPLE, generate_dataset
from convirt.synthetic.render import CATEGORIES, FINDINGS

KS = (5, 10, 50)
FRACTIONS = (0.01, 0.1, 1.0)
FRACTION_KEYS = {0.01: "auc@0.01", 0.1: "auc@0.1", 1.0: "auc@1"}
REQUIRED_KEYS = (
    *(f"retrieval.{task}.p@{k}" for task in ("text_image", "image_image") for k in KS),
    *(f"linear_probe.{enc}.{FRACTION_KEYS[f]}" for enc in ("convirt", "random_init") for f in FRACTIONS),
    "pretrain.final_val_loss",
    "pretrain.seconds",
)
IMAGENET_LABEL = "ImageNet init"  # the pretraining's starting weights, before ConVIRT
FIGURES = ("loss_curve.png", "tsne.png", "saliency.png", "contact_sheet.png")


@dataclass
class DemoSettings:
    """Sizes of one demo run (defaults: the full demo, about 4 minutes on 2 CPU cores)."""

    pretrain_size: int = 4000  # paired studies for pretraining (10 % become the validation split)
    eval_size: int = 2000  # labelled evaluation studies (70/10/20 train/val/test)
    seed: int = 0
    image_size: int = 128  # generated and cached image size
    steps: int | None = None  # pretraining steps (None: the config's val_every_steps x max_evals)
    probe_seeds: int = 3
    tsne_points: int = 800
    workers: int = 2
    config: str | None = None  # a YAML to use instead of DEMO_SETTINGS
    overrides: list[str] = field(default_factory=list)  # extra section.key=value
    quick: bool = False
    eval_image_size: int = 0  # set from the pretraining config (the linear probe's input size)

    @classmethod
    def quick_settings(cls, **kwargs) -> DemoSettings:
        base = {
            "pretrain_size": 64,
            "eval_size": 400,  # enough single-category test images (~65) for Precision@50
            "image_size": 64,
            "probe_seeds": 1,
            "tsne_points": 60,
            "quick": True,
        }
        base.update(kwargs)
        return cls(**base)


def demo_config(settings: DemoSettings, manifest: Path, output_dir: Path):
    """The pretraining Config: the demo settings (or ``settings.config``), the quick sizes, then overrides."""
    from convirt.config import load_config

    values: dict[str, object] = {} if settings.config else dict(DEMO_SETTINGS)
    if settings.quick:
        values.update(QUICK_SETTINGS)
    values["data.manifest"] = str(manifest)
    values["train.output_dir"] = str(output_dir)
    overrides = [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in values.items()]
    config = load_config(settings.config, overrides + list(settings.overrides))
    if settings.steps is not None:
        if settings.steps < 1:
            raise ConfigError(
                f"the number of pretraining steps must be at least 1, not {settings.steps}", setting="steps"
            )
        every = max(1, min(config.train.val_every_steps, settings.steps))
        overrides.append(f"train.val_every_steps={every}")
        overrides.append(f"train.max_evals={max(1, math.ceil(settings.steps / every))}")
        overrides.append(f"train.checkpoint_every_steps={every}")
        config = load_config(settings.config, overrides + list(settings.overrides))
    return config


def _check_offline_weights(settings: DemoSettings, work: Path) -> None:
    """Fail before generating anything when the configured offline weights are not installed."""
    from convirt.models.image import offline_imagenet_file, weights_kind
    from convirt.models.text import resolve_text_source

    config = demo_config(settings, work / "prepared" / "manifest.csv", work / "pretrain")
    if weights_kind(config.model.image_weights) == "builtin":
        offline_imagenet_file(config.model.image_encoder)
    resolve_text_source(config.model.text_encoder)


def run_demo(output_dir: str | os.PathLike, settings: DemoSettings | None = None, log: Callable[[str], None] = print):
    """Run every stage; returns the metrics dict written to ``OUT/metrics.json``."""
    settings = settings or DemoSettings()
    out = Path(output_dir)
    work = out / "work"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    _check_offline_weights(settings, work)

    def stage(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)
        log(f"demo: {name} done in {timings[name]:.0f} s")

    # 1. generate
    t0 = time.perf_counter()
    pretrain_data = generate_dataset(work / "synthetic-pretrain", settings.pretrain_size, settings.seed,
                                     settings.image_size, settings.workers, log=log)  # fmt: skip
    eval_data = generate_dataset(work / "synthetic-eval", settings.eval_size, settings.seed + 1_000_003,
                                 settings.image_size, settings.workers, log=log)  # fmt: skip
    stage("generate", t0)

    # 2. prepare (the real csv path)
    from convirt.prepare import prepare

    t0 = time.perf_counter()
    report = prepare(
        "csv", pretrain_data.folder, work / "prepared", table="pairs.csv", image_size=settings.image_size,
        val_size=0.1, seed=settings.seed, workers=settings.workers, progress=False, log=log,
    )  # fmt: skip
    prepared = report.to_dict()
    stage("prepare", t0)

    # 3. pretrain
    from convirt.engine.train import pretrain
    from convirt.objectives import build_objective

    t0 = time.perf_counter()
    run_dir = work / "pretrain"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a demo always starts fresh (no resume from an older run)
    config = demo_config(settings, work / "prepared" / "manifest.csv", run_dir)
    model, size = config.model, config.data.augment.output_size
    log(f"demo: pretraining {config.max_steps} steps, batch {config.data.batch_size}, {model.image_encoder} at "
        f"{size} px + {model.text_encoder}")  # fmt: skip
    result = pretrain(config, build_objective)
    checkpoint = result.best_checkpoint or result.last_checkpoint
    stage("pretrain", t0)
    if (run_dir / "loss_curve.png").is_file():
        shutil.copyfile(run_dir / "loss_curve.png", out / "loss_curve.png")

    # 4. evaluate
    t0 = time.perf_counter()
    settings.eval_image_size = config.data.augment.output_size
    evaluation = evaluate_demo(checkpoint, eval_data.labels, out, work, settings, log)
    stage("evaluate", t0)

    # 5. index the held-out test images, with their labels, for the explorer (convirt serve)
    t0 = time.perf_counter()
    explorer_index = index_test_images(checkpoint, eval_data.labels, work / "test-images.index.pt")
    stage("index", t0)

    metrics: dict = {
        "retrieval": evaluation["retrieval"],
        "zero_shot": evaluation["zero_shot"],
        "linear_probe": evaluation["linear_probe"],
        "pretrain": {
            "final_val_loss": result.final_val_loss,
            "best_val_loss": result.best_val_loss,
            "steps": result.steps,
            "seconds": round(result.seconds, 1),
            "checkpoint": os.path.relpath(checkpoint, out),
        },
        "data": {
            "pretrain_pairs": settings.pretrain_size,
            "pretrain_prepared": {k: prepared.get(k) for k in ("pairs_kept", "splits") if k in prepared},
            "eval_studies": settings.eval_size,
            "eval_counts": evaluation["counts"],
            "image_size": settings.image_size,
            "generator_pairs_per_second": round(pretrain_data.pairs_per_second, 1),
        },
        "settings": {
            "seed": settings.seed,
            "quick": settings.quick,
            "probe_seeds": settings.probe_seeds,
            "config": config.to_dict(),
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        },
        "timings_seconds": {**timings, "total": round(time.perf_counter() - started, 1)},
        "explorer": {"index": os.path.relpath(explorer_index, out), "command": f"convirt serve {explorer_index}"},
    }
    flat = flat_items({k: metrics[k] for k in ("retrieval", "linear_probe", "zero_shot")})
    flat["pretrain.final_val_loss"] = metrics["pretrain"]["final_val_loss"]
    flat["pretrain.seconds"] = metrics["pretrain"]["seconds"]
    metrics = {**{k: flat[k] for k in REQUIRED_KEYS}, **metrics}
    atomic_write_json(out / "metrics.json", metrics)
    from convirt.demo.report import write_report

    write_report(out, metrics, evaluation, settings)
    log(f"demo: wrote {out / 'report.md'} and {out / 'metrics.json'}")
    log("demo: seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in metrics["timings_seconds"].items()))
    return metrics


def index_test_images(checkpoint: Path, labels_csv: Path, output: Path) -> Path:
    """An index of the evaluation set's test images (every one, with all its labels) for ``convirt serve``."""
    from convirt.analysis.search import build_index
    from convirt.data.sources import image_labels

    labels = image_labels(labels_csv, "test")
    build_index(labels_csv.parent / "images", str(checkpoint), output, progress=False, restart=True, labels=labels,
                label_source=f"{labels_csv.name} (test split)", only_labelled=True)  # fmt: skip
    return output


def _single_category_test(labels_csv: Path) -> tuple[list[str], list[str]]:
    import pandas as pd

    frame = pd.read_csv(labels_csv)
    frame = frame[(frame["split"] == "test") & (frame["category"] != MULTIPLE)]
    paths = [str((labels_csv.parent / p).resolve()) for p in frame["image"]]
    return paths, list(frame["category"])


def evaluate_demo(checkpoint: Path, labels_csv: Path, out: Path, work: Path, settings: DemoSettings, log) -> dict:
    """Retrieval, zero-shot, linear probe and the figures; returns numbers and the objects the report needs."""
    from convirt.encoders.embedders import load_embedder
    from convirt.evaluation.retrieval import evaluate_labelled
    from convirt.evaluation.zeroshot import evaluate_zeroshot

    paths, labels = _single_category_test(labels_csv)
    categories = [c for c in CATEGORIES if c in set(labels)]
    prompts = {c: TEXT_QUERIES[c] for c in categories}
    counts = {c: labels.count(c) for c in categories}
    log(f"demo: evaluating on {len(paths)} single-category test images {counts}")
    spec = EncoderSpec.parse(checkpoint)  # every use below shares this one read of the checkpoint
    convirt = load_embedder(spec, "ConVIRT")
    random_like = load_embedder(spec.random_like(), "random init", seed=settings.seed)
    embedders = [convirt, random_like]
    initial = pretrained_init_spec(spec)
    if initial is not None:  # the weights pretraining started from (ImageNet): image-image retrieval only
        image_size = settings.eval_image_size or settings.image_size
        embedders.append(load_embedder(initial, IMAGENET_LABEL, image_size=image_size))
    batch = 64
    ks = tuple(k for k in KS if k < len(paths))
    retrieval = evaluate_labelled(embedders, paths, labels, prompts, ks=ks, spaces=("h_v", "v"), batch_size=batch,
                                  source="synthetic eval test split")  # fmt: skip
    zero_shot = evaluate_zeroshot([convirt, random_like], paths, labels, prompts, batch_size=batch)

    def precision(encoder_label: str, task: str, space: str) -> dict:
        for r in retrieval.results:
            if r.encoder == encoder_label and r.task == task and r.space == space:
                return {f"p@{k}": round(r.mean.get(k, float("nan")) / 100.0, 4) for k in KS}
        return {f"p@{k}": None for k in KS}

    retrieval_metrics = {
        "text_image": precision("ConVIRT", "text_image", "v"),
        "image_image": precision("ConVIRT", "image_image", "h_v"),
        "image_image_v": precision("ConVIRT", "image_image", "v"),
        "random_init": {
            "text_image": precision("random init", "text_image", "v"),
            "image_image": precision("random init", "image_image", "h_v"),
        },
        **({"imagenet_init": {"image_image": precision(IMAGENET_LABEL, "image_image", "h_v")}} if initial else {}),
        "chance": {task: {f"p@{k}": round(r.mean[k] / 100.0, 4) for k in r.ks} for task, r in retrieval.prior.items()},
        "n_images": len(paths),
        "n_text_queries": sum(len(v) for v in prompts.values()),
    }
    zero_shot_metrics = {
        ("convirt" if r.encoder == "ConVIRT" else "random_init"): {
            "accuracy": round(r.accuracy, 4),
            "balanced_accuracy": round(r.balanced_accuracy, 4),
            "mean_auc": None if r.mean_auc is None else round(r.mean_auc, 4),
        }
        for r in zero_shot
    }

    probe, probe_runs = linear_probe(spec, labels_csv, work / "classification", settings, log)

    figures: dict[str, str] = {}
    try:
        figures.update(_figures(convirt, random_like, paths, labels, categories, prompts, out, settings))
    except Exception as exc:
        log(f"demo: figures failed: {exc!r}")
    return {
        "retrieval": retrieval_metrics,
        "zero_shot": zero_shot_metrics,
        "linear_probe": probe,
        "counts": counts,
        "retrieval_report": retrieval,
        "zero_shot_results": zero_shot,
        "probe_runs": probe_runs,
        "figures": figures,
        "prompts": prompts,
    }


def linear_probe(checkpoint: EncoderSpec, labels_csv: Path, out: Path, settings: DemoSettings, log):
    """Linear probe on cached features: ConVIRT image encoder vs random and ImageNet init, 1/10/100 % labels."""
    from convirt.data.labelled import read_labelled_manifest
    from convirt.evaluation.classification import ClassificationSettings, EncoderChoice, Recipe, evaluate_classification

    manifest = read_labelled_manifest(labels_csv)
    # standardised features: a random-init MobileNetV2's features are ~1e-10 in eval mode, which an unscaled probe
    # cannot use at all; z-scoring gives every encoder the same footing
    recipe = Recipe(lr=1e-3, batch_size=64, max_epochs=100 if not settings.quick else 5, stop_patience=15,
                    standardize=True)  # fmt: skip
    probe_settings = ClassificationSettings(
        protocol="linear", recipe="features", fractions=FRACTIONS, seeds=settings.probe_seeds,
        image_size=settings.eval_image_size or settings.image_size, workers=0, training=recipe,
        encoder_seed=settings.seed,
    )  # fmt: skip
    choices = [
        EncoderChoice(checkpoint, "ConVIRT", "convirt"),
        EncoderChoice(f"random:{checkpoint.architecture}", "random init", "random"),
    ]
    encoders = [("convirt", "ConVIRT"), ("random_init", "random init")]
    initial = pretrained_init_spec(checkpoint)
    if initial is not None:
        choices.append(EncoderChoice(initial, IMAGENET_LABEL, "imagenet"))
        encoders.append(("imagenet_init", IMAGENET_LABEL))
    runs = evaluate_classification(manifest, choices, probe_settings, out, log=log)
    probe: dict = {}
    for key, name in encoders:
        rows = runs[runs["encoder"] == name]
        probe[key] = {}
        for fraction in FRACTIONS:
            values = rows[np.isclose(rows["fraction"], fraction)]["test"].astype(float)
            probe[key][FRACTION_KEYS[fraction]] = round(float(values.mean()), 4)
            probe[key][FRACTION_KEYS[fraction] + "_std"] = (
                round(float(values.std(ddof=1)), 4) if len(values) > 1 else 0.0
            )
    probe["metric"] = "mean AUC over the 8 labels (test split), mean over seeds"
    probe["n_train"] = int((manifest.splits == "train").sum())
    probe["n_test"] = int((manifest.splits == "test").sum())
    return probe, runs


def pretrained_init_spec(checkpoint: EncoderSpec) -> str | None:
    """The image encoder pretraining started from, as an encoder spec (``NAME=FILE`` or ``imagenet:NAME``), or
    None when it started from random weights: the paper's "ImageNet" baseline row."""
    model = checkpoint.checkpoint().config.model
    return initial_weights_spec(model.image_encoder, model.image_weights)


def _figures(convirt, random_like, paths, labels, categories, prompts, out: Path, settings) -> dict:
    from convirt.analysis.contact_sheet import contact_sheet
    from convirt.analysis.saliency import FINER, saliency_grid, text_saliency
    from convirt.analysis.search import SearchHit
    from convirt.analysis.tsne import plot_tsne, tsne_panels
    from convirt.encoders.prompts import class_embeddings

    figures = {}
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(len(paths))[: settings.tsne_points]
    sub_paths = [paths[i] for i in order]
    sub_labels = [labels[i] for i in order]
    panels = tsne_panels([random_like, convirt], sub_paths, sub_labels, space="h_v", seed=settings.seed)
    plot_tsne(panels, out / "tsne.png", categories=categories, title="t-SNE of test-image embeddings (h_v)")
    csv = (out / "tsne.png").with_suffix(".csv")
    if csv.exists():
        csv.unlink()  # the coordinates are not needed beside the report
    figures["tsne"] = "tsne.png"

    # saliency: Grad-CAM of cos(v, u) for each finding's first text query, on one test image of that finding, at
    # the stride-16 block (the last map is 2x2 at the demo's 64 px, too coarse to localise anything)
    classes, class_emb = class_embeddings(convirt, prompts)
    shown = [c for c in FINDINGS if c in classes and c in labels]
    first_image = [paths[labels.index(c)] for c in shown]
    queries = [class_emb[classes.index(c)] for c in shown]
    items = text_saliency(convirt, first_image, queries, FINER, paired=True, captions=shown) if shown else []
    if items:
        saliency_grid(items, out / "saliency.png", title="Grad-CAM for each class's text query (ConVIRT)", columns=4)
        figures["saliency"] = "saliency.png"

    # contact sheet: the top 10 test images for one text query
    query_category = "Pleural Effusion" if "Pleural Effusion" in prompts else classes[0]
    query = prompts[query_category][1]
    images = convirt.embed_images(paths, ["v"], 64)["v"]
    text = convirt.embed_texts([query])
    scores = (images @ torch.nn.functional.normalize(text.float(), dim=-1).T)[:, 0]
    top = torch.topk(scores, k=min(10, len(paths)))
    hits = [SearchHit(rank + 1, paths[int(i)], float(s)) for rank, (s, i) in enumerate(zip(top.values, top.indices))]
    contact_sheet(hits, out / "contact_sheet.png", query_text=query, columns=6, thumb_size=128)
    figures["contact_sheet"] = "contact_sheet.png"
    figures["contact_sheet_query"] = query
    figures["contact_sheet_category"] = query_category
    figures["contact_sheet_hits"] = [labels[int(i)] for i in top.indices]
    return figures
