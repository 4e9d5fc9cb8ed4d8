"""Device and precision choices shared by training and inference.

bf16 autocast pays off only where the hardware computes bf16 natively: CUDA GPUs with bf16 support, and CPUs
with AMX or AVX512-BF16. On other CPUs oneDNN emulates bf16 and it is slower than fp32, so "mixed" precision
falls back to fp32 there (measured in docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import functools
import platform

import torch


@functools.lru_cache(maxsize=1)
def cpu_native_bf16() -> bool:
    """True when the CPU advertises AMX-BF16 or AVX512-BF16 (Linux: /proc/cpuinfo flags)."""
    if platform.system() == "Linux":
        try:
            with open("/proc/cpuinfo") as handle:
                for line in handle:
                    if line.startswith("flags"):
                        flags = set(line.split(":", 1)[1].split())
                        return bool(flags & {"amx_bf16", "avx512_bf16"})
        except OSError:
            return False
        return False
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return False  # Apple CPUs: no bf16 matmul units used by oneDNN
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 autocast runs natively (and so faster than fp32) on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_native_bf16()
    return False


def inference_context(device: torch.device | str, fast: bool = True) -> contextlib.ExitStack:
    """inference_mode + (when ``fast`` and natively supported) bf16 autocast on ``device``."""
    device = torch.device(device)
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if fast and bf16_supported(device):
        stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16))
    return stack
