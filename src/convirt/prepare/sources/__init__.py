"""Raw layouts ``convirt prepare`` reads: one module per source, each exposing a :class:`PrepareSource`.

================= ============================================================================== ==========
source            layout                                                                         module
================= ============================================================================== ==========
``mimic-cxr``     MIMIC-CXR-JPG v2 (``files/pXX/...``, metadata and split tables) + the reports   mimic
``iu-xray``       Open-i IU X-ray (XML reports or their .tgz, or the CSV export) + images          iu_xray
``covid-chestxray`` COVID-19 image data collection: ``metadata.csv`` + ``images/``                covid
``csv``, ``jsonl`` any table of pairs (CSV/TSV/Parquet, JSON Lines)                               table
================= ============================================================================== ==========

A :class:`PrepareSource` carries what the pipeline and the command line need: the reader
(``read(input_dir, settings, **options) -> SourceData``), the per-source defaults (view filter, validation size,
text mode) and the source's own options with their flags. Adding a source is one module and one line here.
"""

from __future__ import annotations

from convirt.errors import ConfigError

from ..types import PrepareSource
from . import covid, iu_xray, mimic, table

REGISTRY: dict[str, PrepareSource] = {
    source.name: source for source in (mimic.SOURCE, iu_xray.SOURCE, covid.SOURCE, table.CSV_SOURCE, table.JSONL_SOURCE)
}
SOURCES = tuple(REGISTRY)


def get_source(name: str) -> PrepareSource:
    """The source called ``name``; a :class:`ConfigError` listing the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown source {name!r}; choose one of {list(SOURCES)}") from None
