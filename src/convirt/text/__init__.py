"""Radiology report text: section extraction, sentence splitting and tokenisation for filtering."""
