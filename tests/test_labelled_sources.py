"""Every labelled-dataset adapter on a tiny fixture in its exact real on-disk layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convirt.data.images import load_image
from convirt.data.sources import load_labelled_dataset
from convirt.data.sources.chexpert import apply_uncertain_policy
from convirt.data.sources.covidx import parse_line
from convirt.errors import ConfigError, ManifestError


def _png(path, value=100, size=(10, 14)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path, format="PNG")


def _jpeg(path, value=100, size=(14, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path, format="JPEG")


def _dicom(path, value):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CR", 8, 12, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    pixels = np.full((8, 12), value, dtype=np.uint8)
    pixels[0, 0] = 0
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# ------------------------------------------------------------------------------------------------------ RSNA
def test_rsna_stage2_layout(tmp_path):
    root = tmp_path / "rsna-pneumonia-detection-challenge"
    rows = ["patientId,x,y,width,height,Target"]
    patients = [f"{k:08x}-aaaa-bbbb-cccc-{k:012x}" for k in range(12)]
    for k, patient in enumerate(patients):
        if k % 3 == 0:  # positives have one row per box, here two boxes
            rows += [f"{patient},264.0,152.0,213.0,379.0,1", f"{patient},562.0,152.0,256.0,453.0,1"]
        else:
            rows.append(f"{patient},,,,,0")
        _dicom(root / "stage_2_train_images" / f"{patient}.dcm", 50 + k)
    (root / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    (root / "stage_2_detailed_class_info.csv").write_text("patientId,class\n")

    manifest = load_labelled_dataset(f"rsna:{root}", val_size=2, test_size=3, seed=7)
    assert len(manifest) == 12  # one image per patient, boxes collapsed
    assert manifest.task.kind == "binary" and manifest.task.paper_key == "rsna"
    assert manifest.counts() == {"train": 7, "val": 2, "test": 3}
    labels = dict(zip(manifest.patient_ids, manifest.targets.tolist()))
    assert labels == {p: int(k % 3 == 0) for k, p in enumerate(patients)}
    assert load_image(manifest.images[0]).size == (12, 8)  # the DICOM decodes
    again = load_labelled_dataset(f"rsna:{root}", val_size=2, test_size=3, seed=7)
    assert list(again.splits) == list(manifest.splits)
    other = load_labelled_dataset(f"rsna:{root}", val_size=2, test_size=3, seed=8)
    assert list(other.splits) != list(manifest.splits)

    (root / "stage_2_train_images" / f"{patients[4]}.dcm").unlink()
    with pytest.raises(ManifestError, match=r"1 labelled image\(s\) are missing on disk"):
        load_labelled_dataset(f"rsna:{root}", val_size=2, test_size=3)


# -------------------------------------------------------------------------------------------------- CheXpert
CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
    "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,"
    "Support Devices"
)


def _chexpert_row(path, view, cardio, edema, consol, atel, effusion):
    return f"{path},Female,68,{view},AP,,,{cardio},1.0,,{edema},{consol},,{atel},0.0,{effusion},,,1.0"


def test_chexpert_small_layout_and_uncertain_policies(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    train_rows, valid_rows = [CHEXPERT_HEADER], [CHEXPERT_HEADER]
    for p in range(1, 7):
        for s in (1, 2):
            rel = f"CheXpert-v1.0-small/train/patient{p:05d}/study{s}/view1_frontal.jpg"
            _jpeg(tmp_path / rel)
            train_rows.append(_chexpert_row(rel, "Frontal", "1.0", "-1.0", "", "-1.0", "0.0"))
    lateral = "CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg"
    _jpeg(tmp_path / lateral)
    train_rows.append(_chexpert_row(lateral, "Lateral", "0.0", "1.0", "-1.0", "1.0", ""))
    for p in (64541, 64542):
        rel = f"CheXpert-v1.0-small/valid/patient{p}/study1/view1_frontal.jpg"
        _jpeg(tmp_path / rel)
        valid_rows.append(_chexpert_row(rel, "Frontal", "0.0", "1.0", "0.0", "0.0", "1.0"))
    (root / "train.csv").write_text("\n".join(train_rows) + "\n")
    (root / "valid.csv").write_text("\n".join(valid_rows) + "\n")

    manifest = load_labelled_dataset(f"chexpert:{root}", val_size=4, seed=0)
    assert manifest.task.kind == "multilabel" and manifest.task.metric == "mean_auc"
    assert manifest.task.class_names == ["atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion"]
    assert manifest.counts() == {"train": 9, "val": 4, "test": 2}  # val = 2 whole patients of 2 studies
    test = manifest.split("test")
    assert all("/valid/" in p for p in test.images) and test.targets.tolist() == [[0, 0, 0, 1, 1]] * 2
    by_patient = {}
    for patient, split in zip(manifest.patient_ids, manifest.splits):
        by_patient.setdefault(patient, set()).add(split)
    assert all(len(s) == 1 for s in by_patient.values())
    assert manifest.study_ids[0] == "patient00001/study1"
    # default "mixed": U-Ones for atelectasis and edema, U-Zeros for the rest; blank -> 0
    first = manifest.targets[0]
    assert first.tolist() == [1, 1, 0, 1, 0]
    lateral_row = next(i for i, p in enumerate(manifest.images) if p.endswith("view2_lateral.jpg"))
    assert manifest.targets[lateral_row].tolist() == [1, 0, 0, 1, 0]  # consolidation -1 -> 0
    zeros = load_labelled_dataset(f"chexpert:{tmp_path}", uncertain="zeros", val_size=4)  # parent folder works
    assert zeros.targets[0].tolist() == [0, 1, 0, 0, 0]
    ignore = load_labelled_dataset(f"chexpert:{root}", uncertain="ignore", val_size=4)
    assert np.isnan(ignore.targets[0, 0]) and np.isnan(ignore.targets[0, 3]) and ignore.targets[0, 1] == 1
    frontal = load_labelled_dataset(f"chexpert:{root}", frontal_only=True, val_size=4)
    assert len(frontal) == 14
    with pytest.raises(ConfigError, match="uncertain-label policy"):
        load_labelled_dataset(f"chexpert:{root}", uncertain="maybe")


def test_uncertain_policy_cells():
    import pandas as pd

    cells = pd.Series(["1.0", "0.0", "-1.0", ""])
    assert apply_uncertain_policy(cells, "Edema", "mixed").tolist() == ["1", "0", "1", "0"]
    assert apply_uncertain_policy(cells, "Cardiomegaly", "mixed").tolist() == ["1", "0", "0", "0"]
    assert apply_uncertain_policy(cells, "Cardiomegaly", "ones").tolist() == ["1", "0", "1", "0"]
    assert apply_uncertain_policy(cells, "Edema", "ignore").tolist() == ["1", "0", "", "0"]


# ---------------------------------------------------------------------------------------------------- COVIDx
def test_covidx_split_files(tmp_path):
    root = tmp_path / "COVIDx"
    train_lines, test_lines = [], []
    classes = ["normal", "pneumonia", "COVID-19"]
    for k in range(12):
        name = f"img {k}.png" if k == 5 else f"{k:03d}.png"  # file names can contain spaces
        _png(root / "train" / name)
        train_lines.append(f"{100 + k // 2} {name} {classes[k % 3]} {'cohen' if k % 2 else 'rsna'}")
    for k in range(3):
        _png(root / "test" / f"t{k}.jpg")
        test_lines.append(f"{900 + k} t{k}.jpg {classes[k]} actmed")
    (root / "train.txt").write_text("\n".join(train_lines) + "\n")
    (root / "test.txt").write_text("\n".join(test_lines) + "\n")

    manifest = load_labelled_dataset(f"covidx:{root}", val_size=4, seed=3)
    assert manifest.task.kind == "multiclass" and manifest.task.metric == "accuracy"
    assert manifest.task.class_names == ["normal", "pneumonia", "COVID-19"] and manifest.task.paper_key == "covidx"
    assert manifest.counts() == {"train": 8, "val": 4, "test": 3}
    assert manifest.split("test").targets.tolist() == [0, 1, 2]
    assert any(p.endswith("train/img 5.png") for p in manifest.images)
    assert parse_line("7 a.png COVID-19", {"covid-19"}) == ("7", "a.png", "COVID-19", "")
    (root / "test.txt").write_text("901 t0.jpg\n")
    with pytest.raises(ManifestError, match=r"test\.txt, line 1"):
        load_labelled_dataset(f"covidx:{root}", val_size=4)


# ------------------------------------------------------------------------------------------------------ MURA
def test_mura_layout_study_labels(tmp_path):
    root = tmp_path / "MURA-v1.1"
    image_lines, study_lines = {"train": [], "valid": []}, {"train": [], "valid": []}
    layout = {
        "train": [("XR_SHOULDER", 1, 1, 1, 3), ("XR_SHOULDER", 1, 2, 0, 1), ("XR_WRIST", 2, 1, 0, 2)]
        + [("XR_HAND", p, 1, p % 2, 1) for p in range(3, 13)],
        "valid": [("XR_WRIST", 11185, 1, 1, 2), ("XR_ELBOW", 11186, 1, 0, 1)],
    }
    for split, studies in layout.items():
        for body, patient, study, label, n_images in studies:
            folder = f"MURA-v1.1/{split}/{body}/patient{patient:05d}/study{study}_{'positive' if label else 'negative'}"
            study_lines[split].append(f"{folder}/,{label}")
            for i in range(1, n_images + 1):
                _png(tmp_path / folder / f"image{i}.png")
                image_lines[split].append(f"{folder}/image{i}.png")
        (root / f"{split}_image_paths.csv").write_text("\n".join(image_lines[split]) + "\n")
        (root / f"{split}_labeled_studies.csv").write_text("\n".join(study_lines[split]) + "\n")

    manifest = load_labelled_dataset(f"mura:{root}", seed=0)
    assert manifest.task.kind == "binary" and manifest.task.scoring_level == "study"
    assert manifest.task.class_names == ["normal", "abnormal"] and manifest.task.paper_key == "mura"
    counts = manifest.counts()
    assert counts["test"] == 3 and counts["train"] + counts["val"] == 16 and counts["val"] == 2  # 10 % of 16
    study = "XR_SHOULDER/patient00001/study1_positive"
    rows = [i for i, s in enumerate(manifest.study_ids) if s == study]
    assert len(rows) == 3 and manifest.targets[rows].tolist() == [1, 1, 1]
    assert manifest.targets[[i for i, s in enumerate(manifest.study_ids) if s.endswith("study2_negative")]] == [0]
    patient_splits = {}
    for patient, split in zip(manifest.patient_ids, manifest.splits):
        patient_splits.setdefault(patient, set()).add(split)
    assert all(len(s) == 1 for s in patient_splits.values())
    assert all("/valid/" in p for p in manifest.split("test").images)
    assert load_labelled_dataset(f"mura:{root}", scoring_level="patient").task.scoring_level == "patient"


# ------------------------------------------------------------------------------------------------------- CSV
def test_generic_csv_single_and_multilabel(tmp_path):
    for k in range(6):
        _png(tmp_path / "imgs" / f"{k}.png")
    (tmp_path / "labels.csv").write_text(
        "file,diagnosis,subject,fold,a,b\n"
        + "\n".join(
            f"imgs/{k}.png,{'sick' if k % 2 else 'well'},s{k // 2},{['train', 'valid', 'TEST'][k % 3]},{k % 2},"
            f"{'-1' if k == 0 else ''}"
            for k in range(6)
        )
        + "\n"
    )
    single = load_labelled_dataset(
        f"csv:{tmp_path / 'labels.csv'}",
        image_column="file",
        label_columns="diagnosis",
        patient_column="subject",
        split_column="fold",
        positive="sick",
    )
    assert single.task.kind == "binary" and single.task.class_names == ["well", "sick"]
    assert single.targets.tolist() == [0, 1, 0, 1, 0, 1]
    assert list(single.splits) == ["train", "val", "test"] * 2
    assert single.images[0] == str(tmp_path / "imgs" / "0.png") and single.patient_ids[5] == "s2"
    multi = load_labelled_dataset(f"csv:{tmp_path / 'labels.csv'}", image_column="file", label_columns="a,b")
    assert multi.task.kind == "multilabel" and multi.task.class_names == ["a", "b"]
    assert multi.targets[0].tolist() == [0, 0] and np.isnan(multi.targets[1, 1])  # -1 -> zeros; blank unknown
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['image', 'label'\]; it has \['file'"):
        load_labelled_dataset(f"csv:{tmp_path / 'labels.csv'}")
