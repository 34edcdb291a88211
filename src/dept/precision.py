"""Compute precision: what `--precision auto` means, and the autocast context for a precision.

One definition for training, evaluation and the benchmark, so "auto" picks the same format
everywhere. bf16 pays off only where the hardware does bf16 math natively: CUDA devices that
support it, and CPUs with AVX-512-BF16 or AMX (elsewhere bf16 autocast on CPU is slower than fp32).
Torch is imported inside the functions so that option parsing can use `PRECISIONS` without it.
"""

from __future__ import annotations

import contextlib
import platform
from typing import Any

PRECISIONS = ("auto", "bf16", "fp32")


def cpu_name() -> str:
    """The CPU's model name, for reports: `platform.processor()` says only "x86_64" on Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_supports_bf16() -> bool:
    """True when torch's CPU kernels have native bf16 math here (AVX-512-BF16 or AMX tiles)."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str = "auto", device: Any = None) -> str:
    """ "bf16" or "fp32". `auto` looks at `device` (default: CUDA when torch sees one, else CPU)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")
    if precision != "auto":
        return precision
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast(device: Any, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` (a torch.device or its name) for "bf16"; nothing for "fp32"."""
    if precision != "bf16":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def avoid_broken_attention_kernels() -> None:
    """Training on CUDA: no cuDNN attention. Its backward gives NaN gradients for a masked batch whose
    length is 64 mod 128 (H100/H200, torch >= 2.11; pytorch/pytorch#196678): on an H100 every RTE and
    STS-B run went NaN at the same step, whatever its rates. The other kernels are exact on those
    batches. `dept train` and `dept bench` both call this, so the bench times the kernels training uses."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)
