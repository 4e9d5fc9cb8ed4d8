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


def compile_unavailable(device_type: str) -> str | None:
    """Why ``torch.compile`` (the default inductor backend) cannot run on ``device_type`` here, or None when it can.

    Inductor generates C++ for CPUs (a C++ compiler must be on PATH: ``$CXX``, g++, clang++ or c++) and Triton
    kernels for CUDA GPUs (the ``triton`` package).
    """
    import importlib.util
    import os
    import shutil

    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device_type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "torch.compile on CUDA needs the triton package (pip install triton)"
        return None
    compilers = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    if not any(name and shutil.which(name) for name in compilers):
        return "torch.compile on CPU needs a C++ compiler on PATH (g++, clang++ or c++, or set CXX)"
    return None


def compile_encoders(encoders: list[torch.nn.Module]) -> None:
    """``nn.Module.compile()`` of each encoder, in place: the forward passes run compiled (the first one compiles)
    while the parameter names, and so the checkpoints and state dicts, stay those of the eager modules."""
    for encoder in encoders:
        encoder.compile()
