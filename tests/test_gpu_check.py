"""benchmarks/gpu_check.sh on the CPU: every CUDA part skipped with its message, the CPU-side logic (throughput
script, DataLoader, kill + resume check, retrieval, linear probe, report) run at tiny sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import convirt

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def script_env(**extra: str) -> dict[str, str]:
    """The environment the script runs in: this interpreter, this checkout's convirt, no visible GPU."""
    source = str(Path(convirt.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@pytest.mark.slow
def test_cpu_run_skips_cuda_parts_and_checks_the_resume(tmp_path: Path, tiny_bert_dir: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run(
        ["bash", str(SCRIPT), str(out)],
        env=script_env(GPU_CHECK_TEXT_ENCODER=str(tiny_bert_dir)),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = (out / "report.md").read_text()
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert headings == [
        "## 1. Training throughput",
        "## 2. DataLoader views/s",
        "## 3. Pretraining killed (SIGKILL) and resumed",
        "## 4. Retrieval and linear probe",
        "## 5. DDP with NCCL",
        "## Result",
    ]
    skipped = "SKIPPED (no CUDA device: torch.cuda.is_available() is False)"
    assert report.count(skipped) == 3  # throughput variants, bf16 pretraining, retrieval/probe on the GPU
    assert "SKIPPED: DDP with NCCL needs more than one GPU; 0 visible." in report
    assert "size: tiny; device: cpu" in report
    # CPU dry runs: the throughput rows, the DataLoader rows, the resume, the retrieval and probe tables
    assert "| fp32 |" in report and "| fp32+cl |" in report
    for pipeline in ("torchvision", "fused"):  # both renderers of the augmentation family
        assert f"| {pipeline}, 0 workers (main process) |" in report and f"| {pipeline}, 1 worker(s) |" in report
    # the tiny run has 9 steps and a resume checkpoint every 2: killed after step 2, 4, 6 or 8
    assert "Resume check passed: killed after the resume checkpoint of step " in report
    assert "and finished at step 9 of 9" in report
    assert "| ConVIRT, image space v (ours) |" in report
    assert "best.ckpt (convirt) |" in report
    assert "All checks passed in " in report and "FAILED" not in report
    resumed = (out / "logs" / "pretrain-resumed.log").read_text()
    assert "resuming from" in resumed


def test_usage_error_without_an_output_folder() -> None:
    done = subprocess.run(["bash", str(SCRIPT)], env=script_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "usage:" in done.stderr


def test_fails_loudly_when_python_cannot_import_convirt(tmp_path: Path) -> None:
    env = script_env(PYTHON="/bin/false")  # an interpreter that fails every import
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert "cannot import convirt" in done.stderr
