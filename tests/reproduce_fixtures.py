"""Tiny copies of every dataset `convirt reproduce` reads, each in its real on-disk layout, built in a test folder:
MIMIC-CXR-JPG (files tree, gzipped metadata and split tables, reports), CheXpert-v1.0-small (train/valid CSVs and
JPEGs, plus CheXpert 8x200-style retrieval lists over its images), RSNA stage 2 (labels CSV + DICOMs), COVIDx
(split files + folders) and MURA v1.1 (path and study CSVs without headers)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from convirt.data.chexpert8x200 import CHEXPERT_8X200_CATEGORIES
from prepare_fixtures import write_dicom


def _image(path: Path, value: int, size: int = 24, fmt: str | None = None) -> None:
    """A small grey image whose brightness carries the label (so probes have something to find)."""
    rng = np.random.default_rng(value * 7919 + size)
    pixels = np.clip(rng.normal(value, 25, (size, size)), 0, 255).astype(np.uint8)
    pixels[size // 4 : size // 2, size // 4 : size // 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt or ("JPEG" if path.suffix == ".jpg" else "PNG"))


def _gzip_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    pd.DataFrame(rows).to_csv(buffer, index=False)
    path.write_bytes(gzip.compress(buffer.getvalue().encode("utf-8")))


FINDINGS = [
    ("The heart is enlarged.", "Cardiomegaly."),
    ("There is a small right pleural effusion.", "Right pleural effusion."),
    ("The lungs are clear without consolidation.", "No acute cardiopulmonary process."),
    ("Patchy opacity in the left lower lobe.", "Left lower lobe pneumonia."),
]


def make_mimic(root: Path, studies: int = 24) -> Path:
    """MIMIC-CXR-JPG v2: files/pXX/pSUBJECT/sSTUDY/DICOM.jpg, the reports beside them (sSTUDY.txt), metadata and
    the official split table; one or two views per study; the report text matches the image's finding."""
    rows, split_rows = [], []
    for k in range(studies):
        subject, study = f"1{k // 2:07d}", f"5{k:07d}"
        finding, impression = FINDINGS[k % len(FINDINGS)]
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        views = ["PA", "LATERAL"] if k % 3 == 0 else ["AP"]
        for v, view in enumerate(views):
            dicom = f"{k:08x}-{v:08x}-aaaaaaaa-bbbbbbbb-cccccccc"
            _image(folder / f"{dicom}.jpg", 60 + 40 * (k % len(FINDINGS)), 40)
            rows.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "ViewPosition": view,
                         "Rows": 40, "Columns": 40})  # fmt: skip
            split = "validate" if k in (1, 5, 9, 13) else "test" if k == 22 else "train"
            split_rows.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split})
        report = (f"                                 FINAL REPORT\n INDICATION:  Cough.\n\n FINDINGS:  {finding} "
                  f"No pneumothorax is seen.\n\n IMPRESSION:  {impression}\n")  # fmt: skip
        (folder.parent / f"s{study}.txt").write_text(report)
    _gzip_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", rows)
    _gzip_csv(root / "mimic-cxr-2.0.0-split.csv.gz", split_rows)
    return root


CHEXPERT_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
                    "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
                    "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
                    "Support Devices"]  # fmt: skip


def make_chexpert(parent: Path, lists: Path) -> Path:
    """CheXpert-v1.0-small under ``parent``: train.csv (24 patients) and valid.csv (8 images, both classes of every
    label); and CheXpert 8x200-style lists in ``lists`` (7 candidates, 1 image query, 2 text queries per category)
    over more of its images."""
    root = parent / "CheXpert-v1.0-small"

    def rows(split: str, patients: range) -> list[dict]:
        out = []
        for p in patients:
            rel = f"CheXpert-v1.0-small/{split}/patient{p:05d}/study1/view1_frontal.jpg"
            _image(parent / rel, 50 + 20 * (p % 8))
            row = dict.fromkeys(CHEXPERT_COLUMNS, "")
            row.update({"Path": rel, "Sex": "Female", "Age": "60", "Frontal/Lateral": "Frontal", "AP/PA": "AP"})
            for j, label in enumerate(CHEXPERT_LABELS):  # each label positive for half the patients, in its own mix
                row[label] = "1.0" if (p >> (j % 3)) % 2 == (j // 3) % 2 else "0.0"
            out.append(row)
        return out

    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows("train", range(1, 25)), columns=CHEXPERT_COLUMNS).to_csv(root / "train.csv", index=False)
    pd.DataFrame(rows("valid", range(64541, 64549)), columns=CHEXPERT_COLUMNS).to_csv(root / "valid.csv", index=False)

    candidates, queries, texts = [], [], []
    for c, category in enumerate(CHEXPERT_8X200_CATEGORIES):
        for i in range(8):
            rel = f"CheXpert-v1.0-small/train/patient{30000 + 10 * c + i:05d}/study1/view1_frontal.jpg"
            _image(parent / rel, 30 + 25 * c)
            if i == 0:
                queries.append({"Variable": category, "Path": rel})
            else:
                candidates.append(
                    {"Path": rel, **{name: float(name == category) for name in CHEXPERT_8X200_CATEGORIES}}
                )
        texts += [{"Variable": category, "Text": f"{category} is present."},
                  {"Variable": category, "Text": f"Findings of {category.lower()}."}]  # fmt: skip
    lists.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(candidates).to_csv(lists / "candidate.csv", index=False)
    pd.DataFrame(queries).to_csv(lists / "image_query.csv", index=False)
    pd.DataFrame(texts).to_csv(lists / "text_query.csv", index=False)
    return parent


def make_rsna(root: Path, patients: int = 24) -> Path:
    """RSNA Pneumonia Detection, stage 2: stage_2_train_labels.csv (one row per box) + stage_2_train_images/*.dcm."""
    lines = ["patientId,x,y,width,height,Target"]
    for k in range(patients):
        patient = f"{k:08x}-1111-2222-3333-{k:012x}"
        if k % 2:
            lines += [f"{patient},264.0,152.0,213.0,379.0,1", f"{patient},562.0,152.0,256.0,453.0,1"]
        else:
            lines.append(f"{patient},,,,,0")
        write_dicom(root / "stage_2_train_images" / f"{patient}.dcm", 24, 24, monochrome1=bool(k % 2))
    (root / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    return root


def make_covidx(root: Path) -> Path:
    """COVIDx v4+: train.txt / test.txt (patient_id file class source) with the images in train/ and test/."""
    classes = ("normal", "pneumonia", "COVID-19")
    train, test = [], []
    for k in range(24):
        name = f"{k:03d}.png"
        _image(root / "train" / name, 60 + 60 * (k % 3))
        train.append(f"{100 + k} {name} {classes[k % 3]} cohen")
    for k in range(6):
        name = f"t{k}.png"
        _image(root / "test" / name, 60 + 60 * (k % 3))
        test.append(f"{900 + k} {name} {classes[k % 3]} actmed")
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "test.txt").write_text("\n".join(test) + "\n")
    return root


def make_mura(parent: Path) -> Path:
    """MURA-v1.1 under ``parent``: {train,valid}_image_paths.csv and {train,valid}_labeled_studies.csv (no headers)."""
    root = parent / "MURA-v1.1"
    root.mkdir(parents=True, exist_ok=True)
    layout = {"train": [(p, p % 2) for p in range(1, 25)], "valid": [(p, p % 2) for p in range(11000, 11006)]}
    for split, studies in layout.items():
        images, labelled = [], []
        for patient, label in studies:
            folder = f"MURA-v1.1/{split}/XR_WRIST/patient{patient:05d}/study1_{'positive' if label else 'negative'}"
            labelled.append(f"{folder}/,{label}")
            for i in (1, 2):
                _image(parent / folder / f"image{i}.png", 70 + 90 * label)
                images.append(f"{folder}/image{i}.png")
        (root / f"{split}_image_paths.csv").write_text("\n".join(images) + "\n")
        (root / f"{split}_labeled_studies.csv").write_text("\n".join(labelled) + "\n")
    return root
