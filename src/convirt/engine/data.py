"""Lightning data module for pretraining: manifests -> paired datasets -> resumable, sharded loaders."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from convirt.config import Config
from convirt.data.manifest import read_paired_manifest
from convirt.data.paired import PairedCollator, PairedDataset, missing_image_rows
from convirt.data.sampling import ResumableStreamSampler, ShardedEvalSampler
from convirt.data.views import image_transforms
from convirt.errors import ConfigError, ManifestError

log = logging.getLogger("convirt")


def _checked_dataset(config: Config, split: str, train: bool) -> tuple[PairedDataset, int]:
    d = config.data
    if not d.manifest:
        raise ConfigError("data.manifest is not set: pass data.manifest=PATH (a manifest from `convirt prepare`)")
    manifest = read_paired_manifest(d.manifest, split=split, image_root=d.image_root)
    if len(manifest) == 0:
        raise ManifestError(
            f"manifest {d.manifest} has no rows with split={split!r}; pretraining needs train and val rows "
            "(`convirt prepare` draws a validation split by patient)"
        )
    indices = None
    dropped = 0
    if d.check_images:
        rows, paths = missing_image_rows(manifest)
        if rows:
            shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
            if d.on_bad_image == "fail":
                raise ManifestError(
                    f"{len(paths)} image file(s) named by {len(rows)} {split} row(s) of {d.manifest} do not exist: "
                    f"{shown}. Fix the paths (data.image_root) or set data.on_bad_image=skip to drop those pairs."
                )
            log.warning("dropping %d %s pair(s) whose images are missing: %s", len(rows), split, shown)
            bad = set(rows)
            indices = [i for i in range(len(manifest)) if i not in bad]
            dropped = len(rows)
            if not indices:
                raise ManifestError(f"none of the {split} images of {d.manifest} exist; check data.image_root")
    if not train and d.max_val_pairs is not None:
        indices = (indices if indices is not None else list(range(len(manifest))))[: d.max_val_pairs]
    dataset = PairedDataset(manifest, image_transforms(config, train=train), d.on_bad_image, indices)  # type: ignore[arg-type]
    return dataset, dropped


class PairedDataModule(L.LightningDataModule):
    def __init__(self, config: Config, tokenizer: Any) -> None:
        super().__init__()
        self.config = config
        self.collate = PairedCollator(tokenizer, config.model.max_length)
        self.train_set: PairedDataset | None = None
        self.val_set: PairedDataset | None = None
        self.dropped: dict[str, int] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.dropped["train"] = _checked_dataset(self.config, "train", train=True)
            self.val_set, self.dropped["val"] = _checked_dataset(self.config, "val", train=False)

    def _world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _loader(self, dataset: PairedDataset, sampler, batch_size: int, drop_last: bool) -> DataLoader:
        workers = self.config.data.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            collate_fn=self.collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            # Own generator: creating a loader iterator must not consume the global RNG (exact resume).
            generator=torch.Generator().manual_seed(self.config.train.seed),
            prefetch_factor=2 if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        batch = self.config.data.batch_size
        if len(self.train_set) < batch * self._world_size():
            raise ManifestError(
                f"only {len(self.train_set)} training pairs for a global batch of {batch * self._world_size()}; "
                "lower data.batch_size"
            )
        consumed = self.trainer.global_step * batch if self.trainer is not None else 0
        sampler = ResumableStreamSampler(
            len(self.train_set), self.config.train.seed, self._rank(), self._world_size(), start=consumed
        )
        return self._loader(self.train_set, sampler, batch, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        batch = self.config.data.val_batch_size or self.config.data.batch_size
        sampler = ShardedEvalSampler(len(self.val_set), self._rank(), self._world_size(), self.config.train.seed)
        # Full batches only when possible, so every validation batch has the same number of negatives.
        return self._loader(self.val_set, sampler, batch, drop_last=len(sampler) >= batch)
