"""``convirt reproduce --plan FILE [key=value ...]``: the paper end to end, each stage its own `convirt` command.

::

    convirt reproduce --plan plan.yaml --dry-run           # every stage: command, inputs, outputs, done or not
    convirt reproduce --plan plan.yaml                      # run what is not done (again: continues where it stopped)
    convirt reproduce --plan runs/paper/plan.yaml --stage pretrain        # one stage (a cluster job)
    convirt reproduce --plan plan.yaml --grid "loss.temperature=0.01,0.1,1" "model.head=linear"   # Table 3

See :mod:`convirt.reproduce` and ``docs/reproduce.md``.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="the paper end to end: prepare, pretrain, evaluate (Tables 1-4, Figure 4), write the tables",
        description="Run the paper's pipeline on the data given in a plan (any subset of MIMIC-CXR-JPG, CheXpert, "
        "RSNA, COVIDx, MURA; or the built-in synthetic data): every stage is one `convirt` command, skipped when "
        "its outputs are complete, resumed when it stopped half-way. Writes OUTPUT/results/paper-tables.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("::", 1)[1].split("See ")[0],
    )
    parser.add_argument("--plan", help="plan YAML (see docs/reproduce.md); without it, key=value overrides only")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="plan overrides, e.g. data.rsna=/data/rsna "
                        "evaluation.seeds=1 output=runs/paper")  # fmt: skip
    parser.add_argument("--grid", nargs="+", metavar="KEY=V1,V2", help="Table 3's grid (replaces table3.grid), e.g. "
                        "loss.temperature=0.01,0.1,1 data.batch_size=16,32,128 model.head=linear")  # fmt: skip
    parser.add_argument("--grid-mode", choices=("one_at_a_time", "product"), help="one_at_a_time (default, the "
                        "paper's: each value alone) or product (every combination)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the plan (commands, inputs, outputs, status)")
    parser.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON (for job scripts)")
    parser.add_argument("--stage", action="append", metavar="NAME", help="run only this stage (repeatable; shell "
                        "patterns such as 'classify-*'); the stages it needs must be done")  # fmt: skip
    parser.add_argument("--in-process", action="store_true", help="run each stage's command in this process "
                        "instead of a child process (saves the start-up time of small runs)")  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convirt.cli import main
    from convirt.reproduce import build_stages, describe, graph_json, load_plan, run_plan

    overrides = list(args.overrides)
    if args.grid:
        import json

        overrides.append(f"table3.grid={json.dumps(args.grid)}")
    if args.grid_mode:
        overrides.append(f"table3.mode={args.grid_mode}")
    graph = build_stages(load_plan(args.plan, overrides))
    if args.dry_run or args.json:
        print(graph_json(graph) if args.json else describe(graph))
        return 0
    if args.in_process:

        def execute(stage, log):
            import sys

            saved, sys.argv = sys.argv, list(stage.argv)  # the command each output records is the stage's own
            try:
                return main(stage.argv[1:])
            finally:
                sys.argv = saved

        ran = run_plan(graph, execute, args.stage)
    else:
        ran = run_plan(graph, patterns=args.stage)
    if not args.stage or "tables" in ran:
        print(f"convirt reproduce: {len(ran)} stage(s) ran; tables in {graph.plan.out / 'results' / 'paper-tables.md'}")
    return 0
