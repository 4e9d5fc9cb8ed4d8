"""`convirt prepare csv|jsonl`: any table of pairs, one or many images per row, named columns, clear errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from convirt.cli import main
from convirt.data.manifest import read_paired_manifest
from convirt.errors import ManifestError
from convirt.prepare import prepare
from prepare_fixtures import write_image


@pytest.fixture()
def export(tmp_path):
    """A hospital-style export: several images per row in one cell, a second row for one study, a full report."""
    root = tmp_path / "export"
    for name in ("a1.png", "a2.png", "b1.jpg", "c1.png", "d1.png", "e1.png"):
        write_image(root / "img" / name, 30, 20)
    (root / "img" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # header only: undecodable
    rows = [
        {"accession": "A", "mrn": "P1", "paths": "img/a1.png;img/a2.png", "body_part": "knee",
         "report": "FINDINGS: Joint space narrowing. No fracture.\nIMPRESSION: Osteoarthritis."},
        {"accession": "B", "mrn": "P1", "paths": "img/b1.jpg", "body_part": "hand",
         "report": "No fracture or dislocation. Soft tissues are normal."},  # no headers: auto keeps the whole text
        {"accession": "C", "mrn": "P2", "paths": "img/c1.png", "body_part": "hip",
         "report": "INDICATION: Pain.\nCOMPARISON: None."},  # headers but no Findings/Impression
        {"accession": "D", "mrn": "P3", "paths": "img/bad.png", "body_part": "wrist",
         "report": "Distal radius fracture with dorsal angulation."},
        {"accession": "A", "mrn": "P1", "paths": "img/d1.png", "body_part": "knee",
         "report": "FINDINGS: Joint space narrowing. No fracture.\nIMPRESSION: Osteoarthritis."},  # same study again
        {"accession": "E", "mrn": "P4", "paths": "img/e1.png|img/nope.png", "body_part": "elbow",
         "report": "Elbow effusion is present."},
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "export.csv", index=False)
    return root


def test_csv_named_columns(export, tmp_path):
    out = tmp_path / "out"
    report = prepare("csv", export / "export.csv", out, image_columns=["paths"], text_columns=["report"],
                     patient_column="mrn", study_column="accession", val_size=0, workers=1, progress=False)  # fmt: skip
    assert report.source_stats["rows"] == 6 and report.pairs_in == 5
    assert report.pairs_kept == 3
    assert report.dropped_examples == {"no_findings_impression": ["C"], "unreadable_image": ["D"]}
    assert [m["path"] for m in report.images["missing"]] == [str(export / "img" / "nope.png")]
    assert [u["path"] for u in report.images["unreadable"]] == [str(export / "img" / "bad.png")]
    rows = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False).set_index("study_id")
    assert rows.loc["A", "images"] == "images/img/a1.png|images/img/a2.png|images/img/d1.png"
    assert rows.loc["A", "text"].split("\n") == ["Joint space narrowing.", "No fracture.", "Osteoarthritis."]
    assert rows.loc["B", "text"].split("\n") == ["No fracture or dislocation.", "Soft tissues are normal."]
    assert rows.loc["E", "images"] == "images/img/e1.png"  # the missing second image is named, the pair kept
    assert rows["patient_id"].to_dict() == {"A": "P1", "B": "P1", "E": "P4"}
    assert len(read_paired_manifest(out / "manifest.csv")) == 3


def test_csv_missing_columns_lists_what_it_has(export, tmp_path):
    with pytest.raises(ManifestError) as error:
        prepare("csv", export / "export.csv", tmp_path / "out", image_columns=["image_path"], text_columns=["report"])
    message = str(error.value)
    assert "missing column(s) ['image_path']" in message
    assert "it has ['accession', 'mrn', 'paths', 'body_part', 'report']" in message
    # Without a name and no default column present, the error also lists the columns.
    pd.DataFrame({"accession": ["A"], "img": ["img/a1.png"], "report": ["No fracture."]}).to_csv(
        export / "other.csv", index=False
    )
    with pytest.raises(ManifestError, match=r"no image column .* it has \['accession', 'img', 'report'\]"):
        prepare("csv", export / "other.csv", tmp_path / "out")
    # The default names are found on their own ("paths", "report").
    assert prepare("csv", export / "export.csv", tmp_path / "out", workers=1, progress=False).pairs_kept == 3
    # Through the CLI: one line on stderr, exit status 2.
    code = main(["prepare", "csv", "--input", str(export / "export.csv"), "--output", str(tmp_path / "o"),
                 "--image-column", "paths", "--text-column", "impression"])  # fmt: skip
    assert code == 2


def test_jsonl_lists_sections_columns_and_official_split(tmp_path):
    root = tmp_path / "msk"
    for name in ("s1a.png", "s1b.png", "s1c.png", "s2.png", "s3.png"):
        write_image(root / "images" / name, 24, 32)
    records = [
        {"study_id": "1", "patient_id": "p1", "images": ["images/s1a.png", "images/s1b.png", "images/s1c.png"],
         "findings": "Mild degenerative change. No fracture.", "impression": "No acute osseous abnormality.",
         "split": "train"},
        {"study_id": "2", "patient_id": "p2", "images": ["images/s2.png"], "findings": "",
         "impression": "Healing fracture of the 5th metatarsal.", "split": "valid"},
        {"study_id": "3", "patient_id": "p3", "images": ["images/s3.png"], "findings": "Soft tissue swelling.",
         "impression": "", "split": "test"},
    ]  # fmt: skip
    with open(root / "pairs.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    out = tmp_path / "out"
    report = prepare("jsonl", root, out, text_columns=["findings", "impression"], split_mode="official", workers=1,
                     progress=False)  # fmt: skip
    assert report.pairs_kept == 3
    assert report.images_per_pair["mean"] == pytest.approx(5 / 3, abs=1e-3)
    assert report.splits["train"]["pairs"] == report.splits["val"]["pairs"] == report.splits["test"]["pairs"] == 1
    rows = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False).set_index("study_id")
    assert rows.loc["1", "text"].split("\n") == ["Mild degenerative change.", "No fracture.",
                                                 "No acute osseous abnormality."]  # fmt: skip
    assert rows.loc["1", "images"].count("|") == 2
    assert rows["split"].to_dict() == {"1": "train", "2": "val", "3": "test"}
