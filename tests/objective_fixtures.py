"""Helpers shared by the baseline-objective tests (tests/test_objective_*.py): small real manifests, real batches,
and a fixed-batch "a few steps lower the training loss" check through each objective's own optimiser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def small_manifest(covid_prepared: Path, folder: Path, train: int = 16, val: int = 8) -> Path:
    """The first ``train`` training and ``val`` validation pairs of the prepared COVID-19 set (absolute paths)."""
    import pandas as pd

    frame = pd.read_csv(covid_prepared, dtype=str, keep_default_na=False)
    frame["images"] = ["|".join(str(covid_prepared.parent / p) for p in cell.split("|")) for cell in frame["images"]]
    subset = pd.concat([frame[frame["split"] == "train"].head(train), frame[frame["split"] == "val"].head(val)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.csv"
    subset.to_csv(path, index=False)
    return path


def real_batch(data, size: int, split: str = "train", start: int = 0) -> dict[str, Any]:
    """A fixed batch of real pairs through the objective's own dataset transforms and collate function."""
    dataset = data.train_set if split == "train" else data.val_set
    collate = data.collate_factory(dataset)
    return collate([dataset[(i, 1000 + i)] for i in range(start, start + size)])


def optimizer_of(module) -> torch.optim.Optimizer:
    configured = module.configure_optimizers()
    return configured["optimizer"] if isinstance(configured, dict) else configured


def fixed_batch_training(module, batch: dict[str, Any], steps: int, seed: int = 0) -> tuple[float, float]:
    """(loss before, loss after) ``steps`` optimiser steps of the objective's training loss on one real batch.

    The loss is measured in training mode with the global RNG seeded the same way both times (dropout, fake
    partners), so only the weights differ between the two measurements.
    """

    def measure() -> float:
        torch.manual_seed(seed)
        with torch.no_grad():
            return float(module.batch_loss(batch))

    module.train()
    optimizer = optimizer_of(module)
    before = measure()
    for step in range(steps):
        torch.manual_seed(seed + 1 + step)
        optimizer.zero_grad()
        module.train_loss(batch).backward()
        optimizer.step()
    return before, measure()


def image_encoder_gradients(module, batch: dict[str, Any]) -> tuple[int, int]:
    """(trainable image-encoder tensors, those that got a non-zero gradient) after one backward of the loss."""
    module.train()
    module.zero_grad()
    module.train_loss(batch).backward()
    params = [p for p in module.model.image_encoder.parameters() if p.requires_grad]
    reached = [p for p in params if p.grad is not None and float(p.grad.abs().sum()) > 0]
    return len(params), len(reached)
