"""Fine-tuning (the paper's recipe): a 200-step head-only warm-up at lr 1e-3, then everything trains.

Warm-up: the encoder is frozen and kept in eval mode (its BatchNorm statistics do not move), only the head
trains, for ``Recipe.warmup_steps`` steps at ``Recipe.warmup_lr`` (batches drawn as in the epochs, continuing
across epoch boundaries if the training set is small), on the training images' features computed once (the
frozen encoder gives every unaugmented image the same feature at every step). Then the encoder is unfrozen and a
fresh Adam optimiser at the task's lr trains encoder + head with the shared epoch loop (validation each epoch,
plateau halving, early stop, best checkpoint). With ``fast`` the forward passes run under bf16 autocast with
channels_last (weights and optimiser state stay float32). The caller's encoder is not modified (each run trains a
deep copy); the fine-tuned copy, at its best-validation weights, is returned in ``RunOutcome.encoder`` (on the CPU).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from convirt.data.labelled import LabelledTask
from convirt.encoders.embedders import to_device
from convirt.evaluation.classification.data import epoch_batches, evaluation_pass, training_epochs
from convirt.evaluation.classification.linear import _finish
from convirt.evaluation.classification.training import (
    EvalSplit,
    LinearHead,
    Recipe,
    RunOutcome,
    Timer,
    bf16_autocast,
    fit,
    make_validate,
    targets_tensor,
    task_loss,
)
from convirt.models.image import ImageEncoder

WARMUP_EPOCH_OFFSET = 100_000  # warm-up batches use their own seeded stream of epochs


class EncoderClassifier(nn.Module):
    def __init__(self, encoder: ImageEncoder, head: LinearHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


def finetune(
    task: LabelledTask,
    encoder: ImageEncoder,
    train: EvalSplit,
    val: EvalSplit,
    test: EvalSplit,
    recipe: Recipe | None = None,
    seed: int = 0,
    image_size: int = 224,
    device: torch.device | str = "cpu",
    fast: bool = True,
    workers: int = 0,
    log: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Fine-tune a copy of ``encoder`` with a linear head on ``train`` and score the best checkpoint on ``test``."""
    recipe = recipe or Recipe()
    timer = Timer()
    device = torch.device(device)
    lr = recipe.task_lr(task)
    autocast = bf16_autocast(device, fast)
    train_y = targets_tensor(task, train.targets).to(device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = copy.deepcopy(encoder).to(device)
        if fast:
            encoder = encoder.to(memory_format=torch.channels_last)
        head = LinearHead(encoder.feature_dim, task.num_outputs, recipe.dropout).to(device)
        model = EncoderClassifier(encoder, head)

        def forward(images: torch.Tensor) -> torch.Tensor:
            return model(to_device(images, device, fast))

        batches_for = training_epochs(train, recipe.batch_size, seed, image_size, workers)

        # 1. head-only warm-up. The frozen eval-mode encoder maps each (unaugmented) training image to the same
        # feature at every step, so the features are computed once and the head trains on the warm-up's batches
        # of them: the same steps as running the encoder on every batch, without repeating its forward passes.
        encoder.requires_grad_(False)
        encoder.eval()
        head.train()
        warmup = torch.optim.Adam(head.parameters(), lr=recipe.warmup_lr, weight_decay=recipe.weight_decay)
        steps, round_ = 0, 0
        if recipe.warmup_steps > 0:
            with torch.no_grad(), autocast():
                parts = [encoder(to_device(images, device, fast)).float() for images, _ in
                         evaluation_pass(train, recipe.batch_size, image_size, workers)()]  # fmt: skip
            train_features = torch.cat(parts)
        while steps < recipe.warmup_steps:
            for positions in epoch_batches(len(train), recipe.batch_size, seed, WARMUP_EPOCH_OFFSET + round_):
                rows = torch.as_tensor(positions)
                loss = task_loss(task, head(train_features[rows]), train_y[rows])
                warmup.zero_grad(set_to_none=True)
                loss.backward()
                warmup.step()
                steps += 1
                if steps >= recipe.warmup_steps:
                    break
            round_ += 1
        if log:
            log(f"warm-up: {steps} head-only steps at lr {recipe.warmup_lr:g}")

        # 2. everything trains
        encoder.requires_grad_(True)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=recipe.weight_decay)

        def eval_forward(images: torch.Tensor) -> torch.Tensor:
            with autocast():
                return forward(images)

        val_batches = evaluation_pass(val, recipe.batch_size, image_size, workers)
        validate = make_validate(task, eval_forward, val_batches, val, model.eval)
        result = fit(
            task, model, forward, batches_for, train_y, validate, optimizer, recipe, model.train, autocast, log=log
        )
        test_batches = evaluation_pass(test, recipe.batch_size, image_size, workers)
        outcome = _finish(task, model, eval_forward, test_batches, test, result, lr, timer)
    outcome.encoder = encoder.to("cpu", memory_format=torch.contiguous_format).eval()  # best-validation weights
    return outcome
