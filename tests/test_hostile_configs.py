"""Hostile configs and environments through `convirt pretrain`: every one ends with exit status 2 and one line that
names the key (or the file) and what is valid, never a traceback, and nothing written.

The run is a tiny real one on a manifest generated here; the environment failures (a read-only output folder, a full
disk during a checkpoint write, a model hub without a network) are simulated by monkeypatching the operating
system calls they fail in, so the test needs no network, no special file system and no root.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import tempfile
from pathlib import Path

import pytest

from conftest import tiny_overrides, write_paired_manifest
from convirt.cli import main
from convirt.fileio import TEMP_NAME


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_paired_manifest(tmp_path_factory.mktemp("pairs"))


def pretrain(capsys, manifest: Path, output: Path, bert: Path, *extra: str) -> tuple[int, str]:
    """`convirt pretrain` on the tiny run plus ``extra`` overrides: (exit status, the one line of stderr)."""
    base = tiny_overrides(manifest, output, bert, **{"data.batch_size": 4, "data.augment.output_size": 32,
                          "model.projection_dim": 16, "train.accelerator": "cpu", "train.val_every_steps": 2,
                          "train.checkpoint_every_steps": 1, "train.limit_val_batches": 1})  # fmt: skip
    code = main(["pretrain", *base, *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return code, lines[0]


BAD_VALUES = [
    ("optim.lr=-1", "optim.lr must be positive, got -1.0"),
    ("optim.betas=[2,3]", "optim.betas must be two numbers in [0, 1) (e.g. [0.9, 0.999]), got [2.0, 3.0]"),
    ("data.augment.output_size=0", "data.augment.output_size must be at least 1, got 0"),
    ("data.augment.blur_kernel_size=4", "data.augment.blur_kernel_size must be odd and at least 3, got 4"),
    ("data.num_workers=-1", "data.num_workers must be at least 0, got -1"),
    (
        "data.augment.crop_area=[1.5,0.2]",
        "data.augment.crop_area must be a range [lo, hi] with lo <= hi, lo > 0 and hi <= 1; got [1.5, 0.2]",
    ),
    ("model.projection_dim=0", "model.projection_dim must be at least 1, got 0"),
    ("data.max_val_pairs=0", "data.max_val_pairs must be at least 2, got 0 (a validation loss needs negatives"),
    ("data.val_batch_size=1", "data.val_batch_size must be at least 2, got 1: the contrastive loss needs negatives"),
    ("train.lr_factor=0", "train.lr_factor must be in (0, 1]"),
    ("train.seed=-3", "train.seed must be at least 0, got -3"),
    ("data.augment.hflip_p=1.5", "data.augment.hflip_p must be in [0, 1], got 1.5"),
    ("data.augment.blur_sigma=[0,3]", "data.augment.blur_sigma must be a range [lo, hi] with lo <= hi, lo > 0"),
    ("train.precision=16-mixed", "train.precision=16-mixed needs a CUDA GPU"),
]


@pytest.mark.parametrize(("override", "message"), BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_impossible_values_name_the_key_and_the_valid_range(override, message, manifest, tiny_bert_dir, tmp_path,
                                                            capsys):  # fmt: skip
    output = tmp_path / "run"
    code, line = pretrain(capsys, manifest, output, tiny_bert_dir, override)
    assert code == 2 and line.startswith(f"convirt pretrain: error: {message}"), line
    assert not output.exists()


def test_files_that_are_not_what_the_key_needs(manifest, tiny_bert_dir, tmp_path, capsys):
    table = tmp_path / "pairs.csv"
    table.write_text("a,b\n1,2\n")
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    output = tmp_path / "run"
    for override, expected in [
        (f"train.resume={table}", f"train.resume={table}: checkpoint {table} is not a torch file (it holds text)"),
        (
            f"model.image_weights={text}",
            f"model.image_weights={text}: image weights file {text} is not a torch file (it holds text)",
        ),
        (
            "model.image_weights=/nonexistent/w.pth",
            "model.image_weights=/nonexistent/w.pth: image weights file /nonexistent/w.pth does not exist",
        ),
        ("model.text_encoder=/nonexistent/bert", "model.text_encoder=/nonexistent/bert: no such folder"),
    ]:
        code, line = pretrain(capsys, manifest, output, tiny_bert_dir, override)
        assert code == 2 and expected in line, line
        assert "hf download" not in line and "list index" not in line
        assert not output.exists()


def test_a_hub_name_without_a_network_fails_at_once(manifest, tiny_bert_dir, tmp_path, capsys, monkeypatch):
    """No HF_HUB_OFFLINE, no network: one probe of the hub's host, then the message (no retries, no traceback)."""
    probes: list[tuple[str, int]] = []

    def unreachable(address, timeout=None, *args, **kwargs):
        probes.append(address)
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    output = tmp_path / "run"
    code, line = pretrain(capsys, manifest, output, tiny_bert_dir, "model.text_encoder=someorg/somebert")
    assert code == 2 and probes == [("huggingface.co", 443)]
    assert (
        "'someorg/somebert' is not a local folder and could not be fetched from the Hugging Face hub (the hub is "
        "unreachable: huggingface.co cannot be reached (Network is unreachable), and no copy is cached)" in line
    )
    assert "hf download someorg/somebert" in line and not output.exists()


def test_a_read_only_output_folder_is_named_before_anything_is_written(
    manifest, tiny_bert_dir, tmp_path, capsys, monkeypatch
):
    output = tmp_path / "run"
    mkstemp = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):  # the file system refuses new files in the output folder
        if dir is not None and Path(dir).is_relative_to(output):
            raise OSError(errno.EROFS, "Read-only file system")
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code, line = pretrain(capsys, manifest, output, tiny_bert_dir)
    assert code == 2
    assert line == (f"convirt pretrain: error: train.output_dir={output}: {output / 'checkpoints'} is not writable: "
                    "read-only file system (EROFS)")  # fmt: skip
    assert not [p for p in output.rglob("*") if p.is_file()]


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_no_partial_file(
    manifest, tiny_bert_dir, tmp_path, capsys, monkeypatch
):
    """ENOSPC while torch writes a checkpoint: torch chains it under two more exceptions; one line names it."""
    fdopen = os.fdopen

    class Full(io.FileIO):
        def write(self, data) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_disk(fd, mode="r", *args, **kwargs):
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if ".ckpt." in Path(name).name and TEMP_NAME.match(Path(name).name):
            return Full(fd, "wb")
        return fdopen(fd, mode, *args, **kwargs)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to tell a checkpoint's temporary file from the others")
    monkeypatch.setattr(os, "fdopen", full_disk)
    output = tmp_path / "run"
    code, line = pretrain(capsys, manifest, output, tiny_bert_dir)
    assert code == 2
    assert line.startswith(f"convirt pretrain: error: cannot write {output / 'checkpoints'}/")
    assert "no space left on the device (ENOSPC)" in line and "Free space or choose a writable folder" in line
    assert not [p for p in (output / "checkpoints").iterdir() if TEMP_NAME.match(p.name)]
