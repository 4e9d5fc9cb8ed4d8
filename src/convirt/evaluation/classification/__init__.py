"""Downstream classification evaluation (the paper's Appendix B): linear probe and fine-tuning.

- :mod:`.metrics`: AUC, mean AUC, accuracy; study/patient-level aggregation (MURA).
- :mod:`.subsets`: label-fraction training subsets, stratified, one per seed.
- :mod:`.features`: frozen-encoder features, cached per encoder and split.
- :mod:`.training`: the shared recipe (Adam, plateau halving, early stop, best checkpoint).
- :mod:`.linear`: linear probe on cached features, or the paper's recipe on images.
- :mod:`.finetune`: fine-tuning with the 200-step head-only warm-up.
- :mod:`.runner`: encoders x fractions x seeds -> ``runs.csv``, ``summary.md``, ROC PNGs, ``metrics.json``.
"""

from convirt.evaluation.classification.finetune import finetune
from convirt.evaluation.classification.linear import linear_probe_features, linear_probe_images
from convirt.evaluation.classification.metrics import (
    Score,
    accuracy,
    aggregate_by_group,
    roc_auc,
    score_predictions,
)
from convirt.evaluation.classification.runner import (
    ClassificationSettings,
    EncoderChoice,
    encoder_choice,
    evaluate_classification,
)
from convirt.evaluation.classification.subsets import label_fraction_subset
from convirt.evaluation.classification.training import EvalSplit, Recipe, RunOutcome

__all__ = [
    "ClassificationSettings",
    "EncoderChoice",
    "EvalSplit",
    "Recipe",
    "RunOutcome",
    "Score",
    "accuracy",
    "aggregate_by_group",
    "encoder_choice",
    "evaluate_classification",
    "finetune",
    "label_fraction_subset",
    "linear_probe_features",
    "linear_probe_images",
    "roc_auc",
    "score_predictions",
]
