"""Linear probe: a frozen encoder and a trained linear head, in two equivalent recipes.

- :func:`linear_probe_images` is the paper's recipe taken literally: every training step and every validation
  pass runs the frozen encoder (eval mode, no gradients) on the images, then the head.
- :func:`linear_probe_features` trains the same head with the same optimiser, schedule, batches (same seeded
  order), dropout masks and early stopping on features extracted once per encoder and split
  (:mod:`~convirt.evaluation.classification.features`). The encoder is frozen and deterministic in eval mode
  and the Appendix B input has no augmentation, so both recipes see the same numbers up to floating-point
  rounding of batched convolutions: use this one for sweeps (fractions x seeds x encoders).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from convirt.data.labelled import LabelledTask
from convirt.encoders.embedders import prepare_module, to_device
from convirt.evaluation.classification.data import epoch_batches, evaluation_pass, training_epochs
from convirt.evaluation.classification.metrics import score_predictions
from convirt.evaluation.classification.training import (
    EvalSplit,
    LinearHead,
    Recipe,
    RunOutcome,
    Timer,
    bf16_autocast,
    fit,
    make_validate,
    predict_logits,
    probabilities,
    targets_tensor,
)
from convirt.models.image import ImageEncoder

EVAL_BATCH = 256


def standardize_features(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Z-score every column with the mean and (population) std of ``train``; constant columns are only centred."""
    train64 = train.double()
    mean = train64.mean(0)
    std = train64.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(((x.double() - mean) / std).float() for x in (train, *others))


def _feature_batches(features: torch.Tensor, batches):
    for index in batches:
        yield features[torch.as_tensor(index, dtype=torch.long)], index


def _finish(task, module, forward, test_batches, test: EvalSplit, result, lr, timer) -> RunOutcome:
    module.load_state_dict(result.best_state)
    module.eval()
    logits = predict_logits(forward, test_batches(), len(test))
    test_probabilities = probabilities(task, logits)
    test_score = score_predictions(task, test.targets, test_probabilities, test.groups)
    return RunOutcome(
        result.best_val, test_score, test_probabilities, result.best_epoch, result.epochs, lr, timer.seconds,
        result.history,
    )  # fmt: skip


def linear_probe_features(
    task: LabelledTask,
    train: EvalSplit,
    val: EvalSplit,
    test: EvalSplit,
    recipe: Recipe | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> RunOutcome:
    """Train a linear head on cached features (``EvalSplit.features``) and score the best checkpoint on test."""
    recipe = recipe or Recipe()
    timer = Timer()
    lr = recipe.task_lr(task)
    train_x = train.features.float()
    val_x, test_x = val.features.float(), test.features.float()
    if recipe.standardize:
        train_x, val_x, test_x = standardize_features(train_x, val_x, test_x)
    train_y = targets_tensor(task, train.targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = LinearHead(train_x.shape[1], task.num_outputs, recipe.dropout)
        optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=recipe.weight_decay)

        def train_batches(epoch: int):
            return _feature_batches(train_x, epoch_batches(len(train_x), recipe.batch_size, seed, epoch))

        def val_batches():
            return _feature_batches(val_x, epoch_batches(len(val_x), EVAL_BATCH, 0, 0, shuffle=False))

        def test_batches():
            return _feature_batches(test_x, epoch_batches(len(test_x), EVAL_BATCH, 0, 0, shuffle=False))

        validate = make_validate(task, head, val_batches, val, head.eval)
        result = fit(task, head, head, train_batches, train_y, validate, optimizer, recipe, head.train, log=log)
        return _finish(task, head, head, test_batches, test, result, lr, timer)


def linear_probe_images(
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
    """The paper's linear-probe recipe: the frozen encoder runs on the images of every batch (``EvalSplit.images``)."""
    recipe = recipe or Recipe()
    timer = Timer()
    device = torch.device(device)
    lr = recipe.task_lr(task)
    encoder = prepare_module(encoder, device, fast)
    encoder.requires_grad_(False)
    autocast = bf16_autocast(device, fast)
    train_y = targets_tensor(task, train.targets).to(device)

    def frozen(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast():
            return encoder(to_device(images, device, fast)).float()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = LinearHead(encoder.feature_dim, task.num_outputs, recipe.dropout).to(device)
        optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=recipe.weight_decay)

        def forward(images: torch.Tensor) -> torch.Tensor:
            return head(frozen(images))

        train_batches = training_epochs(train, recipe.batch_size, seed, image_size, workers)

        def set_train_mode() -> None:
            head.train()
            encoder.eval()

        val_batches = evaluation_pass(val, recipe.batch_size, image_size, workers)
        validate = make_validate(task, forward, val_batches, val, head.eval)
        result = fit(task, head, forward, train_batches, train_y, validate, optimizer, recipe, set_train_mode, log=log)
        test_batches = evaluation_pass(test, recipe.batch_size, image_size, workers)
        return _finish(task, head, forward, test_batches, test, result, lr, timer)
