"""Indiana University chest X-ray collection (Open-i), in its two common shapes.

1. The Open-i release: ``NLMCXR_reports.tgz`` (read in place, no extraction needed) or its extracted
   ``ecgen-radiology/*.xml``; each XML has ``<AbstractText Label="FINDINGS|IMPRESSION|COMPARISON|INDICATION">``
   and one ``<parentImage id="CXR1_1_IM-0001-3001">`` per image; the images are ``NLMCXR_png.tgz`` extracted
   (``CXR1_1_IM-0001-3001.png``).
2. The CSV export (Kaggle): ``indiana_reports.csv`` (``uid``, ``findings``, ``impression``, ...) and
   ``indiana_projections.csv`` (``uid``, ``filename`` like ``1_IM-0001-4001.dcm.png``, ``projection``
   Frontal/Lateral), images usually in ``images/images_normalized/``.

Images are found by name anywhere under the images folder (default: the input folder), whatever the extension
(``.png``, ``.jpg``, ``.dcm``, ``.dcm.png``) and with or without the ``CXR<uid>_`` prefix.

The collection has no patient identifiers: each report is treated as its own patient (documented choice). Only
the CSV export says which image is frontal, so ``views="frontal"`` needs the CSV export.
"""

from __future__ import annotations

import codecs
import os
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from convirt.data.manifest import require_columns
from convirt.errors import ConfigError, ManifestError
from convirt.text.clean import strip_controls

from ..tables import read_source_table
from ..types import PrepareSource, RawPair, ReadSettings, SourceData, SourceOption

XML_SECTIONS = {
    "FINDINGS": "findings",
    "IMPRESSION": "impression",
    "COMPARISON": "comparison",
    "INDICATION": "indication",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff")
_CXR_PREFIX = re.compile(r"^CXR\d+_", re.IGNORECASE)
_XML_ENCODING = re.compile(rb"^\s*<\?xml[^>]*encoding=[\"']([A-Za-z0-9._-]+)[\"']")


def _image_keys(name: str) -> list[str]:
    """Lookup keys for an image name: lower-case, extensions (.png, .dcm.png, ...) and the CXR<uid>_ prefix removed."""
    key = name.lower()
    changed = True
    while changed:
        changed = False
        for suffix in IMAGE_SUFFIXES:
            if key.endswith(suffix):
                key = key[: -len(suffix)]
                changed = True
    keys = [key]
    stripped = _CXR_PREFIX.sub("", key)
    if stripped != key:
        keys.append(stripped)
    return keys


def index_images(folder: Path) -> dict[str, Path]:
    """Every image file under ``folder`` by lookup key (see :func:`_image_keys`); first found wins."""
    index: dict[str, Path] = {}
    if not folder.is_dir():
        return index
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_SUFFIXES):
                for key in _image_keys(name):
                    index.setdefault(key, Path(root) / name)
    return index


def _find(index: dict[str, Path], name: str) -> Path | None:
    for key in _image_keys(name):
        if key in index:
            return index[key]
    return None


def _xml_text(data: bytes, source: str) -> str:
    """An XML file's text, decoded with the encoding its declaration names (default UTF-8)."""
    match = _XML_ENCODING.match(data)
    encoding = match.group(1).decode("ascii") if match else "utf-8"
    try:
        return data.decode("utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding)
    except (LookupError, UnicodeDecodeError) as exc:
        raise ManifestError(f"IU X-ray report {source} is not valid {encoding} text ({exc})") from exc


def parse_report_xml(data: bytes | str, source: str = "report") -> tuple[str, dict[str, str], list[str]]:
    """(uid, sections in report order, image ids) of one Open-i XML report.

    Control characters (which XML forbids, and exports sometimes carry) are removed before parsing; a file that
    is still not XML raises a :class:`ManifestError` naming it."""
    text = strip_controls(data if isinstance(data, str) else _xml_text(data, source))
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ManifestError(f"IU X-ray report {source} is not valid XML ({exc})") from exc
    uid_node = root.find("uId")
    uid = uid_node.get("id", "") if uid_node is not None else ""
    if not uid:
        uid = "CXR" + Path(source).stem
    sections: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().upper()
        text = "".join(node.itertext()).strip()
        name = XML_SECTIONS.get(label, label.lower() or "other")
        if text:
            sections[name] = (sections[name] + "\n\n" + text) if name in sections else text
    images = [node.get("id", "") for node in root.findall("parentImage") if node.get("id")]
    return uid, sections, images


def iter_report_xml(reports: Path) -> Iterator[tuple[str, bytes]]:
    if reports.is_file() and reports.name.endswith((".tgz", ".tar.gz", ".tar")):
        items = []
        with tarfile.open(reports, "r|*") as archive:  # streamed: one pass over the compressed file
            for member in archive:
                if member.isfile() and member.name.endswith(".xml"):
                    handle = archive.extractfile(member)
                    if handle is not None:
                        items.append((member.name, handle.read()))
        yield from sorted(items, key=lambda item: _xml_order(item[0]))
    elif reports.is_dir():
        for path in sorted(reports.rglob("*.xml"), key=_xml_order):
            yield str(path), path.read_bytes()
    else:
        raise ConfigError(f"IU X-ray reports {reports} are neither a folder of XML files nor a .tgz archive")


def _xml_order(item: str | Path) -> tuple[int, str]:
    name = Path(item).stem
    return (int(name), "") if name.isdigit() else (10**9, name)


def find_reports(input_dir: Path) -> Path | None:
    """The XML reports inside ``input_dir``: an ``ecgen-radiology`` folder, or ``NLMCXR_reports.tgz``."""
    for candidate in (input_dir / "ecgen-radiology", input_dir / "NLMCXR_reports" / "ecgen-radiology"):
        if candidate.is_dir():
            return candidate
    for candidate in sorted(input_dir.glob("*.tgz")) + sorted(input_dir.glob("*.tar.gz")):
        if "report" in candidate.name.lower():
            return candidate
    if input_dir.is_dir() and any(input_dir.glob("*.xml")):
        return input_dir
    return None


def read_iu_xray(
    input_dir: Path,
    settings: ReadSettings,
    reports: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    iu_format: str = "auto",
) -> SourceData:
    """Read the Open-i XML release (preferred when present) or the CSV export at ``input_dir``."""
    views = settings.views
    if iu_format not in ("auto", "xml", "csv"):
        raise ConfigError(f"iu_format must be auto, xml or csv, not {iu_format!r}")
    image_root = Path(images_dir) if images_dir else input_dir
    xml_source = Path(reports) if reports else find_reports(input_dir)
    csv_reports = input_dir / "indiana_reports.csv"
    use_xml = iu_format == "xml" or (iu_format == "auto" and xml_source is not None and views == "all")
    if iu_format == "auto" and not use_xml and not csv_reports.is_file():
        if xml_source is not None and views == "frontal":
            raise ConfigError(
                "the IU X-ray XML release does not say which image is frontal; use views='all', or the CSV export "
                "(indiana_reports.csv + indiana_projections.csv), which has a projection per image"
            )
        raise ConfigError(
            f"no IU X-ray reports found in {input_dir}: expected ecgen-radiology/*.xml, NLMCXR_reports.tgz, or "
            "indiana_reports.csv + indiana_projections.csv (or name the reports: reports=PATH)"
        )
    index = index_images(image_root)
    if use_xml:
        if xml_source is None:
            raise ConfigError(f"no IU X-ray XML reports found in {input_dir} (name them: reports=PATH)")
        if views == "frontal":
            raise ConfigError("the IU X-ray XML release does not say which image is frontal; use views='all'")
        return _read_xml(xml_source, index, image_root)
    return _read_csv(input_dir, index, image_root, settings)


def _read_xml(source: Path, index: dict[str, Path], image_root: Path) -> SourceData:
    pairs = []
    n_refs = 0
    for name, data in iter_report_xml(source):
        try:
            uid, sections, image_ids = parse_report_xml(data, name)
        except ManifestError as exc:  # one broken file is one dropped report, not a failed run
            uid = "CXR" + Path(name).stem
            pairs.append(RawPair(study_id=uid, patient_id=uid, images=[], problem=str(exc)))
            continue
        n_refs += len(image_ids)
        found = [(i, _find(index, i)) for i in image_ids]
        pairs.append(
            RawPair(
                study_id=uid,
                patient_id=uid,
                images=[p for _, p in found if p is not None],
                sections=sections,
                unresolved=[i for i, p in found if p is None],
            )
        )
    stats = {
        "format": f"Open-i XML ({source.name})",
        "reports": len(pairs),
        "image_references": n_refs,
        "image_files_found": len(index),
    }
    notes = [] if index else [f"no image files found under {image_root}; name the extracted NLMCXR_png: images_dir=DIR"]
    return SourceData(pairs=pairs, image_root=image_root, stats=stats, notes=notes)


def _read_csv(input_dir: Path, index: dict[str, Path], image_root: Path, settings: ReadSettings) -> SourceData:
    reports_path = input_dir / "indiana_reports.csv"
    projections_path = input_dir / "indiana_projections.csv"
    reports = read_source_table(reports_path, settings)
    require_columns(reports, ("uid", "findings", "impression"), f"IU X-ray reports {reports_path}")
    projections = read_source_table(projections_path, settings)
    require_columns(projections, ("uid", "filename", "projection"), f"IU X-ray projections {projections_path}")
    by_uid: dict[str, list[tuple[str, str]]] = {}
    for row in projections.to_dict("records"):
        by_uid.setdefault(row["uid"].strip(), []).append((row["filename"].strip(), row["projection"].strip()))
    pairs = []
    n_refs = n_view = 0
    for row in reports.to_dict("records"):
        uid = row["uid"].strip()
        files = by_uid.get(uid, [])
        n_refs += len(files)
        if settings.views == "frontal":
            files = [(f, p) for f, p in files if p.lower() == "frontal"]
        n_view += len(files)
        found = [(f, _find(index, f)) for f, _ in files]
        sections = {}
        for column, name in (
            ("indication", "indication"),
            ("comparison", "comparison"),
            ("findings", "findings"),
            ("impression", "impression"),
        ):
            if str(row.get(column, "")).strip():
                sections[name] = str(row[column]).strip()
        pairs.append(
            RawPair(
                study_id=f"CXR{uid}",
                patient_id=f"CXR{uid}",
                images=[p for _, p in found if p is not None],
                sections=sections,
                unresolved=[f for f, p in found if p is None],
                meta={"projections": "|".join(p for _, p in files)},
            )
        )
    stats = {
        "format": "CSV export (indiana_reports.csv + indiana_projections.csv)",
        "reports": len(pairs),
        "image_references": n_refs,
        "image_references_after_view_filter": n_view,
        "image_files_found": len(index),
    }
    notes = [] if index else [f"no image files found under {image_root}; name the image folder: images_dir=DIR"]
    return SourceData(pairs=pairs, image_root=image_root, stats=stats, notes=notes)


SOURCE = PrepareSource(
    name="iu-xray",
    summary="Open-i IU X-ray: ecgen-radiology/*.xml or NLMCXR_reports.tgz + CXR<id>_IM-*.png images, or the\n"
    "CSV export indiana_reports.csv + indiana_projections.csv + images",
    read=read_iu_xray,
    views="all",
    val_size=0.1,
    text_mode="sections",
    options=(
        SourceOption("reports", "--reports", "the XML folder or NLMCXR_reports.tgz (default: found inside --input)"),
        SourceOption("images_dir", "--images", "folder searched for the images (default: --input)"),
    ),
)
