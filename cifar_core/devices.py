"""Where the arithmetic runs and in which precision: device choice, bfloat16, autocast."""

from __future__ import annotations

from pathlib import Path

import torch

from .config import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an explicit name must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but Apple MPS is not available")
    return torch.device(name)


def training_memory_format(device: torch.device) -> torch.memory_format:
    """The layout of images and weights in training: channels-last on CPUs, where it is
    oneDNN's own layout, and on CUDA GPUs, whose tensor-core convolutions read it natively
    (on an H200 the ``fast`` step, bound by kernel launches, ran level in both layouts;
    benchmarks/RESULTS.md); the default layout on Apple MPS."""
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


def tune_for_fixed_shapes(device: torch.device) -> None:
    """Training batches all have one shape, so on CUDA it pays to let cuDNN time its
    convolution algorithms once and keep the fastest."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def cpu_has_native_bf16() -> bool:
    """True where the processor does bfloat16 math in hardware (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision == "fp32":
        return False
    if device.type == "cuda":
        return precision == "bf16" or torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return precision == "bf16" or cpu_has_native_bf16()
    return precision == "bf16"


def autocast(device: torch.device, bf16: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
