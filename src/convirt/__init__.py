"""convirt: ConVIRT contrastive pretraining of medical image encoders from paired images and report text."""

__version__ = "0.1.0"
