"""Data: canonical manifests, image loading by content, the paper's augmentations and the paired dataset."""
