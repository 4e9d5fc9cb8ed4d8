"""A small word tokenizer for the report filter ("drop pairs with fewer than 3 tokens").

The paper counted tokens with Stanford CoreNLP 4.0.0's English (PTB) tokenizer, which is a Java dependency. This
regular-expression tokenizer follows the PTB conventions that matter for counting report tokens:

- punctuation marks are tokens of their own ("Normal." is 2 tokens, like CoreNLP);
- decimal numbers, times and thousands stay whole ("2.5", "10:30", "1,200");
- dotted abbreviations stay whole ("e.g.", "a.m.", "U.S.");
- hyphenated and slashed words stay whole ("x-ray", "s/p", "T12-L1");
- de-identification marks are single tokens ("XXXX", "___").

It is not the text encoder's tokenizer (that is BERT's WordPiece); it only decides which reports are long
enough to keep and produces the tokens-per-sentence figure of the prepare report.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r"""
      \d+(?:[.,:]\d+)+[A-Za-z]*       # 2.5, 10:30, 1,200, 2.5cm
    | (?:[A-Za-z]\.){2,}              # e.g. i.e. a.m. U.S.
    | _+                              # ___ (MIMIC de-identification)
    | [^\W_]+(?:['’\-/][^\W_]+)*      # words, numbers, x-ray, s/p, don't
    | [^\w\s]                         # any other symbol: one token each
    """,
    re.VERBOSE,
)
_DEID = re.compile(r"^(?:X{2,}|_+)$")


def tokenize(text: str) -> list[str]:
    """Split ``text`` into word and punctuation tokens (PTB-like, see the module notes)."""
    return _TOKEN.findall(str(text))


def count_tokens(text: str) -> int:
    """Number of tokens in ``text`` (punctuation included, as CoreNLP counts)."""
    return sum(1 for _ in _TOKEN.finditer(str(text)))


def is_deidentification_mark(token: str) -> bool:
    """True for the placeholders de-identification leaves in report text ("XXXX" in IU X-ray, "___" in MIMIC),
    also when joined by a slash or hyphen ("XXXX/XXXX")."""
    return all(_DEID.match(part) for part in re.split(r"[-/'’]", token))


def has_content(text: str) -> bool:
    """True when ``text`` has at least one word or number that is not a de-identification mark."""
    return any(tok[0].isalnum() and not is_deidentification_mark(tok) for tok in tokenize(text))
