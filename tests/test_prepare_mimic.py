"""`convirt prepare mimic-cxr` on a tiny fixture in the exact MIMIC-CXR-JPG v2 + reports layout."""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from convirt.data.manifest import read_paired_manifest
from convirt.errors import ConfigError
from convirt.prepare import prepare
from prepare_fixtures import MIMIC_REPORTS, make_mimic, write_dicom

STUDY_DIR = "files/p10/p10000032/s50414267"


@pytest.fixture()
def mimic_raw(tmp_path):
    return make_mimic(tmp_path / "mimic-cxr-jpg")


def _manifest(out):
    return pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False).set_index("study_id")


def test_mimic_sections_filters_and_figures(mimic_raw, tmp_path):
    out = tmp_path / "out"
    report = prepare("mimic-cxr", mimic_raw, out, val_size=0, workers=1, progress=False)

    assert report.source_stats == {
        "images_in_metadata": 9,
        "images_after_view_filter": 9,
        "studies": 6,
        "studies_with_report": 6,
        "official_split": "yes",
    }
    assert report.pairs_in == 6 and report.pairs_kept == 4
    assert {k: v for k, v in report.dropped.items() if v} == {"no_findings_impression": 1, "too_few_tokens": 1}
    assert report.dropped_examples == {"no_findings_impression": ["s50578979"], "too_few_tokens": ["s51178377"]}
    # FINDINGS AND IMPRESSION counts as Findings; "Impression: Normal." has an Impression (then fails 3 tokens).
    text = report.text
    assert (text["reports_with_findings"], text["reports_with_impression"]) == (4, 4)
    assert text["reports_with_findings_or_impression"] == 5

    rows = _manifest(out)
    assert rows.loc["s50414267", "text"].split("\n") == [
        "There is no focal consolidation, pleural effusion or pneumothorax.",
        "Bilateral nodular opacities that most likely represent nipple shadows.",
        "The cardiomediastinal silhouette is normal.",
        "Clips project over the left lung, potentially within the breast.",
        "The imaged upper abdomen is unremarkable.",
        "Chronic deformity of the posterior left sixth and seventh ribs are noted.",
        "No acute cardiopulmonary process.",
    ]
    # Wet read left out; the decimal, "Dr. ___" and "a.m." survive; the numbered impression loses its markers.
    assert rows.loc["s53189527", "text"].split("\n") == [
        "Frontal and lateral views of the chest demonstrate a 2.5 cm nodular opacity in the right upper lobe, "
        "unchanged since ___.",
        "Dr. ___ was notified at 10:30 a.m. on ___.",
        "Stable 2.5 cm right upper lobe nodule.",
        "No pneumonia.",
    ]
    assert rows.loc["s57375967", "text"].split("\n") == [
        "Heart size is normal.",
        "Lungs are clear.",
        "No pleural effusion.",
    ]
    assert rows.loc["s54577367", "text"].split("\n") == [
        "Mild pulmonary vascular congestion.",
        "Mild interstitial edema, new since prior.",
    ]
    assert rows.loc["s50414267", "images"] == (
        f"images/{STUDY_DIR}/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.png|"
        f"images/{STUDY_DIR}/174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962.png"
    )
    assert rows.loc["s50414267", "view_positions"] == "PA|LATERAL"
    assert rows.loc["s50414267", "patient_id"] == "p10000032"
    assert report.images_per_pair["mean"] == 1.75  # 2, 2, 1, 2
    assert report.sentences_per_pair["mean"] == 4.0  # 7, 4, 3, 2
    cached = Image.open(out / "images" / STUDY_DIR / "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.png")
    assert cached.size == (256, 213) and cached.mode == "L"
    assert len(read_paired_manifest(out / "manifest.csv", split="train")) == 4


def test_mimic_frontal_views_and_official_split(mimic_raw, tmp_path):
    out = tmp_path / "out"
    report = prepare("mimic-cxr", mimic_raw, out, views="frontal", split_mode="official", workers=1, progress=False)
    assert report.source_stats["images_after_view_filter"] == 6  # 3 PA + 3 AP; LATERAL x2 and LL are left out
    rows = _manifest(out)
    assert all("|" not in cell for cell in rows["images"])
    assert rows["split"].to_dict() == {
        "s50414267": "train",
        "s53189527": "train",
        "s57375967": "val",
        "s54577367": "train",
    }
    assert report.splits["val"] == {"pairs": 1, "patients": 1, "images": 1}


def test_mimic_random_split_is_by_patient_and_seeded(mimic_raw, tmp_path):
    splits = []
    for seed in (0, 0, 1, 2, 3):
        out = tmp_path / f"out{seed}"
        prepare("mimic-cxr", mimic_raw, out, val_size=1, seed=seed, workers=1, progress=False)
        rows = _manifest(out)
        # p10000032 has two pairs, so it can never be the single validation pair.
        assert rows.loc[["s50414267", "s53189527"], "split"].tolist() == ["train", "train"]
        assert (rows["split"] == "val").sum() == 1
        splits.append(rows["split"].to_dict())
    assert splits[0] == splits[1]  # same seed, same split


def test_mimic_reports_elsewhere_zip_missing_image_and_dicom(tmp_path):
    raw = tmp_path / "jpg"
    reports = tmp_path / "reports"
    make_mimic(raw, reports_in_tree=False, reports_dir=reports)
    # The reports as PhysioNet ships them: mimic-cxr-reports.zip with files/pXX/pXXXXXXXX/sXXXXXXXX.txt.
    archive = tmp_path / "mimic-cxr-reports.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(reports.rglob("*.txt")):
            handle.write(path, path.relative_to(reports).as_posix())
    # One image missing on disk; one study's image only as DICOM (MONOCHROME1, rescaled).
    (raw / STUDY_DIR / "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962.jpg").unlink()
    dicom_dir = raw / "files/p10/p10000764/s57375967"
    (dicom_dir / "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4.jpg").unlink()
    write_dicom(dicom_dir / "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4.dcm", width=48, height=32)

    for source in (reports, archive):
        out = tmp_path / f"out-{source.name}"
        report = prepare("mimic-cxr", raw, out, reports_dir=source, val_size=0, workers=1, progress=False)
        assert report.pairs_kept == 4 and report.source_stats["studies_with_report"] == len(MIMIC_REPORTS)
        assert [m["path"] for m in report.images["missing"]] == [
            str(raw / STUDY_DIR / "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962.jpg")
        ]
        rows = _manifest(out)
        assert rows.loc["s50414267", "n_images"] == "1"
        dicom = np.asarray(Image.open(out / "images/files/p10/p10000764/s57375967/"
                                      "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4.png"))  # fmt: skip
        assert dicom.shape == (171, 256)
        # MONOCHROME1 is inverted: the stored ramp rises left to right, the cached image falls.
        assert dicom[-1, 5] > 200 and dicom[-1, -5] < 60


def test_mimic_without_metadata_walks_files(mimic_raw, tmp_path):
    (mimic_raw / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    report = prepare("mimic-cxr", mimic_raw, tmp_path / "out", val_size=0, workers=1, progress=False)
    assert report.source_stats["images_found"] == 9 and report.pairs_kept == 4
    assert "not found: images found by walking files/" in report.notes[0]
    with pytest.raises(ConfigError, match=r"views='frontal' needs mimic-cxr-2\.0\.0-metadata\.csv\.gz"):
        prepare("mimic-cxr", mimic_raw, tmp_path / "out2", views="frontal", workers=1, progress=False)


def test_mimic_wrong_folder_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="has no files/ folder"):
        prepare("mimic-cxr", tmp_path, tmp_path / "out")
