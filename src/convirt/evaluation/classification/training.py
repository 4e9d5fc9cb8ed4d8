"""The Appendix B training recipe shared by the linear probe (both variants) and fine-tuning.

Paper: Adam, lr 1e-3 for COVIDx and 1e-4 otherwise, weight decay 1e-6, dropout 0.2 before the last layer,
batch 64; validate every epoch; halve the lr after 3 epochs without improvement; stop after 10 epochs without
improvement; test the best checkpoint. Choices where the paper is silent (all in :class:`Recipe`):

- "improvement" is a strictly higher validation metric (the task's AUC / mean AUC / accuracy at its scoring
  level), or an equal metric with a strictly lower validation loss (so a saturated AUC of 1.0 does not end
  training at once); ``monitor="loss"`` uses the validation loss alone, as does an undefined metric (a
  validation set with one class);
- the lr is halved at the 3rd, 6th and 9th consecutive epoch without improvement; the 10th stops training;
- at most ``max_epochs`` (100) epochs;
- the head is ``Dropout(0.2) -> Linear`` on the pooled features h_v; binary tasks have one logit (BCE),
  multiclass tasks one per class (cross-entropy), multi-label tasks one per label (BCE, unknown labels masked).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convirt.data.labelled import LabelledTask
from convirt.errors import ConfigError
from convirt.evaluation.classification.metrics import Score, score_predictions
from convirt.schedule import PlateauHalving

PAPER_LR = {"covidx": 1e-3}
DEFAULT_LR = 1e-4


@dataclass
class Recipe:
    """Training hyper-parameters; defaults are the paper's (Appendix B)."""

    lr: float | None = None  # None: 1e-3 for COVIDx, 1e-4 otherwise
    weight_decay: float = 1e-6
    dropout: float = 0.2
    batch_size: int = 64
    max_epochs: int = 100
    lr_patience: int = 3
    lr_factor: float = 0.5
    stop_patience: int = 10
    warmup_steps: int = 200  # fine-tuning: head-only steps before unfreezing
    warmup_lr: float = 1e-3
    monitor: str = "metric"  # metric | loss
    # Linear probe on cached features only: z-score every feature with the mean and std of the labelled training
    # subset before the head (not in the paper). Makes the probe blind to the scale of an encoder's features, e.g.
    # a random-init MobileNetV2, whose eval-mode activations shrink to ~1e-10 through its unnormalised layers.
    standardize: bool = False

    def __post_init__(self) -> None:
        if self.monitor not in ("metric", "loss"):
            raise ConfigError(f"monitor must be 'metric' or 'loss', not {self.monitor!r}")
        if self.batch_size < 1 or self.max_epochs < 1:
            raise ConfigError("batch size and max epochs must be positive")

    def task_lr(self, task: LabelledTask) -> float:
        if self.lr is not None:
            return float(self.lr)
        return PAPER_LR.get(task.paper_key or task.name.lower(), DEFAULT_LR)

    def to_dict(self) -> dict:
        return asdict(self)


class LinearHead(nn.Module):
    """Dropout before the last (only) layer, as in the paper."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(features))


def targets_tensor(task: LabelledTask, targets: np.ndarray) -> torch.Tensor:
    if task.kind == "multiclass":
        return torch.as_tensor(np.asarray(targets), dtype=torch.long)
    return torch.as_tensor(np.asarray(targets, dtype=np.float32))


def task_loss(task: LabelledTask, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if task.kind == "binary":
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), targets.float())
    if task.kind == "multiclass":
        return F.cross_entropy(logits, targets)
    known = ~torch.isnan(targets)
    losses = F.binary_cross_entropy_with_logits(logits, targets.nan_to_num(0.0), reduction="none")
    return (losses * known).sum() / known.sum().clamp(min=1)


def probabilities(task: LabelledTask, logits: torch.Tensor) -> np.ndarray:
    logits = logits.float()
    if task.kind == "binary":
        return torch.sigmoid(logits.reshape(-1)).numpy()
    if task.kind == "multiclass":
        return torch.softmax(logits, dim=1).numpy()
    return torch.sigmoid(logits).numpy()


@dataclass
class EvalSplit:
    """What is needed to predict and score one split: inputs (images or cached features), targets, groups."""

    targets: np.ndarray
    groups: list[str] | None = None  # study/patient ids when scored per group
    images: list[str] | None = None
    features: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.targets)


@dataclass
class RunOutcome:
    """One training run: best-checkpoint validation and test scores, test probabilities, bookkeeping."""

    val: Score
    test: Score
    test_probabilities: np.ndarray
    best_epoch: int
    epochs: int
    lr: float
    seconds: float
    history: list[dict] = field(default_factory=list)
    encoder: nn.Module | None = field(default=None, repr=False)  # fine-tuning: the fine-tuned encoder (best weights)


Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def bf16_autocast(device: torch.device, fast: bool) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts: bf16 when ``fast`` and the device runs bf16 natively, else no-ops."""
    from convirt.runtime import bf16_supported

    if fast and bf16_supported(device):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def predict_logits(forward: Callable[[torch.Tensor], torch.Tensor], batches: Iterable, n: int) -> torch.Tensor:
    """Run ``forward`` over ``(inputs, positions)`` batches and return logits in position order."""
    out: torch.Tensor | None = None
    with torch.no_grad():
        for inputs, positions in batches:
            logits = forward(inputs).float().cpu()
            if out is None:
                out = torch.empty(n, *logits.shape[1:])
            out[torch.as_tensor(positions, dtype=torch.long)] = logits
    return out if out is not None else torch.empty(0)


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    epochs: int
    best_val: Score
    history: list[dict]


def _improved(value: float, loss: float, best: float | None, best_loss: float) -> bool:
    """Strictly better monitored value; on a tie (e.g. a saturated AUC of 1.0), a strictly lower loss."""
    if best is None:
        return True
    if np.isnan(value):
        return False
    return value > best or (value == best and loss < best_loss)


def fit(
    task: LabelledTask,
    module: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    train_batches: Batches,
    train_targets: torch.Tensor,
    validate: Callable[[], tuple[Score, float]],
    optimizer: torch.optim.Optimizer,
    recipe: Recipe,
    set_train_mode: Callable[[], None],
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """Epoch loop with plateau lr halving, early stopping and best-checkpoint keeping (see the module docstring).

    ``train_batches(epoch)`` yields ``(inputs, positions)`` with positions into ``train_targets``; ``validate()``
    returns the validation :class:`Score` and loss of the current weights; ``module``'s state is the checkpoint.
    """
    best_value: float | None = None
    best_loss = float("inf")
    best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    best_epoch, best_val = 0, Score(task.metric, float("nan"))
    plateau = PlateauHalving(optimizer, recipe.lr_patience, recipe.lr_factor)
    history: list[dict] = []
    epoch = 0
    for epoch in range(1, recipe.max_epochs + 1):
        set_train_mode()
        total, count = 0.0, 0
        for inputs, positions in train_batches(epoch):
            with autocast():
                logits = forward(inputs)
            loss = task_loss(task, logits, train_targets[torch.as_tensor(positions, dtype=torch.long)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(positions)
            count += len(positions)
        val_score, val_loss = validate()
        use_loss = recipe.monitor == "loss" or np.isnan(val_score.value)
        value = -val_loss if use_loss else val_score.value
        lr, train_loss = optimizer.param_groups[0]["lr"], total / max(count, 1)
        history.append({"epoch": epoch, "lr": lr, "train_loss": train_loss, "val_loss": val_loss, "monitored": value})
        if log:
            log(f"epoch {epoch}: train loss {train_loss:.4f} val {val_score.value:.4f} lr {lr:.2e}")
        improved = _improved(value, val_loss, best_value, best_loss)
        if improved:
            best_value, best_loss, best_epoch, best_val = value, val_loss, epoch, val_score
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        elif plateau.bad_evaluations + 1 >= recipe.stop_patience:
            break
        plateau.update(improved)
    return FitResult(best_state, best_epoch, epoch, best_val, history)


def make_validate(
    task: LabelledTask,
    forward: Callable[[torch.Tensor], torch.Tensor],
    batches: Callable[[], Iterable],
    split: EvalSplit,
    set_eval_mode: Callable[[], None],
) -> Callable[[], tuple[Score, float]]:
    """A ``validate()`` for :func:`fit`: predict ``split`` in eval mode, return its score and loss."""
    targets = targets_tensor(task, split.targets)

    def validate() -> tuple[Score, float]:
        set_eval_mode()
        logits = predict_logits(forward, batches(), len(split))
        loss = float(task_loss(task, logits, targets))
        return score_predictions(task, split.targets, probabilities(task, logits), split.groups), loss

    return validate


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
