"""MIMIC-CXR-JPG v2 (images, metadata, split) with the MIMIC-CXR free-text reports.

Layout read (PhysioNet, as downloaded)::

    RAW/mimic-cxr-2.0.0-metadata.csv.gz      dicom_id, subject_id, study_id, ViewPosition, ...
    RAW/mimic-cxr-2.0.0-split.csv.gz         dicom_id, study_id, subject_id, split (train/validate/test)
    RAW/files/p10/p10000032/s50414267/02aa804e-....jpg
    RAW/files/p10/p10000032/s50414267.txt    the report (from MIMIC-CXR's mimic-cxr-reports.zip)

The reports may also live elsewhere (``reports_dir``: a folder holding ``files/pXX/...`` or ``pXX/...``, or the
``mimic-cxr-reports.zip`` itself, read in place). Images are ``.jpg``; a ``.dcm`` with the same name (the DICOM
release) is used when the JPEG is absent. Without the metadata table, images are found by walking ``files/``
(then there are no view positions, so only ``views="all"`` works).

Views: ``all`` (default: the paper's 1.7 images per pair means every view was used) or ``frontal``
(``ViewPosition`` PA or AP; decubitus, lateral, oblique and blank positions are excluded).
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

from convirt.data.manifest import require_columns
from convirt.errors import ConfigError

from ..tables import read_source_table
from ..types import PrepareSource, RawPair, ReadSettings, SourceData, SourceOption

METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT = "mimic-cxr-2.0.0-split.csv.gz"
FRONTAL_POSITIONS = frozenset({"PA", "AP"})
SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "validation": "val", "test": "test"}
_STUDY_TXT = re.compile(r"(?:^|/)p(\d{2})/p(\d+)/s(\d+)\.txt$")


def _find_table(input_dir: Path, name: str) -> Path | None:
    for candidate in (input_dir / name, input_dir / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _study_dir(root: Path, subject: str, study: str) -> Path:
    return root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"


class _ReportStore:
    """Report text by (subject, study) from the image tree, a reports folder, or mimic-cxr-reports.zip."""

    def __init__(self, input_dir: Path, reports: Path | None, encoding: str = "utf-8") -> None:
        self.encoding = encoding
        self.roots: list[Path] = []
        self.zip_names: dict[tuple[str, str], str] = {}
        self.archive: zipfile.ZipFile | None = None
        if reports is not None and reports.is_file() and reports.suffix.lower() == ".zip":
            self.archive = zipfile.ZipFile(reports)
            for name in self.archive.namelist():
                match = _STUDY_TXT.search(name)
                if match:
                    self.zip_names[(match.group(2), match.group(3))] = name
        elif reports is not None:
            if not reports.is_dir():
                raise ConfigError(f"MIMIC-CXR reports {reports} are neither a folder nor mimic-cxr-reports.zip")
            self.roots.append(reports)
        self.roots.append(input_dir)

    def text(self, subject: str, study: str) -> str | None:
        if self.archive is not None:
            name = self.zip_names.get((subject, study))
            if name is not None:
                return self.archive.read(name).decode(self.encoding, errors="replace")
        for root in self.roots:
            for base in (root / "files", root):
                path = base / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
                if path.is_file():
                    return path.read_text(encoding=self.encoding, errors="replace")
        return None


def _image_path(root: Path, subject: str, study: str, dicom_id: str) -> Path:
    folder = _study_dir(root, subject, study)
    jpg = folder / f"{dicom_id}.jpg"
    if not jpg.is_file():
        dcm = folder / f"{dicom_id}.dcm"
        if dcm.is_file():
            return dcm
    return jpg


def _walk_images(input_dir: Path) -> list[dict[str, str]]:
    rows = []
    files = input_dir / "files"
    for root, dirs, names in os.walk(files):
        dirs.sort()
        parts = Path(root).relative_to(files).parts
        if len(parts) != 3 or not parts[2].startswith("s"):
            continue
        for name in sorted(names):
            if name.lower().endswith((".jpg", ".dcm")):
                rows.append(
                    {
                        "subject_id": parts[1][1:],
                        "study_id": parts[2][1:],
                        "dicom_id": Path(name).stem,
                        "ViewPosition": "",
                    }
                )
    return rows


def read_mimic(
    input_dir: Path,
    settings: ReadSettings,
    reports_dir: str | os.PathLike | None = None,
) -> SourceData:
    """Read MIMIC-CXR-JPG + reports at ``input_dir`` into one study per report (see the module notes)."""
    views = settings.views
    if not (input_dir / "files").is_dir():
        raise ConfigError(
            f"{input_dir} has no files/ folder: the input must be the MIMIC-CXR-JPG root (with files/pXX/..., "
            f"{METADATA} and {SPLIT})"
        )
    notes: list[str] = []
    metadata_path = _find_table(input_dir, METADATA)
    if metadata_path is not None:
        metadata = read_source_table(metadata_path, settings)
        require_columns(metadata, ("dicom_id", "subject_id", "study_id", "ViewPosition"), f"metadata {metadata_path}")
        rows = metadata.to_dict("records")
    else:
        if views == "frontal":
            raise ConfigError(f"views='frontal' needs {METADATA} (view positions) in {input_dir}")
        rows = _walk_images(input_dir)
        notes.append(f"{METADATA} not found: images found by walking files/ ({len(rows)} images)")
    split_path = _find_table(input_dir, SPLIT)
    official: dict[str, str] = {}
    if split_path is not None:
        split_table = read_source_table(split_path, settings)
        require_columns(split_table, ("study_id", "split"), f"split file {split_path}")
        for study, split in zip(split_table["study_id"], split_table["split"], strict=True):
            official[study.strip()] = SPLIT_NAMES.get(split.strip().lower(), split.strip())

    images_in = len(rows)
    studies: dict[tuple[str, str], RawPair] = {}
    n_view = 0
    for row in rows:
        subject, study = row["subject_id"].strip(), row["study_id"].strip()
        key = (subject, study)
        pair = studies.get(key)
        if pair is None:
            pair = RawPair(
                study_id=f"s{study}",
                patient_id=f"p{subject}",
                images=[],
                split=official.get(study),
                meta={"view_positions": ""},
            )
            studies[key] = pair
        position = row.get("ViewPosition", "").strip().upper()
        if views == "frontal" and position not in FRONTAL_POSITIONS:
            continue
        n_view += 1
        pair.images.append(_image_path(input_dir, subject, study, row["dicom_id"].strip()))
        pair.meta["view_positions"] = "|".join(filter(None, [pair.meta["view_positions"], position or "?"]))

    store = _ReportStore(input_dir, Path(reports_dir) if reports_dir else None, settings.encoding)
    n_reports = 0
    for (subject, study), pair in studies.items():
        text = store.text(subject, study)
        if text is not None:
            n_reports += 1
            pair.text = text
    pairs = sorted(studies.values(), key=lambda p: (p.patient_id, p.study_id))
    stats = {
        "images_in_metadata" if metadata_path else "images_found": images_in,
        "images_after_view_filter": n_view,
        "studies": len(pairs),
        "studies_with_report": n_reports,
        "official_split": "yes" if official else "no split file",
    }
    return SourceData(pairs=pairs, image_root=input_dir, stats=stats, notes=notes)


SOURCE = PrepareSource(
    name="mimic-cxr",
    summary="MIMIC-CXR-JPG v2 folder (files/pXX/pXXXXXXXX/sXXXXXXXX/*.jpg, mimic-cxr-2.0.0-metadata.csv.gz,\n"
    "mimic-cxr-2.0.0-split.csv.gz) with the MIMIC-CXR reports (files/pXX/pXXXXXXXX/sXXXXXXXX.txt,\n"
    "in the same tree or in --reports DIR)",
    read=read_mimic,
    views="all",
    val_size=5000,  # the paper's 5000 validation pairs
    text_mode="sections",
    options=(
        SourceOption(
            "reports_dir", "--reports", "folder of the report .txt files or mimic-cxr-reports.zip (default: --input)"
        ),
    ),
)
