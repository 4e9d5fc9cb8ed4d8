"""Running a plan: each stage not yet done, in order, as its own process; or one stage (``--stage``); or only
printing the plan (``--dry-run``).

There is no scheduler here: stages run one after the other in this process's order. On a cluster, submit one job
per stage (``convirt reproduce --plan OUT/plan.yaml --stage NAME``) with the dependencies ``--dry-run --json``
lists (``docs/reproduce.md`` has a SLURM script).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

from convirt.errors import ConfigError, ConvirtError
from convirt.fileio import atomic_write_text
from convirt.reproduce.stages import Stage, StageGraph, log_file, plan_file, stage_status, write_record

Executor = Callable[[Stage, Path], int]  # runs a stage's command (its log file given); returns the exit status


class StageFailedError(ConvirtError):
    """A stage's command exited with an error."""


def subprocess_executor(stage: Stage, log: Path) -> int:
    """Run the stage's command as a child process (``python -m convirt.cli ...``, the same interpreter and
    environment), its output shown and appended to ``log``."""
    command = [sys.executable, "-m", "convirt.cli", *stage.argv[1:]]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8", buffering=1) as handle:  # line-buffered: `tail -f` follows it
        handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {stage.command}\n")
        handle.flush()
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert process.stdout is not None
            for line in process.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                handle.write(line)
            return process.wait()
        except BaseException:
            process.terminate()
            process.wait()
            raise


def select(graph: StageGraph, patterns: Sequence[str]) -> list[Stage]:
    """The stages whose names match any of ``patterns`` (shell-style: ``classify-*``), in graph order."""
    chosen = [s for s in graph.stages if any(fnmatchcase(s.name, p) for p in patterns)]
    unmatched = [p for p in patterns if not any(fnmatchcase(s.name, p) for s in graph.stages)]
    if unmatched:
        raise ConfigError(f"no stage named {unmatched[0]!r}; the plan's stages: {', '.join(graph.names())}")
    return chosen


def describe(graph: StageGraph) -> str:
    """The dry run: every stage's command, what it reads and writes, what it runs after, and whether it is done."""
    plan = graph.plan
    statuses = {s.name: stage_status(plan, s) for s in graph.stages}
    done = sum(ok for ok, _ in statuses.values())
    lines = [
        f"Plan {plan_file(plan)}: {len(graph.stages)} stages, {done} done, {len(graph.stages) - done} to run.",
        f"Run it: convirt reproduce --plan {plan_file(plan)}   (one stage: --stage NAME; from any folder that "
        "resolves the plan's relative paths the same way)",
        "",
    ]
    for stage in graph.stages:
        ok, why = statuses[stage.name]
        lines.append(f"[{'done' if ok else 'to run'}] {stage.name}: {stage.summary} ({why})")
        lines.append(f"    {stage.command}")
        if stage.inputs:
            lines.append(f"    reads:  {', '.join(str(p) for p in stage.inputs)}")
        lines.append(f"    writes: {', '.join(str(p) for p in stage.outputs)}")
        if stage.after:
            lines.append(f"    after:  {', '.join(stage.after)}")
    return "\n".join(lines)


def graph_json(graph: StageGraph) -> str:
    """The plan as JSON, for scripts that submit one cluster job per stage."""
    rows = []
    for stage in graph.stages:
        ok, why = stage_status(graph.plan, stage)
        rows.append({
            "name": stage.name, "kind": stage.kind, "command": stage.argv, "after": stage.after,
            "inputs": [str(p) for p in stage.inputs], "outputs": [str(p) for p in stage.outputs],
            "done": ok, "status": why, "summary": stage.summary,
        })  # fmt: skip
    return json.dumps({"plan": str(plan_file(graph.plan)), "stages": rows}, indent=2)


def run_plan(
    graph: StageGraph,
    execute: Executor = subprocess_executor,
    patterns: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[str]:
    """Run every stage that is not done (or the stages matching ``patterns``, each only after the stages it needs
    are done); returns the names of the stages that ran. A failing stage stops the run with its log's path."""
    plan = graph.plan
    log = log or (lambda message: print(message, flush=True))
    atomic_write_text(plan_file(plan), plan.to_yaml())
    wanted = select(graph, patterns) if patterns else graph.stages
    ran: list[str] = []
    for stage in wanted:
        ok, why = stage_status(plan, stage)
        if ok:
            log(f"convirt reproduce: {stage.name}: done, skipped")
            continue
        for name in stage.after:
            needed_ok, needed_why = stage_status(plan, graph[name])
            if not needed_ok:
                raise StageFailedError(
                    f"stage {stage.name} needs stage {name} first, which is not done ({needed_why}); run it "
                    f"(--stage {name}) or the whole plan"
                )
        log(f"convirt reproduce: {stage.name}: {why}; running: {stage.command}")
        started = time.perf_counter()
        status = _run_tables(graph) if stage.kind == "tables" else execute(stage, log_file(plan, stage.name))
        if status != 0:
            raise StageFailedError(
                f"stage {stage.name} failed (exit status {status}); its output is in {log_file(plan, stage.name)}. "
                "Fix the cause and run the same command again: finished stages are skipped and the failed one "
                "continues where it stopped"
            )
        missing = [str(o) for o in stage.outputs if not o.is_file()]
        if missing:
            raise StageFailedError(f"stage {stage.name} ended without writing {', '.join(missing)}")
        write_record(plan, stage, time.perf_counter() - started)
        ran.append(stage.name)
        log(f"convirt reproduce: {stage.name}: finished in {time.perf_counter() - started:.0f} s")
    return ran


def _run_tables(graph: StageGraph) -> int:
    from convirt.reproduce.tables import write_tables

    write_tables(graph)
    return 0
