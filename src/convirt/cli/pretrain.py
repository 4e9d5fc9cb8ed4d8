"""`convirt pretrain --config FILE key=value ...`"""

from __future__ import annotations

import argparse
import json
import logging

from convirt.config import load_config


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="ConVIRT pretraining on a paired manifest",
        description="Pretrain (or resume) ConVIRT. Settings come from --config and key=value overrides, e.g. "
        "`convirt pretrain --config configs/paper.yaml data.manifest=data/mimic/manifest.csv train.devices=4`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config (default: built-in defaults = the paper's settings)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.max_evals=10 data.batch_size=16")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convirt.objectives import objective_builder

    config = load_config(args.config, args.overrides)
    objective = objective_builder(config.objective)  # an unknown objective fails here, before any work
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from convirt.engine.train import pretrain

    result = pretrain(config, objective)
    print(result.finished_before or json.dumps(result.to_dict(), indent=2))
    return 0
