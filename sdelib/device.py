"""One device and one precision choice for the whole book.

`default_device()` is the GPU when torch sees one, else the CPU; every chapter sets it once in its
setup cell and moves its networks there (samplers and the likelihood follow their inputs' device).

`precision(device)` says how a network should run there, read from the hardware itself:
- CUDA with compute capability >= 8.0 (Ampere, Hopper, ...): bf16 autocast, which has float32's
  exponent range and needs no loss scaling;
- CUDA 7.x (Volta, Turing, e.g. Colab's T4): fp16 autocast with a gradient scaler. Such GPUs have
  no bf16 units, and `torch.cuda.is_bf16_supported()` may still answer True (emulated), so the
  capability is read instead;
- older GPUs: float32;
- the CPU: float32, unless the CPU has the avx512_bf16 instructions *and* bf16 has been measured to
  help there (`CPU_BF16_MEASURED_FASTER`, set from the training benchmark; see the README);
- `exact=True` (a chapter that asserts bit-exact results): float32 everywhere.
"""
from __future__ import annotations

import contextlib
import platform
from pathlib import Path
from typing import NamedTuple

import torch

__all__ = ["default_device", "Precision", "precision", "autocast", "cpu_has_avx512_bf16",
           "cpu_description", "CPU_BF16_MEASURED_FASTER"]

# bf16 autocast of the ScoreNet's training step on the 2-core avx512_bf16 CPU this was measured on
# (benchmarks/train_speed.py, batch 128, idle CPU): with channels-last slower than float32 (392
# against 637 images/s, sdelib/results/train_speed_cpu_{bf16,to_quality}.json), in the default
# memory layout faster (834 images/s, train_speed_cpu_bf16_nchw.json). Its loss curve and its
# bits/dim at small noise have not been compared with float32's yet, so float32 stays the CPU
# choice until they have.
CPU_BF16_MEASURED_FASTER = False


def default_device() -> torch.device:
    """cuda if torch sees a GPU, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Precision(NamedTuple):
    dtype: torch.dtype       # the autocast dtype; torch.float32 means no autocast
    grad_scaler: bool        # fp16 needs loss scaling (torch.amp.GradScaler)
    reason: str              # one sentence for the reader


def cpu_has_avx512_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU flags list avx512_bf16 (False where /proc/cpuinfo does not exist)."""
    try:
        return "avx512_bf16" in Path(cpuinfo).read_text().split()
    except OSError:
        return False


def cpu_description(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name and which bf16 instructions it lists (avx512_bf16, amx_bf16), e.g.
    "AMD EPYC 9R14 (avx512_bf16)": timings of bf16 depend on them. Falls back to
    `platform.processor()` where /proc/cpuinfo does not exist."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = fields.get("flags", "").split()
    bf16 = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    return f"{name} ({', '.join(bf16) or 'no bf16 instructions'})"


def precision(device: torch.device | str | None = None, *, exact: bool = False) -> Precision:
    """How to run a network on `device` (default: `default_device()`); see the module docstring."""
    device = torch.device(device) if device is not None else default_device()
    fp32 = torch.float32
    if exact:
        return Precision(fp32, False, "float32: this computation is checked bit for bit")
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name = f"compute capability {major}.{minor}"
        if major >= 8:
            return Precision(torch.bfloat16, False, f"bf16 autocast ({name} has bf16 units)")
        if major == 7:
            return Precision(torch.float16, True,
                             f"fp16 autocast with loss scaling ({name}: no bf16 units)")
        return Precision(fp32, False, f"float32 ({name}: no fast half precision)")
    if device.type == "cpu" and CPU_BF16_MEASURED_FASTER and cpu_has_avx512_bf16():
        return Precision(torch.bfloat16, False, "bf16 autocast (avx512_bf16, measured faster)")
    return Precision(fp32, False, f"float32 on {device.type}")


def autocast(device: torch.device | str, chosen: Precision):
    """The autocast context of `chosen` on `device` (a no-op context for float32)."""
    device = torch.device(device)
    if chosen.dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=chosen.dtype)
