"""Modulated deformable convolution (DCNv2, Zhu et al., CVPR 2019) in plain PyTorch, as EDVR uses it.

Conventions are torchvision's ``torchvision.ops.deform_conv2d`` (and so BasicSR's ``DCNv2Pack``):

* ``offset`` is ``(B, 2·G·K, Ho, Wo)`` with ``K = kh·kw`` kernel points in row-major order; channel ``g·2K + 2k`` is
  the row (dy) offset and ``g·2K + 2k + 1`` the column (dx) offset of point ``k`` in deformable group ``g``;
* ``mask`` is ``(B, G·K, Ho, Wo)``, channel ``g·K + k``;
* point ``k = (ki, kj)`` of output pixel ``(i, j)`` samples the input at
  ``(i·stride − pad + ki·dilation + dy, j·stride − pad + kj·dilation + dx)`` bilinearly, every neighbouring pixel
  outside the image counting as 0.

The pure-PyTorch path samples all ``K`` points with one ``grid_sample`` call per layer and contracts them with the
weights in one matmul. torchvision's compiled kernel is used instead only where it is importable and known to be
faster: on CUDA (``STDVSR_DCN=torch|torchvision`` forces a path; on a 2-core CPU the pure path measured faster, see
``pipelines/bench/bench_edvr.py``).
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

_torchvision_deform_conv2d = None
_torchvision_checked = False


def _torchvision_op():
    """torchvision.ops.deform_conv2d if torchvision imports cleanly, else None (checked once)."""
    global _torchvision_deform_conv2d, _torchvision_checked
    if not _torchvision_checked:
        _torchvision_checked = True
        try:
            from torchvision.ops import deform_conv2d

            _torchvision_deform_conv2d = deform_conv2d
        except Exception:  # not installed, or built against another torch ("operator ... does not exist")
            _torchvision_deform_conv2d = None
    return _torchvision_deform_conv2d


def dcn_backend(device: torch.device) -> str:
    """Which implementation runs on ``device``: ``"torchvision"`` or ``"torch"`` (see the module docstring)."""
    choice = os.environ.get("STDVSR_DCN", "auto")
    if choice == "torch":
        return "torch"
    if choice == "torchvision":
        if _torchvision_op() is None:
            raise RuntimeError("STDVSR_DCN=torchvision but torchvision.ops cannot be imported")
        return "torchvision"
    return "torchvision" if device.type == "cuda" and _torchvision_op() is not None else "torch"


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def modulated_deform_conv2d(x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1,
                            deformable_groups: int = 1) -> torch.Tensor:
    """DCNv2 forward in plain PyTorch (differentiable w.r.t. every tensor argument); layout in the module docstring."""
    b, c, h, w = x.shape
    c_out, c_in, kh, kw = weight.shape
    if c_in != c:
        raise ValueError(f"weight expects {c_in} input channels, x has {c}")
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    g, k = deformable_groups, kh * kw
    ho, wo = offset.shape[-2:]
    if offset.shape[1] != 2 * g * k or mask.shape[1] != g * k:
        raise ValueError(f"offset needs {2 * g * k} and mask {g * k} channels for {g} groups of a {kh}×{kw} kernel, "
                         f"got {offset.shape[1]} and {mask.shape[1]}")

    # Absolute sampling positions (B, G, K, Ho, Wo) in input pixels.
    dtype, device = x.dtype, x.device
    ki = torch.arange(kh, device=device, dtype=dtype).repeat_interleave(kw) * dh
    kj = torch.arange(kw, device=device, dtype=dtype).repeat(kh) * dw
    base_y = (torch.arange(ho, device=device, dtype=dtype) * sh - ph).view(1, 1, 1, ho, 1) + ki.view(1, 1, k, 1, 1)
    base_x = (torch.arange(wo, device=device, dtype=dtype) * sw - pw).view(1, 1, 1, 1, wo) + kj.view(1, 1, k, 1, 1)
    off = offset.view(b, g, k, 2, ho, wo)
    pos_y = base_y + off[:, :, :, 0]
    pos_x = base_x + off[:, :, :, 1]

    # grid_sample (align_corners=False) un-normalises u to ((u + 1)·W − 1)/2, so pixel p is u = (2p + 1)/W − 1 (this
    # also holds for W = 1, unlike align_corners=True); zero padding gives "neighbours outside count as 0".
    grid = torch.stack(((2 * pos_x + 1) / w - 1, (2 * pos_y + 1) / h - 1), dim=-1).view(b * g, k * ho, wo, 2)
    sampled = F.grid_sample(x.reshape(b * g, c // g, h, w), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # (B·G, C/G, K·Ho, Wo)
    sampled = sampled.view(b, g, c // g, k, ho, wo) * mask.view(b, g, 1, k, ho, wo)
    # columns (B, C·K, Ho·Wo) in the weight's (in-channel, kernel point) order
    cols = sampled.reshape(b, c * k, ho * wo)
    out = torch.matmul(weight.reshape(c_out, c * k), cols).view(b, c_out, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


class DCNv2Pack(nn.Module):
    """Modulated deformable conv whose offsets and mask come from a *separate* feature (EDVR's PCD alignment).

    Same parameter names as BasicSR (``weight``, ``bias``, ``conv_offset``), so its checkpoints load unchanged.
    ``conv_offset`` starts at zero: offsets 0 and mask 0.5 everywhere, i.e. half a plain convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 dilation: int = 1, deformable_groups: int = 8):
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.conv_offset = nn.Conv2d(in_channels, deformable_groups * 3 * kernel_size * kernel_size, kernel_size,
                                     stride, padding, dilation, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # DCN's usual init: uniform(±1/sqrt(fan_in)) for the weight, zero bias, zero offset branch.
        bound = 1.0 / (self.weight[0].numel() ** 0.5)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        o1, o2, mask = torch.chunk(self.conv_offset(feat), 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        mask = torch.sigmoid(mask)
        if dcn_backend(x.device) == "torchvision":
            return _torchvision_op()(x, offset, self.weight, self.bias, _pair(self.stride), _pair(self.padding),
                                     _pair(self.dilation), mask)
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride, self.padding,
                                       self.dilation, self.deformable_groups)
