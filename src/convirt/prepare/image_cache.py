"""The resized image cache: every source image decoded once, resized so its longer side is ``size``, saved.

- Parallel: a process pool (``workers`` processes; ``workers=1`` runs in this process).
- Resumable and idempotent: a target that already exists is skipped; each target is written to a temporary file
  and renamed (:func:`convirt.fileio.atomic_open`), so an interrupted run leaves only whole files and a re-run
  picks up where it stopped. The cache settings (size, format) are recorded in ``.cache.json``; reusing a cache
  folder with other settings is refused rather than mixing image sizes.
- Never crashes on a bad file: a missing or undecodable image comes back as a failure with its reason.

Images are stored as 8-bit grey ("L"), which is what the training pipelines load (radiographs are monochrome;
colour screenshots are converted with the ITU-R 601-2 luma transform by :func:`convirt.data.images.load_image`).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from convirt.data.images import load_image, resize_longer_side
from convirt.errors import ConfigError
from convirt.fileio import atomic_open, atomic_write_json

IMAGE_FORMATS = {"png": ".png", "jpeg": ".jpg"}
SETTINGS_FILE = ".cache.json"


@dataclass(frozen=True)
class CacheSettings:
    size: int = 256
    image_format: str = "png"
    jpeg_quality: int = 95
    # Decode JPEGs at a reduced DCT scale (PIL ``draft``) that is still at least the target size, then resize.
    # Several times faster on full-size radiographs (see benchmarks/prepare_resize.py); the result differs from a
    # full decode only by the resampling path (0.25 grey levels on average, at most 2, on 2544 x 3056 radiographs).
    jpeg_draft: bool = True

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"size": self.size, "format": self.image_format, "mode": "L"}
        data["jpeg_draft"] = self.jpeg_draft
        if self.image_format == "jpeg":
            data["jpeg_quality"] = self.jpeg_quality
        return data


@dataclass
class CacheResult:
    """Outcome of :func:`build_cache`: per-source status and the failures by path."""

    written: int = 0
    skipped: int = 0
    missing: dict[str, str] = field(default_factory=dict)  # source path -> reason
    unreadable: dict[str, str] = field(default_factory=dict)  # source path -> reason
    seconds: float = 0.0


def target_names(sources: Sequence[Path], image_root: Path, extension: str) -> dict[Path, str]:
    """Cache path (relative, POSIX) for each source: its path under ``image_root`` with the new extension.

    Sources outside ``image_root`` go under ``external/<hash of the folder>/``. When two sources would map to the
    same name (``a.jpg`` and ``a.png``), both keep their original extension in the name (``a.jpg.png``).
    """
    root = image_root.resolve()
    base: dict[Path, str] = {}
    for source in sources:
        resolved = Path(os.path.abspath(source))
        try:
            relative = resolved.relative_to(root)
        except ValueError:
            digest = hashlib.sha1(str(resolved.parent).encode("utf-8")).hexdigest()[:12]
            relative = Path("external") / digest / resolved.name
        base[source] = relative.as_posix()
    stems: dict[str, list[Path]] = {}
    for source, relative in base.items():
        stem = relative.rsplit(".", 1)[0] if "." in relative.rsplit("/", 1)[-1] else relative
        stems.setdefault(stem.lower(), []).append(source)
    names: dict[Path, str] = {}
    for sources_with_stem in stems.values():
        for source in sources_with_stem:
            relative = base[source]
            has_suffix = "." in relative.rsplit("/", 1)[-1]
            if len(sources_with_stem) == 1 and has_suffix:
                names[source] = relative.rsplit(".", 1)[0] + extension
            else:
                names[source] = relative + extension
    return names


def _check_settings(cache_dir: Path, settings: CacheSettings) -> None:
    import json

    path = cache_dir / SETTINGS_FILE
    wanted = settings.as_dict()
    if path.is_file():
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        if found != wanted:
            raise ConfigError(
                f"image cache {cache_dir} was made with settings {found}, not {wanted}; prepare into another "
                "output folder, or delete that images folder to rebuild it"
            )
    else:
        atomic_write_json(path, wanted)


def _load_jpeg_draft(source: str, size: int) -> Image.Image | None:
    """A JPEG decoded straight at the smallest DCT scale whose longer side is still >= ``size``; None if not JPEG."""
    with open(source, "rb") as handle:
        if handle.read(3) != b"\xff\xd8\xff":
            return None
    image = Image.open(source)
    if image.mode not in ("L", "RGB"):
        return None  # CMYK and friends: the general path converts them
    width, height = image.size
    scale = size / max(width, height)
    if scale < 1:
        image.draft("L", (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
    image.load()
    return image if image.mode == "L" else image.convert("L")


def load_for_cache(source: str, size: int, jpeg_draft: bool = True) -> Image.Image:
    """The grey image to cache for ``source``: :func:`load_image` (by content), or the JPEG draft fast path."""
    if jpeg_draft:
        try:
            image = _load_jpeg_draft(source, size)
        except Exception:  # a damaged JPEG: let load_image decide and name the reason
            image = None
        if image is not None:
            return image
    return load_image(source, "L")


def resize_one(task: tuple[str, str, int, str, int, bool]) -> tuple[str, str, str]:
    """Worker: load, resize and save one image. Returns (source, status, reason); status ok/missing/unreadable."""
    source, target, size, image_format, quality, jpeg_draft = task
    try:
        if not os.path.isfile(source):
            return source, "missing", "file not found"
        image = resize_longer_side(load_for_cache(source, size, jpeg_draft), size)
        buffer = io.BytesIO()
        if image_format == "jpeg":
            image.save(buffer, format="JPEG", quality=quality)
        else:
            image.save(buffer, format="PNG", compress_level=6)
        with atomic_open(target, "wb") as handle:
            handle.write(buffer.getvalue())
        return source, "ok", ""
    except Exception as exc:  # any decoder error marks this file unreadable; never ends the run
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        return source, "unreadable", str(reason)


def build_cache(
    sources: Iterable[Path],
    targets: dict[Path, str],
    cache_dir: Path,
    settings: CacheSettings,
    workers: int = 1,
    progress: bool | None = None,
    on_result: Callable[[str, str, str], None] | None = None,
) -> CacheResult:
    """Resize every source into ``cache_dir/<target>``, skipping targets that already exist."""
    import time

    from tqdm import tqdm

    if settings.image_format not in IMAGE_FORMATS:
        raise ConfigError(f"image format must be one of {sorted(IMAGE_FORMATS)}, not {settings.image_format!r}")
    if settings.size < 8:
        raise ConfigError(f"image size must be at least 8 pixels, not {settings.size}")
    start = time.perf_counter()
    cache_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(cache_dir, settings)
    result = CacheResult()
    tasks: list[tuple[str, str, int, str, int, bool]] = []
    for source in sources:
        target = cache_dir / targets[source]
        if not os.path.isfile(source):
            result.missing[str(source)] = "file not found"
            continue
        if target.is_file() and target.stat().st_size > 0:
            result.skipped += 1
            continue
        task = (
            str(source),
            str(target),
            settings.size,
            settings.image_format,
            settings.jpeg_quality,
            settings.jpeg_draft,
        )
        tasks.append(task)
    workers = max(1, min(int(workers), len(tasks) or 1))
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = tqdm(total=len(tasks), desc="resizing images", unit="img", disable=not show, file=sys.stderr)
    try:
        if workers == 1:
            outcomes = map(resize_one, tasks)
            _collect(outcomes, result, bar, on_result)
        else:
            chunk = max(1, min(64, len(tasks) // (workers * 8) or 1))
            with ProcessPoolExecutor(max_workers=workers) as pool:
                _collect(pool.map(resize_one, tasks, chunksize=chunk), result, bar, on_result)
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start
    return result


def _collect(outcomes, result: CacheResult, bar, on_result) -> None:
    for source, status, reason in outcomes:
        if status == "ok":
            result.written += 1
        elif status == "missing":
            result.missing[source] = reason
        else:
            result.unreadable[source] = reason
        if on_result is not None:
            on_result(source, status, reason)
        bar.update(1)
