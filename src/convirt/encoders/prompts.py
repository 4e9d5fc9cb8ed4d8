"""Class prompts: text per class for zero-shot classification, text-image retrieval and saliency.

**Prompt files** give text per class, in either form:

- CSV with a class column (``label``, ``class`` or ``Variable``) and a text column (``text``, ``prompt`` or
  ``Text``), one sentence per row: the official ``text_query.csv`` reads as it is;
- YAML mapping each class to a list of sentences (``Pneumonia: [Pneumonia is present., ...]``).

``builtin:NAME`` names a file shipped in ``convirt/resources/`` (``builtin:kermany``: the official CheXpert 8x200
"No Finding" and "Pneumonia" sentences, verbatim, labelled NORMAL and PNEUMONIA). A mapping ``{CLASS: PROMPT_LABEL}``
(``NORMAL="No Finding"``) uses the prompts of ``PROMPT_LABEL`` for the dataset's ``CLASS`` and drops
prompt classes that are not mapped.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
import yaml

from convirt.encoders.embedders import Embedder
from convirt.errors import ConfigError, ManifestError

LABEL_COLUMNS = ("label", "class", "Variable")
TEXT_COLUMNS = ("text", "prompt", "Text")
BUILTIN_PREFIX = "builtin:"


def builtin_prompt_file(name: str) -> Path:
    """Path of a prompt file shipped with the package (``kermany`` -> ``resources/kermany_text_queries.csv``)."""
    file = resources.files("convirt").joinpath(f"resources/{name}_text_queries.csv")
    if not file.is_file():
        shipped = sorted(
            p.name.removesuffix("_text_queries.csv")
            for p in resources.files("convirt").joinpath("resources").iterdir()
            if p.name.endswith("_text_queries.csv")
        )
        raise ConfigError(f"no built-in prompt file {name!r}; shipped: {shipped}")
    return Path(str(file))


def read_prompts(source: str | os.PathLike, mapping: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Read class prompts (see the module docstring) -> {class: [sentences]} in file order."""
    text = str(source)
    path = builtin_prompt_file(text[len(BUILTIN_PREFIX) :]) if text.startswith(BUILTIN_PREFIX) else Path(source)
    if not path.is_file():
        raise ConfigError(f"prompt file {path} does not exist (CSV with label,text columns, or YAML class: [texts])")
    prompts: dict[str, list[str]] = {}
    if path.suffix.lower() in (".yaml", ".yml"):
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ManifestError(f"prompt file {path} must map each class to a list of sentences")
        for label, sentences in data.items():
            sentences = [sentences] if isinstance(sentences, str) else sentences
            if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
                raise ManifestError(f"prompt file {path}: class {label!r} must have a list of sentences")
            prompts[str(label)] = [s.strip() for s in sentences if s.strip()]
    else:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        label_column = next((c for c in LABEL_COLUMNS if c in frame.columns), None)
        text_column = next((c for c in TEXT_COLUMNS if c in frame.columns), None)
        if label_column is None or text_column is None:
            raise ManifestError(
                f"prompt file {path} needs a class column ({'/'.join(LABEL_COLUMNS)}) and a text column "
                f"({'/'.join(TEXT_COLUMNS)}); found {list(frame.columns)}"
            )
        for label, sentence in zip(frame[label_column], frame[text_column]):
            if sentence.strip():
                prompts.setdefault(label.strip(), []).append(sentence.strip())
    empty = [label for label, sentences in prompts.items() if not sentences]
    if empty or not prompts:
        raise ManifestError(f"prompt file {path}: no sentences for {empty or 'any class'}")
    return apply_prompt_map(prompts, mapping) if mapping else prompts


def apply_prompt_map(prompts: dict[str, list[str]], mapping: dict[str, str]) -> dict[str, list[str]]:
    """{dataset class: prompt label} -> the prompts keyed by dataset class (unmapped prompt classes dropped)."""
    unknown = [label for label in mapping.values() if label not in prompts]
    if unknown:
        raise ConfigError(
            f"the prompt map names prompt class(es) {unknown} not in the prompt file ({list(prompts)})",
            setting="prompt_map",
        )
    return {target: list(prompts[label]) for target, label in mapping.items()}


def class_embeddings(embedder: Embedder, prompts: dict[str, list[str]]) -> tuple[list[str], torch.Tensor]:
    """(classes, (C, d)): each class embedding is the normalised mean of its prompts' normalised embeddings."""
    classes = list(prompts)
    texts = [sentence for c in classes for sentence in prompts[c]]
    embedded = F.normalize(embedder.embed_texts(texts).float(), dim=-1)
    rows, start = [], 0
    for c in classes:
        rows.append(embedded[start : start + len(prompts[c])].mean(0))
        start += len(prompts[c])
    return classes, F.normalize(torch.stack(rows), dim=-1)
