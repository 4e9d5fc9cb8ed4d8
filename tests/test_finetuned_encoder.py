"""The fine-tuned upper bound of Table 2 ("ConVIRT + CheXpert Supervised"): the CheXpert adapter leaves the CheXpert
8x200 retrieval images out of the training data, `evaluate classify --save-encoder` writes the fine-tuned encoder as
an export folder (with the starting checkpoint's heads and text tower), and retrieval takes it and fills that row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from convirt.cli import main
from convirt.data.chexpert8x200 import CHEXPERT_8X200_CATEGORIES, RetrievalLists
from convirt.data.sources import load_labelled_dataset
from convirt.encoders.checkpoint import load_model
from convirt.encoders.embedders import ConvirtEncoder, load_embedder
from test_retrieval_support import write_tiny_checkpoint

pytestmark = pytest.mark.slow

HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,"
    "Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices"
)
UNLISTED = 16  # training images that no retrieval list names, in patients 90000-90015


def subset_lists(official: RetrievalLists, folder: Path) -> RetrievalLists:
    """2 candidates, 1 image query and 1 sentence per category of the official lists, written as list files."""

    def first(labels: list[str], n: int) -> list[int]:
        return [i for c in CHEXPERT_8X200_CATEGORIES for i in [j for j, y in enumerate(labels) if y == c][:n]]

    lists = official.subset(
        first(official.candidate_labels, 2), first(official.image_query_labels, 1), first(official.text_query_labels, 1)
    )
    folder.mkdir(parents=True)
    source = Path(official.source)
    for name, column, keep in (
        ("candidate.csv", "Path", lists.candidate_paths),
        ("image_query.csv", "Path", lists.image_query_paths),
        ("text_query.csv", "Text", lists.text_queries),
    ):
        table = pd.read_csv(source / name)
        table[table[column].str.strip().isin(keep)].to_csv(folder / name, index=False)
    return lists


def chexpert_tree(root: Path, listed: list[str], dataset: str = "CheXpert-v1.0-small", images: bool = True) -> Path:
    """A CheXpert download in its real layout: train.csv naming the ``listed`` retrieval images plus UNLISTED others,
    valid.csv with 8 images, and the image files (grey JPEGs)."""
    rng = np.random.default_rng(0)
    folder = root / dataset
    unlisted = [f"train/patient{90000 + i}/study1/view1_frontal.jpg" for i in range(UNLISTED)]
    train = [dataset + "/" + p.split("/", 1)[1] for p in listed] + [f"{dataset}/{p}" for p in unlisted]
    valid = [f"{dataset}/valid/patient{64541 + i}/study1/view1_frontal.jpg" for i in range(8)]

    def rows(paths: list[str], certain: bool) -> list[str]:
        out = []
        for i, path in enumerate(paths):
            labels = [str(float((i + k) % 2)) if certain else rng.choice(["1.0", "0.0", "-1.0", ""]) for k in range(14)]
            out.append(",".join([path, "Female", "60", "Frontal", "AP", *labels]))
        return out

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.csv").write_text("\n".join([HEADER, *rows(train, certain=False)]) + "\n")
    (folder / "valid.csv").write_text("\n".join([HEADER, *rows(valid, certain=True)]) + "\n")
    if images:
        for path in train + valid:
            file = root / path
            file.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (72, 64), dtype=np.uint8)).save(file, format="JPEG")
    return root


def test_chexpert_adapter_leaves_out_the_retrieval_images(official: RetrievalLists, tmp_path: Path) -> None:
    listed = subset_lists(official, tmp_path / "lists").image_paths()
    root = chexpert_tree(tmp_path / "data", listed)
    everything = load_labelled_dataset(f"chexpert:{root}", val_size=4)
    training = [p for p, s in zip(everything.images, everything.splits) if s != "test"]
    assert len(training) == len(listed) + UNLISTED == 40
    assert {str(root / p) for p in listed} <= set(training)

    # The official lists (1680 images) by default: the 24 of them that this download's train.csv holds go.
    kept = load_labelled_dataset(f"chexpert:{root}", val_size=4, exclude_retrieval=True)
    assert kept.counts() == {"train": 12, "val": 4, "test": 8}
    assert not {str(root / p) for p in listed} & set(kept.images)
    assert "24 of the 1680 CheXpert 8x200 retrieval images (queries + candidates) removed" in kept.task.notes
    custom = load_labelled_dataset(
        f"chexpert:{root}", val_size=4, exclude_retrieval=True, retrieval_lists=str(tmp_path / "lists")
    )
    assert custom.counts() == kept.counts() and "24 of the 24 CheXpert" in custom.task.notes

    # A full-size download (CheXpert-v1.0/...) matches the lists' CheXpert-v1.0-small paths too.
    full = chexpert_tree(tmp_path / "full", listed, dataset="CheXpert-v1.0", images=False)
    loaded = load_labelled_dataset(f"chexpert:{full}", val_size=4, exclude_retrieval=True, check_files=False)
    assert loaded.counts()["train"] + loaded.counts()["val"] == UNLISTED and "24 of the 1680" in loaded.task.notes


def test_finetuned_encoder_is_saved_and_retrieval_takes_it(official, tiny_bert_dir, tmp_path, capsys) -> None:
    lists = subset_lists(official, tmp_path / "lists")
    root = chexpert_tree(tmp_path / "data", lists.image_paths())
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.ckpt", tiny_bert_dir)
    out = tmp_path / "out"
    code = main(
        ["evaluate", "classify", "--dataset", f"chexpert:{root}", "--encoder", str(checkpoint), "--name", "convirt",
         "--protocol", "finetune", "--fractions", "1", "--seeds", "1", "--val-size", "4", "--image-size", "64",
         "--batch-size", "4", "--max-epochs", "2", "--warmup-steps", "2", "--no-fast", "--lists",
         str(tmp_path / "lists"), "--save-encoder", str(out / "encoders"), "--output", str(out / "classify")]
    )  # fmt: skip
    assert code == 0
    assert "24 of the 24 CheXpert 8x200 retrieval images (queries + candidates) removed" in capsys.readouterr().out
    folder = out / "encoders" / "convirt-1-seed0"
    assert pd.read_csv(out / "classify" / "runs.csv")["saved_encoder"].tolist() == [str(folder)]
    meta = json.loads((folder / "image_encoder.json").read_text())
    assert meta["objective"] == "convirt" and meta["architecture"] == "resnet18" and meta["input"]["size"] == 64
    tuned = meta["fine_tuned"]
    assert tuned["paper_key"] == "chexpert" and tuned["n_train"] == 12 and tuned["fraction"] == 1.0
    assert "24 of the 24" in tuned["data_notes"] and meta["heads"].startswith("not fine-tuned")

    # The export: fine-tuned image encoder, the starting checkpoint's heads and text tower unchanged.
    start = ConvirtEncoder.from_checkpoint(checkpoint, device="cpu", fast=False)
    embedder = load_embedder(str(folder), device="cpu", fast=False)
    assert isinstance(embedder, ConvirtEncoder) and embedder.init == "convirt" and embedder.fine_tuned == tuned
    assert embedder.label == "convirt-1-seed0" and embedder.image_size == 64
    for head in ("image_head", "text_head"):
        for key, value in getattr(start.model, head).state_dict().items():
            assert torch.equal(getattr(embedder.model, head).state_dict()[key], value), (head, key)
    torch.testing.assert_close(embedder.encode_texts(lists.text_queries), start.encode_texts(lists.text_queries))
    before = load_model(checkpoint).model.image_encoder.state_dict()
    after = embedder.model.image_encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())

    # Retrieval takes the folder; it fills the "ConVIRT + CheXpert Supervised" row, the checkpoint the ConVIRT row.
    code = main(
        ["evaluate", "retrieval", "--chexpert-root", str(root), "--lists", str(tmp_path / "lists"), "--encoder",
         str(checkpoint), "--encoder", str(folder), "--k", "1", "5", "--no-fast", "-o", str(out / "retrieval")]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "retrieval" / "metrics.json").read_text())
    rows = {entry["method"]: entry for entry in metrics["table2"]}
    assert rows["convirt_chexpert_supervised"]["encoders"] == ["convirt-1-seed0"]
    assert rows["convirt"]["encoders"] == ["ConVIRT"] and rows["convirt"]["missing"] is None
    assert "no encoder given" in rows["contrastive_binary"]["missing"]
    lines = (out / "retrieval" / "retrieval.md").read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("| ConVIRT + CheXpert Supervised (paper) |"))
    assert lines[row + 1].startswith("| convirt-1-seed0, image space h_v (ours) |")
