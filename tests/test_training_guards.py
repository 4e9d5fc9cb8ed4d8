"""Training must not save garbage: a NaN or infinite loss stops the run (or is skipped, up to a limit), no
checkpoint ever holds non-finite weights or a non-finite validation loss; a finished run is left as it is, a
resume that would change the run is refused before anything is written, and unfinished checkpoint writes of a
killed run are removed at start-up.

Every run here is a tiny real pretraining (resnet18 at 32 px, a 2-layer BERT) on a manifest generated in the test;
NaN losses are caused for real: a learning rate of 1e6, or a batch of NaN images injected at a chosen step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import tiny_overrides, write_paired_manifest
from convirt.cli import main
from convirt.config import load_config
from convirt.engine.module import nonfinite_anywhere
from convirt.engine.train import pretrain
from convirt.errors import TrainingError
from convirt.fileio import load_torch_file
from convirt.objectives import build_objective


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_paired_manifest(tmp_path_factory.mktemp("pairs"))


def overrides(manifest: Path, output: Path, bert: Path, **extra) -> list[str]:
    """4 steps (validation at 2 and 4), last.ckpt after every step."""
    small = {"data.batch_size": 4, "data.augment.output_size": 32, "model.projection_dim": 16,
             "train.val_every_steps": 2, "train.checkpoint_every_steps": 1, "train.limit_val_batches": 1}  # fmt: skip
    return tiny_overrides(manifest, output, bert, **{**small, **extra})


def checkpoint_state(path: Path) -> tuple[int, bool]:
    """(global step, every floating tensor of the state dict finite) of a checkpoint."""
    checkpoint = load_torch_file(path, "checkpoint")
    tensors = [t for t in checkpoint["state_dict"].values() if t.is_floating_point()]
    return int(checkpoint["global_step"]), all(bool(torch.isfinite(t).all()) for t in tensors)


def nan_images_at(steps: set[int]):
    """build_objective, with the images of the given training steps (1-based) replaced by NaN: bad data that
    corrupts the forward pass, batch-norm statistics included."""

    def builder(config):
        parts = build_objective(config)
        module, train_loss = parts.module, parts.module.train_loss

        def poisoned(batch):
            if module.global_step + 1 in steps:
                batch = {**batch, "images": torch.full_like(batch["images"], float("nan"))}
            return train_loss(batch)

        module.train_loss = poisoned
        return parts

    return builder


def test_a_diverging_run_stops_at_the_first_nan_loss_and_keeps_the_last_good_checkpoint(
    manifest, tiny_bert_dir, tmp_path, capsys
):
    output = tmp_path / "run"
    code = main(["pretrain", *overrides(manifest, output, tiny_bert_dir, **{"optim.lr": 1e6})])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "the training loss is nan at training step 2" in lines[0]
    assert "learning rate too high (optim.lr=1e+06)" in lines[0] and "bad data" in lines[0]
    assert "fp16" not in lines[0]  # a float32 run cannot overflow fp16
    assert "kept: " + str(output / "checkpoints" / "last.ckpt") + " (step 1)" in lines[0]
    assert checkpoint_state(output / "checkpoints" / "last.ckpt") == (1, True)  # not overwritten by the NaN state
    assert not (output / "checkpoints" / "best.ckpt").exists()  # no validation ran
    assert not (output / "summary.json").exists()


def test_the_stop_names_the_step_and_the_checkpoints_kept(manifest, tiny_bert_dir, tmp_path):
    output = tmp_path / "run"
    config = load_config(None, overrides(manifest, output, tiny_bert_dir))
    with pytest.raises(TrainingError) as error:
        pretrain(config, nan_images_at({3}))
    message = str(error.value)
    best = output / "checkpoints" / "best.ckpt"
    assert message.startswith("the training loss is nan at training step 3;")
    assert f"kept: {output / 'checkpoints' / 'last.ckpt'} (step 2), {best} (best val/loss " in message
    assert checkpoint_state(output / "checkpoints" / "last.ckpt") == (2, True)
    assert checkpoint_state(best) == (2, True)
    assert math.isfinite(float(re.search(r"best val/loss ([^)]+)\)", message).group(1)))
    assert not (output / "summary.json").exists()


class StepState(L.Callback):
    """Every parameter and buffer before and after one training step."""

    def __init__(self, step: int) -> None:
        self.step, self.before, self.after = step, None, None

    def on_train_batch_start(self, trainer, module, *args) -> None:
        if trainer.global_step + 1 == self.step:
            self.before = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_batch_end(self, trainer, module, *args) -> None:
        if trainer.global_step == self.step:
            self.after = {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_skipped_steps_change_nothing_up_to_the_configured_number(manifest, tiny_bert_dir, tmp_path):
    output = tmp_path / "run"
    config = load_config(None, overrides(manifest, output, tiny_bert_dir, **{"train.max_nonfinite_steps": 1}))
    watch, control = StepState(2), StepState(3)
    result = pretrain(config, nan_images_at({2}), extra_callbacks=[watch, control])
    assert result.steps == 4 and math.isfinite(result.best_val_loss)
    # The skipped step left every weight, batch-norm statistic and counter as it was; the next step trained.
    assert watch.before.keys() == watch.after.keys()
    assert all(torch.equal(watch.before[k], watch.after[k]) for k in watch.before)
    assert any(not torch.equal(control.before[k], control.after[k]) for k in control.before)
    last = load_torch_file(output / "checkpoints" / "last.ckpt")
    assert last["convirt_state"]["nonfinite_steps"] == 1
    assert checkpoint_state(output / "checkpoints" / "last.ckpt") == (4, True)

    config = load_config(None, overrides(manifest, tmp_path / "again", tiny_bert_dir,
                                         **{"train.max_nonfinite_steps": 1}))  # fmt: skip
    with pytest.raises(TrainingError, match=r"at training step 3; .*\(1 such step\(s\) skipped before"):
        pretrain(config, nan_images_at({2, 3}))


def test_a_nan_validation_loss_stops_before_a_best_checkpoint_is_written(manifest, tiny_bert_dir, tmp_path):
    def builder(config):
        parts = build_objective(config)
        module, batch_loss = parts.module, parts.module.batch_loss

        def poisoned(batch):
            loss = batch_loss(batch)
            return loss * float("nan") if not module.training and module.global_step >= 2 else loss

        module.batch_loss = poisoned
        return parts

    output = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"^the validation loss is nan at step 2; ") as error:
        pretrain(load_config(None, overrides(manifest, output, tiny_bert_dir)), builder)
    assert f"kept: {output / 'checkpoints' / 'last.ckpt'} (step 1)" in str(error.value)
    assert not (output / "checkpoints" / "best.ckpt").exists()


def test_weights_that_became_non_finite_are_never_written(manifest, tiny_bert_dir, tmp_path):
    class Corrupt(L.Callback):
        def on_train_batch_end(self, trainer, module, *args) -> None:
            with torch.no_grad():
                module.model.image_head.net[0].weight[0, 0] = float("inf")

    output = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"model\.image_head\.net\.0\.weight .* is not finite at step 1; .*"
                       r"the checkpoint was not written; no checkpoint was written"):  # fmt: skip
        pretrain(load_config(None, overrides(manifest, output, tiny_bert_dir)), build_objective, [Corrupt()])
    assert not (output / "checkpoints" / "last.ckpt").exists()


def _decide(rank: int, port: int, values: list[list[float]], folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        decisions = [nonfinite_anywhere(torch.tensor(pair[rank])) for pair in values]
    finally:
        dist.destroy_process_group()
    Path(folder, f"rank{rank}.json").write_text(json.dumps(decisions))


def test_every_process_takes_the_same_decision_when_one_sees_a_nan(tmp_path):
    """The check is rank-local, then all-reduced: a NaN or an infinity on one process stops (or skips) on all."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    values = [[1.0, 2.0], [1.0, float("nan")], [float("inf"), 0.5], [float("nan"), float("nan")]]
    mp.spawn(_decide, args=(port, values, str(tmp_path)), nprocs=2, join=True)
    expected = [False, True, True, True]
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)] == [expected, expected]


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder``: (modification time, content hash)."""
    return {
        str(f.relative_to(folder)): (f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def test_finished_runs_changed_configs_and_unfinished_writes_of_a_killed_run(
    manifest, tiny_bert_dir, tmp_path, capsys, caplog
):
    output = tmp_path / "run"
    run = overrides(manifest, output, tiny_bert_dir, **{"train.max_evals": 1, "train.checkpoint_every_steps": 2})
    assert main(["pretrain", *run]) == 0
    capsys.readouterr()
    summary = json.loads((output / "summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["final_val_loss"])
    before = snapshot(output)

    # The same command again: the run is finished; one line, exit 0, not a byte changed (summary.json included).
    assert main(["pretrain", *run]) == 0
    out, err = capsys.readouterr()
    assert out.strip().splitlines() == [
        f"{output} holds a finished run (2 of 2 steps, best val/loss {summary['best_val_loss']:.4g}); nothing was "
        "run or changed. To train longer raise train.max_evals (now 1); to start again use train.resume=never or "
        "another train.output_dir"
    ]
    assert err == "" and snapshot(output) == before

    # A changed config is refused before anything is written, naming every key that differs.
    changed = [*run, "model.projection_dim=32", "data.batch_size=2", "train.devices=2"]
    assert main(["pretrain", *changed]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (
        f"resuming from {output / 'checkpoints' / 'last.ckpt'} would change 3 setting(s) of the run "
        "(data.batch_size: 4 -> 2; model.projection_dim: 16 -> 32; train.devices: 'auto' -> 2); resume with the "
        f"values of {output / 'config.yaml'}" in err
    )
    assert snapshot(output) == before

    # A checkpoint of this run resumed into another folder with other weight shapes: refused the same way.
    elsewhere = [*changed[:-3], f"train.output_dir={tmp_path / 'other'}", "model.projection_dim=32",
                 f"train.resume={output / 'checkpoints' / 'last.ckpt'}"]  # fmt: skip
    assert main(["pretrain", *elsewhere]) == 2
    err = capsys.readouterr().err
    assert "would change 1 setting(s) of the run (model.projection_dim: 16 -> 32); the checkpoint's weights" in err
    assert not (tmp_path / "other").exists()

    # Unfinished writes of a killed run are removed when the run goes on; other files are left alone.
    checkpoints = output / "checkpoints"
    stale = [checkpoints / ".last.ckpt.k3j_9x0a.tmp", checkpoints / ".best.ckpt.0a1b2c3d.tmp"]
    kept = [checkpoints / "notes.tmp", checkpoints / ".last.ckpt.tmp", output / ".summary.json.abcdefgh.tmp"]
    for file in stale + kept:
        file.write_bytes(b"partial")
    with caplog.at_level(logging.WARNING, logger="convirt"):
        assert main(["pretrain", *run, "train.max_evals=2"]) == 0  # train.max_evals may change: the run goes on
    assert f"removed 2 unfinished checkpoint write(s) a killed run left in {checkpoints}" in caplog.text
    assert not any(f.exists() for f in stale) and all(f.exists() for f in kept)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["resumed_from"] == str(checkpoints / "last.ckpt")
