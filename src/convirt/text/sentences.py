"""Sentence splitting for radiology reports.

Splits on sentence-final punctuation followed by white space and an upper-case letter, digit or list marker,
but never inside a decimal number ("2.5 cm"), after a known abbreviation ("Dr.", "approx."), or on a
de-identification mark ("XXXX", "___").
"""

from __future__ import annotations

import re

_ABBREVIATIONS = {
    "dr", "mr", "mrs", "ms", "st", "vs", "approx", "e.g", "i.e", "etc", "no", "fig", "cm", "mm", "pt", "ap",
    "pa", "lat", "ant", "post", "sup", "inf", "med", "hx", "h/o", "c/w", "s/p", "y.o", "yo",
}
_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9_])")


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences, stripped and non-empty."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    if not text:
        return []
    pieces: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        candidate = text[start : match.start()]
        last_word = candidate.rsplit(" ", 1)[-1].rstrip(".!?").lower()
        if last_word in _ABBREVIATIONS or re.fullmatch(r"[a-z]", last_word):
            continue
        pieces.append(candidate.strip())
        start = match.end()
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]
