"""VSRNet (Kappeler, Yoo, Dai & Katsaggelos, "Video Super-Resolution With Convolutional Neural Networks",
IEEE TCI 2016), as the STD paper's 7-frame student.

SRCNN's 9-5-5 network on bicubic-upsampled frames, with VSRNet's fusion "after the first layer" (its
architecture (b)): each of the ``2k+1`` frames goes through a 9×9 conv (64 channels) whose weights are shared
between frames at the same temporal distance from the centre (VSRNet's symmetric weight sharing), the 7 feature
maps are concatenated, and a 5×5 conv (32 channels) and a 5×5 conv to RGB follow, ReLU after the first two.

Adaptation, exactly: RGB in and out (VSRNet worked on Y); ×4 with 7 frames; motion compensation of the input
frames (VSRNet used an external optical-flow step) is left out, as in the STD paper's student. F^SR is the ReLU
output of the 5×5 layer — 32 channels at 4h×4w, the input of ``conv_last`` — so distillation from a 64-channel
teacher goes through the 1×1 adapter. The network has no LR stage; ``feat_lr`` is its first (fused) feature map,
at HR (``lr_features = False`` tells the training stage).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from stdvsr.models.common import Features


class VSRNet(nn.Module):
    lr_features = False

    def __init__(self, num_frame: int = 7, num_feat: int = 64, num_feat2: int = 32):
        super().__init__()
        self.num_frame, self.scale = num_frame, 4
        half = num_frame // 2
        # conv1[d] serves the frames at distance d from the centre
        self.conv1 = nn.ModuleList(nn.Conv2d(3, num_feat, 9, 1, 4) for _ in range(half + 1))
        self.conv2 = nn.Conv2d(num_frame * num_feat, num_feat2, 5, 1, 2)
        self.conv_last = nn.Conv2d(num_feat2, 3, 5, 1, 2)
        self.distance = [abs(t - half) for t in range(num_frame)]

    def forward_features(self, lq: torch.Tensor) -> Features:
        b, t, c, h, w = lq.shape
        if t != self.num_frame:
            raise ValueError(f"VSRNet expects {self.num_frame} frames, got {t}")
        up = F.interpolate(lq.reshape(b * t, c, h, w), scale_factor=4, mode="bicubic", align_corners=False)
        up = up.view(b, t, c, 4 * h, 4 * w)
        fused = torch.cat([F.relu(self.conv1[d](up[:, i]), inplace=True) for i, d in enumerate(self.distance)], 1)
        feat_sr = F.relu(self.conv2(fused), inplace=True)
        return Features(self.conv_last(feat_sr), feat_sr, fused)

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        return self.forward_features(lq).sr
