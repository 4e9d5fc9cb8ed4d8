"""``convirt prepare SOURCE --input RAW_DIR --output DATA_DIR``: a thin layer over :func:`convirt.prepare.prepare`.

The general flags are the fields of :class:`~convirt.prepare.options.PrepareOptions`; the source-specific flags come
from the source registry (:mod:`convirt.prepare.sources`), so a new source brings its own flags. Library messages
name options as Python keywords (``image_columns=NAME``); this layer rewrites them as flags (``--image-column NAME``).
"""

from __future__ import annotations

import argparse
import re
import sys

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

    general = parser.add_argument_group("text and images")
    general.add_argument("--views", choices=("frontal", "all"), help="view filter (default: all; covid: frontal)")
    modes = ", ".join(f"{s.text_mode} for {name}" for name, s in REGISTRY.items())
    general.add_argument(
        "--text-mode",
        choices=("sections", "whole", "auto"),
        help="sections: keep --sections only; whole: keep the whole text; auto: sections when headers are found "
        f"(default: {modes})",
    )
    general.add_argument(
        "--sections",
        default="findings,impression",
        help="comma-separated sections to keep, or 'all' (default: findings,impression, as in the paper)",
    )
    general.add_argument("--min-tokens", type=int, default=3, help="drop pairs with fewer tokens (default: 3)")
    general.add_argument("--image-size", type=int, default=256, help="longer side of cached images (default: 256)")
    general.add_argument("--image-format", choices=("png", "jpeg"), default="png", help="cache format (default png)")
    general.add_argument(
        "--no-jpeg-draft",
        dest="jpeg_draft",
        action="store_false",
        help="decode JPEGs at full size before resizing (slower; default decodes at the smallest DCT scale >= size)",
    )
    general.add_argument("--workers", type=int, default=None, help="resize processes (default: all usable CPUs)")
    general.add_argument("--limit", type=int, default=None, help="prepare only the first N studies (smoke runs)")
    general.add_argument(
        "--no-progress", dest="progress", action="store_const", const=False, default=None, help="no progress bar"
    )

    splits = parser.add_argument_group("splits (by patient)")
    splits.add_argument(
        "--val-size",
        type=_size,
        default=None,
        help="validation pairs (e.g. 5000) or fraction (e.g. 0.1); default 5000 for mimic-cxr (paper), 0.1 otherwise",
    )
    splits.add_argument("--test-size", type=_size, default=0, help="test pairs or fraction (default: 0)")
    splits.add_argument(
        "--split",
        dest="split_mode",
        choices=("random", "official"),
        default="random",
        help="random patient split (default) or the dataset's own split (mimic-cxr, csv split column)",
    )
    splits.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")

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
        options = PrepareOptions(
            views=args.views,
            val_size=args.val_size,
            test_size=args.test_size,
            split_mode=args.split_mode,
            seed=args.seed,
            text_mode=args.text_mode,
            sections=args.sections,
            min_tokens=args.min_tokens,
            image_size=args.image_size,
            image_format=args.image_format,
            jpeg_draft=args.jpeg_draft,
            workers=args.workers,
            limit=args.limit,
            progress=args.progress,
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
