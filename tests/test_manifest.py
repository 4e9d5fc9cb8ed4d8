"""The canonical paired manifest: validation errors that name the problem, and the loaded form."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from convirt.data.manifest import RaggedStrings, StringColumn, read_paired_manifest
from convirt.errors import ManifestError


def write(tmp_path: Path, rows: list[dict], name: str = "manifest.csv") -> Path:
    path = tmp_path / name
    frame = pd.DataFrame(rows)
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    elif name.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False)
    return path


ROW = {
    "images": "a.png|b.png",
    "text": "Heart is normal.\nNo effusion.",
    "patient_id": "p1",
    "study_id": "s1",
    "split": "train",
}


@pytest.mark.parametrize("name", ["manifest.csv", "manifest.parquet", "manifest.jsonl"])
def test_loads_formats_splits_sentences_and_resolves_paths(tmp_path: Path, name: str) -> None:
    rows = [
        ROW,
        {
            **ROW,
            "images": "/abs/c.png",
            "text": "Lungs clear. No pneumothorax. Size 2.5 cm.",
            "study_id": "s2",
            "split": "val",
        },
    ]
    manifest = read_paired_manifest(write(tmp_path, rows, name), split="train")
    assert len(manifest) == 1
    assert manifest.images[0] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert manifest.sentences[0] == ["Heart is normal.", "No effusion."]
    val = read_paired_manifest(tmp_path / name, split="val", image_root="/elsewhere")
    assert val.images[0] == ["/abs/c.png"]
    assert val.sentences[0] == ["Lungs clear.", "No pneumothorax.", "Size 2.5 cm."]  # split when not one per line


def test_missing_columns_are_listed(tmp_path: Path) -> None:
    path = write(tmp_path, [{"image": "a.png", "report": "x", "patient_id": "p", "study_id": "s", "split": "train"}])
    with pytest.raises(ManifestError) as error:
        read_paired_manifest(path)
    message = str(error.value)
    assert "missing column(s) ['images', 'text']" in message and "'image', 'report'" in message


def test_empty_text_names_the_rows(tmp_path: Path) -> None:
    rows = [ROW, {**ROW, "text": "   ", "study_id": "s2"}, {**ROW, "text": "", "study_id": "s3"}]
    with pytest.raises(ManifestError, match=r"2 row\(s\) have an empty text \(data row 2, 3\)"):
        read_paired_manifest(write(tmp_path, rows))


def test_unknown_split_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="unknown split value"):
        read_paired_manifest(write(tmp_path, [{**ROW, "split": "training"}]))
    with pytest.raises(ManifestError, match="does not exist"):
        read_paired_manifest(tmp_path / "none.csv")


def test_compact_string_storage_round_trips() -> None:
    strings = ["", "é ü 漢字", "a" * 1000]
    column = StringColumn(strings)
    assert list(column) == strings and column[-1] == strings[-1]
    ragged = RaggedStrings([["x", "y"], [], ["z"]])
    assert ragged[0] == ["x", "y"] and ragged[1] == [] and ragged.count(2) == 1 and ragged.item(0, 1) == "y"


def test_atomic_writes_replace_whole_files_with_normal_permissions(tmp_path: Path) -> None:
    import os
    import stat

    from convirt.fileio import atomic_open, atomic_write_text

    target = tmp_path / "out" / "result.txt"
    atomic_write_text(target, "first")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("partial")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "first"  # the failed write left the old file intact and no temporary behind
    assert [p.name for p in target.parent.iterdir()] == ["result.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
