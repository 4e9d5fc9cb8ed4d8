"""A pretraining run's console holds progress and the project's own messages only: no line of the training
framework's chatter (tips, device lines, model table, checkpoint defaults, deprecations) and no Python warning.

The run goes through the real `convirt` command in a fresh process, as a user starts it, once fresh and once
resumed (a resumed run used to add its own lines).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import tiny_overrides, write_paired_manifest

KNOWN_NOISE = (
    "weights_only",  # "`weights_only` was not set, defaulting to `False`" at every checkpoint save
    "Tip:",  # "💡 Tip: For seamless cloud logging/uploads ..."
    "GPU available",
    "TPU available",
    "LOCAL_RANK",
    "Tensor Cores",
    "Restoring states",
    "Restored all states",
    "`Trainer.fit` stopped",
    "was configured so",  # "`Trainer(limit_val_batches=1)` was configured so 1 batch will be used"
    "Checkpoint directory",  # "... exists and is not empty"
    "deprecated",
    "in eval mode",  # "Found N module(s) in eval mode at the start of training"
    "does not have many workers",
    "Total params",  # the model summary table
    "Trainable params",
    "Automatic Mixed Precision",
    "Seed set to",
)
PYTHON_WARNING = re.compile(r"\b\w*(Warning|Deprecation)\w*: |warnings\.warn\(")


def run_cli(overrides: list[str], cwd: Path) -> tuple[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONWARNINGS", None)
    process = subprocess.run([sys.executable, "-m", "convirt.cli", "pretrain", *overrides], capture_output=True,
                             text=True, timeout=900, env=env, cwd=cwd)  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    return process.stdout, process.stderr


def console_lines(text: str) -> list[str]:
    """Lines as a terminal shows them (progress bars redraw with carriage returns)."""
    return [part.strip() for line in text.splitlines() for part in line.split("\r") if part.strip()]


def test_a_run_prints_progress_and_its_own_messages_only(tmp_path: Path, tiny_bert_dir: Path) -> None:
    manifest = write_paired_manifest(tmp_path / "pairs")
    output = tmp_path / "run"
    settings = {"data.batch_size": 4, "data.augment.output_size": 32, "model.projection_dim": 16,
                "train.val_every_steps": 2, "train.max_evals": 1, "train.checkpoint_every_steps": 1,
                "train.limit_val_batches": 1, "train.progress_bar": True, "train.accelerator": "cpu"}  # fmt: skip
    longer = {**settings, "train.max_evals": 2}
    runs = {
        "fresh": run_cli(tiny_overrides(manifest, output, tiny_bert_dir, **settings), tmp_path),
        "resumed": run_cli(tiny_overrides(manifest, output, tiny_bert_dir, **longer), tmp_path),
    }
    for name, (out, err) in runs.items():
        lines = console_lines(out + "\n" + err)
        noise = [line for line in lines if any(word in line for word in KNOWN_NOISE) or PYTHON_WARNING.search(line)]
        assert not noise, (name, noise)
        assert "Traceback" not in err
        # The progress bar, the project's own line and the result are there.
        assert any(line.startswith("Epoch ") and "train/loss=" in line for line in lines), (name, lines)
        assert any("INFO convirt: pretraining convirt for " in line for line in lines), (name, lines)
        result = json.loads(out[out.index('{\n  "output_dir"') :])  # after the progress bar (on stdout)
        assert result["steps"] == (2 if name == "fresh" else 4)
        own = [line for line in lines if line.startswith(("INFO convirt:", "WARNING convirt:"))]
        expected = 1 if name == "fresh" else 2  # the resumed run also says where it resumes from
        assert len(own) == expected, own
    assert "WARNING convirt: resuming from " + str(output / "checkpoints" / "last.ckpt") in runs["resumed"][1]
