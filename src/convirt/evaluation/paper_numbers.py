"""The paper's reported results (percent), to print beside ours. Source: Zhang et al., Tables 1, 2 and 4."""

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
