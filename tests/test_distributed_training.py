"""DDP from config: two CPU processes (gloo) train through the real CLI with negatives gathered across them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def test_two_process_ddp_run_from_config(covid_prepared: Path, tiny_bert_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "convirt.cli",
        "pretrain",
        f"data.manifest={covid_prepared}",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.augment.output_size=64",
        "data.augment.blur_kernel_size=9",
        "model.image_encoder=resnet18",
        "model.image_weights=none",
        f"model.text_encoder={tiny_bert_dir}",
        "model.freeze_layers=2",
        "model.projection_dim=16",
        "train.accelerator=cpu",
        "train.devices=2",
        "train.strategy=ddp",
        "train.precision=32",
        "train.val_every_steps=3",
        "train.max_evals=1",
        "train.limit_val_batches=2",
        "train.checkpoint_every_steps=3",
        "train.progress_bar=false",
        "train.tensorboard=false",
        f"train.output_dir={output}",
    ]
    with socket.socket() as sock:  # a port nothing listens on now (the rendezvous binds it)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    process = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-4000:]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    checkpoint = torch.load(output / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3 and checkpoint["convirt_state"]["evaluations"] == 1
