"""How a training step runs at the machine's speed: the arithmetic precision of the networks' forward passes
(bf16 autocast where the hardware has bf16 arithmetic) and their memory layout (channels-last).

Measured on an AMD EPYC with AVX-512 and avx512_bf16, one thread, fastdvdnet-quarter's forward + backward on a
distill batch (``pipelines/bench/step_profile.py``): most of the time is the small-channel convolutions at HR size
(the reconstruction head), which oneDNN runs about 1.5× faster channels-last and 2× faster again in bf16.

``--precision auto`` is bf16 where the arithmetic is native (a CUDA GPU that supports it; a CPU with avx512_bf16
or AMX), fp32 elsewhere: bf16 emulated on an older CPU is slower than fp32. Weights, optimizer state, losses and
validation stay fp32 (autocast runs only the convolutions and matrix products in bf16), so a checkpoint is the
same kind of file either way; but a run's numbers depend on the precision it resolved to, which the run records.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
from torch import nn

from stdvsr.names import PRECISIONS

#: CPU flags (Linux ``/proc/cpuinfo``) of native bf16 arithmetic
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them; empty elsewhere (then ``auto`` is fp32 on the CPU)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` does bf16 arithmetic natively (faster than fp32), not by emulation."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(BF16_CPU_FLAGS & cpu_flags())


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` where :func:`native_bf16`, else ``fp32``; ``fp32`` / ``bf16`` as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for a resolved ``precision`` of ``bf16``; nothing for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def channels_last(module: nn.Module) -> nn.Module:
    """``module`` with every 4-D parameter and buffer in channels-last layout (in place; returned for chaining).
    A convolution whose weight is channels-last gives a channels-last output, so the layout then carries through
    the network without converting its inputs."""
    return module.to(memory_format=torch.channels_last)


def adam(params, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Adam:
    """Adam with the fused kernel where this PyTorch has one for the parameters' device (CPU since 2.4; measured
    0.55 ms a step for fastdvdnet-quarter against 2.2 ms for the default), the default implementation elsewhere.
    Both keep the same state, so a checkpoint resumes under either."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device / PyTorch
        return torch.optim.Adam(params, lr=lr, betas=betas)
