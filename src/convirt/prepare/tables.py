"""Reading the tables of a raw download (CSV, TSV, gzipped, Parquet, JSON Lines) with a known encoding and delimiter.

Exports come in the encoding and delimiter of whatever program wrote them: Excel on a European locale writes
``cp1252`` text separated by semicolons. Every source reads its tables through :func:`read_source_table`:

- text is decoded with ``settings.encoding`` (``utf-8`` by default, a byte-order mark is skipped); a byte that is
  not valid in that encoding stops the run with the file, the line and the byte named, and what to pass;
- the delimiter of a CSV is ``settings.delimiter``, else a tab for ``.tsv``, else the one of ``,`` ``;`` and tab
  that cuts the header line into the most fields (a comma when none does better); a row with more fields than the
  header is reported with its line number and the delimiter to try;
- NUL characters are dropped (they end a field early in the CSV parser); other control characters are left to the
  text cleaning (:mod:`convirt.text.clean`).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
from pathlib import Path

import pandas as pd

from convirt.data.manifest import read_table
from convirt.errors import ManifestError

from .types import ReadSettings

DELIMITERS = (",", ";", "\t")
_DELIMITER_NAMES = {",": "','", ";": "';'", "\t": "tab"}


def read_text(path: Path, encoding: str) -> str:
    """The text of ``path`` (gunzipped when ``.gz``) decoded with ``encoding``; a bad byte is named by line."""
    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ManifestError(f"{path} is not a complete gzip file ({exc})") from exc
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        end = data.find(b"\n", exc.start)
        snippet = data[start : end if end >= 0 else len(data)].decode(codec, errors="replace")[:80]
        raise ManifestError(
            f"{path} line {line} ({snippet.strip()!r}): byte 0x{data[exc.start]:02x} is not valid {encoding} "
            "text; give the file's encoding, e.g. encoding=cp1252 (Excel on Windows) or encoding=latin-1"
        ) from None


def detect_delimiter(text: str) -> str:
    """The delimiter among ``,`` ``;`` and tab that cuts the header line into the most fields (ties: comma)."""
    header = text.split("\n", 1)[0]
    counts = {d: len(next(csv.reader([header], delimiter=d), [])) for d in DELIMITERS}
    return max(DELIMITERS, key=lambda d: (counts[d], d == ","))


def read_source_table(path: Path, settings: ReadSettings) -> pd.DataFrame:
    """A table of the raw download, every column as strings (see the module notes)."""
    if not path.is_file():
        raise ManifestError(f"table {path} does not exist")
    name = path.name.lower()
    if name.endswith(".parquet"):
        return read_table(path)
    text = read_text(path, settings.encoding).replace("\x00", "")
    tab_file = name.endswith((".tsv", ".tsv.gz"))
    delimiter = settings.delimiter or ("\t" if tab_file else detect_delimiter(text))
    try:
        frame = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False)
    except pd.errors.ParserError as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        where = (
            f"line {match.group(2)} has {match.group(3)} fields where the header has {match.group(1)}"
            if match
            else str(exc)
        )
        raise ManifestError(
            f"cannot parse table {path} with the delimiter {_DELIMITER_NAMES.get(delimiter, repr(delimiter))}: "
            f"{where}; quote cells that contain the delimiter, or give the table's delimiter, e.g. delimiter=';'"
        ) from exc
    except (ValueError, pd.errors.EmptyDataError) as exc:
        raise ManifestError(f"cannot parse table {path}: {exc}") from exc
    frame = frame.fillna("").astype(str)
    frame.attrs["delimiter"] = delimiter
    return frame
