"""The one plateau rule for learning-rate halving, shared by pretraining and the classification recipe.

Paper, Appendix A (pretraining): "if the validation loss does not decrease after 5 straight evaluation runs, we
anneal the learning rate by a factor of 0.5"; Appendix B (classification): "halve the learning rate if the
validation metric has not improved after 3 epochs". Both read the same way here:

- an evaluation *improves* when it is strictly better than the best so far (for a loss: any decrease, however
  small, counts; the caller decides what "better" means and passes a boolean);
- after ``patience`` straight evaluations without an improvement the rate is multiplied by ``factor`` (not
  floored below ``min_lr``), and the count of straight non-improving evaluations goes on: with patience 5 the rate
  is halved at the 5th, 10th, 15th ... evaluation of an unbroken plateau, and an improvement restarts the count.

:class:`PlateauHalving` holds only plain numbers (``state_dict`` is JSON-like), so a checkpoint that carries it
loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from typing import Any

import torch


class PlateauHalving:
    """Counts straight evaluations without improvement and scales the optimizer's LR every ``patience`` of them."""

    def __init__(self, optimizer: torch.optim.Optimizer | None, patience: int, factor: float, min_lr: float = 0.0):
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"factor must be in (0, 1], got {factor}")
        self.optimizer = optimizer
        self.patience, self.factor, self.min_lr = patience, factor, min_lr
        self.best: float | None = None
        self.bad_evaluations = 0
        self.reductions = 0

    def update(self, improved: bool) -> bool:
        """Record one evaluation; returns True when this evaluation scaled the LR."""
        if improved:
            self.bad_evaluations = 0
            return False
        self.bad_evaluations += 1
        if self.bad_evaluations % self.patience:
            return False
        self.reductions += 1
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = max(group["lr"] * self.factor, self.min_lr)
        return True

    def step(self, loss: float) -> bool:
        """Record a validation loss (lower is better; any strict decrease is an improvement)."""
        improved = self.best is None or loss < self.best
        if improved:
            self.best = loss
        return self.update(improved)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evaluations": self.bad_evaluations, "reductions": self.reductions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "bad_evaluations" not in state:  # a checkpoint from the ReduceLROnPlateau era
            self.best = state.get("best")
            self.bad_evaluations = int(state.get("num_bad_epochs", 0))
            self.reductions = 0
            return
        self.best = state["best"]
        self.bad_evaluations = int(state["bad_evaluations"])
        self.reductions = int(state["reductions"])
