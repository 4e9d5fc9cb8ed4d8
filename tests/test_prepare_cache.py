"""The image cache (parallel, resumable, settings-checked) and the patient splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convirt.data.splits import assign_splits, patient_groups, resolve_size
from convirt.errors import ConfigError
from convirt.prepare.image_cache import CacheSettings, build_cache, target_names
from prepare_fixtures import write_dicom, write_image


def _sources(root: Path) -> list[Path]:
    paths = [write_image(root / f"img{i}.png", 30 + i, 20) for i in range(6)]
    paths.append(write_image(root / "sub" / "wide.jpg", 600, 100))
    write_dicom(root / "dicom" / "mono1.dcm", monochrome1=True)
    write_dicom(root / "dicom" / "mono2.dcm", monochrome1=False)
    paths += [root / "dicom" / "mono1.dcm", root / "dicom" / "mono2.dcm"]
    (root / "broken.png").write_bytes(b"not an image at all")
    return [*paths, root / "broken.png", root / "gone.png"]


def test_parallel_cache_matches_serial_and_names_failures(tmp_path):
    sources = _sources(tmp_path / "raw")
    targets = target_names(sources, tmp_path / "raw", ".png")
    assert targets[tmp_path / "raw" / "sub" / "wide.jpg"] == "sub/wide.png"
    serial = build_cache(sources, targets, tmp_path / "serial", CacheSettings(size=64), workers=1, progress=False)
    parallel = build_cache(sources, targets, tmp_path / "parallel", CacheSettings(size=64), workers=2, progress=False)
    for result in (serial, parallel):
        assert result.written == 9 and result.skipped == 0
        assert list(result.missing) == [str(tmp_path / "raw" / "gone.png")]
        assert list(result.unreadable) == [str(tmp_path / "raw" / "broken.png")]
        assert result.unreadable[str(tmp_path / "raw" / "broken.png")] == "not a recognised image format"
    for name in targets.values():
        if (tmp_path / "serial" / name).exists():
            a = np.asarray(Image.open(tmp_path / "serial" / name))
            b = np.asarray(Image.open(tmp_path / "parallel" / name))
            assert np.array_equal(a, b)
    assert Image.open(tmp_path / "serial" / "sub" / "wide.png").size == (64, 11)  # 600x100 -> 64x10.67
    # DICOM: rescale applied, MONOCHROME1 inverted relative to MONOCHROME2.
    mono1 = np.asarray(Image.open(tmp_path / "serial" / "dicom" / "mono1.png"), dtype=int)
    mono2 = np.asarray(Image.open(tmp_path / "serial" / "dicom" / "mono2.png"), dtype=int)
    assert mono2[-1, 2] < 20 and mono2[-1, -3] > 180  # ramp rises left to right
    assert np.abs(mono1 + mono2 - 255).max() <= 2


def test_cache_resumes_and_refuses_other_settings(tmp_path):
    sources = _sources(tmp_path / "raw")[:7]
    targets = target_names(sources, tmp_path / "raw", ".png")
    cache = tmp_path / "cache"
    first = build_cache(sources, targets, cache, CacheSettings(size=32), workers=2, progress=False)
    assert (first.written, first.skipped) == (7, 0)
    stamp = (cache / "img0.png").stat().st_mtime_ns
    (cache / "img3.png").unlink()
    again = build_cache(sources, targets, cache, CacheSettings(size=32), workers=2, progress=False)
    assert (again.written, again.skipped) == (1, 6)
    assert (cache / "img0.png").stat().st_mtime_ns == stamp  # finished files are not rewritten
    assert not list(cache.rglob("*.tmp"))
    with pytest.raises(ConfigError, match="was made with settings"):
        build_cache(sources, targets, cache, CacheSettings(size=256), workers=1, progress=False)


def test_target_names_keep_colliding_names_apart(tmp_path):
    root = tmp_path / "raw"
    sources = [root / "a.jpg", root / "a.png", root / "b.jpeg", Path("/elsewhere/x.png")]
    names = target_names(sources, root, ".png")
    assert names[root / "a.jpg"] == "a.jpg.png" and names[root / "a.png"] == "a.png.png"
    assert names[root / "b.jpeg"] == "b.png"
    assert names[Path("/elsewhere/x.png")].startswith("external/") and names[Path("/elsewhere/x.png")].endswith(
        "/x.png"
    )


def test_patient_splits():
    patients = ["p1", "p1", "p2", "p3", "p3", "p3", "p4", "p5", "p6", "p7"]
    images = [["a"], ["b"], ["c"], ["d"], ["e"], ["f"], ["g"], ["h"], ["c"], ["i"]]  # p6 shares an image with p2
    groups = patient_groups(patients, images)
    assert groups[2] == groups[8] and groups[0] != groups[2]
    for seed in range(5):
        splits = assign_splits(groups, val_size=3, test_size=2, seed=seed)
        by_group: dict[str, set[str]] = {}
        for group, split in zip(groups, splits):
            by_group.setdefault(group, set()).add(split)
        assert all(len(s) == 1 for s in by_group.values())  # no patient (or shared image) in two splits
        assert splits.count("val") == 3 and splits.count("test") == 2
    assert assign_splits(groups, 3, 2, seed=1) == assign_splits(groups, 3, 2, seed=1)
    assert resolve_size(0.1, 432, "val") == 43 and resolve_size(5000, 10, "val") == 5000
    with pytest.raises(ConfigError, match="exceed"):
        assign_splits(groups, val_size=8, test_size=3)
    with pytest.raises(ConfigError, match="neither a whole number"):
        resolve_size(2.5, 10, "val size")


def test_jpeg_draft_decode_matches_full_decode(tmp_path):
    source = tmp_path / "big.jpg"
    write_image(source, 1200, 1000)
    targets = {source: "big.png"}
    fast = build_cache([source], targets, tmp_path / "fast", CacheSettings(size=256, jpeg_draft=True), progress=False)
    full = build_cache([source], targets, tmp_path / "full", CacheSettings(size=256, jpeg_draft=False), progress=False)
    assert fast.written == full.written == 1
    a = np.asarray(Image.open(tmp_path / "fast" / "big.png"), dtype=float)
    b = np.asarray(Image.open(tmp_path / "full" / "big.png"), dtype=float)
    assert a.shape == b.shape == (213, 256)
    assert np.abs(a - b).mean() < 2.0
    # A truncated JPEG falls back to the general loader, which names the problem.
    (tmp_path / "cut.jpg").write_bytes(source.read_bytes()[:2000])
    cut = build_cache([tmp_path / "cut.jpg"], {tmp_path / "cut.jpg": "cut.png"}, tmp_path / "fast", CacheSettings(),
                      progress=False)  # fmt: skip
    assert "truncated" in cut.unreadable[str(tmp_path / "cut.jpg")]
