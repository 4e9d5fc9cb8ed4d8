"""The whole paper in one command (``convirt reproduce``): a plan of the data the user has, the stage graph it
implies (each stage one `convirt` command line: prepare, pretrain, evaluate, ...), completeness checks so that
finished stages are skipped, and the tables in the paper's layout.

:mod:`.plan` (the plan file and its checks), :mod:`.grid` (Table 3's hyperparameter grid), :mod:`.stages` (the
stage graph, output layout and "done" tests), :mod:`.run` (running stages as processes, the dry run),
:mod:`.tables` (``results/paper-tables.md``). Above the evaluations it orders, below the command line.
"""

from convirt.reproduce.plan import Plan, load_plan
from convirt.reproduce.run import describe, graph_json, run_plan, subprocess_executor
from convirt.reproduce.stages import Stage, StageGraph, build_stages, stage_status
from convirt.reproduce.tables import render, write_tables

__all__ = [
    "Plan",
    "Stage",
    "StageGraph",
    "build_stages",
    "describe",
    "graph_json",
    "load_plan",
    "render",
    "run_plan",
    "stage_status",
    "subprocess_executor",
    "write_tables",
]
