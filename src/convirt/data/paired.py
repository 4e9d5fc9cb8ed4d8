"""The paired dataset: one augmented image view t_v and one sampled sentence t_u per draw, then collate + tokenise.

Per draw (the paper's t_u and t_v):

- one sentence is sampled uniformly from the report (fresh each time the pair is drawn);
- for multi-image studies (MIMIC-CXR has 1.7 images per report) one image is sampled uniformly per draw, so
  every image of the study is seen across epochs while each step still sees the study once;
- the image gets a fresh random view from the paper's augmentation family.

All randomness of a draw comes from a seed given with the index (see :mod:`convirt.data.sampling`), so the same
(index, seed) always gives the same view and sentence: in any worker process, and after a resume.

Unreadable images: with ``on_bad_image="fail"`` the error names the file and the manifest row; with ``"skip"``
another pair is drawn in its place and the skipped path travels with the batch (key ``skipped``) so the
training engine can count and list them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from convirt.data.images import load_image
from convirt.data.manifest import PairedManifest
from convirt.data.transforms import pil_to_uint8_tensor
from convirt.errors import ConfigError, ImageLoadError

BadImagePolicy = Literal["skip", "fail"]
_MAX_SUBSTITUTIONS = 50


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=generator).item()) if high > 1 else 0


class PairedDataset(Dataset):
    def __init__(
        self,
        manifest: PairedManifest,
        transform: Callable[[torch.Tensor], torch.Tensor],
        on_bad_image: BadImagePolicy = "skip",
        indices: Sequence[int] | None = None,
    ) -> None:
        if on_bad_image not in ("skip", "fail"):
            raise ConfigError(f"data.on_bad_image must be 'skip' or 'fail', not {on_bad_image!r}")
        self.manifest = manifest
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.indices = np.arange(len(manifest)) if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def _draw(self, row: int, seed: int) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(seed)
        sentence = self.manifest.sentences.item(row, _randint(self.manifest.sentences.count(row), generator))
        path = self.manifest.images.item(row, _randint(self.manifest.images.count(row), generator))
        image = pil_to_uint8_tensor(load_image(path, mode="L"))
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed would also seed every accelerator's generator (outside
            # fork_rng's restore) and, before CUDA is initialised, format a stack trace per call (~1 ms).
            torch.default_generator.manual_seed(seed)
            view = self.transform(image)
        return {"image": view, "text": sentence, "index": row}

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        position, seed = item if isinstance(item, tuple) else (int(item), int(item))
        skipped: list[str] = []
        generator = torch.Generator().manual_seed(seed)
        for _ in range(_MAX_SUBSTITUTIONS):
            row = int(self.indices[position])
            try:
                sample = self._draw(row, seed)
            except ImageLoadError as exc:
                if self.on_bad_image == "fail":
                    raise ImageLoadError(
                        exc.path,
                        f"{exc.reason} [{self.manifest.describe_row(row)}]. "
                        "Fix or remove the file, or set data.on_bad_image=skip to skip such pairs and count them.",
                    ) from exc
                warnings.warn(f"skipping unreadable image {exc.path}: {exc.reason}", stacklevel=2)
                skipped.append(exc.path)
                position = _randint(len(self.indices), generator)
                continue
            sample["skipped"] = skipped
            return sample
        raise ImageLoadError(skipped[-1], f"{_MAX_SUBSTITUTIONS} consecutive draws hit unreadable images; check data")


class PairedCollator:
    """Stack image views and tokenise the sampled sentences (padding to the longest, truncation at max_length)."""

    def __init__(self, tokenizer: Any, max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        tokens = self.tokenizer(
            [s["text"] for s in samples],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch: dict[str, Any] = {
            "images": torch.stack([s["image"] for s in samples]),
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
            "skipped": [path for s in samples for path in s["skipped"]],
        }
        if "token_type_ids" in tokens:
            batch["token_type_ids"] = tokens["token_type_ids"]
        return batch


def missing_image_rows(manifest: PairedManifest) -> tuple[list[int], list[str]]:
    """Rows whose image files do not all exist, and the missing paths (a cheap check before training)."""
    import os

    rows: list[int] = []
    paths: list[str] = []
    for row in range(len(manifest)):
        missing = [p for p in manifest.images[row] if not os.path.isfile(p)]
        if missing:
            rows.append(row)
            paths.extend(missing)
    return rows, paths
