"""DDP from config: two CPU processes (gloo) train through the real CLI with negatives gathered across them; a killed
two-process run resumes to the state of the uninterrupted one (each process restores its own RNG state); BatchNorm
statistics are those of each process's batch unless train.sync_batchnorm (GPUs only)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import tiny_config

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parent


def run_ddp(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a command that starts a multi-process Lightning run, with a free rendezvous port of its own."""
    with socket.socket() as sock:  # a port nothing listens on now (the rendezvous binds it)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=cwd)


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
    process = run_ddp(command, tmp_path)
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-4000:]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    checkpoint = torch.load(output / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3 and checkpoint["convirt_state"]["evaluations"] == 1
    assert len(checkpoint["convirt_state"]["rng_per_rank"]) == 2  # the RNG state of each process


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


# --------------------------------------------------------------------------------------------------------------
# Exact resume on two processes

DDP_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import lightning as L
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config
    from convirt.engine.train import pretrain
    from convirt.objectives import build_objective

    class KillAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)  # every process, no cleanup, no final checkpoint: a crash

    config = tiny_config({manifest!r}, {output!r}, {text!r}, **{overrides!r})
    pretrain(config, build_objective, extra_callbacks=[KillAt()])
    """
)

TWO_PROCESSES = {
    "data__batch_size": 4,
    "train__accelerator": "cpu",
    "train__devices": 2,
    "train__strategy": "ddp",
    "train__val_every_steps": 3,
    "train__max_evals": 2,
    "train__checkpoint_every_steps": 2,
    "train__limit_val_batches": 2,
}


def run_two_processes(tmp_path: Path, name: str, manifest: Path, text: Path, kill_at: int = -1, **overrides):
    """A two-process pretraining run of the tiny config through a script file (Lightning starts the second process
    by running the same script again)."""
    script = tmp_path / f"{name}.py"
    settings = {**TWO_PROCESSES, **overrides}
    script.write_text(
        DDP_SCRIPT.format(
            tests=str(TESTS),
            kill_at=kill_at,
            manifest=str(manifest),
            output=str(tmp_path / name),
            text=str(text),
            overrides=settings,
        )
    )
    return run_ddp([sys.executable, str(script)], tmp_path)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_killed_two_process_run_resumes_to_the_same_state(covid_prepared, tiny_bert_dir, tmp_path) -> None:
    # Uninterrupted: 6 steps on 2 processes, validation at 3 and 6, last.ckpt every 2 steps and after validation.
    straight = run_two_processes(tmp_path, "straight", covid_prepared, tiny_bert_dir)
    assert straight.returncode == 0, straight.stderr[-4000:]

    # Both processes SIGKILLed at the end of step 4 (before that step's checkpoint): last.ckpt holds step 3, written
    # after the first validation. Then the same script again resumes from it.
    killed = run_two_processes(tmp_path, "killed", covid_prepared, tiny_bert_dir, kill_at=4)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    partial = load(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    assert partial["global_step"] == 3 and partial["convirt_state"]["evaluations"] == 1
    per_rank = partial["convirt_state"]["rng_per_rank"]
    # The processes' RNG streams have diverged by then (dropout draws as many numbers as each process's padded
    # sentences have elements): restoring process 0's state on both, as before, would change process 1's dropout.
    assert len(per_rank) == 2 and not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])
    resumed = run_two_processes(tmp_path, "killed", covid_prepared, tiny_bert_dir)
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    a = load(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = load(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 6
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-6, atol=1e-7, msg=key)
    state_a, state_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state_b[index][moment], state_a[index][moment], rtol=1e-6, atol=1e-9)
    assert a["optimizer_states"][0]["param_groups"][0]["lr"] == b["optimizer_states"][0]["param_groups"][0]["lr"]
    assert a["convirt_state"]["plateau"] == b["convirt_state"]["plateau"]
    assert a["convirt_state"]["evaluations"] == b["convirt_state"]["evaluations"] == 2
    for rank in (0, 1):  # each process ends in the same RNG state as in the uninterrupted run
        rng_a, rng_b = a["convirt_state"]["rng_per_rank"][rank], b["convirt_state"]["rng_per_rank"][rank]
        assert torch.equal(rng_a["torch"], rng_b["torch"]) and rng_a["python"] == rng_b["python"]
    summary_a = json.loads((tmp_path / "straight" / "summary.json").read_text())
    summary_b = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary_b["best_val_loss"] == pytest.approx(summary_a["best_val_loss"], rel=1e-6)
    assert summary_b["resumed_from"].endswith("last.ckpt") and summary_b["world_size"] == 2


# --------------------------------------------------------------------------------------------------------------
# BatchNorm statistics with two processes


def first_batchnorm_input(config, rank: int, world_size: int) -> torch.Tensor:
    """The input of the image encoder's first BatchNorm layer on the first training batch of process ``rank``, from
    the initial weights ``pretrain`` builds (same seed, same builder) and the stream sampler's first draws."""
    import lightning as L

    from convirt.data.sampling import ResumableStreamSampler
    from convirt.objectives import build_objective

    L.seed_everything(config.train.seed, verbose=False)
    parts = build_objective(config)
    dataset = parts.data.train_set
    sampler = iter(ResumableStreamSampler(len(dataset), config.train.seed, rank, world_size))
    batch = parts.data.collate([dataset[next(sampler)] for _ in range(config.data.batch_size)])
    encoder = parts.module.model.image_encoder.eval()
    norm = next(m for m in encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    captured = []
    handle = norm.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
    with torch.no_grad():
        encoder(batch["images"])
    handle.remove()
    return captured[0]


def running_statistics(x: torch.Tensor, momentum: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm's running mean and variance after one training step from their initial 0 and 1."""
    mean = x.mean(dim=(0, 2, 3))
    variance = x.transpose(0, 1).flatten(1).var(dim=1, unbiased=True)
    return momentum * mean, (1 - momentum) + momentum * variance


@pytest.mark.parametrize(
    "accelerator,sync",
    [
        ("cpu", False),
        pytest.param(
            "gpu",
            True,
            marks=pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm needs two CUDA GPUs"),
        ),
    ],
)
def test_batchnorm_statistics_are_per_process_unless_synchronised(
    accelerator: str, sync: bool, covid_prepared: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    # One training step on 2 processes x 4 pairs, then the checkpoint's running statistics of the first BatchNorm.
    overrides = {
        "train__accelerator": accelerator,
        "train__sync_batchnorm": sync,
        "train__val_every_steps": 1,
        "train__max_evals": 1,
        "train__checkpoint_every_steps": 1,
    }
    process = run_two_processes(tmp_path, "bn", covid_prepared, tiny_bert_dir, **overrides)
    assert process.returncode == 0, process.stderr[-4000:]
    state = load(tmp_path / "bn" / "checkpoints" / "last.ckpt")["state_dict"]
    key = next(k for k in state if k.startswith("model.image_encoder.") and k.endswith("running_mean"))
    saved = state[key], state[key.replace("running_mean", "running_var")]

    config = tiny_config(covid_prepared, tmp_path / "unused", tiny_bert_dir, **{**TWO_PROCESSES, **overrides})
    inputs = [first_batchnorm_input(config, rank, 2) for rank in (0, 1)]
    own_batch = running_statistics(inputs[0])  # process 0's 4 pairs (DDP broadcasts process 0's buffers)
    global_batch = running_statistics(torch.cat(inputs))  # all 8 pairs, as one process at batch 8
    expected, other = (global_batch, own_batch) if sync else (own_batch, global_batch)
    tolerance = 1e-2 if accelerator == "gpu" else 1e-5  # GPU convolutions may run in TF32
    for value, want, alternative in zip(saved, expected, other):
        torch.testing.assert_close(value, want, rtol=tolerance, atol=tolerance)
        assert (alternative - want).abs().max() > 20 * tolerance  # the two alternatives are told apart


def test_sync_batchnorm_on_cpu_processes_is_refused(covid_prepared: Path, tiny_bert_dir: Path, tmp_path: Path) -> None:
    from convirt.engine.train import build_trainer
    from convirt.errors import ConfigError

    config = tiny_config(covid_prepared, tmp_path, tiny_bert_dir, **{**TWO_PROCESSES, "train__sync_batchnorm": True})
    with pytest.raises(ConfigError, match=r"train.sync_batchnorm=true with 2 CPU processes.*CUDA"):
        build_trainer(config, tmp_path, resuming=False)
    one = tiny_config(covid_prepared, tmp_path, tiny_bert_dir, train__accelerator="cpu", train__sync_batchnorm=True)
    assert build_trainer(one, tmp_path, resuming=False).world_size == 1  # one process: nothing to synchronise
