"""Labelled-dataset adapters: each converts one real on-disk layout into the canonical labelled manifest.

=============== ======================================================================================== =========
spec            layout                                                                                   module
=============== ======================================================================================== =========
``imagefolder:``  ``ROOT/CLASS/*.png`` or ``ROOT/{train,val,test}/CLASS/*`` (e.g. Kermany pneumonia)      imagefolder
``csv:``          any table with an image column and label column(s)                                     csv
``rsna:``         Kaggle RSNA Pneumonia stage 2: ``stage_2_train_labels.csv`` + ``stage_2_train_images/``  rsna
``chexpert:``     CheXpert v1.0 (or -small): ``train.csv``, ``valid.csv``, ``train/``, ``valid/``          chexpert
``covidx:``       COVIDx v4+: ``train.txt``/``test.txt`` split files + ``train/``, ``test/`` folders        covidx
``mura:``         MURA v1.1: ``{train,valid}_image_paths.csv``, ``{train,valid}_labeled_studies.csv``        mura
``manifest:``     an existing canonical labelled manifest (see :mod:`convirt.data.labelled`)              --
=============== ======================================================================================== =========

:func:`load_labelled_dataset` takes ``KIND:PATH`` (a bare folder means ``imagefolder``, a bare file a canonical
manifest) plus keyword options that the adapter accepts (``val_size``, ``seed``, ``uncertain`` ...), and returns a
validated :class:`~convirt.data.labelled.LabelledManifest`. Every adapter also exposes ``build(path, **options)``.
Save the result with :func:`convirt.data.labelled.write_labelled_manifest` to freeze the split.
:func:`labelled_images` reduces a dataset's split to one class per image (retrieval, zero-shot, figures);
:func:`image_labels` gives every image of a split all its labels (search indexes).
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convirt.data.labelled import LabelledManifest, read_labelled_manifest
from convirt.errors import ConfigError

ADAPTERS = {
    "imagefolder": "convirt.data.sources.imagefolder",
    "csv": "convirt.data.sources.csv",
    "rsna": "convirt.data.sources.rsna",
    "chexpert": "convirt.data.sources.chexpert",
    "covidx": "convirt.data.sources.covidx",
    "mura": "convirt.data.sources.mura",
}


def parse_dataset_spec(spec: str) -> tuple[str, Path]:
    """``"rsna:/data/rsna"`` -> ``("rsna", Path("/data/rsna"))``; a bare path -> imagefolder or manifest."""
    kind, sep, rest = str(spec).partition(":")
    if sep and (kind in ADAPTERS or kind == "manifest"):
        return kind, Path(rest)
    path = Path(spec)
    return ("imagefolder" if path.is_dir() else "manifest"), path


def adapter_options(kind: str) -> list[str]:
    """Keyword options the adapter ``kind`` accepts."""
    module = importlib.import_module(ADAPTERS[kind])
    return [p for p in inspect.signature(module.build).parameters if p != "root"]


def load_labelled_dataset(spec: str | os.PathLike, **options) -> LabelledManifest:
    """Load ``KIND:PATH`` through its adapter (options with value ``None`` are left at the adapter's default)."""
    kind, path = parse_dataset_spec(str(spec))
    options = {k: v for k, v in options.items() if v is not None}
    if kind == "manifest":
        if options:
            raise ConfigError(f"options {sorted(options)} do not apply to a prepared manifest ({path})")
        return read_labelled_manifest(path)
    accepted = adapter_options(kind)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"dataset kind {kind!r} does not take option(s) {unknown}; it takes {accepted}")
    module = importlib.import_module(ADAPTERS[kind])
    return module.build(path, **options)


def _load_split(spec: str | os.PathLike, split: str | None, **options) -> LabelledManifest:
    """The rows of one split of a labelled dataset (``None`` or ``all``: every row); none is an error. ``options``
    go to the dataset's adapter (:func:`load_labelled_dataset`: ``split_column``, ``label_columns``, ...)."""
    kind, path = parse_dataset_spec(str(spec))
    # An absolute path: adapters resolve image paths against the dataset root, which a relative root breaks.
    manifest = load_labelled_dataset(f"{kind}:{path.expanduser().resolve()}", **options)
    if split and split != "all":
        manifest = manifest.split(split)
    if len(manifest) == 0:
        raise ConfigError(f"dataset {spec} has no images in split {split!r}")
    return manifest


def image_labels(spec: str | os.PathLike, split: str | None = None, **options) -> dict[str, list[str]]:
    """{resolved image path: its labels} for every image of a labelled dataset's split (``None``: all rows).

    Single-label datasets give each image its class; multi-label ones every label it is positive for (none when
    it is negative or unknown for all). What an image index stores to show labels and Precision@k. ``options``:
    as for :func:`labelled_images`.
    """
    manifest = _load_split(spec, split, **options)
    names = manifest.task.class_names
    if manifest.task.kind == "multilabel":
        labels = [[names[k] for k in np.flatnonzero(row == 1)] for row in manifest.targets]
    else:
        labels = [[names[int(t)]] for t in manifest.targets]
    return {str(Path(p).resolve()): row for p, row in zip(manifest.images, labels)}


def labelled_images(
    spec: str | os.PathLike, split: str | None = "test", **options
) -> tuple[list[str], list[str], dict]:
    """(paths, class names, description) of a labelled dataset's split, one class per image.

    Multi-label datasets keep the images positive for exactly one label and known negative for all others (as
    CheXpert 8x200 was drawn), labelled by that label. ``split`` None or ``all``: every row. ``options`` go to the
    dataset's adapter (:func:`load_labelled_dataset`: ``split_column``, ``label_columns``, ``val_size`` ...).
    """
    manifest = _load_split(spec, split, **options)
    names = manifest.task.class_names
    paths = list(manifest.images)
    if manifest.task.kind == "multilabel":
        targets = manifest.targets
        exclusive = (np.nansum(targets == 1, axis=1) == 1) & ~np.isnan(targets).any(axis=1)
        rows = np.flatnonzero(exclusive)
        labels = [names[int(np.argmax(targets[i]))] for i in rows]
        paths = [paths[i] for i in rows]
    else:
        labels = [names[int(t)] for t in manifest.targets]
    info = {
        "dataset": str(spec),
        "split": split,
        "task": manifest.task.name,
        "n_images": len(paths),
        "images_per_class": {c: labels.count(c) for c in names if c in labels},
    }
    return paths, labels, info


def sample_per_class(
    paths: Sequence[str], labels: Sequence[str], categories: Sequence[str], max_per_class: int | None, seed: int
) -> tuple[list[str], list[str]]:
    """The images of ``categories`` (in that order), at most ``max_per_class`` of each drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    keep = []
    for category in categories:
        rows = [i for i, label in enumerate(labels) if label == category]
        if max_per_class is not None and len(rows) > max_per_class:
            rows = sorted(rng.choice(rows, size=max_per_class, replace=False).tolist())
        keep += rows
    return [paths[i] for i in keep], [labels[i] for i in keep]
