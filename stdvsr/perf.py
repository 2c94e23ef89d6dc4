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
import torch.nn.functional as F
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


def pixel_shuffle(x: torch.Tensor, scale: int) -> torch.Tensor:
    """``F.pixel_shuffle(x, scale)``, the same numbers forwards and backwards, with a backward that is 2–3× faster
    for the channels-last gradients of a channels-last CPU network.

    PyTorch's ``pixel_unshuffle`` (the shuffle's gradient) is slow on channels-last tensors: 2.4 ms for the
    reconstruction head's (14, 16, 64, 64) bf16 gradient on one thread, against 1.0 ms for :func:`_unshuffle_nhwc`'s
    two contiguous-run copies (``pipelines/bench/step_profile.py`` shows the step). Both are pure data movement, so
    the gradients are identical to the bit; tests check it. Anything else (contiguous tensors, no gradient, GPUs,
    tracing for export) takes ``F.pixel_shuffle`` itself.
    """
    if (x.requires_grad and torch.is_grad_enabled() and x.device.type == "cpu" and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last) and not torch.jit.is_tracing()):
        return _PixelShuffle.apply(x, scale)
    return F.pixel_shuffle(x, scale)


class PixelShuffle(nn.PixelShuffle):
    """``nn.PixelShuffle`` through :func:`pixel_shuffle` (no parameters, so checkpoints are unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle(x, self.upscale_factor)


class _PixelShuffle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: int) -> torch.Tensor:
        ctx.scale = scale
        return F.pixel_shuffle(x, scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        if grad.is_contiguous(memory_format=torch.channels_last):
            return _unshuffle_nhwc(grad, ctx.scale), None
        return F.pixel_unshuffle(grad, ctx.scale), None


def _unshuffle_nhwc(y: torch.Tensor, r: int) -> torch.Tensor:
    """``F.pixel_unshuffle(y, r)`` of a channels-last ``y`` (B, C, rh, rw) → channels-last (B, C·r², h, w).

    In memory y is (B, h, r, w, r, C) and the result (B, h, w, C, r, r). One copy gathers the r² sub-pixels of every
    LR pixel with runs of C contiguous values, a second transposes each pixel's small (r², C) block to (C, r²);
    ``pixel_unshuffle`` does it in one copy with runs of one value.
    """
    b, c, hr, wr = y.shape
    h, w = hr // r, wr // r
    blocks = y.permute(0, 2, 3, 1).reshape(b, h, r, w, r, c).permute(0, 1, 3, 2, 4, 5).reshape(b * h * w, r * r, c)
    return blocks.transpose(1, 2).reshape(b, h, w, c * r * r).permute(0, 3, 1, 2)
