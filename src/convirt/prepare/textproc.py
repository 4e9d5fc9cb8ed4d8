"""Report text -> kept sentences, with the paper's filters (Findings + Impression, at least 3 tokens)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from convirt.text.clean import clean_text
from convirt.text.sections import DEFAULT_SECTIONS, extract_sections, select_sections
from convirt.text.sentences import split_sentences
from convirt.text.tokenize import count_tokens

from .types import RawPair, TextMode


@dataclass
class ProcessedText:
    sentences: list[str]
    drop_reason: str | None
    has_findings: bool
    has_impression: bool
    tokens: int


def process_text(
    pair: RawPair,
    text_mode: TextMode,
    sections: Sequence[str] | None = DEFAULT_SECTIONS,
    min_tokens: int = 3,
) -> ProcessedText:
    """Sentences to keep for ``pair`` and, when it must be dropped, why.

    ``text_mode``: ``sections`` keeps only ``sections`` (default Findings + Impression; pairs without them are
    dropped); ``whole`` keeps the whole text; ``auto`` keeps ``sections`` when the report has a recognised section
    header and the whole text otherwise. Sections are split separately, so a section end is a sentence end.
    """
    text = clean_text(pair.text)
    if pair.sections is not None:
        found = {k: clean_text(v) for k, v in pair.sections.items()}
        found = {k: v for k, v in found.items() if v.strip()}
        # For given sections (table columns), "auto" keeps the wanted ones when the layout has any of them at all.
        wanted = None if sections is None else {str(n).lower() for n in sections}
        has_headers = wanted is None or "all" in wanted or bool(set(pair.sections) & wanted)
        raw_empty = not found
    else:
        raw_empty = not text.strip()
        parsed = extract_sections(text)
        found = parsed.sections
        has_headers = bool(parsed.headers)
    has_findings = bool(found.get("findings", "").strip())
    has_impression = bool(found.get("impression", "").strip())
    if raw_empty:
        return ProcessedText([], "empty_text", False, False, 0)
    if text_mode == "whole" or (text_mode == "auto" and not has_headers):
        chunks = [text] if pair.sections is None else select_sections(found, None)
    else:
        chunks = select_sections(found, sections)
        if not chunks:
            return ProcessedText([], "no_findings_impression", has_findings, has_impression, 0)
    sentences = [s for chunk in chunks for s in split_sentences(chunk)]
    tokens = sum(count_tokens(s) for s in sentences)
    if tokens < min_tokens:
        return ProcessedText(sentences, "too_few_tokens", has_findings, has_impression, tokens)
    return ProcessedText(sentences, None, has_findings, has_impression, tokens)
