"""`convirt prepare iu-xray`: the Open-i XML release (folder or .tgz) and the CSV export, fixture and real text."""

from __future__ import annotations

import tarfile

import pandas as pd
import pytest

from convirt.errors import ConfigError
from convirt.prepare import prepare
from prepare_fixtures import iu_report_xml, shared_folder, write_image


def _open_i(root, as_tgz=False):
    """Open-i layout: ecgen-radiology/<n>.xml (or NLMCXR_reports.tgz) and the PNGs extracted from NLMCXR_png.tgz."""
    reports = {
        1: ("The heart is normal. There is a 2.5 cm nodule.", "1. Nodule. 2. No effusion.", ["CXR1_1_IM-0001-3001",
                                                                                             "CXR1_1_IM-0001-4001"]),
        2: ("", "Normal chest x-XXXX.", ["CXR2_IM-0652-1001"]),
        3: ("", "", ["CXR3_IM-1384-1001"]),  # nothing kept
        4: ("Clear lungs.", "Normal chest", []),  # no image in the report
        5: ("", "Cardiomegaly.", ["CXR5_IM-2117-1003"]),  # 2 tokens
        6: ("No pneumothorax. XXXX are intact.", "", ["CXR6_IM-2192-1001"]),  # image file not delivered
    }  # fmt: skip
    xml_dir = root / "ecgen-radiology"
    xml_dir.mkdir(parents=True)
    for uid, (findings, impression, images) in reports.items():
        (xml_dir / f"{uid}.xml").write_text(iu_report_xml(uid, findings, impression, images), encoding="utf-8")
    if as_tgz:
        with tarfile.open(root / "NLMCXR_reports.tgz", "w:gz") as archive:
            archive.add(xml_dir, arcname="ecgen-radiology")
        for path in xml_dir.iterdir():
            path.unlink()
        xml_dir.rmdir()
    for name in ("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_IM-0652-1001", "CXR3_IM-1384-1001",
                 "CXR5_IM-2117-1003"):  # fmt: skip
        write_image(root / "NLMCXR_png" / f"{name}.png", 50, 60)
    return root


@pytest.mark.parametrize("as_tgz", [False, True])
def test_iu_xml_release(tmp_path, as_tgz):
    raw = _open_i(tmp_path / "iu", as_tgz)
    out = tmp_path / "out"
    report = prepare("iu-xray", raw, out, val_size=0, workers=1, progress=False)
    assert report.pairs_in == 6 and report.pairs_kept == 2
    assert {k: v for k, v in report.dropped.items() if v} == {
        "no_findings_impression": 1,  # CXR3 has only COMPARISON and INDICATION
        "too_few_tokens": 1,
        "no_image": 1,
        "missing_image": 1,
    }
    assert report.dropped_examples["too_few_tokens"] == ["CXR5"]
    assert report.dropped_examples["no_image"] == ["CXR4"]
    assert report.dropped_examples["missing_image"] == ["CXR6"]
    assert report.images["missing"] == [
        {"path": "CXR6_IM-2192-1001", "reason": "no file found for this image reference"}
    ]
    rows = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False).set_index("study_id")
    assert rows.loc["CXR1", "text"].split("\n") == ["The heart is normal.", "There is a 2.5 cm nodule.", "Nodule.",
                                                    "No effusion."]  # fmt: skip
    assert (
        rows.loc["CXR1", "images"]
        == "images/NLMCXR_png/CXR1_1_IM-0001-3001.png|images/NLMCXR_png/CXR1_1_IM-0001-4001.png"
    )
    assert rows.loc["CXR2", "text"] == "Normal chest x-XXXX."
    assert rows["patient_id"].to_dict() == {"CXR1": "CXR1", "CXR2": "CXR2"}  # one patient per report


def test_iu_csv_export_with_frontal_filter(tmp_path):
    raw = tmp_path / "kaggle"
    raw.mkdir()
    pd.DataFrame(
        {
            "uid": ["1", "2", "3"],
            "MeSH": ["normal", "Cardiomegaly", "normal"],
            "Problems": ["normal", "Cardiomegaly", "normal"],
            "image": ["Xray Chest PA and Lateral"] * 3,
            "indication": ["Positive TB test", "Preop", ""],
            "comparison": ["None.", "None.", ""],
            "findings": ["The cardiac silhouette is normal. There is no pulmonary edema.", "", ""],
            "impression": ["Normal chest x-XXXX.", "Borderline cardiomegaly. Midline sternotomy XXXX.", ""],
        }
    ).to_csv(raw / "indiana_reports.csv", index=False)
    pd.DataFrame(
        {
            "uid": ["1", "1", "2", "2", "3"],
            "filename": ["1_IM-0001-4001.dcm.png", "1_IM-0001-3001.dcm.png", "2_IM-0652-1001.dcm.png",
                         "2_IM-0652-2001.dcm.png", "3_IM-1384-1001.dcm.png"],
            "projection": ["Frontal", "Lateral", "Frontal", "Lateral", "Frontal"],
        }
    ).to_csv(raw / "indiana_projections.csv", index=False)  # fmt: skip
    for name in ("1_IM-0001-4001", "1_IM-0001-3001", "2_IM-0652-1001", "2_IM-0652-2001", "3_IM-1384-1001"):
        write_image(raw / "images" / "images_normalized" / f"{name}.dcm.png", 40, 40)

    out = tmp_path / "out"
    report = prepare("iu-xray", raw, out, views="frontal", val_size=0, workers=1, progress=False)
    assert report.source_stats["image_references_after_view_filter"] == 3
    assert report.pairs_kept == 2 and report.dropped["empty_text"] == 1
    rows = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False).set_index("study_id")
    assert rows.loc["CXR1", "images"] == "images/images/images_normalized/1_IM-0001-4001.dcm.png"
    assert rows.loc["CXR2", "text"].split("\n") == ["Borderline cardiomegaly.", "Midline sternotomy XXXX."]

    with pytest.raises(ConfigError, match="does not say which image is frontal"):
        prepare("iu-xray", _open_i(tmp_path / "xml"), tmp_path / "o2", views="frontal")


def test_real_iu_reports_text_figures(tmp_path):
    raw = shared_folder("iu-xray-reports")
    report = prepare("iu-xray", raw, tmp_path / "out", workers=1, progress=False)
    # The shared copy has the reports only, no images: every pair with text ends as "missing image", and the
    # report still gives the text figures and names every missing image.
    assert report.pairs_in == 3955 and report.pairs_kept == 0
    assert report.text["reports_with_findings_or_impression"] == 3927
    assert report.text["share_with_findings_or_impression"] == pytest.approx(0.9929, abs=1e-4)
    assert report.text["pairs_after_text_filters"] == 3927
    assert 5.5 < report.text["sentences_per_pair"]["mean"] < 6.2
    assert {k: v for k, v in report.dropped.items() if v} == {"empty_text": 28, "no_image": 101, "missing_image": 3826}
    # Named: every image id of the 3927 reports that passed the text filters (counted from the XML by hand: 7430).
    missing = report.images["missing"]
    assert len(missing) == 7430 and missing[0]["path"] == "CXR1000_IM-0003-1001"
