"""Atomic file output: a killed process never leaves a half-written checkpoint, table or figure behind.

Every writer goes to a temporary file in the destination folder, flushes and fsyncs it, then renames it over the
destination with :func:`os.replace` (atomic on POSIX and Windows within one file system). The temporary file is
named ``.<destination name>.<8 random characters>.tmp`` (:data:`TEMP_NAME`); one left by a killed process is
removed by :func:`remove_stale_temp_files` where its folder's owner calls it (pretraining: its checkpoint folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")
"""The name of an atomic write's temporary file (``tempfile.mkstemp`` with the prefix and suffix below)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically, on error it is removed."""
    if mode not in ("w", "wb"):
        raise ValueError("atomic_open supports modes 'w' and 'wb'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # TEMP_NAME
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of atomic writes (:data:`TEMP_NAME`) that a killed process left directly in
    ``folder``; returns them. Call it only for a folder no other process is writing to."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if TEMP_NAME.match(entry.name) and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


def atomic_savefig(figure: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically (format taken from the destination's extension)."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, **kwargs)


UNSAFE_FILE_HINT = "convirt does not run code from files it loads"


def load_torch_file(path: str | os.PathLike, what: str = "file", mmap: bool = False, error: type | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU: the one way convirt reads a torch file a user gave it.

    Only tensors and plain data (dicts, lists, strings, numbers) load; a file holding anything else (a pickled
    object whose loading could run code) raises :class:`~convirt.errors.UnsafeFileError` with one line naming the
    file (``what``), and nothing in it is executed. Other read failures (truncated, not a torch file) raise
    ``error`` (a :class:`~convirt.errors.ConvirtError` class; default :class:`~convirt.errors.CheckpointError`).
    ``mmap=True`` maps the tensors instead of reading them (files from ``torch.save``).
    """
    from convirt.errors import CheckpointError, UnsafeFileError

    try:
        return _weights_only_load(path, what, mmap)
    except UnsafeFileError:
        raise
    except Exception as exc:
        raise (error or CheckpointError)(
            f"{what} {path} cannot be read (truncated or not a torch file): {exc}"
        ) from exc


def _weights_only_load(path: str | os.PathLike, what: str, mmap: bool) -> Any:
    import warnings

    import torch

    from convirt.errors import UnsafeFileError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the refusal below says enough
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as exc:
                if not mmap or "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # an older (non-zip) torch file
    except Exception as exc:
        message = str(exc)
        if "weights only load failed" not in message.lower():
            raise
        refused = re.search(r"Unsupported global: (GLOBAL [\w.]+)", message)
        if refused:
            problem = f"contains objects other than tensors and plain data (refused {refused.group(1)})"
        else:
            detail = re.search(r"WeightsUnpickler error:\s*([^\n]+?)\.?\s*(?:\n|$)", message)
            problem = (
                f"cannot be read as tensors and plain data ({detail.group(1) if detail else 'unreadable'}): it is "
                "truncated, not a torch file, or holds other objects"
            )
        raise UnsafeFileError(
            f"{what} {path} {problem}; {UNSAFE_FILE_HINT}. Use a file written by convirt or a plain state dict."
        ) from None
