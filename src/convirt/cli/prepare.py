"""``convirt prepare SOURCE --input RAW_DIR --output DATA_DIR``: a thin layer over :func:`convirt.prepare.prepare`.

The general flags are the fields of :class:`~convirt.prepare.options.PrepareOptions`; the source-specific flags come
from the source registry (:mod:`convirt.prepare.sources`), so a new source brings its own flags. Library messages
name options as Python keywords (``image_columns=NAME``); this layer rewrites them as flags (``--image-column NAME``).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter

from convirt.errors import ConfigError, ConvirtError

OUTPUTS_HELP = """
outputs: DATA_DIR/manifest.csv, DATA_DIR/images/ (resized cache), DATA_DIR/prepare_report.json,
         DATA_DIR/dropped.csv. Re-running into the same DATA_DIR skips every image already cached.
"""


def _size(value: str) -> float | int:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of pairs or a fraction") from None
    return int(number) if number >= 1 and number == int(number) else number


def _delimiter(value: str) -> str:
    return "\t" if value.lower() in ("tab", "\\t", "\t") else value


def _epilog() -> str:
    from convirt.prepare.sources import REGISTRY

    by_summary: dict[str, list[str]] = {}
    for name, source in REGISTRY.items():
        by_summary.setdefault(source.summary, []).append(name)
    lines = ["sources:"]
    for summary, names in by_summary.items():
        first, *rest = summary.split("\n")
        lines.append(f"  {', '.join(names):<16} {first}")
        lines.extend(f"  {'':<16} {line}" for line in rest)
    return "\n".join(lines) + "\n" + OUTPUTS_HELP


def register(subparsers: argparse._SubParsersAction) -> None:
    from convirt.prepare.image_cache import IMAGE_FORMATS
    from convirt.prepare.options import SPLIT_MODES, TEXT_MODES, VIEWS, PrepareOptions
    from convirt.prepare.sources import REGISTRY, SOURCES

    parser = subparsers.add_parser(
        "prepare",
        help="turn a raw dataset download into a paired manifest and a 256-px image cache",
        description="Turn a raw dataset download into the canonical paired manifest and the resized image cache "
        "(paper, Appendix A): keep Findings + Impression, split sentences, drop reports under 3 tokens, resize "
        "images once, split by patient, and report every count.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", choices=SOURCES, help="raw layout to read")
    parser.add_argument("--input", "-i", required=True, help="raw download folder (or table file for csv/jsonl)")
    parser.add_argument("--output", "-o", required=True, help="output data folder (created)")

    d = PrepareOptions()  # the defaults live there; the help shows them
    per_source = {key: _per_source(REGISTRY, key) for key in ("views", "text_mode", "val_size")}
    general = parser.add_argument_group("text and images")
    general.add_argument("--views", choices=VIEWS, help=f"view filter (default: {per_source['views']})")
    general.add_argument(
        "--text-mode",
        choices=TEXT_MODES,
        help="sections: keep --sections only; whole: keep the whole text; auto: sections when headers are found "
        f"(default: {per_source['text_mode']})",
    )
    general.add_argument(
        "--sections",
        default=",".join(d.sections or ["all"]),
        help="comma-separated sections to keep, or 'all' (default: %(default)s, as in the paper)",
    )
    general.add_argument("--min-tokens", type=int, default=d.min_tokens, help="drop pairs with fewer tokens "
                         "(default: %(default)s)")  # fmt: skip
    general.add_argument("--image-size", type=int, default=d.image_size, help="longer side of cached images "
                         "(default: %(default)s)")  # fmt: skip
    general.add_argument("--image-format", choices=tuple(IMAGE_FORMATS), default=d.image_format, help="cache "
                         "format (default: %(default)s)")  # fmt: skip
    general.add_argument(
        "--no-jpeg-draft",
        dest="jpeg_draft",
        action="store_false",
        help="decode JPEGs at full size before resizing (slower; default decodes at the smallest DCT scale >= size)",
    )
    general.add_argument(
        "--min-image-size",
        type=int,
        default=d.min_image_size,
        help="refuse images whose shorter side is under N px, in the file or in the cache (default: %(default)s; "
        "0: no minimum)",
    )
    general.add_argument(
        "--strict-paths",
        action="store_true",
        help="refuse image paths that lead outside the input folders (.., absolute, symbolic links); "
        "default: read them and warn",
    )
    general.add_argument("--encoding", default=d.encoding, help="encoding of the tables and reports (default: "
                         "%(default)s)")  # fmt: skip
    general.add_argument(
        "--delimiter",
        type=_delimiter,
        default=d.delimiter,
        help="CSV delimiter, e.g. ';' or tab (default: detected from the header line among , ; and tab)",
    )
    general.add_argument("--workers", type=int, default=d.workers, help="resize processes (default: all usable "
                         "CPUs)")  # fmt: skip
    general.add_argument("--limit", type=int, default=d.limit, help="prepare only the first N studies (smoke runs)")
    general.add_argument(
        "--no-progress", dest="progress", action="store_const", const=False, default=d.progress, help="no progress bar"
    )

    splits = parser.add_argument_group("splits (by patient)")
    splits.add_argument(
        "--val-size",
        type=_size,
        default=d.val_size,
        help=f"validation pairs (e.g. 5000) or fraction (e.g. 0.1) (default: {per_source['val_size']})",
    )
    splits.add_argument("--test-size", type=_size, default=d.test_size, help="test pairs or fraction "
                        "(default: %(default)s)")  # fmt: skip
    splits.add_argument(
        "--split",
        dest="split_mode",
        choices=SPLIT_MODES,
        default=d.split_mode,
        help="random patient split (default) or the dataset's own split (mimic-cxr, csv split column)",
    )
    splits.add_argument("--seed", type=int, default=d.seed, help="split seed (default: %(default)s)")

    specific = parser.add_argument_group("source-specific")
    for flag, (helps, repeatable) in _source_flags().items():
        specific.add_argument(
            flag,
            dest=_dest(flag),
            metavar=flag.lstrip("-").upper().replace("-", "_"),
            action="append" if repeatable else "store",
            default=None,
            help="; ".join(helps),
        )
    parser.set_defaults(func=run_prepare, flag_words=_flag_words(parser))


def _per_source(registry: dict, key: str) -> str:
    """A default that differs per source, for the help: ``all; frontal for covid-chestxray``."""
    values = {name: getattr(source, key) for name, source in registry.items()}
    common = Counter(values.values()).most_common(1)[0][0]
    return "; ".join([str(common), ", ".join(f"{v} for {n}" for n, v in values.items() if v != common)])


def _dest(flag: str) -> str:
    return "source_" + flag.lstrip("-").replace("-", "_")


def _source_flags() -> dict[str, tuple[list[str], bool]]:
    """Every source-specific flag with its help per source (one flag can serve several sources)."""
    from convirt.prepare.sources import REGISTRY

    flags: dict[str, tuple[list[str], bool]] = {}
    for name, source in REGISTRY.items():
        for option in source.options:
            helps, _ = flags.setdefault(option.flag, ([], option.repeatable))
            same = [i for i, h in enumerate(helps) if h.split(": ", 1)[1] == option.help]
            if same:  # csv and jsonl share their options: one "csv, jsonl: ..." line
                i = same[0]
                helps[i] = helps[i].replace(": ", f", {name}: ", 1)
            else:
                helps.append(f"{name}: {option.help}")
    return flags


def _flag_words(parser: argparse.ArgumentParser) -> dict[str, tuple[str, bool]]:
    """Library keyword -> (command-line flag, flag is a switch): how this command words the library's messages."""
    from convirt.prepare import PrepareOptions
    from convirt.prepare.sources import REGISTRY

    keywords = {option.dest: option for option in _long_options(parser)}
    words = {}
    for name in PrepareOptions.__dataclass_fields__:
        action = keywords.get(name)
        if action is not None and (action.nargs != 0 or action.const is True):  # not the --no-* switches
            words[name] = (action.option_strings[0], action.nargs == 0)
    for source in REGISTRY.values():
        words.update({o.keyword: (o.flag, False) for o in source.options})
    return words


def _long_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.option_strings[0].startswith("--")]


def cli_words(text: str, words: dict[str, tuple[str, bool]]) -> str:
    """Rewrite the options a library message names (``image_columns=NAME``) as flags (``--image-column NAME``)."""
    pattern = re.compile(
        r"\b(?P<key>" + "|".join(map(re.escape, sorted(words, key=len, reverse=True))) + r")="
        r"(?P<value>'[^']*'|\"[^\"]*\"|[^\s,;)]+?)(?=\.?(?:[\s,;)]|$))"
    )

    def replace(match: re.Match) -> str:
        flag, switch = words[match.group("key")]
        value = match.group("value").strip("'\"")
        return flag if switch and value == "True" else f"{flag} {value}"

    return pattern.sub(replace, text)


def run_prepare(args: argparse.Namespace) -> int:
    from convirt.prepare import PrepareOptions, get_source, prepare

    words = args.flag_words
    source = get_source(args.source)
    taken = {option.flag: option for option in source.options}
    given = {flag for flag in _source_flags() if getattr(args, _dest(flag)) is not None}
    foreign = sorted(given - set(taken))
    if foreign:
        takes = ", ".join(sorted(taken)) or "no source-specific option"
        raise ConfigError(f"source {args.source} does not take {', '.join(foreign)} (it takes {takes})")
    try:
        general = {name: getattr(args, name) for name in PrepareOptions.__dataclass_fields__ if name in args}
        options = PrepareOptions(
            **general,
            source_options={taken[flag].keyword: getattr(args, _dest(flag)) for flag in given},
        )
        report = prepare(
            args.source, args.input, args.output, options, log=lambda m: print(cli_words(m, words), file=sys.stderr)
        )
    except ConvirtError as exc:
        exc.args = (cli_words(str(exc), words),)
        raise
    print(cli_words(report.format_table(), words))
    print(f"manifest: {report.manifest}")
    return 0 if report.pairs_kept else 1
