"""Sentence splitting for radiology reports.

Rules, in order (each is tested on real IU X-ray text in ``tests/test_text_*.py``):

0. The text is cleaned first (:func:`convirt.text.clean.clean_text`): control characters and ANSI escapes are
   removed, simple HTML markup becomes plain text (``<br>`` a line break, ``<p>`` a paragraph).
1. Line structure first. A blank line ends a sentence (report paragraphs), and so does a line that starts with a
   list marker ("1.", "2)", "-", "*", "•"), the usual shape of numbered impressions. Any other line break is a hard
   wrap inside a sentence (MIMIC wraps its reports at ~80 columns) and becomes a space.
2. Inline list markers ("... scarring. 2. Probably ...", "IMPRESSION: 1. No ...", "2.No evidence") start a new
   sentence; the marker itself is removed from the sentence.
3. A sentence ends at ".", "!" or "?" followed by white space and an upper-case letter, a digit, an opening quote
   or bracket, or a de-identification mark ("XXXX", "___"); in text with no upper-case letter at all (lower-cased
   exports) a lower-case letter also starts a sentence. A period glued to the next word ("apex.There") ends a
   sentence when a lower-case word precedes it and a capitalised word follows.
4. Never a boundary: after a "?" or "!" standing alone between spaces (encoding damage turns "×" and "°" into
   "?": "39.0 ? C", "4.3 ? 109 cells"), inside a number ("2.5 cm", "10.30"), after a title or a Latin
   abbreviation ("Dr.", "vs.", "approx.", "e.g.", "i.e."), after a single capital initial ("J. Smith", but "39.0
   C. The" ends), or after "No." / a month name followed by a number ("No. 2", "Jan. 22"). Units are deliberately
   *not* abbreviations: "measuring 2.5 cm. No effusion." is two sentences.
5. Sentences with no word or number besides de-identification marks ("___.", "XXXX.") or punctuation are dropped.

Splitting an already split sentence returns it unchanged, so a manifest written one sentence per line can be
re-split safely.
"""

from __future__ import annotations

import re

from convirt.text.clean import clean_text
from convirt.text.tokenize import has_content

# Abbreviations after which a period never ends a sentence (compared lower-case, without the final period).
_ABBREVIATIONS = frozenset(
    {"dr", "drs", "mr", "mrs", "ms", "prof", "st", "vs", "v", "approx", "e.g", "i.e", "cf", "al", "fig", "figs"}
    | {"resp", "pt", "pts", "hx", "h/o", "c/w", "s/p", "y.o", "q.d", "b.i.d", "t.i.d"}
)
# A period after these ends a sentence unless a number follows ("No. 2", "Jan. 22", "approx. 3").
_BEFORE_NUMBER = frozenset(
    {"no", "nos", "nr", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "vol"}
)

_LIST_MARKER = r"(?:\(?\d{1,2}[.)]|[-*•·])"
_LINE_LIST_START = re.compile(rf"\n[ \t]*(?={_LIST_MARKER}[ \t]+\S)")
_BLANK_LINE = re.compile(r"\n[ \t]*\n\s*")
_LEADING_MARKER = re.compile(rf"^(?:{_LIST_MARKER}\s+(?=\S)|\(?\d{{1,2}}[.)](?=[A-Z][a-z]))")
# An inline numbered-list marker after a sentence end or a colon: "...scarring. 2. Probably", "IMPRESSION: 1. No".
_INLINE_NUMBER = re.compile(r"(?<=[.;:!?])\s+(?=\(?\d{1,2}[.)]\s+[A-Za-z_])")
# Candidate boundaries: punctuation + space + a sentence start; or a period glued to a capitalised word.
_SPACED = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?(?:[A-Z0-9_]|X{2,}))")
_SPACED_LOWER = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[a-z0-9_])")
_GLUED = re.compile(r"(?<=[a-z]{2}[.!?])(?=[A-Z][a-z])")
_SEPARATOR = "\x00"
_REPEATED_STOP = re.compile(r"(?<=[.!?])(?:\s*\.)+")  # "findings. ." -> "findings."


def _last_word(text: str) -> str:
    word = text.rstrip().rsplit(None, 1)[-1] if text.strip() else ""
    return word.lstrip("\"'([").rstrip("\"')]").rstrip(".!?").lower()


def _is_boundary(before: str, after: str) -> bool:
    """Decide whether a candidate boundary between ``before`` and ``after`` really ends a sentence."""
    stripped = before.rstrip()
    if stripped.endswith((" ?", " !")) or stripped in ("?", "!"):
        return False  # a detached "?" is a mangled symbol ("39.0 ? C", "4.3 ? 109 cells"), not an ending
    if not stripped.endswith((".", '."', ".'", ".)", ".]")):
        return True  # "!" and "?" after a word end a sentence
    if re.fullmatch(r"\s*\(?\d{1,2}[.)]\s*", before):
        return False  # "1. No acute process": the period belongs to a list marker
    raw_word = before.rstrip().rsplit(None, 1)[-1].lstrip("\"'([")
    word = _last_word(before)
    if word in _ABBREVIATIONS:
        return False
    next_char = after.lstrip("\"'([ ")[:1]
    if word in _BEFORE_NUMBER and next_char.isdigit():
        return False
    if len(word) == 1:
        # A single lower-case letter before a number ("p. 5"); a capital initial ("J. Smith"), unless it follows a
        # number or a symbol, where it is a unit ("39.0 C. The ...").
        words = stripped.split()
        previous = words[-2] if len(words) > 1 else ""
        after_number = bool(previous) and not any(c.isalpha() for c in previous)
        return not (next_char.isdigit() or (raw_word[:1].isupper() and not after_number))
    return True


def _split_line(text: str) -> list[str]:
    """Split one paragraph (no line structure left) at sentence boundaries."""
    text = _INLINE_NUMBER.sub(_SEPARATOR, text)
    pattern = _SPACED_LOWER if not re.search(r"[A-Z]", text) else _SPACED
    pieces: list[str] = []
    for chunk in text.split(_SEPARATOR):
        candidates = sorted(
            [(m.start(), m.end()) for m in pattern.finditer(chunk)]
            + [(m.start(), m.end()) for m in _GLUED.finditer(chunk)]
        )
        start = 0
        for cut_start, cut_end in candidates:
            if cut_start < start:
                continue
            # keep a closing quote or bracket with the sentence it closes
            cut = cut_start
            while cut < cut_end and chunk[cut] in "\"')]":
                cut += 1
            if _is_boundary(chunk[start:cut], chunk[cut_end:]):
                pieces.append(chunk[start:cut])
                start = cut_end
        pieces.append(chunk[start:])
    return pieces


def split_sentences(text: str) -> list[str]:
    """Split report ``text`` into sentences: stripped, list markers removed, content-free pieces dropped."""
    text = clean_text(text)
    if not text.strip():
        return []
    text = _BLANK_LINE.sub(_SEPARATOR, text.strip())
    text = _LINE_LIST_START.sub(_SEPARATOR, text)
    sentences: list[str] = []
    for paragraph in text.split(_SEPARATOR):
        paragraph = _REPEATED_STOP.sub("", re.sub(r"\s+", " ", paragraph)).strip()
        if not paragraph:
            continue
        for piece in _split_line(paragraph):
            piece = _LEADING_MARKER.sub("", piece.strip()).strip()
            if piece and has_content(piece):
                sentences.append(piece)
    return sentences
