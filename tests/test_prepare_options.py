"""The prepare source registry, PrepareOptions, and the CLI's wording of library messages."""

from __future__ import annotations

import argparse

import pytest

from convirt.cli import main
from convirt.cli.prepare import cli_words, register
from convirt.errors import ConfigError
from convirt.prepare import SOURCES, PrepareOptions, get_source, prepare


def test_registry_gives_each_source_its_reader_defaults_and_options():
    assert SOURCES == ("mimic-cxr", "iu-xray", "covid-chestxray", "csv", "jsonl")
    assert (get_source("mimic-cxr").val_size, get_source("covid-chestxray").views) == (5000, "frontal")
    assert [get_source(s).text_mode for s in SOURCES] == ["sections", "sections", "whole", "auto", "auto"]
    assert get_source("csv").keywords() == get_source("jsonl").keywords()
    assert "table_format" not in get_source("csv").keywords()  # fixed per source, not an option
    assert [o.flag for o in get_source("iu-xray").options] == ["--reports", "--images"]
    with pytest.raises(ConfigError, match=r"unknown source 'dicom'; choose one of \['mimic-cxr'"):
        get_source("dicom")


def test_options_fill_source_defaults_and_refuse_unknown_keywords(tmp_path):
    options = PrepareOptions.from_keywords(val_size=3, image_columns=["paths"], table=None)
    assert options.val_size == 3 and options.source_options == {"image_columns": ["paths"]}
    resolved = PrepareOptions(sections="all").for_source(get_source("covid-chestxray"))
    assert (resolved.views, resolved.val_size, resolved.text_mode, resolved.sections) == ("frontal", 0.1, "whole", None)
    assert PrepareOptions(sections="findings, impression").sections == ["findings", "impression"]
    with pytest.raises(ConfigError, match="sections is empty"):
        PrepareOptions(sections=" , ")
    with pytest.raises(ConfigError, match=r"views must be one of \['frontal', 'all'\], not 'lateral'"):
        PrepareOptions(views="lateral")
    with pytest.raises(ConfigError, match=r"source covid-chestxray does not take option\(s\) \['image_columns'\]"):
        prepare("covid-chestxray", tmp_path, tmp_path / "out", image_columns=["x"])


def test_cli_words_library_options_as_flags(tmp_path, capsys):
    subparsers = argparse.ArgumentParser().add_subparsers()
    register(subparsers)
    words = subparsers.choices["prepare"].get_default("flag_words")
    assert cli_words("no image column; name it: image_columns=NAME.", words) == (
        "no image column; name it: --image-column NAME."
    )
    assert cli_words("views='frontal' needs x; use split_mode='random'", words) == (
        "--views frontal needs x; use --split random"
    )
    assert cli_words("pass reports_dir=DIR or images_dir=DIR", words) == "pass --reports DIR or --images DIR"
    # A flag of another source is refused with the flags this source takes.
    code = main(["prepare", "covid-chestxray", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--table", "x.csv"])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "source covid-chestxray does not take --table (it takes no source-specific option)" in error
