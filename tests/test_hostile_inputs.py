"""A hostile-input corpus, generated here in the real on-disk layouts, through `convirt prepare` and pretraining.

Bad rows (thin, 1x1, NaN, constant 16-bit, truncated, bomb-sized, non-image, missing, symlinked-out and
outside-folder images; empty, header-only, control-character and HTML reports; duplicates; broken XML;
non-UTF-8 and semicolon tables; too few rows for a validation split) are mixed with good rows in a hospital CSV
export, a JSON Lines file, the COVID-19 collection's metadata.csv, the IU X-ray XML release and the MIMIC-CXR tree.
Every run must end without a traceback (exit 0, or 2 with one line), name each bad row with its reason in
dropped.csv, keep every good row, and the result must pretrain for a few steps.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from convirt.cli import main
from prepare_fixtures import COVID_COLUMNS, iu_report_xml, write_png_header

REPORTS = [
    "Heart size is normal. Lungs are clear.",
    "Mild cardiomegaly without edema. No pleural effusion.",
    "Left lower lobe opacity, likely atelectasis.",
    "No pneumothorax. Degenerative changes of the spine.",
    "Right upper lobe nodule measuring 8 mm. Recommend follow-up.",
    "Low lung volumes with bibasilar atelectasis.",
    "Endotracheal tube 4 cm above the carina. Lungs are clear.",
    "Small left pleural effusion, new since the prior study.",
    "Hyperinflated lungs, consistent with emphysema.",
    "Sternotomy wires are intact. Heart size is stable.",
    "Diffuse interstitial opacities, worse at the bases.",
    "Right basilar consolidation, concerning for pneumonia.",
]


def _image(path: Path, seed: int, width: int = 40, height: int = 30) -> Path:
    """A distinct, non-constant 8-bit picture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(path)
    return path


def _bad_images(folder: Path) -> dict[str, str]:
    """Every kind of bad image file, by name -> the reason prepare must give."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (3, 10000), dtype=np.uint8)).save(folder / "thin.png")
    Image.fromarray(np.array([[9]], dtype=np.uint8)).save(folder / "one.png")
    Image.fromarray(np.full((40, 40), np.nan, dtype=np.float32), mode="F").save(folder / "nan.tif")
    Image.fromarray(np.full((40, 40), 3000, dtype=np.uint16)).save(folder / "flat16.png")
    whole = _image(folder / "whole.png", 2).read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    write_png_header(folder / "bomb.png", 20_000, 20_000)
    (folder / "notimage.png").write_text("this is a text file with an image name\n")
    return {
        "thin.png": "image_too_small",
        "one.png": "image_too_small",
        "nan.tif": "blank_image",
        "flat16.png": "blank_image",
        "truncated.png": "unreadable_image",
        "bomb.png": "unreadable_image",
        "notimage.png": "unreadable_image",
    }


def _run(capsys, *args: str) -> tuple[int, str, str]:
    """`convirt prepare ...` through the CLI entry: exit status, stdout, stderr; no warning may reach the console."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["prepare", *args, "--workers", "1", "--no-progress"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    leaked = [str(w.message) for w in caught if "Decompression" in str(w.category) or w.category is RuntimeWarning]
    assert not leaked
    return code, out, err


def _outcome(output: Path) -> tuple[set[str], dict[str, str], dict[str, str]]:
    """Kept study ids, dropped study id -> reason, dropped study id -> detail."""
    manifest = pd.read_csv(output / "manifest.csv", dtype=str, keep_default_na=False)
    dropped = pd.read_csv(output / "dropped.csv", dtype=str, keep_default_na=False)
    assert json.loads((output / "prepare_report.json").read_text())["pairs_kept"] == len(manifest)
    return (
        set(manifest["study_id"]),
        dict(zip(dropped["study_id"], dropped["reason"])),
        dict(zip(dropped["study_id"], dropped["detail"])),
    )


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> dict:
    """A hospital CSV export: 12 good studies and one bad row per kind of bad input."""
    root = tmp_path_factory.mktemp("hostile")
    export, outside = root / "export", root / "outside"
    bad = _bad_images(export / "bad")
    _image(outside / "x.png", 3)
    _image(outside / "linked.png", 4)
    (export / "bad" / "link.png").symlink_to(outside / "linked.png")
    rows = []
    for i, text in enumerate(REPORTS, 1):
        rows.append({"accession": f"g{i:02d}", "mrn": f"P{i:02d}", "paths": f"img/good{i:02d}.png", "report": text})
        _image(export / "img" / f"good{i:02d}.png", 100 + i)
    rows[1]["report"] = "Heart \x07size \x1b[31mnormal\x1b[0m.\x00 No effusion."  # control characters, kept clean
    rows[2]["report"] = "<b>FINDINGS:</b> Mild cardiomegaly.<br>No edema. <p>IMPRESSION:</p><p>Stable.</p>"
    rows[3]["paths"] += "|img/gone-too.png"  # one image missing: the pair keeps the other
    rows[4]["paths"] += "|bad/bomb.png"  # one image refused: the pair keeps the other
    expected = {}
    for name, reason in bad.items():
        study = "b_" + name.split(".")[0]
        rows.append({"accession": study, "mrn": study, "paths": f"bad/{name}", "report": REPORTS[0] + " " + study})
        expected[study] = reason
    for study, path, text, reason in [
        ("b_missing", "img/gone.png", REPORTS[1], "missing_image"),
        ("b_link", "bad/link.png", REPORTS[2], "image_outside_input"),
        ("b_up", "../outside/x.png", REPORTS[3], "image_outside_input"),
        ("b_abs", str(outside / "x.png"), REPORTS[4], "image_outside_input"),
        ("b_passwd", "../../../../../../../../etc/passwd", REPORTS[5], "image_outside_input"),
        ("b_empty", "img/good01.png", "", "empty_text"),
        ("b_controls_only", "img/good02.png", "\x07\x1b[0m\x00 \x08", "empty_text"),
        ("b_html_only", "img/good03.png", "<p></p><br/><b> </b>", "empty_text"),
        ("b_short", "img/good04.png", "Normal.", "too_few_tokens"),
        ("b_headers_only", "img/good05.png", "INDICATION: Pain.\nCOMPARISON: None.", "no_findings_impression"),
        ("b_no_image", "", REPORTS[6], "no_image"),
        ("b_duplicate", "img/good01.png", REPORTS[0], "duplicate_pair"),
    ]:
        rows.append({"accession": study, "mrn": study, "paths": path, "report": text})
        expected[study] = reason
    pd.DataFrame(rows).to_csv(export / "export.csv", index=False)
    return {"root": root, "export": export, "expected": expected, "good": {f"g{i:02d}" for i in range(1, 13)}}


def test_hospital_export(hospital, capsys):
    output = hospital["root"] / "prepared"
    code, out, _ = _run(capsys, "csv", "--input", str(hospital["export"] / "export.csv"), "--output", str(output),
                        "--image-column", "paths", "--text-column", "report", "--patient-column", "mrn",
                        "--study-column", "accession", "--image-size", "64", "--val-size", "3",
                        "--strict-paths")  # fmt: skip
    assert code == 0
    kept, reasons, details = _outcome(output)
    assert kept == hospital["good"]
    assert reasons == hospital["expected"]
    for study, reason in reasons.items():  # each image failure names the file
        if reason in ("image_too_small", "blank_image", "unreadable_image", "missing_image", "image_outside_input"):
            assert "/" in details[study] and ": " in details[study], study
    manifest = pd.read_csv(output / "manifest.csv", dtype=str, keep_default_na=False).set_index("study_id")
    assert manifest.loc["g02", "text"].split("\n") == ["Heart size normal.", "No effusion."]
    assert manifest.loc["g03", "text"].split("\n") == ["Mild cardiomegaly.", "No edema.", "Stable."]
    assert manifest.loc["g04", "images"] == "images/img/good04.png"  # its missing second image is named
    assert manifest.loc["g05", "images"] == "images/img/good05.png"  # its bomb is named
    images = json.loads((output / "prepare_report.json").read_text())["images"]
    assert str(hospital["export"] / "img" / "gone-too.png") in {e["path"] for e in images["missing"]}
    assert str(hospital["export"] / "bad" / "bomb.png") in {e["path"] for e in images["unreadable"]}
    assert not manifest["text"].str.contains(r"[\x00-\x08\x0b-\x1f\x7f<>]").any()
    assert (manifest["split"] == "val").sum() == 3
    assert "images also" in out and "outside the input folders (refused)" in out


def test_hospital_export_pretrains_with_hand_written_bad_rows(hospital, tiny_bert_dir, tmp_path, capsys):
    """The prepared export trains; so does a hand-written manifest that adds thin, 1x1, NaN and bomb images."""
    prepared = hospital["root"] / "prepared"
    if not (prepared / "manifest.csv").is_file():
        pytest.skip("test_hospital_export did not run first")
    frame = pd.read_csv(prepared / "manifest.csv", dtype=str, keep_default_na=False)
    frame["images"] = [str(prepared / p) for p in frame["images"]]
    bad = hospital["export"] / "bad"
    names = [("thin.png", "train"), ("one.png", "train"), ("nan.tif", "train"), ("bomb.png", "train"),
             ("thin.png", "val"), ("one.png", "val")]  # fmt: skip
    extra = [
        {"images": str(bad / name), "text": REPORTS[i], "patient_id": f"x{i}", "study_id": f"x{i}", "split": split}
        for i, (name, split) in enumerate(names)
    ]
    train = pd.concat([frame[frame["split"] == "train"].head(3), pd.DataFrame(extra[:4])])
    manifest = tmp_path / "manifest.csv"
    pd.concat([train, frame[frame["split"] == "val"], pd.DataFrame(extra[4:])]).to_csv(manifest, index=False)
    run = tmp_path / "run"
    overrides = {
        "data.manifest": manifest,
        "model.image_encoder": "resnet18",
        "model.image_weights": "none",
        "model.text_encoder": tiny_bert_dir,
        "model.freeze_layers": 1,
        "model.projection_dim": 16,
        "data.batch_size": 4,
        "data.num_workers": 0,
        "data.on_bad_image": "skip",
        "data.augment.output_size": 32,
        "data.augment.blur_kernel_size": 9,
        "train.output_dir": run,
        "train.val_every_steps": 2,
        "train.max_evals": 1,
        "train.accelerator": "cpu",
        "train.precision": "32",
        "train.progress_bar": False,
        "train.tensorboard": False,
        "train.checkpoint_every_steps": 2,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "skipping unreadable image": counted in the summary below
        code = main(["pretrain", *(f"{k}={v}" for k, v in overrides.items())])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and np.isfinite(summary["best_val_loss"])
    assert summary["skipped_images"] >= 1  # the bomb, drawn at this seed, skipped instead of crashing
    assert set((run / "skipped_images.txt").read_text().split()) == {str(bad / "bomb.png")}


def test_encoding_semicolons_jsonl_and_a_table_too_small_to_validate(tmp_path, capsys):
    root = tmp_path / "tables"
    for i in range(4):
        _image(root / f"a{i}.png", 200 + i)
    latin = [{"image": f"a{i}.png", "text": f"{REPORTS[i]} Caf\xe9 au lait.", "patient_id": f"p{i}"} for i in range(4)]
    pd.DataFrame(latin).to_csv(root / "latin.csv", index=False, encoding="cp1252")
    code, _, err = _run(capsys, "csv", "--input", str(root / "latin.csv"), "--output", str(tmp_path / "o1"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "latin.csv line 2" in err and "byte 0xe9 is not valid utf-8 text" in err and "--encoding cp1252" in err
    code, _, _ = _run(capsys, "csv", "--input", str(root / "latin.csv"), "--output", str(tmp_path / "o1"),
                      "--encoding", "cp1252", "--val-size", "1")  # fmt: skip
    assert code == 0 and _outcome(tmp_path / "o1")[0] == {"row1", "row2", "row3", "row4"}

    semicolon = "".join(f"a{i}.png;{REPORTS[i]};p{i}\n" for i in range(4))
    (root / "semi.csv").write_text("image;text;patient_id\n" + semicolon, encoding="utf-8")
    code, out, _ = _run(capsys, "csv", "--input", str(root / "semi.csv"), "--output", str(tmp_path / "o2"),
                        "--val-size", "1")  # fmt: skip
    assert code == 0 and len(_outcome(tmp_path / "o2")[0]) == 4 and "delimiter ';' detected" in out

    styled = "<p>IMPRESSION:</p> No \x1b[1macute\x1b[0m disease."
    records = [{"study_id": "j1", "images": ["a0.png", "bad.png"], "text": REPORTS[0]},
               {"study_id": "j2", "images": [], "text": REPORTS[1]},
               {"study_id": "j3", "images": ["a1.png"], "text": styled}]  # fmt: skip
    (root / "bad.png").write_bytes(b"GIF89a broken")
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    code, out, err = _run(capsys, "jsonl", "--input", str(root / "pairs.jsonl"), "--output", str(tmp_path / "o3"))
    kept, reasons, _ = _outcome(tmp_path / "o3")
    assert code == 0 and kept == {"j1", "j3"} and reasons == {"j2": "no_image"}
    assert "warning: no validation pairs: --val-size 0.1 of 2 pairs gives none" in err  # and pretraining needs them
    manifest = pd.read_csv(tmp_path / "o3" / "manifest.csv", dtype=str, keep_default_na=False).set_index("study_id")
    assert manifest.loc["j3", "text"] == "No acute disease." and manifest.loc["j1", "n_images"] == "1"

    (root / "broken.jsonl").write_text(json.dumps(records[0]) + "\n{not json\n")
    code, _, err = _run(capsys, "jsonl", "--input", str(root / "broken.jsonl"), "--output", str(tmp_path / "o4"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "broken.jsonl line 2 is not valid JSON" in err


def test_covid_collection_layout(tmp_path, capsys):
    root = tmp_path / "covid"
    bad = _bad_images(root / "images")
    rows, expected, good = [], {}, set()
    for i in range(3):
        _image(root / "images" / f"ok{i}.png", 300 + i)
        rows.append((f"{i}", "0", "PA", "X-ray", f"ok{i}.png", REPORTS[i]))
        good.add(f"covid-{i}-01")
    for j, (name, reason) in enumerate(bad.items(), 10):
        rows.append((f"{j}", "1", "AP", "X-ray", name, REPORTS[j % 12] + f" Case {j}."))
        expected[f"covid-{j}-01"] = reason
    rows += [("30", "2", "PA", "X-ray", "gone.jpg", REPORTS[3], "missing_image"),
             ("31", "2", "PA", "X-ray", "ok0.png", "", "empty_text"),
             ("32", "2", "PA", "X-ray", "ok1.png", "<b>\x07</b>", "empty_text"),
             ("33", "2", "Axial", "CT", "ok1.png", REPORTS[4], None)]  # fmt: skip
    records = []
    for patient, offset, view, modality, filename, notes, *reason in rows:
        record = dict.fromkeys(COVID_COLUMNS, "")
        record.update(patientid=patient, offset=offset, view=view, modality=modality, folder="images",
                      filename=filename, clinical_notes=notes)  # fmt: skip
        records.append(record)
        if reason and reason[0]:
            expected[f"covid-{patient}-01"] = reason[0]
    pd.DataFrame(records, columns=COVID_COLUMNS).to_csv(root / "metadata.csv", index=False)
    code, _, _ = _run(capsys, "covid-chestxray", "--input", str(root), "--output", str(tmp_path / "out"),
                      "--val-size", "1")  # fmt: skip
    kept, reasons, _ = _outcome(tmp_path / "out")
    assert code == 0 and kept == good and reasons == expected


def test_iu_xray_xml_layout(tmp_path, capsys):
    root = tmp_path / "iu"
    xml = root / "ecgen-radiology"
    xml.mkdir(parents=True)
    reports = {
        1: (REPORTS[0], "Normal chest.", ["CXR1_IM-0001-1001"]),
        2: ("Heart \x07size \x1b[2mnormal\x1b[0m.", "No \x00edema.", ["CXR2_IM-0002-1001"]),  # control characters
        3: ("&lt;b&gt;Clear&lt;/b&gt; lungs.", "Normal.", ["CXR3_IM-0003-1001"]),  # escaped markup
        4: (REPORTS[3], "Stable.", ["CXR4_IM-0004-1001"]),  # image file not delivered
        5: ("", "", ["CXR5_IM-0005-1001"]),  # comparison and indication only
        6: (REPORTS[5], "Atelectasis.", ["CXR6_IM-0006-1001"]),  # thin image
    }
    for uid, (findings, impression, images) in reports.items():
        (xml / f"{uid}.xml").write_text(iu_report_xml(uid, findings, impression, images), encoding="utf-8")
    (xml / "7.xml").write_text(iu_report_xml(7, REPORTS[6], "Normal.", ["CXR7_IM-0007-1001"])[:250])  # cut short
    for uid in (1, 2, 3, 5, 7):
        _image(root / "png" / f"CXR{uid}_IM-000{uid}-1001.png", 400 + uid)
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (2, 900), dtype=np.uint8)).save(
        root / "png" / "CXR6_IM-0006-1001.png"
    )
    code, _, _ = _run(capsys, "iu-xray", "--input", str(root), "--images", str(root / "png"), "--output",
                      str(tmp_path / "out"), "--val-size", "1")  # fmt: skip
    kept, reasons, details = _outcome(tmp_path / "out")
    assert code == 0 and kept == {"CXR1", "CXR2", "CXR3"}
    assert reasons == {"CXR7": "unreadable_report", "CXR5": "no_findings_impression", "CXR4": "missing_image",
                       "CXR6": "image_too_small"}  # fmt: skip
    assert "7.xml is not valid XML" in details["CXR7"] and "CXR4_IM-0004-1001" in details["CXR4"]
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype=str, keep_default_na=False).set_index("study_id")
    assert manifest.loc["CXR2", "text"].split("\n") == ["Heart size normal.", "No edema."]
    assert manifest.loc["CXR3", "text"].split("\n") == ["Clear lungs.", "Normal."]


def test_mimic_cxr_layout(tmp_path, capsys):
    root = tmp_path / "mimic"
    studies = {
        # study: (report, image writer)
        "50000001": ("FINAL REPORT\n FINDINGS: " + REPORTS[0] + "\n IMPRESSION: Normal.", "good"),
        "50000002": ("<p>FINDINGS:</p><p>" + REPORTS[1] + "</p><p>IMPRESSION:</p><p>Stable.</p>", "good"),
        "50000003": ("\x1b[1mFINDINGS:\x1b[0m " + REPORTS[2] + "\x07\n IMPRESSION: Atelectasis.", "good"),
        "50000004": ("FINDINGS: " + REPORTS[3] + "\n IMPRESSION: Normal.", "one"),  # 1x1 JPEG
        "50000005": ("INDICATION: Cough.\n COMPARISON: None.", "good"),  # no Findings/Impression
        "50000006": ("FINDINGS: " + REPORTS[4] + "\n IMPRESSION: Nodule.", "notimage"),
    }
    for k, (study, (report, kind)) in enumerate(studies.items()):
        subject = f"1000000{k}"
        folder = root / "files" / "p10" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True)
        (folder.parent / f"s{study}.txt").write_text(report, encoding="utf-8")
        image = folder / f"dicom{k}.jpg"
        if kind == "good":
            Image.fromarray(np.random.default_rng(k).integers(0, 256, (50, 60), dtype=np.uint8)).save(image)
        elif kind == "one":
            Image.fromarray(np.array([[80]], dtype=np.uint8)).save(image)
        else:
            image.write_bytes(b"\xff\xd8\xff not really a jpeg")
    code, _, _ = _run(capsys, "mimic-cxr", "--input", str(root), "--output", str(tmp_path / "out"),
                        "--val-size", "1")  # fmt: skip
    kept, reasons, _ = _outcome(tmp_path / "out")
    assert code == 0 and kept == {"s50000001", "s50000002", "s50000003"}
    assert reasons == {"s50000005": "no_findings_impression", "s50000004": "image_too_small",
                       "s50000006": "unreadable_image"}  # fmt: skip
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype=str, keep_default_na=False).set_index("study_id")
    assert manifest.loc["s50000002", "text"].split("\n") == ["Mild cardiomegaly without edema.",
                                                             "No pleural effusion.", "Stable."]  # fmt: skip
    assert manifest.loc["s50000003", "text"].split("\n") == ["Left lower lobe opacity, likely atelectasis.",
                                                             "Atelectasis."]  # fmt: skip
    assert os.path.isfile(tmp_path / "out" / "images" / "files" / "p10" / "p10000000" / "s50000001" / "dicom0.png")
