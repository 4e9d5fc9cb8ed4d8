"""The `convirt` command line: a thin layer that parses arguments and calls library functions.

One module per command group, each exposing ``register(subparsers)``: :mod:`.evaluate` (``evaluate classify |
retrieval | zeroshot | trajectory``), :mod:`.plot` (``plot tsne | saliency``), :mod:`.search` (``index``,
``search``), :mod:`.export`, :mod:`.demo` (``demo``, ``synthesize``), :mod:`.serve` (``serve``), :mod:`.pretrain`,
:mod:`.prepare`, :mod:`.reproduce`; :mod:`.options` holds the option blocks they share. This module only collects
them. Errors a user can cause (:class:`convirt.errors.ConvirtError`) are printed as one clear message with exit
status 2, never as a stack trace (set ``CONVIRT_DEBUG=1`` to see the trace); when the library names a setting, the
message ends with the option that sets it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from convirt.cli.options import option_hint
from convirt.errors import ConvirtError

# Modules that add sub-commands. Each must define ``register(subparsers) -> None`` and set ``func`` defaults.
COMMAND_MODULES = (
    "convirt.cli.pretrain",  # pretrain
    "convirt.cli.export",  # export
    "convirt.cli.prepare",  # prepare
    "convirt.cli.evaluate",  # evaluate classify | retrieval | zeroshot
    "convirt.cli.plot",  # plot tsne | saliency
    "convirt.cli.search",  # index, search
    "convirt.cli.demo",  # demo, synthesize
    "convirt.cli.serve",  # serve (the web explorer; its packages are the optional app extra)
    "convirt.cli.reproduce",  # reproduce
)


def register_modules(subparsers, module_names: tuple[str, ...]) -> None:
    """Let each named module add its sub-command(s); a module that is not installed is skipped."""
    for name in module_names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convirt",
        description="ConVIRT: contrastive pretraining of medical image encoders from paired images and reports.",
    )
    register_modules(parser.add_subparsers(dest="command", metavar="COMMAND"), COMMAND_MODULES)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        result = args.func(args)
    except ConvirtError as exc:
        if os.environ.get("CONVIRT_DEBUG"):
            raise
        hint = option_hint(exc)
        suffix = f" (on the command line: {hint})" if hint else ""
        print(f"convirt {args.command}: error: {exc}{suffix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convirt {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
