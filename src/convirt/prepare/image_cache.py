"""The resized image cache: every source image decoded once, resized so its longer side is ``size``, saved.

- Parallel: a process pool (``workers`` processes; ``workers=1`` runs in this process).
- Resumable and idempotent: each cached image carries the size and modification time of its source file (a PNG
  text chunk, a JPEG comment); a target whose stamp matches its source is reused, one whose source changed is
  made again. Each target is written to a temporary file and renamed (:func:`convirt.fileio.atomic_open`), stamp
  included, so an interrupted run leaves only whole files and a re-run picks up where it stopped. A target
  without a stamp (a cache made before stamps were kept) is reused when it is newer than its source. The cache
  settings (size, format) are recorded in ``.cache.json``; reusing a cache folder with other settings is refused
  rather than mixing image sizes.
- Never crashes on a bad file: a missing or undecodable image comes back as a failure with its reason, and so
  does an image too small to train on (shorter side under ``min_side`` pixels in the source or in the cache) or
  a blank one (every pixel the same value: a 1x1, constant or all-NaN image). Failures are never cached.

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

from PIL import Image, PngImagePlugin

from convirt.data.images import load_image, open_image, resize_longer_side
from convirt.errors import ConfigError
from convirt.fileio import atomic_open, atomic_write_json

IMAGE_FORMATS = {"png": ".png", "jpeg": ".jpg"}
SETTINGS_FILE = ".cache.json"
STAMP_KEY = "convirt-source"  # PNG text chunk with "<source size> <source mtime_ns>"; JPEG: the comment
FAILURES = ("missing", "unreadable", "too_small", "blank")


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
    """Outcome of :func:`build_cache`: counts, and each failed source with its kind and reason."""

    written: int = 0  # made now (new, or replacing a stale one)
    skipped: int = 0  # already cached from the same source file
    recached: int = 0  # of ``written``: made again because the source file changed
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)  # source path -> (kind in FAILURES, reason)
    seconds: float = 0.0

    def of_kind(self, kind: str) -> dict[str, str]:
        """Failed sources of one kind (``missing``, ``unreadable``, ``too_small``, ``blank``) -> reason."""
        return {path: reason for path, (k, reason) in self.failed.items() if k == kind}

    @property
    def missing(self) -> dict[str, str]:
        return self.of_kind("missing")

    @property
    def unreadable(self) -> dict[str, str]:
        return self.of_kind("unreadable")


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


def _load_jpeg_draft(source: str, size: int) -> tuple[Image.Image, tuple[int, int]] | None:
    """A JPEG decoded straight at the smallest DCT scale whose longer side is still >= ``size``, and its full size;
    None if not a JPEG."""
    with open(source, "rb") as handle:
        if handle.read(3) != b"\xff\xd8\xff":
            return None
    image = open_image(source)
    if image.mode not in ("L", "RGB"):
        return None  # CMYK and friends: the general path converts them
    width, height = image.size
    scale = size / max(width, height)
    if scale < 1:
        image.draft("L", (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
    image.load()
    return (image if image.mode == "L" else image.convert("L")), (width, height)


def load_for_cache(source: str, size: int, jpeg_draft: bool = True) -> tuple[Image.Image, tuple[int, int]]:
    """The grey image to cache for ``source`` and the source's size in pixels: :func:`load_image` (by content), or
    the JPEG draft fast path."""
    if jpeg_draft:
        try:
            loaded = _load_jpeg_draft(source, size)
        except Exception:  # a damaged JPEG or a refused one: let load_image decide and name the reason
            loaded = None
        if loaded is not None:
            return loaded
    image = load_image(source, "L")
    return image, image.size


def source_stamp(source: str) -> str:
    """What a cached image remembers of its source file: its size and modification time."""
    status = os.stat(source)
    return f"{status.st_size} {status.st_mtime_ns}"


def read_stamp(target: str) -> str | None:
    """The source stamp stored in a cached image; None when it has none, "" when the file cannot be opened."""
    try:
        with Image.open(target) as image:
            value = image.info.get(STAMP_KEY, image.info.get("comment"))
    except Exception:
        return ""
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return value


def is_current(source: str, target: str, stamp: str) -> bool:
    """True when ``target`` was cached from the source file as it is now (same stamp; or, for a target with no
    stamp, a target newer than its source)."""
    if not os.path.isfile(target) or os.path.getsize(target) == 0:
        return False
    found = read_stamp(target)
    if found is None:
        return os.stat(target).st_mtime_ns >= os.stat(source).st_mtime_ns
    return found == stamp


def check_size(full: tuple[int, int], cached: tuple[int, int], min_side: int) -> str | None:
    """Why an image is too small to train on, or None: its shorter side is under ``min_side`` pixels in the source
    or in the cache (a thin strip: the longer side resized to the cache size leaves under ``min_side``)."""
    if min(full) < min_side:
        return f"{full[0]} x {full[1]} px: shorter side under {min_side} px"
    if min(cached) < min_side:
        return f"{full[0]} x {full[1]} px, cached as {cached[0]} x {cached[1]}: shorter side under {min_side} px"
    return None


def resize_one(task: tuple[str, str, int, str, int, bool, int]) -> tuple[str, str, str]:
    """Worker: reuse, or load, check, resize and save one image. Returns (source, status, reason); status is
    ``cached`` (reused), ``ok`` (made), ``recached`` (made again: the source changed) or a kind of FAILURES."""
    source, target, size, image_format, quality, jpeg_draft, min_side = task
    try:
        if not os.path.isfile(source):
            return source, "missing", "file not found"
        stamp = source_stamp(source)
        stale = os.path.isfile(target)
        if stale and is_current(source, target, stamp):
            return source, "cached", ""
        if stale:
            os.unlink(target)  # never serve the old pixels, whatever happens next
        image, full = load_for_cache(source, size, jpeg_draft)
        resized = resize_longer_side(image, size)
        too_small = check_size(full, resized.size, min_side)
        if too_small:
            return source, "too_small", too_small
        low, high = image.getextrema()
        if low == high:
            return source, "blank", f"every pixel has the value {low} (a constant, empty or all-NaN image)"
        buffer = io.BytesIO()
        if image_format == "jpeg":
            resized.save(buffer, format="JPEG", quality=quality, comment=stamp.encode("ascii"))
        else:
            info = PngImagePlugin.PngInfo()
            info.add_text(STAMP_KEY, stamp)
            resized.save(buffer, format="PNG", compress_level=6, pnginfo=info)
        with atomic_open(target, "wb") as handle:
            handle.write(buffer.getvalue())
        return source, "recached" if stale else "ok", ""
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
    min_side: int = 0,
) -> CacheResult:
    """Resize every source into ``cache_dir/<target>``, reusing targets cached from the same source file.

    ``min_side``: images whose shorter side is under this many pixels (in the source or in the cache) fail as
    ``too_small``.
    """
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
    tasks: list[tuple[str, str, int, str, int, bool, int]] = []
    for source in sources:
        if not os.path.isfile(source):
            result.failed[str(source)] = ("missing", "file not found")
            continue
        target = str(cache_dir / targets[source])
        s = settings
        tasks.append((str(source), target, s.size, s.image_format, s.jpeg_quality, s.jpeg_draft, int(min_side)))
    workers = max(1, min(int(workers), len(tasks) or 1))
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = tqdm(total=len(tasks), desc="caching images", unit="img", disable=not show, file=sys.stderr)
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
        if status == "cached":
            result.skipped += 1
        elif status in ("ok", "recached"):
            result.written += 1
            result.recached += status == "recached"
        else:
            result.failed[source] = (status, reason)
        if on_result is not None:
            on_result(source, status, reason)
        bar.update(1)
