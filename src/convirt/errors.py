"""Project exceptions.

Every error a user can cause (a missing file, a bad column, an unreadable image, a hub model with no network,
an impossible setting) is raised as a :class:`ConvirtError` subclass whose message says what went wrong, where,
and what to do. The command-line interface prints these messages without a stack trace.
"""

from __future__ import annotations


class ConvirtError(Exception):
    """Base class for errors caused by user input or environment, with an actionable message.

    ``setting`` names the input to change in library terms (e.g. ``prompt_map``, ``restart``): the message never
    names a command-line option, and the command line adds its own option as a hint.
    """

    def __init__(self, *args: object, setting: str | None = None) -> None:
        super().__init__(*args)
        self.setting = setting


class ConfigError(ConvirtError):
    """A configuration value is missing, unknown or impossible."""


class ManifestError(ConvirtError):
    """A manifest (paired or labelled table) is missing columns or has bad rows."""


class ImageLoadError(ConvirtError):
    """An image file is missing or cannot be decoded."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class ModelLoadError(ConvirtError):
    """Model weights or a pretrained model folder could not be loaded."""


class CheckpointError(ConvirtError):
    """A checkpoint is missing, truncated, or not a convirt checkpoint."""


class UnsafeFileError(CheckpointError):
    """A torch file holds objects other than tensors and plain data (refused: loading it could run code)."""


class OutputError(ConvirtError):
    """An output cannot be written: a full disk, a read-only folder, no permission."""


class TrainingError(ConvirtError):
    """Training cannot go on: a non-finite loss, or model weights that became NaN or infinite."""
