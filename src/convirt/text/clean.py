"""Report text cleaning before sections and sentences: control characters out, simple HTML markup to plain text.

Exports from hospital systems and scraped collections carry bytes that are not text: terminal colour codes
(ANSI escapes such as ``ESC[31m``), bells, NULs, form feeds, zero-width spaces and byte-order marks, and HTML
markup around the report (``<b>FINDINGS:</b>``, ``<p>IMPRESSION:</p>``, ``<br>``). :func:`clean_text` turns them
into plain text, so section headers are recognised and no invisible character reaches the text encoder:

- ANSI escape sequences (CSI ``ESC[...m``, OSC ``ESC]...BEL``, two-character escapes) are removed whole;
- line-like controls (vertical tab, form feed, file/group/record separators, NEL, Unicode line and paragraph
  separators) become line breaks; every other C0/C1 control character (BEL, NUL, backspace, DEL, ...), zero-width
  spaces and byte-order marks are removed; tabs and line breaks stay;
- HTML: ``<br>`` is a line break; block tags (``p``, ``div``, ``li``, ``ul``, ``ol``, ``tr``, ``td``, ``th``,
  ``table``, ``h1``-``h6``, ``hr``, ``pre``, ``blockquote``, ``body``, ``html``) end a paragraph (a blank line);
  inline tags (``b``, ``i``, ``u``, ``em``, ``strong``, ``span``, ``font``, ``a``, ``sup``, ``sub``, ``small``,
  ``mark``, ``code``, ``center``) are removed and keep their text; character references with a semicolon
  (``&amp;``, ``&nbsp;``, ``&#233;``) are decoded first, so escaped markup (``&lt;b&gt;``) is markup too; a
  reference escaped twice (``&amp;lt;``) stays as it is. Other tags and a bare ``<`` (``nodule <5 mm``) are left alone:
  only these tag names, written as HTML writes them (``<b>``, ``</b>``, ``<br/>``, ``<p class="x">``; no space
  after ``<``), are understood, not HTML in general.

Cleaning is idempotent: cleaning clean text changes nothing.
"""

from __future__ import annotations

import html
import re

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_LINE_CONTROLS = re.compile("[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_OTHER_CONTROLS = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f\u200b-\u200d\u2060\ufeff]")
_INLINE_TAGS = "b|i|u|em|strong|span|font|a|sup|sub|small|mark|code|center"
_BLOCK_TAGS = r"p|div|li|ul|ol|tr|td|th|table|tbody|thead|h[1-6]|hr|pre|blockquote|body|html"
_BREAK = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)  # as lenient as the sentence splitter always was
_INLINE = re.compile(rf"</?(?:{_INLINE_TAGS})(?:\s[^<>]*)?/?>", re.IGNORECASE)
_BLOCK = re.compile(rf"</?(?:{_BLOCK_TAGS})(?:\s[^<>]*)?/?>", re.IGNORECASE)
_NAME = r"(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});"
# "&amp;" right before another reference ("&amp;lt;") is left as it is, so cleaning twice decodes nothing more.
_ENTITY = re.compile(rf"&(?!amp;{_NAME}){_NAME}")


def strip_controls(text: str) -> str:
    """Remove ANSI escapes and control characters (line-like ones become line breaks; tabs and newlines stay)."""
    text = _ANSI.sub("", text)
    text = _LINE_CONTROLS.sub("\n", text)
    return _OTHER_CONTROLS.sub("", text)


def strip_html(text: str) -> str:
    """Simple HTML markup to plain text (see the module notes for the tags understood)."""
    if "&" in text:
        text = _ENTITY.sub(lambda match: html.unescape(match.group(0)), text)
    if "<" in text:
        text = _BREAK.sub("\n", text)
        text = _INLINE.sub("", text)
        text = _BLOCK.sub("\n\n", text)
    return text


def clean_text(text: str) -> str:
    """Report text with control characters removed and simple HTML markup turned into plain text."""
    text = str(text).replace("\r\n", "\n").replace("\r", "\n")
    return strip_controls(strip_html(strip_controls(text)))
