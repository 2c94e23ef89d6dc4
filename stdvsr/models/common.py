"""Pieces every stdvsr network shares: the output record of the training path and BasicSR's residual block."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from stdvsr.perf import pixel_shuffle


class Features(NamedTuple):
    """What ``forward_features(lq)`` returns (the model contract, docs/ARCHITECTURE.md).

    ``sr``: the output frame ``(B, 3, s·h, s·w)``; ``feat_sr``: F^SR, the HR feature map that enters the last conv
    (``conv_last``) — the input of the spatial and temporal distillation losses; ``feat_lr``: the trunk output
    before the upsampler (``(B, C, h, w)``), for the F^LR baselines.
    """

    sr: torch.Tensor
    feat_sr: torch.Tensor
    feat_lr: torch.Tensor


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """LeakyReLU with slope 0.1, in place: EDVR's activation after its convs (its trunk and upsampling head, and the
    cache's copy of that head, :class:`stdvsr.cache.TeacherHead`)."""
    return nn.functional.leaky_relu(x, 0.1, inplace=True)


class ResidualBlockNoBN(nn.Module):
    """conv3×3 → ReLU → conv3×3, plus the identity (EDSR / BasicSR's block; keys ``conv1``, ``conv2``)."""

    def __init__(self, num_feat: int = 64, res_scale: float = 1.0):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        # BasicSR initialises these with Kaiming-normal ×0.1 so that deep stacks start close to the identity.
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


def make_layer(block, num_blocks: int, **kwargs) -> nn.Sequential:
    """``num_blocks`` copies of ``block(**kwargs)`` in an ``nn.Sequential`` (keys ``0.…``, ``1.…``)."""
    return nn.Sequential(*(block(**kwargs) for _ in range(num_blocks)))


def upsample_base(center: torch.Tensor, scale: int, mode: str = "bilinear") -> torch.Tensor:
    """The residual base: the centre LR frame upsampled ×scale (``align_corners=False``, as BasicSR)."""
    return nn.functional.interpolate(center, scale_factor=scale, mode=mode, align_corners=False)


class PixelShuffleHead(nn.Module):
    """F^LR → F^SR ×4 as EDVR does it: two (conv → pixel shuffle ×2 → LeakyReLU) steps, then conv_hr → LeakyReLU.

    Keys ``upconv1``, ``upconv2``, ``conv_hr``; ``feat_sr`` channels come out of ``conv_hr``.
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__()
        self.upconv1 = nn.Conv2d(in_ch, mid_ch * 4, 3, 1, 1)
        self.upconv2 = nn.Conv2d(mid_ch, out_ch * 4, 3, 1, 1)
        self.conv_hr = nn.Conv2d(out_ch, out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lrelu = nn.functional.leaky_relu
        x = lrelu(pixel_shuffle(self.upconv1(x), 2), 0.1)
        x = lrelu(pixel_shuffle(self.upconv2(x), 2), 0.1)
        return lrelu(self.conv_hr(x), 0.1)


def scaled(channels: int, width: float) -> int:
    """``channels × width`` rounded, at least 1 (the width multiplier of Table 6)."""
    return max(1, int(round(channels * width)))
