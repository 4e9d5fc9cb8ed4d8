"""Where the demo's pretraining spends its time: step (forward, backward, Adam) vs validation vs checkpoint writes vs
data loading, from a py-spy profile of the demo's own pretraining settings.

    python benchmarks/demo_profile.py --steps 160 --threads 1        # work folder: /tmp/convirt-demo-profile

Generates and prepares the demo's pretraining set once (4,000 synthetic studies at 128 px, as ``convirt demo``;
reused when the work folder has it), then runs ``convirt.engine.train.pretrain`` with
:data:`convirt.demo.config.DEMO_SETTINGS` for ``--steps`` steps (keep a multiple of the demo's 80-step validation
and checkpoint interval, so each part has its share) under ``py-spy record --subprocesses``, and prints one
Markdown table: py-spy's non-idle samples by stage, in seconds, with the main process's measured CPU time. py-spy
samples a thread that is runnable but waiting for a core like a running one, so on a busy machine the sampled
seconds exceed the CPU time; the shares are what to compare. Needs py-spy (``pip install py-spy``).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RATE = 20  # py-spy samples per second
STAGES = [  # the first whose markers a main-process stack holds (innermost work first)
    ("checkpoint writes", ("save_checkpoint", "atomic_open", "torch/serialization.py")),
    ("validation (incl. the sanity check)", ("_EvaluationLoop", "validation_step", "_run_sanity_check")),
    ("data loading in the main process", ("_next_data", "fetch (torch/utils/data")),
    ("step: backward", ("backward (torch/", "_engine_run_backward")),
    ("step: forward, text encoder", ("TextEncoder.forward",)),
    ("step: forward, image encoder", ("ImageEncoder.forward",)),
    ("step: forward, heads + loss", ("training_step",)),
    ("step: Adam update", ("adam.py",)),
    ("helper threads waiting", ("socket.accept", "select (selectors", "Connection._recv", "wait (threading")),
    ("set-up (imports, model build, trainer)", ("build_objective", "_find_and_load", "build_trainer", "setup")),
]


def split(raw: Path) -> collections.Counter:
    """Seconds of samples by stage from py-spy's raw (collapsed-stack) output."""
    seconds: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "_worker_loop" in stack:
            stage = "data loading in DataLoader worker processes"
        else:
            stage = next((name for name, marks in STAGES if any(m in stack for m in marks)), "other")
        seconds[stage] += int(count) / RATE
    return seconds


def prepare_data(work: Path) -> Path:
    from convirt.prepare import prepare
    from convirt.synthetic.dataset import generate_dataset

    manifest = work / "prepared" / "manifest.csv"
    if not manifest.is_file():
        data = generate_dataset(work / "synthetic-pretrain", 4000, 0, 128, 2, log=lambda _: None)
        prepare("csv", data.folder, work / "prepared", table="pairs.csv", image_size=128, val_size=0.1, seed=0,
                workers=2, progress=False, log=lambda _: None)  # fmt: skip
    return manifest


def run_pretraining(work: Path, steps: int) -> None:
    """The child py-spy profiles: the demo's pretraining for ``steps`` steps; prints its wall and CPU seconds."""
    from convirt.demo.run import DemoSettings, demo_config
    from convirt.engine.train import pretrain
    from convirt.objectives import build_objective

    run = work / "pretrain"
    shutil.rmtree(run, ignore_errors=True)
    config = demo_config(DemoSettings(steps=steps), work / "prepared" / "manifest.csv", run)
    wall, cpu = time.perf_counter(), time.process_time()
    result = pretrain(config, build_objective)
    print(f"RESULT {result.steps} {time.perf_counter() - wall:.1f} {time.process_time() - cpu:.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (OMP_NUM_THREADS)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "convirt-demo-profile")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_pretraining(args.work, args.steps)
        return 0
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    prepare_data(args.work)
    raw = args.work / "profile.raw"
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    load = os.getloadavg()[0]
    command = [py_spy, "record", "--rate", str(RATE), "--subprocesses", "--format", "raw", "-o", str(raw), "--",
               sys.executable, __file__, "--child", "--steps", str(args.steps), "--work", str(args.work)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    steps, wall, cpu = line.split()[1:]
    seconds = split(raw)
    total = sum(seconds.values())
    print(
        f"demo pretraining settings, {steps} steps, torch threads {args.threads or 'default'}; load average "
        f"{load:.1f} at start, {os.getloadavg()[0]:.1f} at end; main process: {wall} s wall, {cpu} s CPU"
    )
    print()
    print("| stage | sampled s | share |")
    print("|---|---:|---:|")
    for stage, value in seconds.most_common():
        print(f"| {stage} | {value:.1f} | {100 * value / total:.0f} % |")
    print(f"| all samples | {total:.1f} | 100 % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
