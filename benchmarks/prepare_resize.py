"""Throughput of the `convirt prepare` resize step (decode -> longer side 256 -> 8-bit grey PNG/JPEG, atomic write).

MIMIC-CXR-JPG images are large JPEGs (about 2500 x 3000 px, ~1.5 MB on average; 377,110 images), so it writes
synthetic radiograph-sized JPEGs (smooth anatomy-like shading plus film-grain noise, quality 95) and times
:func:`convirt.prepare.image_cache.build_cache` on them, with 1 and N worker processes, with and without the JPEG
draft decode, and for PNG and JPEG cache files. The real COVID-19 images (already 256 px) are timed as well.
It prints a table (wall-clock images/s, CPU milliseconds per image) and the projected hours for MIMIC-CXR's
377,110 images: from the measured wall-clock rate, and from CPU time per image for 1, 2, 8 and 16 idle cores
(wall-clock rates on a shared machine depend on what else runs; CPU time per image does much less).

    python benchmarks/prepare_resize.py                 # 24 images of 2544 x 3056, workers 1 and all CPUs
    python benchmarks/prepare_resize.py --n 64 --workers 1 2 4
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from convirt.paths import shared_data_dir
from convirt.prepare.image_cache import CacheSettings, build_cache, target_names
from convirt.prepare.pipeline import default_workers

MIMIC_IMAGES = 377_110


def synthetic_radiographs(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """``n`` grey JPEGs with radiograph-like content (so JPEG size and decode cost are realistic)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(n):
        cx, cy = width * (0.5 + 0.05 * rng.standard_normal()), height * 0.55
        body = np.exp(-(((x - cx) / (0.38 * width)) ** 2 + ((y - cy) / (0.45 * height)) ** 2))
        lungs = sum(
            np.exp(-(((x - cx + s * 0.17 * width) / (0.12 * width)) ** 2 + ((y - cy) / (0.25 * height)) ** 2))
            for s in (-1, 1)
        )
        ribs = 0.08 * np.sin(y / (0.018 * height) + 0.3 * np.sin(x / (0.1 * width)))
        image = 40 + 170 * body - 90 * lungs + 25 * ribs * body + rng.normal(0, 2, size=(height, width))
        path = folder / f"img{i:04d}.jpg"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), mode="L").save(path, quality=95)
        paths.append(path)
    return paths


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the pool's workers are reaped when it closes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_cache(sources: list[Path], root: Path, workers: int, settings: CacheSettings) -> tuple[float, float]:
    """(images per second of wall time, CPU milliseconds per image) to build a fresh cache of ``sources``."""
    out = Path(tempfile.mkdtemp(prefix="convirt-bench-cache-"))
    try:
        extension = ".png" if settings.image_format == "png" else ".jpg"
        targets = target_names(sources, root, extension)
        cpu = _cpu_seconds()
        start = time.perf_counter()
        result = build_cache(sources, targets, out, settings, workers=workers, progress=False)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu
        if result.written != len(sources):
            raise RuntimeError(f"only {result.written} of {len(sources)} images written: {result.unreadable}")
        return len(sources) / seconds, 1000 * cpu / len(sources)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=24, help="synthetic full-size images (default 24)")
    parser.add_argument("--width", type=int, default=2544)
    parser.add_argument("--height", type=int, default=3056)
    parser.add_argument("--workers", type=int, nargs="+", default=None, help="worker counts (default: 1 and all)")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    workers_list = args.workers or sorted({1, default_workers()})

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="convirt-bench-"))
    try:
        sources = synthetic_radiographs(work / "raw", args.n, args.width, args.height)
        mean_mb = sum(p.stat().st_size for p in sources) / len(sources) / 1e6
        rows = []
        for image_format in ("png", "jpeg"):
            for draft in (True, False):
                for workers in workers_list:
                    settings = CacheSettings(size=args.size, image_format=image_format, jpeg_draft=draft)
                    rate, cpu_ms = time_cache(sources, work / "raw", workers, settings)
                    rows.append((f"{args.width}x{args.height} JPEG", image_format, "yes" if draft else "no", workers,
                                 rate, cpu_ms, MIMIC_IMAGES / rate / 3600))  # fmt: skip
        covid = shared_data_dir() / "covid-chestxray" / "images"
        if covid.is_dir():
            covid_sources = sorted(p for p in covid.iterdir() if p.is_file())
            for workers in workers_list:
                rate, cpu_ms = time_cache(covid_sources, covid, workers, CacheSettings(size=args.size))
                rows.append(("covid-chestxray (real, 256 px)", "png", "yes", workers, rate, cpu_ms, None))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cpus = default_workers()
    print(f"convirt prepare resize benchmark: {platform.processor() or platform.machine()}, {cpus} usable CPU(s), "
          f"{os.cpu_count()} in the machine; synthetic sources {args.n} x {args.width}x{args.height} grey JPEG q95 "
          f"({mean_mb:.2f} MB each); target longer side {args.size}")  # fmt: skip
    print(f"load average while running: {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after (1 min)")
    header = ("source", "cache", "jpeg draft", "workers", "images/s", "CPU ms/image", f"hours for {MIMIC_IMAGES:,}")
    table = [header] + [
        (src, fmt, draft, str(w), f"{rate:.1f}", f"{cpu_ms:.0f}", "-" if hours is None else f"{hours:.1f}")
        for src, fmt, draft, w, rate, cpu_ms, hours in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("| " + " | ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    default = [
        cpu for src, fmt, draft, w, rate, cpu, hours in rows if src.endswith("JPEG") and fmt == "png" and draft == "yes"
    ]
    best = min(default)
    print(
        f"CPU-bound projection for {MIMIC_IMAGES:,} MIMIC-CXR images, default cache (PNG, JPEG draft), "
        f"{best:.0f} CPU ms/image: "
        + ", ".join(
            f"{MIMIC_IMAGES * best / 1000 / cores / 3600:.1f} h on {cores} idle core(s)" for cores in (1, 2, 8, 16)
        )
    )


if __name__ == "__main__":
    main()
