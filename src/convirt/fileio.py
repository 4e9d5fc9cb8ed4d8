"""Atomic file output: a killed process never leaves a half-written checkpoint, table or figure behind.

Every writer goes to a temporary file in the destination folder, flushes and fsyncs it, then renames it over the
destination with :func:`os.replace` (atomic on POSIX and Windows within one file system). The temporary file is
named ``.<destination name>.<8 random characters>.tmp`` (:data:`TEMP_NAME`); one left by a killed process is
removed by :func:`remove_stale_temp_files` where its folder's owner calls it (pretraining: its checkpoint folder).
"""

from __future__ import annotations

import contextlib
import errno
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


# Why an output cannot be written, by errno: the user can act on these (free space, pick another folder).
OUTPUT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def output_failure(exc: BaseException) -> str | None:
    """The reason in :data:`OUTPUT_ERRNOS` of an OSError in ``exc`` or the exceptions it was raised from or while
    handling (torch wraps a full disk in one or two more), else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in OUTPUT_ERRNOS:
            return f"{OUTPUT_ERRNOS[current.errno]} ({errno.errorcode[current.errno]})"
        current = current.__cause__ or current.__context__
    return None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically, on error it is removed.

    A full disk, a read-only folder or a missing permission raises :class:`~convirt.errors.OutputError` naming
    ``path`` and the reason (the previous ``path``, if any, is left as it was).
    """
    if mode not in ("w", "wb"):
        raise ValueError("atomic_open supports modes 'w' and 'wb'")
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # TEMP_NAME
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp_name, path)
    except BaseException as exc:
        if tmp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        reason = output_failure(exc)
        if reason is None:
            raise
        from convirt.errors import OutputError

        kept = f"; the previous {path.name} is kept" if path.exists() else ""
        raise OutputError(f"cannot write {path}: {reason}{kept}. Free space or choose a writable folder") from None


def check_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` (and its parents) and a file in it (removed again): raises
    :class:`~convirt.errors.OutputError` at once when outputs could not be written there (read-only, no
    permission, full disk)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".convirt-write-check.", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        from convirt.errors import OutputError

        raise OutputError(f"{folder} is not writable: {output_failure(exc) or exc}") from None


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

    not_torch = _not_a_torch_file(path)
    if not_torch:
        raise (error or CheckpointError)(
            f"{what} {path} is not a torch file ({not_torch}); give a file written by torch.save (a convirt "
            "checkpoint or a state dict)"
        )
    try:
        return _weights_only_load(path, what, mmap)
    except UnsafeFileError:
        raise
    except Exception as exc:
        raise (error or CheckpointError)(
            f"{what} {path} cannot be read (truncated or not a torch file): {exc}"
        ) from exc


def _not_a_torch_file(path: str | os.PathLike) -> str | None:
    """What ``path`` holds instead, when its first bytes are neither a zip archive (torch.save) nor a pickle (the
    legacy format); None when they are one of those or it cannot be opened (the reader then says why)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError:
        return None
    if head.startswith(b"PK") or head.startswith(b"\x80"):
        return None
    if not head:
        return "it is empty"
    return "it holds binary data of another format" if b"\x00" in head else "it holds text"


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
