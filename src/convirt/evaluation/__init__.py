"""Evaluation of pretrained encoders: classification (linear probe, fine-tuning), retrieval, zero-shot."""
