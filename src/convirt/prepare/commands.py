"""``convirt prepare SOURCE --input RAW_DIR --output DATA_DIR``: a thin layer over :func:`convirt.prepare.prepare`."""

from __future__ import annotations

import argparse
import sys

from convirt.errors import ConfigError

SOURCE_HELP = """\
sources:
  mimic-cxr        MIMIC-CXR-JPG v2 folder (files/pXX/pXXXXXXXX/sXXXXXXXX/*.jpg, mimic-cxr-2.0.0-metadata.csv.gz,
                   mimic-cxr-2.0.0-split.csv.gz) with the MIMIC-CXR reports (files/pXX/pXXXXXXXX/sXXXXXXXX.txt,
                   in the same tree or in --reports DIR)
  iu-xray          Open-i IU X-ray: ecgen-radiology/*.xml or NLMCXR_reports.tgz + CXR<id>_IM-*.png images, or the
                   CSV export indiana_reports.csv + indiana_projections.csv + images
  covid-chestxray  COVID-19 image data collection: metadata.csv + images/ (text = clinical notes)
  csv, jsonl       any table of pairs: --input TABLE (or a folder holding it, with --table NAME), with
                   --image-column/--text-column naming the columns

outputs: DATA_DIR/manifest.csv, DATA_DIR/images/ (resized cache), DATA_DIR/prepare_report.json,
         DATA_DIR/dropped.csv. Re-running into the same DATA_DIR skips every image already cached.
"""


def _size(value: str) -> float | int:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of pairs or a fraction") from None
    return int(number) if number >= 1 and number == int(number) else number


def register(subparsers: argparse._SubParsersAction) -> None:
    from convirt.prepare import SOURCES

    parser = subparsers.add_parser(
        "prepare",
        help="turn a raw dataset download into a paired manifest and a 256-px image cache",
        description="Turn a raw dataset download into the canonical paired manifest and the resized image cache "
        "(paper, Appendix A): keep Findings + Impression, split sentences, drop reports under 3 tokens, resize "
        "images once, split by patient, and report every count.",
        epilog=SOURCE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", choices=SOURCES, help="raw layout to read")
    parser.add_argument("--input", "-i", required=True, help="raw download folder (or table file for csv/jsonl)")
    parser.add_argument("--output", "-o", required=True, help="output data folder (created)")

    general = parser.add_argument_group("text and images")
    general.add_argument("--views", choices=("frontal", "all"), help="view filter (default: all; covid: frontal)")
    general.add_argument(
        "--text-mode",
        choices=("sections", "whole", "auto"),
        help="sections: keep --sections only; whole: keep the whole text; auto: sections when headers are found "
        "(default: sections for mimic-cxr/iu-xray, whole for covid-chestxray, auto for csv/jsonl)",
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
        action="store_true",
        help="decode JPEGs at full size before resizing (slower; default decodes at the smallest DCT scale >= size)",
    )
    general.add_argument("--workers", type=int, default=None, help="resize processes (default: all usable CPUs)")
    general.add_argument("--limit", type=int, default=None, help="prepare only the first N studies (smoke runs)")
    general.add_argument("--no-progress", action="store_true", help="no progress bar")

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

    source = parser.add_argument_group("source-specific")
    source.add_argument(
        "--reports",
        help="mimic-cxr: folder of the report .txt files (default: inside --input); "
        "iu-xray: the XML folder or NLMCXR_reports.tgz (default: found inside --input)",
    )
    source.add_argument(
        "--images",
        help="iu-xray, csv, jsonl: folder searched / image paths resolved against "
        "(default: --input, or the table's folder)",
    )
    source.add_argument("--table", help="csv/jsonl: the table file when --input is a folder")
    source.add_argument("--image-column", action="append", help="csv/jsonl: image column(s) (repeatable)")
    source.add_argument(
        "--image-separator",
        default=None,
        help="csv/jsonl: separator inside an image cell with several paths (default: '|', else ';')",
    )
    source.add_argument(
        "--text-column",
        action="append",
        help="csv/jsonl: text column(s) (repeatable; several "
        "columns become sections named after them, e.g. findings and impression)",
    )
    source.add_argument("--patient-column", help="csv/jsonl: patient id column (default: one patient per study)")
    source.add_argument("--study-column", help="csv/jsonl: study id column (default: row number)")
    source.add_argument("--split-column", help="csv/jsonl: column with train/val(idate)/test for --split official")
    source.add_argument("--view-column", help="csv/jsonl: view column for --views frontal")
    parser.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from convirt.prepare import prepare

    sections = (
        None if args.sections.strip().lower() == "all" else [s.strip() for s in args.sections.split(",") if s.strip()]
    )
    if sections is not None and not sections:
        raise ConfigError("--sections is empty; give e.g. findings,impression or all")
    options: dict[str, object] = {}
    if args.source == "mimic-cxr":
        options["reports_dir"] = args.reports
    elif args.source == "iu-xray":
        options.update(reports=args.reports, images_dir=args.images)
    elif args.source in ("csv", "jsonl"):
        options.update(
            table=args.table,
            image_columns=args.image_column,
            text_columns=args.text_column,
            image_separator=args.image_separator,
            patient_column=args.patient_column,
            study_column=args.study_column,
            split_column=args.split_column,
            view_column=args.view_column,
            images_dir=args.images,
        )
    elif args.reports or args.images or args.image_column or args.text_column:
        raise ConfigError(f"source {args.source} takes none of --reports/--images/--image-column/--text-column")
    report = prepare(
        args.source,
        args.input,
        args.output,
        views=args.views,
        val_size=args.val_size,
        test_size=args.test_size,
        split_mode=args.split_mode,
        seed=args.seed,
        text_mode=args.text_mode,
        sections=sections,
        min_tokens=args.min_tokens,
        image_size=args.image_size,
        image_format=args.image_format,
        jpeg_draft=not args.no_jpeg_draft,
        workers=args.workers,
        limit=args.limit,
        progress=False if args.no_progress else None,
        log=lambda message: print(message, file=sys.stderr),
        **{k: v for k, v in options.items() if v is not None},
    )
    print(report.format_table())
    print(f"manifest: {report.manifest}")
    return 0 if report.pairs_kept else 1
