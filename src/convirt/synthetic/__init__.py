"""Synthetic paired chest radiographs and reports: the data behind ``convirt demo`` (no download, no network).

- :mod:`.render`: anatomy, findings with visual signatures, the numpy renderer;
- :mod:`.reports`: INDICATION / COMPARISON / FINDINGS / IMPRESSION reports that agree with the labels;
- :mod:`.dataset`: :func:`generate_dataset` writes images, ``pairs.csv`` (the ``convirt prepare csv`` input) and
  ``labels.csv`` (a labelled manifest) -- ``convirt synthesize --size N --seed S --out DIR``.
"""

from convirt.synthetic.dataset import NO_FINDING, Study, SyntheticDataset, generate_dataset, render_study, sample_study
from convirt.synthetic.render import CATEGORIES, FINDINGS, Anatomy, Devices, Finding, render, sample_anatomy

__all__ = [
    "CATEGORIES",
    "FINDINGS",
    "NO_FINDING",
    "Anatomy",
    "Devices",
    "Finding",
    "Study",
    "SyntheticDataset",
    "generate_dataset",
    "render",
    "render_study",
    "sample_anatomy",
    "sample_study",
]
