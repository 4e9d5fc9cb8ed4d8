"""Section extraction for free-text radiology reports (MIMIC-CXR ``sXXXXXXXX.txt``, hospital exports).

A report is cut at its section headers. A header is

- a known header name (see :data:`SECTION_ALIASES`, any case) at the start of a line and followed by a colon:
  ``FINDINGS:``, ``Impression:``, ``FINDINGS AND IMPRESSION:``, ``CONCLUSION:``, ``REASON FOR EXAMINATION:``, ...;
- a known header in upper case followed by a colon anywhere after white space, so a report flattened onto one
  line by a CSV export ("... FINDINGS: No effusion. IMPRESSION: Normal.") is still cut;
- any other upper-case phrase of up to 6 words followed by a colon at the start of a line (``PA AND LATERAL
  CHEST:``): it opens an "other" section, except inside Findings or Impression, where such phrases are anatomical
  sub-headings (``LUNGS: Clear.``) and stay part of the text;
- a title line without a colon: ``FINAL REPORT``, ``PRELIMINARY REPORT``, ``ADDENDUM``, ``WET READ``.

The text is cleaned first (:func:`convirt.text.clean.clean_text`: control characters removed, simple HTML markup
turned into plain text), so ``<b>FINDINGS:</b>`` and ``<p>IMPRESSION:</p>`` are headers like ``FINDINGS:``.
Text before the first header is the ``preamble``. Each header maps to a canonical name (``findings``,
``impression``, ``indication``, ``comparison``, ``examination``, ``technique``, ``history``, ``wet_read``, ...);
a combined ``FINDINGS AND IMPRESSION:`` header maps to ``findings``. Repeated sections are concatenated with a
blank line. :func:`select_sections` then keeps what the paper keeps (Findings + Impression) or any other list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from convirt.text.clean import clean_text

DEFAULT_SECTIONS = ("findings", "impression")

# Canonical name for every header spelling found in MIMIC-CXR, IU X-ray and common hospital templates.
SECTION_ALIASES: dict[str, str] = {}
for _canonical, _names in {
    "findings": (
        "FINDINGS",
        "FINDING",
        "FINDINGS AND IMPRESSION",
        "FINDINGS AND IMPRESSIONS",
        "FINDINGS/IMPRESSION",
        "FINDINGS / IMPRESSION",
        "FINDINGS IMPRESSION",
        "IMPRESSION AND FINDINGS",
        "REPORT",
        "REPORT TEXT",
        "DESCRIPTION",
        "OBSERVATIONS",
    ),
    "impression": (
        "IMPRESSION",
        "IMPRESSIONS",
        "CONCLUSION",
        "CONCLUSIONS",
        "OPINION",
        "SUMMARY",
        "DIAGNOSIS",
        "INTERPRETATION",
        "IMPRESSION AND RECOMMENDATION",
        "IMPRESSION AND RECOMMENDATIONS",
    ),
    "indication": (
        "INDICATION",
        "INDICATIONS",
        "REASON FOR EXAM",
        "REASON FOR EXAMINATION",
        "REASON FOR STUDY",
        "CLINICAL INDICATION",
        "CLINICAL INFORMATION",
        "CLINICAL DATA",
        "CLINICAL DETAILS",
        "CLINICAL QUESTION",
        "REASON FOR REFERRAL",
        "INDICATION FOR EXAM",
        "INDICATION FOR EXAMINATION",
    ),
    "history": ("HISTORY", "CLINICAL HISTORY", "MEDICAL HISTORY", "PATIENT HISTORY", "HX"),
    "comparison": ("COMPARISON", "COMPARISONS", "COMPARISON STUDY", "COMPARISON STUDIES", "PRIOR STUDIES", "PRIORS"),
    "technique": ("TECHNIQUE", "TECHNIQUES", "VIEWS"),
    "examination": ("EXAMINATION", "EXAM", "EXAMINATIONS", "PROCEDURE", "STUDY", "TYPE OF EXAMINATION", "TYPE OF EXAM"),
    "recommendation": ("RECOMMENDATION", "RECOMMENDATIONS", "RECOMMENDATION(S)", "FOLLOW-UP", "FOLLOW UP"),
    "notification": ("NOTIFICATION", "NOTIFICATIONS", "COMMUNICATION"),
    "addendum": ("ADDENDUM",),
    "wet_read": ("WET READ",),
    "final_report": ("FINAL REPORT", "PRELIMINARY REPORT"),
}.items():
    for _name in _names:
        SECTION_ALIASES[_name] = _canonical

# Headers that stand on their own line without a colon.
_TITLE_HEADERS = ("FINAL REPORT", "PRELIMINARY REPORT", "ADDENDUM", "WET READ")
_KEPT_WITH = frozenset({"findings", "impression"})

_NAME_CHARS = r"[A-Za-z][A-Za-z /&()\-]{0,48}?"
_LINE_HEADER = re.compile(rf"(?m)^[ \t]*(?P<name>{_NAME_CHARS})[ \t]*:(?!\d)")
_TITLE_LINE = re.compile(r"(?m)^[ \t]*(?P<name>" + "|".join(_TITLE_HEADERS) + r")[ \t]*:?[ \t]*$")
# Too common as ordinary words to be cut mid-line.
_NOT_INLINE = frozenset({"REPORT", "STUDY", "EXAM", "HX", "VIEWS", "SUMMARY", "DESCRIPTION"})
_INLINE_HEADER = re.compile(
    r"(?:(?<=\s)|(?<=^))(?P<name>"
    + "|".join(sorted((re.escape(n) for n in SECTION_ALIASES if n not in _NOT_INLINE), key=len, reverse=True))
    + r")[ \t]*:(?!\d)"
)


def _normalise(name: str) -> str:
    return re.sub(r"\s+", " ", name.strip()).upper()


def canonical_section(header: str) -> str | None:
    """Canonical section name for a header spelling (``"Impressions"`` -> ``"impression"``), or None if unknown."""
    return SECTION_ALIASES.get(_normalise(header).rstrip(":").strip())


@dataclass
class ReportSections:
    """A report cut into sections: canonical name -> text (in the order first seen), plus the raw headers."""

    sections: dict[str, str] = field(default_factory=dict)
    headers: list[str] = field(default_factory=list)

    def get(self, name: str, default: str = "") -> str:
        return self.sections.get(name, default)

    def has(self, name: str) -> bool:
        return bool(self.sections.get(name, "").strip())

    def select(self, names: Iterable[str] | None = DEFAULT_SECTIONS) -> list[str]:
        return select_sections(self.sections, names)


def _is_upper_header(name: str) -> bool:
    letters = [c for c in name if c.isalpha()]
    return len(letters) >= 3 and all(c.isupper() for c in letters) and len(name.split()) <= 6


def _header_matches(text: str) -> list[tuple[int, int, str, str]]:
    """All header positions as (start, end, raw name, canonical name or "other:<name>")."""
    found: dict[int, tuple[int, int, str, str]] = {}
    for match in _TITLE_LINE.finditer(text):
        name = match.group("name")
        found[match.start("name")] = (match.start("name"), match.end(), name, SECTION_ALIASES[_normalise(name)])
    for match in _LINE_HEADER.finditer(text):
        name = match.group("name").strip()
        canonical = canonical_section(name)
        if canonical is None:
            if not _is_upper_header(name):
                continue
            canonical = "other:" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        found.setdefault(match.start("name"), (match.start("name"), match.end(), name, canonical))
    for match in _INLINE_HEADER.finditer(text):
        start = match.start("name")
        if any(s <= start < e for s, e, _, _ in found.values()):
            continue
        name = match.group("name")
        found[start] = (start, match.end(), name, SECTION_ALIASES[name])
    return [found[k] for k in sorted(found)]


def extract_sections(text: str) -> ReportSections:
    """Cut a free-text report into canonical sections (see the module notes for the header rules)."""
    text = clean_text(text)
    result = ReportSections()
    pieces: list[tuple[str, str]] = []
    current, position = "preamble", 0
    for start, end, raw, canonical in _header_matches(text):
        if start < position:
            continue
        if canonical.startswith("other:") and current in _KEPT_WITH:
            continue  # anatomical sub-heading inside Findings/Impression ("LUNGS: Clear.")
        pieces.append((current, text[position:start]))
        result.headers.append(raw)
        current, position = canonical, end
    pieces.append((current, text[position:]))
    for name, body in pieces:
        body = body.strip()
        if not body:
            continue
        if name in result.sections:
            result.sections[name] = result.sections[name] + "\n\n" + body
        else:
            result.sections[name] = body
    return result


def select_sections(sections: Mapping[str, str], names: Iterable[str] | None = DEFAULT_SECTIONS) -> list[str]:
    """Texts of the sections in ``names`` (``None`` or ``"all"``: every section), in report order, non-empty only."""
    wanted = None if names is None or names == "all" else {n.strip().lower() for n in names}
    if wanted is not None and "all" in wanted:
        wanted = None
    kept = []
    for name, body in sections.items():
        if not body.strip():
            continue
        base = name.split(":", 1)[0]
        if wanted is None or name in wanted or base in wanted:
            kept.append(body.strip())
    return kept
