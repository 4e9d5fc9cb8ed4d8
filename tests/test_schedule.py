"""The plateau rule (Appendix A: halve after 5 straight evaluations without a decrease; Appendix B: after 3)."""

from __future__ import annotations

import pytest
import torch

from convirt.schedule import PlateauHalving


def optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_lr_halves_after_exactly_patience_straight_evaluations_without_a_decrease() -> None:
    opt = optimizer(1.0)
    rule = PlateauHalving(opt, patience=5, factor=0.5)
    # evaluation:     1    2    3    4    5    6    7    8     9    10   11   12   13   14   15   16
    losses = [3.0, 3.0, 3.1, 3.0, 3.5, 3.0, 2.9, 2.95, 2.9, 2.99, 3.0, 2.9, 3.2, 3.3, 3.4, 3.5]
    # bad count:      -    1    2    3    4    5    0    1     2    3    4    5    6    7    8    9
    # halved at the 6th (5 straight without a decrease) and the 12th (5 straight after the 7th's decrease; the
    # 9th ties 2.9, which is not a decrease); the 16th is the 9th straight bad evaluation: not yet again.
    expected = [1, 1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25]
    seen = []
    for loss in losses:
        rule.step(loss)
        seen.append(opt.param_groups[0]["lr"])
    assert seen == expected
    assert rule.state_dict() == {"best": 2.9, "bad_evaluations": 9, "reductions": 2}
    rule.step(3.6)  # the 10th straight bad evaluation
    assert opt.param_groups[0]["lr"] == 0.125


def test_any_decrease_counts_and_ties_do_not() -> None:
    opt = optimizer(1.0)
    rule = PlateauHalving(opt, patience=1, factor=0.5)
    rule.step(1.0)
    rule.step(1.0 - 1e-12)  # a decrease far below any relative threshold: an improvement
    assert opt.param_groups[0]["lr"] == 1.0
    rule.step(1.0 - 1e-12)  # equal: not a decrease
    assert opt.param_groups[0]["lr"] == 0.5


def test_min_lr_floor_and_state_round_trip() -> None:
    opt = optimizer(1.0)
    rule = PlateauHalving(opt, patience=2, factor=0.1, min_lr=0.05)
    for loss in (1.0, 2.0, 2.0, 2.0, 2.0):
        rule.step(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    restored = PlateauHalving(optimizer(), patience=2, factor=0.1)
    restored.load_state_dict(rule.state_dict())
    assert restored.state_dict() == rule.state_dict()


@pytest.mark.parametrize("patience", [0, -1])
def test_patience_must_be_positive(patience: int) -> None:
    with pytest.raises(ValueError, match="patience"):
        PlateauHalving(optimizer(), patience=patience, factor=0.5)
