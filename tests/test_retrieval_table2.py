"""The Table 2 renderer: each encoder fills the row of the paper's Table 2 its weights belong to (Contrastive-Binary
and the CheXpert-fine-tuned ConVIRT included), and the rows no encoder fills are named with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from convirt.data.chexpert8x200 import RetrievalLists
from convirt.evaluation.paper_numbers import RETRIEVAL_ROWS
from convirt.evaluation.retrieval import evaluate_lists, table2, write_report
from test_retrieval_support import LookupEmbedder, one_hot

CATEGORIES = ("A", "B")
# 2 image queries, 12 candidates (6 per class), 2 sentences; file names stand for images (LookupEmbedder).
CANDIDATES = [f"c{i}" for i in range(12)]
LISTS = RetrievalLists(
    CATEGORIES,
    CANDIDATES,
    ["A"] * 6 + ["B"] * 6,
    ["q0", "q1"],
    ["A", "B"],
    ["a sentence", "b sentence"],
    ["A", "B"],
    "hand-made lists",
)
# A perfect image encoder: one-hot of the class. Precision@5 = 100, Precision@10 = 6/10 (6 images per class).
PERFECT = {p: one_hot(int(p in CANDIDATES[6:] or p == "q1"), 2) for p in [*CANDIDATES, "q0", "q1"]}
TEXTS = {"a sentence": one_hot(0, 2), "b sentence": one_hot(1, 2)}


class PairScorer(LookupEmbedder):
    """Image-only spaces plus a text scorer of its own, like the Contrastive-Binary baseline. Its score ranks the
    other class's 6 images first: Precision@5 = 0, Precision@10 = 4/10 (the own class's images fill the rest)."""

    spaces = ("h_v",)
    has_text = False
    text_space = "h_v"

    def score_texts(self, texts, images):
        return 1.0 - torch.stack([TEXTS[t] for t in texts]) @ images.T


def encoder(label: str, init: str, fine_tuned: dict | None = None, texts: bool = False) -> LookupEmbedder:
    embedder = LookupEmbedder(PERFECT, TEXTS if texts else None, label=label)
    embedder.init, embedder.fine_tuned = init, fine_tuned
    return embedder


def binary(label: str = "binary") -> PairScorer:
    embedder = PairScorer(PERFECT, None, label=label)
    embedder.init = "contrastive_binary"
    return embedder


def report_of(embedders, tmp_path: Path) -> tuple[str, dict]:
    report = evaluate_lists(embedders, LISTS, ks=[5, 10])
    files = write_report(report, tmp_path)
    return files["markdown"].read_text(), json.loads(files["metrics"].read_text())


def test_both_rows_are_filled_when_their_encoders_are_given(tmp_path: Path) -> None:
    finetuned = encoder("finetuned", "convirt", {"paper_key": "chexpert", "dataset": "chexpert"}, texts=True)
    markdown, metrics = report_of([binary(), finetuned, encoder("moco", "moco_v2")], tmp_path)
    lines = markdown.splitlines()
    # Our rows sit right under the paper's row they belong to; a perfect image encoder scores 100.
    row = lines.index("| Contrastive-Binary (paper) | 38.8 | 36.6 | 15.5 | 14.5 |")
    assert lines[row + 1] == "| binary, image space h_v (ours) | 100.0 | 60.0 | 0.0 | 40.0 |"
    row = lines.index("| ConVIRT + CheXpert Supervised (paper) | 56.8 | 56.3 | – | – |")
    assert lines[row + 1] == "| finetuned, image space h_v (ours) | 100.0 | 60.0 | – | – |"
    assert lines[row + 2] == "| finetuned, image space v (ours) | 100.0 | 60.0 | 100.0 | 60.0 |"
    assert "| moco, image space h_v (ours, not a row of Table 2) | 100.0 | 60.0 | – | – |" in lines
    rows = {entry["method"]: entry for entry in metrics["table2"]}
    assert list(rows) == list(RETRIEVAL_ROWS)
    assert rows["contrastive_binary"]["encoders"] == ["binary"] and rows["contrastive_binary"]["missing"] is None
    assert rows["convirt_chexpert_supervised"]["encoders"] == ["finetuned"]
    assert rows["convirt_chexpert_supervised"]["missing"] is None
    assert [r["table2_row"] for r in metrics["results"]][:2] == ["contrastive_binary", "contrastive_binary"]
    # The rows without an encoder are named, each with how to produce it.
    missing = markdown.split("Rows of Table 2 without our result:")[1]
    for name in ("ImageNet", "Caption-Transformer", "Caption-LSTM", "ConVIRT"):
        assert f"- **{name}**: no encoder given" in missing
    assert "Contrastive-Binary" not in missing and "Supervised" not in missing


def test_missing_rows_say_why(tmp_path: Path) -> None:
    convirt = encoder("convirt", "convirt", texts=True)
    chexpert_free = encoder("finetuned on RSNA", "convirt", {"paper_key": "rsna"})  # not the paper's upper bound
    markdown, metrics = report_of([convirt, chexpert_free, encoder("imagenet", "imagenet")], tmp_path)
    rows = {entry["method"]: entry for entry in metrics["table2"]}
    assert rows["convirt"]["encoders"] == ["convirt"] and rows["imagenet"]["encoders"] == ["imagenet"]
    assert "configs/baselines/contrastive_binary.yaml" in rows["contrastive_binary"]["missing"]
    assert "--save-encoder" in rows["convirt_chexpert_supervised"]["missing"]
    assert "left out of its training data" in rows["convirt_chexpert_supervised"]["missing"]
    assert "- **Contrastive-Binary**: no encoder given; pretrain with" in markdown
    assert "- **ConVIRT + CheXpert Supervised**: no encoder given; fine-tune a ConVIRT checkpoint" in markdown
    assert "| finetuned on RSNA, image space h_v (ours, not a row of Table 2) |" in markdown
    assert rows["random"]["missing"] is None and "| Random ranking (class prior, ours) | 50.0 | 50.0 |" in markdown

    # A Contrastive-Binary encoder that scored no sentences fills the image-image half only, and says so.
    no_text = LookupEmbedder(PERFECT, None, label="binary without text")
    no_text.init = "contrastive_binary"
    _, metrics = report_of([no_text], tmp_path / "no-text")
    entry = next(e for e in metrics["table2"] if e["method"] == "contrastive_binary")
    assert entry["encoders"] == ["binary without text"] and entry["missing"].startswith("text-image:")


def test_table2_is_only_for_the_official_protocol(tmp_path: Path) -> None:
    report = evaluate_lists([encoder("convirt", "convirt", texts=True)], LISTS, ks=[5], protocol="labelled")
    files = write_report(report, tmp_path)
    markdown = files["markdown"].read_text()
    assert "(paper)" not in markdown and "Rows of Table 2" not in markdown
    assert "table2" not in json.loads(files["metrics"].read_text())
    assert [entry["method"] for entry in table2(report)] == list(RETRIEVAL_ROWS)  # still computable


def test_pair_scorer_precision_by_hand() -> None:
    report = evaluate_lists([binary()], LISTS, ks=[5, 6, 10])
    text = next(r for r in report.results if r.task == "text_image")
    assert text.space == "h_v" and text.mean == pytest.approx({5: 0.0, 6: 0.0, 10: 40.0})
