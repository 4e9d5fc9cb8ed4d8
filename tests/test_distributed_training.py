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


def test_a_nan_loss_stops_every_process(tmp_path: Path, tiny_bert_dir: Path) -> None:
    """Two CPU processes diverge (optim.lr=1e6): both stop with the one-line error, exit status 2, no hang."""
    from conftest import tiny_overrides, write_paired_manifest

    manifest = write_paired_manifest(tmp_path / "pairs")
    output = tmp_path / "run"
    settings = {"data.batch_size": 4, "data.augment.output_size": 32, "model.projection_dim": 16, "optim.lr": 1e6,
                "train.devices": 2, "train.strategy": "ddp", "train.accelerator": "cpu", "train.val_every_steps": 2,
                "train.checkpoint_every_steps": 1, "train.limit_val_batches": 1}  # fmt: skip
    command = [sys.executable, "-m", "convirt.cli", "pretrain", *tiny_overrides(manifest, output, tiny_bert_dir,
                                                                                **settings)]  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    process = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert process.returncode == 2, process.stderr[-4000:]
    # One line per process (the two processes share the console, so their lines may interleave).
    assert process.stderr.count("convirt pretrain: error: the training loss is nan at training step") == 2
    assert "Traceback" not in process.stderr
    assert not (output / "summary.json").exists()
