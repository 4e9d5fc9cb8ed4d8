"""The canonical labelled manifest and the ImageFolder adapter (tiny fixtures in the real layouts)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from convirt.data.labelled import (
    LabelledTask,
    read_labelled_manifest,
    task_path,
    write_labelled_manifest,
)
from convirt.data.sources import load_labelled_dataset, parse_dataset_spec
from convirt.data.sources.imagefolder import patient_from_name
from convirt.errors import ConfigError, ManifestError


def _png(path, value=128, size=(12, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


def _kermany_fixture(root):
    names = {
        "train/NORMAL": ["IM-0115-0001.jpeg", "IM-0115-0002.jpeg", "NORMAL2-IM-0381-0001.jpeg", "IM-0117-0001.jpeg"],
        "train/PNEUMONIA": [
            "person1_bacteria_1.jpeg",
            "person1_bacteria_2.jpeg",
            "person2_virus_6.jpeg",
            "person3_bacteria_10.jpeg",
            "person4_virus_8_1.jpeg",
        ],
        "test/NORMAL": ["IM-0001-0001.jpeg", "NORMAL2-IM-0033-0001-0001.jpeg"],
        "test/PNEUMONIA": ["person100_bacteria_475.jpeg", "person101_virus_187.jpeg"],
    }
    for folder, files in names.items():
        for name in files:
            image = Image.new("RGB", (16, 16), (90, 90, 90))
            (root / folder).mkdir(parents=True, exist_ok=True)
            image.save(root / folder / name, format="JPEG")
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"junk")
    return names


def test_patient_ids_from_kermany_names():
    assert patient_from_name("person1000_bacteria_2931.jpeg") == "person1000"
    assert patient_from_name("person1_virus_8_1.jpeg") == "person1"
    assert patient_from_name("IM-0011-0001-0002.jpeg") == "IM-0011"
    assert patient_from_name("NORMAL2-IM-1427-0001.jpeg") == "NORMAL2-IM-1427"
    assert patient_from_name("scan_42.png") == "scan_42"
    assert patient_from_name("p7-a.png", r"^p(?P<patient>\d+)-") == "7"


def test_imagefolder_kermany_layout_official_split_and_patient_validation(tmp_path):
    root = tmp_path / "kermany-pneumonia"
    _kermany_fixture(root)
    manifest = load_labelled_dataset(f"imagefolder:{root}", val_size=0.3, seed=1)
    assert manifest.task.kind == "binary"
    assert manifest.task.class_names == ["NORMAL", "PNEUMONIA"]  # positive = PNEUMONIA
    assert manifest.task.metric == "auc" and manifest.task.scoring_level == "image"
    assert len(manifest) == 13  # .DS_Store skipped
    counts = manifest.counts()
    assert counts["test"] == 4 and counts["train"] + counts["val"] == 9 and counts["val"] > 0
    # official test kept; validation from train only, whole patients
    test = manifest.split("test")
    assert all("/test/" in p for p in test.images)
    by_patient = {}
    for patient, split in zip(manifest.patient_ids, manifest.splits):
        by_patient.setdefault(patient, set()).add(split)
    assert all(len(s) == 1 for s in by_patient.values())
    assert by_patient["person1"] in ({"train"}, {"val"}) and by_patient["IM-0115"] in ({"train"}, {"val"})
    labels = dict(zip((p.rsplit("/", 1)[-1] for p in manifest.images), manifest.targets.tolist()))
    assert labels["person2_virus_6.jpeg"] == 1 and labels["IM-0117-0001.jpeg"] == 0
    # same seed -> same split; the bare folder spec means imagefolder
    again = load_labelled_dataset(str(root), val_size=0.3, seed=1)
    assert list(again.splits) == list(manifest.splits)
    assert parse_dataset_spec(str(root))[0] == "imagefolder"


def test_imagefolder_without_split_folders_and_positive_choice(tmp_path):
    root = tmp_path / "flat"
    for k in range(10):
        _png(root / "cat" / f"c{k}.png")
        _png(root / "dog" / f"d{k}.png")
        _png(root / "eel" / f"e{k}.png")
    manifest = load_labelled_dataset(f"imagefolder:{root}", val_size=0.2, test_size=0.2)
    assert manifest.task.kind == "multiclass" and manifest.task.metric == "accuracy"
    assert manifest.counts() == {"train": 18, "val": 6, "test": 6}
    for k in range(10):
        (root / "eel" / f"e{k}.png").unlink()
    (root / "eel").rmdir()
    binary = load_labelled_dataset(f"imagefolder:{root}", positive="cat")
    assert binary.task.class_names == ["dog", "cat"]
    with pytest.raises(ConfigError, match="not one of the class folders"):
        load_labelled_dataset(f"imagefolder:{root}", positive="bird")
    with pytest.raises(ConfigError, match="does not take option"):
        load_labelled_dataset(f"imagefolder:{root}", uncertain="zeros")


def test_write_read_roundtrip_keeps_task_and_relative_paths(tmp_path):
    root = tmp_path / "data"
    _kermany_fixture(root)
    manifest = load_labelled_dataset(f"imagefolder:{root}")
    out = tmp_path / "data" / "labels.csv"
    write_labelled_manifest(manifest, out)
    table = pd.read_csv(out, dtype=str)
    assert list(table.columns) == ["image", "patient_id", "study_id", "split", "label"]
    assert not table["image"].str.startswith("/").any()
    assert json.loads(task_path(out).read_text())["class_names"] == ["NORMAL", "PNEUMONIA"]
    loaded = read_labelled_manifest(out)
    assert list(loaded.images) == list(manifest.images)
    assert np.array_equal(loaded.targets, manifest.targets)
    assert list(read_labelled_manifest(out, split="test").splits) == ["test"] * 4


def test_multilabel_manifest_blank_is_unknown(tmp_path):
    frame = pd.DataFrame(
        {
            "image": ["a.png", "b.png", "c.png"],
            "patient_id": ["p1", "p2", "p3"],
            "study_id": ["s1", "s2", "s3"],
            "split": ["train", "val", "test"],
            "edema": ["1", "", "0"],
            "cardiomegaly": ["0", "1", "1"],
        }
    )
    task = LabelledTask(
        name="t", kind="multilabel", class_names=["edema", "cardiomegaly"], label_columns=["edema", "cardiomegaly"]
    )
    path = write_labelled_manifest(frame, tmp_path / "m.csv", task)
    loaded = read_labelled_manifest(path)
    assert loaded.task.metric == "mean_auc" and loaded.task.num_outputs == 2
    expected = np.array([[1, 0], [np.nan, 1], [0, 1]], dtype=np.float32)
    assert np.array_equal(loaded.targets, expected, equal_nan=True)
    assert loaded.images[0] == str(tmp_path / "a.png")


def test_inferred_task_without_sidecar_and_errors_name_rows(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("image,patient_id,study_id,split,finding\nx.png,p,s,train,yes\ny.png,q,t,test,no\n")
    manifest = read_labelled_manifest(path)
    assert manifest.task.kind == "binary" and manifest.task.class_names == ["no", "yes"]
    assert manifest.targets.tolist() == [1, 0]

    bad = tmp_path / "bad.csv"
    bad.write_text("image,patient_id,study_id,split,label\nx.png,p,s,train,a\ny.png,q,t,holdout,b\n")
    with pytest.raises(ManifestError, match=r"bad\.csv: data row\(s\) 2 have unknown split"):
        read_labelled_manifest(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("image,split,label\nx.png,train,a\n")
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['patient_id', 'study_id'\]"):
        read_labelled_manifest(missing)
    multi = tmp_path / "multi.csv"
    multi.write_text("image,patient_id,study_id,split,a,b\nx.png,p,s,train,1,0\ny.png,q,t,test,-1,1\n")
    with pytest.raises(ManifestError, match=r"data row\(s\) 2 hold \['-1'\]"):
        read_labelled_manifest(multi)
    task_path(path).write_text(
        json.dumps({"name": "x", "kind": "binary", "class_names": ["no", "maybe"], "label_columns": ["finding"]})
    )
    with pytest.raises(ManifestError, match=r"label\(s\) \['yes'\]"):
        read_labelled_manifest(path)


def test_real_kermany_folder_official_split():
    from convirt.paths import shared_data_dir

    root = shared_data_dir() / "kermany-pneumonia"
    if not root.is_dir():
        pytest.skip(f"real data not available at {root} (set CONVIRT_SHARED_DATA)")
    manifest = load_labelled_dataset(f"imagefolder:{root}")
    assert manifest.task.class_names == ["NORMAL", "PNEUMONIA"]
    test = manifest.split("test")
    assert np.bincount(test.targets).tolist() == [234, 390]
    train_val = np.concatenate([manifest.split("train").targets, manifest.split("val").targets])
    assert np.bincount(train_val).tolist() == [1341, 3875]
    assert 0.08 < manifest.counts()["val"] / 5216 < 0.11
    train_patients = set(manifest.split("train").patient_ids)
    assert not train_patients & set(manifest.split("val").patient_ids)
