"""The paper's reported results (percent), to print beside ours. Source: Zhang et al., Tables 1 to 4."""

from __future__ import annotations

# Table 1. (dataset, setting, initialisation) -> {label fraction: value}. COVIDx has no 1% setting.
CLASSIFICATION: dict[tuple[str, str, str], dict[float, float]] = {
    ("rsna", "linear", "convirt"): {0.01: 90.7, 0.1: 91.7, 1.0: 92.1},
    ("chexpert", "linear", "convirt"): {0.01: 85.9, 0.1: 86.8, 1.0: 87.3},
    ("covidx", "linear", "convirt"): {0.1: 85.9, 1.0: 91.7},
    ("mura", "linear", "convirt"): {0.01: 81.2, 0.1: 85.1, 1.0: 87.6},
    ("rsna", "finetune", "convirt"): {0.01: 88.8, 0.1: 91.5, 1.0: 92.7},
    ("chexpert", "finetune", "convirt"): {0.01: 87.0, 0.1: 88.1, 1.0: 88.1},
    ("covidx", "finetune", "convirt"): {0.1: 90.3, 1.0: 92.4},
    ("mura", "finetune", "convirt"): {0.01: 81.3, 0.1: 86.5, 1.0: 89.0},
    ("rsna", "linear", "imagenet"): {0.01: 82.8, 0.1: 85.4, 1.0: 86.9},
    ("chexpert", "linear", "imagenet"): {0.01: 75.7, 0.1: 79.7, 1.0: 81.0},
    ("covidx", "linear", "imagenet"): {0.1: 83.7, 1.0: 88.6},
    ("mura", "linear", "imagenet"): {0.01: 63.8, 0.1: 74.1, 1.0: 79.0},
    ("rsna", "linear", "random"): {0.01: 55.0, 0.1: 67.3, 1.0: 72.3},
    ("chexpert", "linear", "random"): {0.01: 58.2, 0.1: 63.7, 1.0: 66.2},
    ("covidx", "linear", "random"): {0.1: 69.2, 1.0: 73.5},
    ("mura", "linear", "random"): {0.01: 50.9, 0.1: 56.8, 1.0: 62.0},
    ("rsna", "linear", "caption_transformer"): {0.01: 84.8, 0.1: 87.5, 1.0: 89.5},
    ("chexpert", "linear", "caption_transformer"): {0.01: 77.2, 0.1: 82.6, 1.0: 83.9},
    ("covidx", "linear", "caption_transformer"): {0.1: 80.0, 1.0: 89.0},
    ("mura", "linear", "caption_transformer"): {0.01: 66.5, 0.1: 76.3, 1.0: 81.8},
    ("rsna", "linear", "caption_lstm"): {0.01: 89.8, 0.1: 90.8, 1.0: 91.3},
    ("chexpert", "linear", "caption_lstm"): {0.01: 85.2, 0.1: 85.3, 1.0: 86.2},
    ("covidx", "linear", "caption_lstm"): {0.1: 84.5, 1.0: 91.7},
    ("mura", "linear", "caption_lstm"): {0.01: 75.2, 0.1: 81.5, 1.0: 84.1},
    ("rsna", "linear", "contrastive_binary"): {0.01: 88.9, 0.1: 90.5, 1.0: 90.8},
    ("chexpert", "linear", "contrastive_binary"): {0.01: 84.5, 0.1: 85.6, 1.0: 85.8},
    ("covidx", "linear", "contrastive_binary"): {0.1: 80.5, 1.0: 90.8},
    ("mura", "linear", "contrastive_binary"): {0.01: 76.8, 0.1: 81.7, 1.0: 85.3},
    ("rsna", "finetune", "random"): {0.01: 71.9, 0.1: 82.2, 1.0: 88.5},
    ("chexpert", "finetune", "random"): {0.01: 70.4, 0.1: 81.1, 1.0: 85.8},
    ("covidx", "finetune", "random"): {0.1: 75.4, 1.0: 87.7},
    ("mura", "finetune", "random"): {0.01: 56.8, 0.1: 61.6, 1.0: 79.1},
    ("rsna", "finetune", "imagenet"): {0.01: 83.1, 0.1: 87.3, 1.0: 90.8},
    ("chexpert", "finetune", "imagenet"): {0.01: 80.1, 0.1: 84.8, 1.0: 87.6},
    ("covidx", "finetune", "imagenet"): {0.1: 84.4, 1.0: 90.3},
    ("mura", "finetune", "imagenet"): {0.01: 72.1, 0.1: 81.8, 1.0: 87.0},
    ("rsna", "finetune", "caption_transformer"): {0.01: 86.3, 0.1: 89.2, 1.0: 92.1},
    ("chexpert", "finetune", "caption_transformer"): {0.01: 81.5, 0.1: 86.4, 1.0: 88.2},
    ("covidx", "finetune", "caption_transformer"): {0.1: 88.3, 1.0: 92.3},
    ("mura", "finetune", "caption_transformer"): {0.01: 75.2, 0.1: 83.2, 1.0: 87.6},
    ("rsna", "finetune", "caption_lstm"): {0.01: 87.2, 0.1: 88.0, 1.0: 91.0},
    ("chexpert", "finetune", "caption_lstm"): {0.01: 83.5, 0.1: 85.8, 1.0: 87.8},
    ("covidx", "finetune", "caption_lstm"): {0.1: 83.8, 1.0: 90.8},
    ("mura", "finetune", "caption_lstm"): {0.01: 78.7, 0.1: 83.3, 1.0: 87.8},
    ("rsna", "finetune", "contrastive_binary"): {0.01: 87.7, 0.1: 89.9, 1.0: 91.2},
    ("chexpert", "finetune", "contrastive_binary"): {0.01: 86.2, 0.1: 86.1, 1.0: 87.7},
    ("covidx", "finetune", "contrastive_binary"): {0.1: 89.5, 1.0: 90.5},
    ("mura", "finetune", "contrastive_binary"): {0.01: 80.6, 0.1: 84.0, 1.0: 88.4},
    # Table 4 (image-only contrastive pretraining, linear, 1 %)
    ("rsna", "linear", "simclr"): {0.01: 86.3},
    ("chexpert", "linear", "simclr"): {0.01: 77.4},
    ("rsna", "linear", "moco_v2"): {0.01: 86.6},
    ("chexpert", "linear", "moco_v2"): {0.01: 81.3},
}
CLASSIFICATION_METRIC = {"rsna": "AUC", "chexpert": "mean AUC", "covidx": "accuracy", "mura": "AUC (patient level)"}

# Table 2, CheXpert 8x200 zero-shot retrieval: (task, method) -> {k: Precision@k}. Random is 12.5 everywhere.
RETRIEVAL: dict[tuple[str, str], dict[int, float]] = {
    ("image_image", "random"): {5: 12.5, 10: 12.5, 50: 12.5},
    ("text_image", "random"): {5: 12.5, 10: 12.5, 50: 12.5},
    ("image_image", "imagenet"): {5: 14.8, 10: 14.4, 50: 15.0},
    ("image_image", "caption_transformer"): {5: 29.8, 10: 28.0, 50: 23.0},
    ("image_image", "caption_lstm"): {5: 34.8, 10: 32.9, 50: 28.1},
    ("image_image", "contrastive_binary"): {5: 38.8, 10: 36.6, 50: 29.7},
    ("text_image", "contrastive_binary"): {5: 15.5, 10: 14.5, 50: 13.7},
    ("image_image", "convirt"): {5: 45.0, 10: 42.9, 50: 35.7},
    ("text_image", "convirt"): {5: 60.0, 10: 57.5, 50: 48.8},
    ("image_image", "convirt_chexpert_supervised"): {5: 56.8, 10: 56.3, 50: 48.9},
    # Table 4 (image-only contrastive pretraining)
    ("image_image", "simclr"): {10: 17.6},
    ("image_image", "moco_v2"): {10: 20.6},
}
# Table 2's rows in the paper's order: method -> name.
RETRIEVAL_ROWS: dict[str, str] = {
    "random": "Random",
    "imagenet": "ImageNet",
    "caption_transformer": "Caption-Transformer",
    "caption_lstm": "Caption-LSTM",
    "contrastive_binary": "Contrastive-Binary",
    "convirt": "ConVIRT",
    "convirt_chexpert_supervised": "ConVIRT + CheXpert Supervised",
}
RETRIEVAL_RANDOM = 12.5

# Table 3, hyperparameters (one changed from the default at a time): (config key, value) -> (RSNA linear 1 % AUC,
# CheXpert 8x200 image-image P@10, text-image P@10). The default row: tau 0.1, batch 32, non-linear (MLP) heads.
HYPERPARAMETERS: dict[tuple[str, object], tuple[float, float, float]] = {
    ("default", None): (90.7, 42.9, 57.5),
    ("loss.temperature", 0.01): (90.7, 40.5, 21.0),
    ("loss.temperature", 1.0): (89.6, 25.0, 31.0),
    ("data.batch_size", 16): (90.3, 40.0, 55.8),
    ("data.batch_size", 128): (90.3, 39.3, 50.3),
    ("model.head", "linear"): (90.6, 40.8, 55.8),
}
