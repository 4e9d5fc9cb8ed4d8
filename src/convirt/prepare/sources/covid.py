"""COVID-19 image data collection (Cohen et al.): ``metadata.csv`` + ``images/``.

Layout: one row per image with ``patientid``, ``offset`` (days since symptom onset), ``date``, ``view``,
``modality``, ``folder``, ``filename``, ``clinical_notes`` (and ``finding``, ``license``, ...).

Choices (documented in docs/data-preparation.md):

- X-ray only (CT rows are skipped); frontal views by default (``PA``, ``AP``, ``AP Supine``); ``views="all"``
  keeps every X-ray view (lateral ``L`` and the rows with a blank or ``?`` view too).
- A study is the rows of one patient with the same ``offset``, the same ``date`` and the same clinical notes: the
  notes are written per imaging time point, so images sharing all three are one study with several images; the
  same notes at another offset are another study (another time point) that happens to share its text.
- The notes are case histories, not Findings/Impression reports, so the whole note is kept (``text_mode="whole"``)
  and goes through the same sentence split and >= 3-token filter.
- The collection lists a few images under two patient ids (rows repeated with a new id); those patients are kept
  in one split by the pipeline, and a repeated study (same images, same text) is kept once.
"""

from __future__ import annotations

import re
from pathlib import Path

from convirt.data.manifest import require_columns
from convirt.errors import ConfigError

from ..tables import read_source_table
from ..types import PrepareSource, RawPair, ReadSettings, SourceData

FRONTAL_VIEWS = frozenset({"PA", "AP", "AP SUPINE", "AP ERECT", "AP SEMI ERECT"})
REQUIRED = ("patientid", "view", "modality", "filename", "clinical_notes")


def _norm(value: str) -> str:
    return re.sub(r"\s+", " ", str(value)).strip()


def read_covid(input_dir: Path, settings: ReadSettings, modalities: tuple[str, ...] = ("X-ray",)) -> SourceData:
    """Read the collection at ``input_dir`` into studies (see the module notes for the grouping rule)."""
    views = settings.views
    metadata = input_dir / "metadata.csv"
    if not metadata.is_file():
        raise ConfigError(
            f"{metadata} not found: the input must be the folder of the COVID-19 image data collection "
            "(with metadata.csv and images/)"
        )
    frame = read_source_table(metadata, settings)
    require_columns(frame, REQUIRED, f"COVID-19 metadata {metadata}")
    rows_in = len(frame)
    wanted_modalities = {m.lower() for m in modalities}
    frame = frame[frame["modality"].map(lambda m: _norm(m).lower() in wanted_modalities)]
    rows_modality = len(frame)
    if views == "frontal":
        frame = frame[frame["view"].map(lambda v: _norm(v).upper() in FRONTAL_VIEWS)]
    rows_view = len(frame)

    studies: dict[tuple[str, str, str, str], RawPair] = {}
    per_patient: dict[str, int] = {}
    for row in frame.to_dict("records"):
        patient = _norm(row["patientid"])
        notes = str(row["clinical_notes"]).strip()
        key = (patient, _norm(row.get("offset", "")), _norm(row.get("date", "")), _norm(notes))
        folder = _norm(row.get("folder", "")) or "images"
        path = input_dir / folder / row["filename"]
        pair = studies.get(key)
        if pair is None:
            per_patient[patient] = per_patient.get(patient, 0) + 1
            pair = RawPair(
                study_id=f"covid-{patient}-{per_patient[patient]:02d}",
                patient_id=patient,
                images=[],
                text=notes,
                meta={"finding": "", "view": "", "offset": key[1], "license": ""},
            )
            studies[key] = pair
        if path not in pair.images:
            pair.images.append(path)
            for column in ("finding", "view", "license"):
                value = _norm(row.get(column, ""))
                existing = pair.meta[column].split("|") if pair.meta[column] else []
                if value and value not in existing:
                    pair.meta[column] = "|".join([*existing, value])
    pairs = list(studies.values())
    stats = {
        "rows_in_metadata": rows_in,
        "rows_after_modality_filter": rows_modality,
        "rows_after_view_filter": rows_view,
        "studies": len(pairs),
    }
    return SourceData(pairs=pairs, image_root=input_dir / "images", stats=stats)


SOURCE = PrepareSource(
    name="covid-chestxray",
    summary="COVID-19 image data collection: metadata.csv + images/ (text = clinical notes)",
    read=read_covid,
    views="frontal",
    val_size=0.1,
    text_mode="whole",
)
