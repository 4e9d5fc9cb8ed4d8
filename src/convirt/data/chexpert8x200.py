"""The CheXpert 8x200 retrieval lists released with the paper: their reader and the path resolver.

``candidate.csv`` (1600 candidate images, 200 exclusively positive for each of 8 categories), ``image_query.csv``
(80 query images, 10 per category) and ``text_query.csv`` (40 sentences, 5 per category), with paths relative to a
CheXpert-v1.0-small download. The retrieval protocol (:mod:`convirt.evaluation.retrieval`) and the t-SNE figure
read them through :func:`read_official_lists`; the synthetic generator draws the same 8 categories.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from convirt.errors import ConvirtError, ManifestError
from convirt.paths import shared_data_dir

# The 8 categories of CheXpert 8x200 retrieval (Appendix D), in the paper's order.
CHEXPERT_8X200_CATEGORIES = (
    "Atelectasis",
    "Cardiomegaly",
    "Edema",
    "Fracture",
    "Pleural Effusion",
    "Pneumonia",
    "Pneumothorax",
    "No Finding",
)

OFFICIAL_COUNTS = {"candidate.csv": 200, "image_query.csv": 10, "text_query.csv": 5}  # per category
CHEXPERT_ROOT_NAME = "CheXpert-v1.0-small"


class MissingImagesError(ConvirtError):
    """Images named by the retrieval lists are not where the user said the dataset is."""


def official_lists_dir() -> Path:
    """Where the released lists are: ``<shared data>/convirt-retrieval``."""
    return shared_data_dir() / "convirt-retrieval"


@dataclass
class RetrievalLists:
    """Queries and candidates with their categories (official lists or a subset of them)."""

    categories: tuple[str, ...]
    candidate_paths: list[str]
    candidate_labels: list[str]
    image_query_paths: list[str]
    image_query_labels: list[str]
    text_queries: list[str]
    text_query_labels: list[str]
    source: str = ""

    def image_paths(self) -> list[str]:
        """Every image path the lists name (queries and candidates, each once, in order)."""
        return list(dict.fromkeys([*self.image_query_paths, *self.candidate_paths]))

    def subset(self, candidates: Sequence[int], image_queries: Sequence[int], text_queries: Sequence[int]):
        """A smaller set of lists (rows by position), e.g. for a fake dataset in tests."""
        return RetrievalLists(
            self.categories,
            [self.candidate_paths[i] for i in candidates],
            [self.candidate_labels[i] for i in candidates],
            [self.image_query_paths[i] for i in image_queries],
            [self.image_query_labels[i] for i in image_queries],
            [self.text_queries[i] for i in text_queries],
            [self.text_query_labels[i] for i in text_queries],
            self.source,
        )


def _read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise ManifestError(
            f"retrieval list {path} not found; the official lists (candidate.csv, image_query.csv, text_query.csv) "
            "were released with the paper and live in ../shared/data/convirt-retrieval (or give their folder)",
            setting="lists",
        )
    frame = pd.read_csv(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ManifestError(f"{path} lacks column(s) {missing}; found {list(frame.columns)}")
    return frame


def _check_categories(labels: pd.Series, path: Path, expected_per_category: int | None) -> None:
    unknown = sorted(set(labels) - set(CHEXPERT_8X200_CATEGORIES))
    if unknown:
        raise ManifestError(f"{path}: unknown categor(ies) {unknown}; expected {list(CHEXPERT_8X200_CATEGORIES)}")
    counts = labels.value_counts()
    absent = [c for c in CHEXPERT_8X200_CATEGORIES if c not in counts]
    if absent:
        raise ManifestError(f"{path}: no rows for categor(ies) {absent}; the official lists cover all 8")
    if expected_per_category is not None:
        wrong = {c: int(n) for c, n in counts.items() if n != expected_per_category}
        if wrong:
            raise ManifestError(
                f"{path}: expected {expected_per_category} rows per category (official lists), found {wrong}"
            )


def read_official_lists(folder: str | os.PathLike | None = None, strict: bool = True) -> RetrievalLists:
    """Parse the released CheXpert 8x200 lists from ``folder`` (default :func:`official_lists_dir`).

    A candidate's category is the one of the 8 category columns equal to 1 (each candidate is exclusively positive
    for one). With ``strict`` the official sizes are checked (1600 / 80 / 40 rows, 200 / 10 / 5 per category).
    """
    folder = Path(folder) if folder is not None else official_lists_dir()
    candidates = _read_csv(folder / "candidate.csv", ["Path", *CHEXPERT_8X200_CATEGORIES])
    positives = candidates[list(CHEXPERT_8X200_CATEGORIES)].eq(1.0)
    bad = positives.sum(axis=1) != 1
    if bad.any():
        row = int(bad.idxmax())
        raise ManifestError(
            f"{folder / 'candidate.csv'} row {row + 2}: a candidate must be positive for exactly one of the 8 "
            f"categories; found {int(positives.sum(axis=1)[row])} ({candidates.loc[row, 'Path']})"
        )
    candidate_labels = positives.idxmax(axis=1)
    image_queries = _read_csv(folder / "image_query.csv", ["Variable", "Path"])
    text_queries = _read_csv(folder / "text_query.csv", ["Variable", "Text"])
    per = OFFICIAL_COUNTS if strict else dict.fromkeys(OFFICIAL_COUNTS)
    _check_categories(candidate_labels, folder / "candidate.csv", per["candidate.csv"])
    _check_categories(image_queries["Variable"], folder / "image_query.csv", per["image_query.csv"])
    _check_categories(text_queries["Variable"], folder / "text_query.csv", per["text_query.csv"])
    overlap = set(image_queries["Path"]) & set(candidates["Path"])
    if overlap:
        raise ManifestError(f"{folder}: {len(overlap)} image queries are also candidates, e.g. {sorted(overlap)[0]}")
    return RetrievalLists(
        CHEXPERT_8X200_CATEGORIES,
        candidates["Path"].astype(str).tolist(),
        candidate_labels.tolist(),
        image_queries["Path"].astype(str).tolist(),
        image_queries["Variable"].astype(str).tolist(),
        text_queries["Text"].astype(str).str.strip().tolist(),
        text_queries["Variable"].astype(str).tolist(),
        str(folder),
    )


def resolve_chexpert_paths(relative_paths: Sequence[str], root: str | os.PathLike) -> list[Path]:
    """Map list paths (``CheXpert-v1.0-small/train/...``) onto the user's download; every file must exist.

    ``root`` may be the folder that contains ``CheXpert-v1.0-small/`` or that folder itself. Missing files raise
    :class:`MissingImagesError` saying how many of the listed images are missing and where they were looked for.
    """
    root = Path(root).expanduser()
    prefix = CHEXPERT_ROOT_NAME + "/"
    inside = not (root / CHEXPERT_ROOT_NAME).is_dir() and (root.name == CHEXPERT_ROOT_NAME or (root / "train").is_dir())
    paths = [root / (p[len(prefix) :] if inside and p.startswith(prefix) else p) for p in relative_paths]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        looked = root if inside else root / CHEXPERT_ROOT_NAME
        examples = ", ".join(str(p) for p in missing[:3])
        raise MissingImagesError(
            f"{len(missing)} of the {len(paths)} CheXpert images named by the retrieval lists are missing; looked "
            f"under {looked.resolve()} (e.g. {examples}). The CheXpert root is the folder that contains "
            f"{CHEXPERT_ROOT_NAME}/ (or that folder itself) from a CheXpert-v1.0-small download.",
            setting="chexpert_root",
        )
    return paths
