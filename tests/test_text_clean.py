"""Report text cleaning: control characters and ANSI escapes out, simple HTML markup around headers understood."""

from __future__ import annotations

import pytest

from convirt.data.manifest import report_sentences
from convirt.text.clean import clean_text
from convirt.text.sections import extract_sections
from convirt.text.sentences import split_sentences


def test_control_characters_and_ansi_escapes_are_removed():
    raw = "Heart \x07size is \x1b[31mnormal\x1b[0m.\x00 No\x0ceffusion.\ufeff Lungs\u200b clear.\x1b]0;title\x07"
    assert clean_text(raw) == "Heart size is normal. No\neffusion. Lungs clear."
    assert split_sentences(raw) == ["Heart size is normal.", "No effusion.", "Lungs clear."]
    assert clean_text("tab\tand\nnewline stay") == "tab\tand\nnewline stay"


def test_html_markup_around_headers_is_understood():
    report = "<b>FINDINGS:</b> Mild cardiomegaly.<br>No edema. <p>IMPRESSION:</p><p>Stable &amp; unchanged.</p>"
    parsed = extract_sections(report)
    assert parsed.headers == ["FINDINGS", "IMPRESSION"]
    assert split_sentences(parsed.get("findings")) == ["Mild cardiomegaly.", "No edema."]
    assert parsed.get("impression") == "Stable & unchanged."
    styled = extract_sections('<font color="red"><STRONG>Impression</STRONG>:</font> Normal chest.')
    assert styled.get("impression") == "Normal chest."


@pytest.mark.parametrize(
    "text, cleaned",
    [
        ("nodule <5 mm, ratio a < b > c", "nodule <5 mm, ratio a < b > c"),  # a bare "<" is not markup
        ("&lt;b&gt;Escaped&lt;/b&gt; markup", "Escaped markup"),
        ("AT&amp;T, Q&A, &amp;lt; twice escaped", "AT&T, Q&A, &amp;lt; twice escaped"),
        ("<table><tr><td>left</td><td>right</td></tr></table>", "\n\n\n\n\n\nleft\n\n\n\nright\n\n\n\n\n\n"),
        ("<unknown>kept</unknown> as it is", "<unknown>kept</unknown> as it is"),
    ],
)
def test_cleaning_leaves_plain_text_alone_and_is_idempotent(text, cleaned):
    assert clean_text(text) == cleaned
    assert clean_text(clean_text(text)) == clean_text(text)


def test_a_hand_written_manifest_cell_is_cleaned_too():
    assert report_sentences("No \x1b[1meffusion\x1b[0m.\nHeart\x07 normal.") == ["No effusion.", "Heart normal."]
