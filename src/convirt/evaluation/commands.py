"""`convirt evaluate ...`: one sub-command per evaluation, each registered by the module that implements it."""

from __future__ import annotations

# Each module defines ``register(subparsers)`` adding one evaluation (classify, retrieval, zeroshot, ...).
EVALUATION_MODULES = (
    "convirt.evaluation.classify_cli",
    "convirt.evaluation.retrieval_cli",
    "convirt.evaluation.zeroshot_cli",
)


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate an encoder (classification, retrieval, zero-shot)")
    from convirt.cli import register_modules

    register_modules(parser.add_subparsers(dest="evaluation", metavar="EVALUATION"), EVALUATION_MODULES)
    parser.set_defaults(func=lambda args: parser.print_help() or 1)
