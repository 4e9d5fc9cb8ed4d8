"""Bad inputs `convirt prepare` names instead of passing silently or crashing."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from convirt.cli import main
from convirt.data.manifest import read_paired_manifest
from convirt.data.paired import PairedDataset
from convirt.data.transforms import resize_transform
from convirt.errors import ConfigError, ManifestError
from convirt.prepare import prepare
from convirt.prepare.image_cache import STAMP_KEY
from prepare_fixtures import iu_report_xml, write_image, write_png_header

REPORT = "Heart size is normal. No effusion."


def _table(root, rows, name="pairs.csv"):
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / name, index=False)
    return root / name


def _dropped(out):
    frame = pd.read_csv(out / "dropped.csv", dtype=str, keep_default_na=False)
    return dict(zip(frame["study_id"], zip(frame["reason"], frame["detail"])))


def test_thin_tiny_blank_and_bomb_images_are_dropped_with_their_reason(tmp_path):
    raw = tmp_path / "raw"
    write_image(raw / "good.png", 40, 30)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (3, 10000), dtype=np.uint8)).save(raw / "thin.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 40), dtype=np.uint8)).save(raw / "strip.png")
    Image.fromarray(np.array([[7]], dtype=np.uint8)).save(raw / "one.png")
    Image.fromarray(np.full((40, 40), np.nan, dtype=np.float32), mode="F").save(raw / "nan.tif")
    Image.fromarray(np.full((40, 40), 1234, dtype=np.uint16)).save(raw / "flat16.png")
    write_png_header(raw / "bomb.png", 10_000, 10_000)
    names = ["good.png", "thin.png", "strip.png", "one.png", "nan.tif", "flat16.png", "bomb.png"]
    rows = [{"study_id": n.split(".")[0], "image": n, "text": f"{REPORT} Case {n}."} for n in names]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = prepare("csv", _table(raw, rows), tmp_path / "out", image_size=64, val_size=0, workers=1,
                         progress=False)  # fmt: skip
    assert not [w for w in caught if "DecompressionBomb" in str(w.category) or "NaN" in str(w.message)]
    assert report.pairs_kept == 1
    assert {k: v for k, v in report.dropped.items() if v} == {"unreadable_image": 1, "image_too_small": 3,
                                                               "blank_image": 2}  # fmt: skip
    dropped = _dropped(tmp_path / "out")
    assert dropped["thin"] == ("image_too_small", f"{raw / 'thin.png'}: 10000 x 3 px: shorter side under 16 px")
    # 40 px wide in the file, but 64 px tall in the cache leaves 13 px: a strip the encoder cannot use
    assert dropped["strip"][1].endswith("40 x 200 px, cached as 13 x 64: shorter side under 16 px")
    assert dropped["one"][0] == "image_too_small"
    assert dropped["nan"] == ("blank_image", f"{raw / 'nan.tif'}: every pixel has the value 0 (a constant, "
                                             "empty or all-NaN image)")  # fmt: skip
    assert dropped["flat16"][0] == "blank_image"
    assert dropped["bomb"][0] == "unreadable_image" and "too large to decode safely" in dropped["bomb"][1]
    assert [e["path"] for e in report.images["too_small"]] == [str(raw / n) for n in ("one.png", "strip.png",
                                                                                       "thin.png")]  # fmt: skip
    # --min-image-size 0 keeps the strip and the thin image (the augmentation takes any size)
    relaxed = prepare("csv", raw / "pairs.csv", tmp_path / "out0", image_size=64, min_image_size=0, val_size=0,
                      workers=1, progress=False)  # fmt: skip
    assert relaxed.dropped["image_too_small"] == 0 and relaxed.pairs_kept == 3
    with pytest.raises(ConfigError, match=r"min_image_size must be between 0 and image_size \(64\), not 65"):
        prepare("csv", raw / "pairs.csv", tmp_path / "o", image_size=64, min_image_size=65)


def test_a_bomb_in_a_hand_written_manifest_is_skipped_when_asked(tmp_path):
    write_image(tmp_path / "good.png", 40, 30)
    write_png_header(tmp_path / "bomb.png", 20_000, 20_000)
    rows = [{"images": name, "text": REPORT, "patient_id": name, "study_id": name, "split": "train"}
            for name in ("bomb.png", "good.png")]  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    dataset = PairedDataset(read_paired_manifest(tmp_path / "manifest.csv"), resize_transform(16), "skip")
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*bomb\.png: refused, too large"):
        sample = dataset[(0, 3)]
    assert set(sample["skipped"]) == {str(tmp_path / "bomb.png")} and sample["index"] == 1


def test_encoding_and_delimiter(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_image(raw / "a.png")
    write_image(raw / "b.png")
    latin = "image,text,patient_id\na.png,Caf\xe9 au lait spots are seen.,p1\nb.png,Lungs are clear here.,p2\n"
    (raw / "latin.csv").write_bytes(latin.encode("latin-1"))
    code = main(["prepare", "csv", "--input", str(raw / "latin.csv"), "--output", str(tmp_path / "o1"),
                 "--no-progress"])  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1
    assert "latin.csv line 2 ('a.png,Caf\ufffd au lait spots are seen.,p1'): byte 0xe9 is not valid utf-8" in error[0]
    assert "--encoding cp1252" in error[0]
    report = prepare("csv", raw / "latin.csv", tmp_path / "o1", encoding="latin-1", val_size=0, workers=1,
                     progress=False)  # fmt: skip
    manifest = pd.read_csv(tmp_path / "o1" / "manifest.csv", dtype=str, keep_default_na=False)
    assert report.pairs_kept == 2 and manifest["text"][0] == "Caf\xe9 au lait spots are seen."

    # Semicolons (Excel on a European locale), with a byte-order mark: detected from the header line.
    semicolon = "\ufeffimage;text;patient_id\na.png;Heart normal, lungs clear;p1\nb.png;No effusion, no edema;p2\n"
    (raw / "semi.csv").write_bytes(semicolon.encode("utf-8"))
    report = prepare("csv", raw / "semi.csv", tmp_path / "o2", val_size=0, workers=1, progress=False)
    assert report.pairs_kept == 2 and "table semi.csv: delimiter ';' detected from the header line" in report.notes
    # A row with more fields than the header is named with its line and what to pass.
    (raw / "ragged.csv").write_text("image;text\na.png;Heart normal.\nb.png;No; effusion;here\n")
    with pytest.raises(ManifestError, match=r"ragged\.csv with the delimiter ';': line 3 has 4 fields where the "
                                            r"header has 2; .* delimiter=';'"):  # fmt: skip
        prepare("csv", raw / "ragged.csv", tmp_path / "o3")
    tab = prepare("csv", raw / "semi.csv", tmp_path / "o4", delimiter="\t", val_size=0, workers=1, progress=False,
                  image_columns=["image;text;patient_id"], text_columns=["image;text;patient_id"])  # fmt: skip
    assert tab.pairs_in == 2  # a delimiter given is used as given (here: one column)


def test_too_few_pairs_for_a_validation_split_is_a_warning(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_image(raw / "a.png")
    write_image(raw / "b.png")
    table = _table(raw, [{"image": "a.png", "text": REPORT}, {"image": "b.png", "text": "Lungs are clear here."}])
    code = main(["prepare", "csv", "--input", str(table), "--output", str(tmp_path / "out"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    warning = ("warning: no validation pairs: --val-size 0.1 of 2 pairs gives none; `convirt pretrain` needs "
               "validation rows: give a count such as --val-size 1, or more data")  # fmt: skip
    assert warning in captured.err and f"note: {warning}" in captured.out
    assert prepare("csv", table, tmp_path / "out", val_size=1, workers=1, progress=False).splits["val"]["pairs"] == 1
    assert not any("validation" in n for n in prepare("csv", table, tmp_path / "out", val_size=0, workers=1).notes)


def test_a_changed_source_is_cached_again_and_an_unchanged_one_reused(tmp_path):
    raw = tmp_path / "raw"
    write_image(raw / "a.png", 40, 30)
    write_image(raw / "b.png", 40, 30)
    table = _table(raw, [{"image": "a.png", "text": REPORT}, {"image": "b.png", "text": "Lungs are clear here."}])
    out = tmp_path / "out"
    first = prepare("csv", table, out, val_size=0, workers=1, progress=False)
    assert (first.images["written"], first.images["skipped"], first.images["recached"]) == (2, 0, 0)
    stamp = Image.open(out / "images" / "a.png").info[STAMP_KEY]
    assert stamp == f"{os.path.getsize(raw / 'a.png')} {os.stat(raw / 'a.png').st_mtime_ns}"
    b_written = (out / "images" / "b.png").stat().st_mtime_ns

    Image.fromarray(np.full((30, 40), 200, dtype=np.uint8) - np.eye(30, 40, dtype=np.uint8)).save(raw / "a.png")
    os.utime(raw / "a.png", ns=(0, os.stat(raw / "b.png").st_mtime_ns - 10**9))  # even an older time is a change
    second = prepare("csv", table, out, val_size=0, workers=1, progress=False)
    assert (second.images["written"], second.images["skipped"], second.images["recached"]) == (1, 1, 1)
    assert np.asarray(Image.open(out / "images" / "a.png")).max() == 200  # the new pixels
    assert (out / "images" / "b.png").stat().st_mtime_ns == b_written  # the unchanged one was not rewritten

    # A cache made before stamps were kept: reused while it is newer than its source, made again once it is not.
    Image.open(out / "images" / "b.png").save(out / "images" / "b.png")  # same pixels, no stamp
    third = prepare("csv", table, out, val_size=0, workers=1, progress=False)
    assert (third.images["skipped"], third.images["recached"]) == (2, 0)
    os.utime(raw / "b.png")  # touched: newer than the unstamped cache entry
    fourth = prepare("csv", table, out, val_size=0, workers=1, progress=False)
    assert (fourth.images["skipped"], fourth.images["recached"]) == (1, 1)
    assert STAMP_KEY in Image.open(out / "images" / "b.png").info

    # A source replaced by something that no longer decodes: its old pixels are not served from the cache.
    (raw / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    fifth = prepare("csv", table, out, val_size=0, workers=1, progress=False)
    assert fifth.pairs_kept == 1 and fifth.dropped["unreadable_image"] == 1
    assert not (out / "images" / "a.png").exists()


def test_paths_outside_the_input_folder_are_named_and_refused_when_strict(tmp_path, capsys):
    raw, elsewhere = tmp_path / "raw", tmp_path / "elsewhere"
    write_image(raw / "in.png")
    write_image(elsewhere / "x.png")
    write_image(elsewhere / "linked.png")
    (raw / "link.png").symlink_to(elsewhere / "linked.png")
    rows = [
        {"study_id": "in", "image": "in.png", "text": REPORT},
        {"study_id": "up", "image": "../elsewhere/x.png", "text": "Lungs are clear here."},
        {"study_id": "abs", "image": str(elsewhere / "x.png"), "text": "No pneumothorax is seen."},
        {"study_id": "link", "image": "link.png", "text": "The mediastinum is normal."},
        {"study_id": "passwd", "image": "../../../../../../../../etc/passwd", "text": "Bones are intact."},
    ]
    table = _table(raw, rows)
    report = prepare("csv", table, tmp_path / "out", val_size=0, workers=1, progress=False)
    outside = {e["path"]: e["reason"] for e in report.images["outside_input"]}
    assert len(outside) == 4 and report.pairs_kept == 4  # read anyway; passwd is not an image
    assert outside[str(raw / "link.png")] == (f"a symbolic link to {elsewhere / 'linked.png'}, outside the input "
                                              "folders; read anyway")  # fmt: skip
    assert outside[str(raw / "../elsewhere/x.png")] == "outside the input folders; read anyway"
    assert report.notes[-1].startswith(f"warning: 4 image path(s) lead outside the input folders ({raw}): ")

    code = main(["prepare", "csv", "--input", str(table), "--output", str(tmp_path / "strict"), "--val-size", "0",
                 "--strict-paths", "--no-progress"])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0 and "images also" in printed.out and "4 outside the input folders (refused)" in printed.out
    dropped = _dropped(tmp_path / "strict")
    assert {k: v[0] for k, v in dropped.items()} == dict.fromkeys(["up", "abs", "link", "passwd"],
                                                                  "image_outside_input")  # fmt: skip
    assert dropped["passwd"][1].endswith("etc/passwd: outside the input folders; refused (strict_paths)")
    assert not (tmp_path / "strict" / "images" / "external").exists()  # nothing outside was read
    assert len(read_paired_manifest(tmp_path / "strict" / "manifest.csv")) == 1


def test_iu_xml_with_control_characters_is_read_and_a_broken_file_is_one_dropped_report(tmp_path):
    raw = tmp_path / "iu"
    xml = raw / "ecgen-radiology"
    xml.mkdir(parents=True)
    (xml / "1.xml").write_text(iu_report_xml(1, "Heart \x07size \x1b[1mnormal\x1b[0m.", "No \x00edema.",
                                             ["CXR1_IM-0001-1001"]), encoding="utf-8")  # fmt: skip
    (xml / "2.xml").write_text(iu_report_xml(2, "Lungs are clear.", "Normal.", ["CXR2_IM-0002-1001"])[:300])
    latin = iu_report_xml(3, "Caf\xe9 au lait spot.", "Normal chest.", ["CXR3_IM-0003-1001"])
    (xml / "3.xml").write_bytes(latin.replace('encoding="utf-8"', 'encoding="ISO-8859-1"').encode("latin-1"))
    for name in ("CXR1_IM-0001-1001", "CXR2_IM-0002-1001", "CXR3_IM-0003-1001"):
        write_image(raw / "png" / f"{name}.png")
    report = prepare("iu-xray", raw, tmp_path / "out", images_dir=raw / "png", val_size=0, workers=1,
                     progress=False)  # fmt: skip
    assert report.pairs_kept == 2
    dropped = _dropped(tmp_path / "out")
    assert list(dropped) == ["CXR2"] and dropped["CXR2"][0] == "unreadable_report"
    assert dropped["CXR2"][1].startswith(f"IU X-ray report {xml / '2.xml'} is not valid XML")
    text = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype=str, keep_default_na=False).set_index("study_id")
    assert text.loc["CXR1", "text"].split("\n") == ["Heart size normal.", "No edema."]
    assert text.loc["CXR3", "text"].split("\n") == ["Caf\xe9 au lait spot.", "Normal chest."]
