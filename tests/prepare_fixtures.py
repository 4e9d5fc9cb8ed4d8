"""Tiny fixtures in the exact on-disk layouts of the raw datasets, built in tmp_path by the prepare tests."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from convirt.paths import shared_data_dir


def shared_folder(name: str) -> Path:
    """A folder of the shared real data, or skip the test with the reason."""
    folder = shared_data_dir() / name
    if not folder.is_dir():
        pytest.skip(f"real data {folder} not available (set CONVIRT_SHARED_DATA to the shared data folder)")
    return folder


def gradient(width: int, height: int) -> np.ndarray:
    """A deterministic 8-bit test pattern (horizontal ramp plus a bright square)."""
    ramp = np.tile(np.linspace(0, 200, width, dtype=np.float32), (height, 1))
    ramp[height // 4 : height // 2, width // 4 : width // 2] = 255
    return ramp.astype(np.uint8)


def write_image(path: Path, width: int = 40, height: int = 30, mode: str = "L", fmt: str | None = None) -> Path:
    """Write a test image; ``fmt`` overrides the format the extension implies (PNG bytes in a .jpg file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(gradient(width, height), mode="L")
    if mode == "RGBA":
        rgba = image.convert("RGBA")
        alpha = np.full((height, width), 255, dtype=np.uint8)
        alpha[:, : width // 4] = 0  # transparent left strip
        rgba.putalpha(Image.fromarray(alpha, mode="L"))
        image = rgba
    elif mode != "L":
        image = image.convert(mode)
    image.save(path, format=fmt or ("JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"))
    return path


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A tiny file whose PNG header claims ``width`` x ``height`` 1-bit pixels (a decompression-bomb shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def write_dicom(path: Path, width: int = 48, height: int = 32, monochrome1: bool = True) -> np.ndarray:
    """A 12-bit DICOM with rescale slope/intercept; returns the stored pixel array."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = (gradient(width, height).astype(np.uint16) * 16).astype(np.uint16)  # 0..4080: 12-bit range
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = height, width
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return pixels


# --------------------------------------------------------------------------------------------- MIMIC-CXR-JPG
# Report texts with the header variants of real MIMIC-CXR reports (wet read before FINAL REPORT, headers with the
# text on the next line or the same line, numbered impressions, combined FINDINGS AND IMPRESSION, CONCLUSION,
# lower-case headers, a report with no Findings/Impression at all, a report under 3 tokens).
MIMIC_REPORTS = {
    # subject, study: report text
    ("10000032", "50414267"): """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.  Clips project over the left lung,
 potentially within the breast. The imaged upper abdomen is unremarkable.
 Chronic deformity of the posterior left sixth and seventh ribs are noted.

 IMPRESSION:

 No acute cardiopulmonary process.
""",
    ("10000032", "53189527"): """WET READ: ___ ___ 10:51 PM
  Low lung volumes, no pneumonia.
 ______________________________________________________________________________
                                 FINAL REPORT
 HISTORY:  Shortness of breath.

 FINDINGS:  Frontal and lateral views of the chest demonstrate a 2.5 cm
 nodular opacity in the right upper lobe, unchanged since ___. Dr. ___ was
 notified at 10:30 a.m. on ___.

 IMPRESSION:
 1. Stable 2.5 cm right upper lobe nodule.
 2. No pneumonia.
""",
    ("10000764", "57375967"): """                                 FINAL REPORT
 PA AND LATERAL CHEST RADIOGRAPH

 REASON FOR EXAMINATION:  Evaluation of the patient with cough.

 FINDINGS AND IMPRESSION:  Heart size is normal. Lungs are clear. No pleural
 effusion.
""",
    ("10000935", "50578979"): """                                 FINAL REPORT
 CHEST RADIOGRAPH PERFORMED ON ___

 COMPARISON:  Prior exam from ___.

 CLINICAL HISTORY:  Chest pain.

 Single portable view of the chest demonstrates no focal consolidation.
""",
    ("10000935", "51178377"): """                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)

 Impression: Normal.
""",
    ("10000980", "54577367"): """                                 FINAL REPORT
 INDICATION:  Fever.

 Findings: Mild pulmonary vascular congestion.

 CONCLUSION:  Mild interstitial edema, new since prior.
""",
}
# subject, study, dicom_id, view position (the metadata order)
MIMIC_IMAGES = [
    ("10000032", "50414267", "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "PA"),
    ("10000032", "50414267", "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "LATERAL"),
    ("10000032", "53189527", "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "PA"),
    ("10000032", "53189527", "e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c", "LATERAL"),
    ("10000764", "57375967", "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "AP"),
    ("10000935", "50578979", "d0b71acc-b5a62046-bbb5f6b8-7b173b85-65cdf738", "AP"),
    ("10000935", "51178377", "9e6ab5ba-2a4b4e9b-9b8e8e4e-63c0bc29-6e3e5d4e", "AP"),
    ("10000980", "54577367", "3f1c7e0a-5bd1e1a4-0e7b6a3d-8b9f6d1c-2a4e8f7b", "PA"),
    ("10000980", "54577367", "7b2d9c4e-1a3f5e6d-8c9b0a1f-2e3d4c5b-6a7f8e9d", "LL"),
]
MIMIC_SPLIT = {"50414267": "train", "53189527": "train", "57375967": "validate", "50578979": "test",
               "51178377": "test", "54577367": "train"}  # fmt: skip


def make_mimic(root: Path, reports_in_tree: bool = True, reports_dir: Path | None = None) -> Path:
    """MIMIC-CXR-JPG v2 layout: gzipped metadata and split tables, files/pXX/pXXXXXXXX/sXXXXXXXX/*.jpg, reports."""
    rows, split_rows = [], []
    for subject, study, dicom, view in MIMIC_IMAGES:
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        write_image(folder / f"{dicom}.jpg", 60, 50 if view in ("PA", "AP") else 40)
        rows.append({"dicom_id": dicom, "subject_id": subject, "study_id": study,
                     "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view,
                     "Rows": 50, "Columns": 60, "StudyDate": 21800506, "StudyTime": 213014.531})  # fmt: skip
        split_rows.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": MIMIC_SPLIT[study]})
    for name, table in (("mimic-cxr-2.0.0-metadata.csv.gz", rows), ("mimic-cxr-2.0.0-split.csv.gz", split_rows)):
        buffer = io.StringIO()
        pd.DataFrame(table).to_csv(buffer, index=False)
        (root / name).write_bytes(gzip.compress(buffer.getvalue().encode("utf-8")))
    report_root = root if reports_in_tree else reports_dir
    assert report_root is not None
    for (subject, study), text in MIMIC_REPORTS.items():
        path = report_root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


# ------------------------------------------------------------------------------------------------ COVID-19
COVID_COLUMNS = ["patientid", "offset", "sex", "age", "finding", "survival", "view", "modality", "date", "location",
                 "folder", "filename", "doi", "url", "license", "clinical_notes", "other_notes"]  # fmt: skip


def make_covid(root: Path) -> Path:
    """The covid-chestxray layout with the real collection's mess: PNG bytes named .jpg, RGBA PNG, a lateral,
    a CT, an empty note, a truncated file, a missing file, one study of two images, a duplicated patient."""
    images = root / "images"
    write_image(images / "case1-day1.jpg", 50, 40, fmt="PNG")  # PNG named .jpg
    write_image(images / "case1-day1-ap.jpeg", 50, 40)
    write_image(images / "case2.png", 64, 48, mode="RGBA")  # RGBA
    write_image(images / "case2-lateral.png", 30, 50)
    write_image(images / "case3.jpg", 50, 40)
    write_image(images / "case4.png", 50, 40)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a finished jpeg")
    (images / "ct-slice.png").write_bytes(b"")
    note1 = "A 65-year-old man with fever. Chest radiograph showed an infiltrate in the left upper lobe."
    note2 = "Bilateral patchy opacities, 2.5 cm nodule in the right base. Temperature 39.0 ? C. Intubated."
    rows = [
        # patientid, offset, view, modality, filename, notes
        ("1", "0", "PA", "X-ray", "case1-day1.jpg", note1),
        ("1", "0", "AP", "X-ray", "case1-day1-ap.jpeg", note1),  # same offset + notes: same study
        ("2", "3", "AP Supine", "X-ray", "case2.png", note2),
        ("2", "3", "L", "X-ray", "case2-lateral.png", note2),  # lateral: out with the default frontal filter
        ("3", "", "PA", "X-ray", "case3.jpg", ""),  # no notes
        ("4", "7", "AP", "X-ray", "broken.jpg", "Right lower lobe consolidation is present."),
        ("5", "1", "PA", "X-ray", "missing.jpg", "Diffuse ground glass opacities in both lungs."),
        ("6", "2", "Axial", "CT", "ct-slice.png", "CT shows ground glass."),
        ("7", "5", "PA", "X-ray", "case4.png", "Normal."),  # 2 tokens
        ("8", "0", "PA", "X-ray", "case1-day1.jpg", note1),  # patient 1 again under another id
        ("8", "0", "AP", "X-ray", "case1-day1-ap.jpeg", note1),
    ]
    records = []
    for patient, offset, view, modality, filename, notes in rows:
        record = dict.fromkeys(COVID_COLUMNS, "")
        record.update(patientid=patient, offset=offset, view=view, modality=modality, folder="images",
                      filename=filename, clinical_notes=notes, finding="COVID-19")  # fmt: skip
        records.append(record)
    pd.DataFrame(records, columns=COVID_COLUMNS).to_csv(root / "metadata.csv", index=False)
    return root


# --------------------------------------------------------------------------------------------- IU X-ray
IU_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{uid}"/>
   <pmcId id="{uid}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{uid}"/>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <Abstract>
            <AbstractText Label="COMPARISON">{comparison}</AbstractText>
            <AbstractText Label="INDICATION">{indication}</AbstractText>
            <AbstractText Label="FINDINGS">{findings}</AbstractText>
            <AbstractText Label="IMPRESSION">{impression}</AbstractText>
         </Abstract>
      </Article>
   </MedlineCitation>
   {images}
</eCitation>
"""
IU_IMAGE = """<parentImage id="{image}">
      <figureId>F1</figureId>
      <caption>Xray Chest PA and Lateral</caption>
      <panel type="single"><url>/hadoop/storage/radiology/extract/{image}.jpg</url></panel>
   </parentImage>"""


def iu_report_xml(uid: int, findings: str, impression: str, images: list[str], indication: str = "Cough.") -> str:
    return IU_XML.format(
        uid=uid,
        comparison="None.",
        indication=indication,
        findings=findings,
        impression=impression,
        images="\n   ".join(IU_IMAGE.format(image=i) for i in images),
    )
