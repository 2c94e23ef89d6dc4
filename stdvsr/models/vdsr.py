"""VDSR (Kim, Lee & Lee, "Accurate Image Super-Resolution Using Very Deep Convolutional Networks", CVPR 2016),
the STD paper's single-frame student.

20 conv layers of 3×3 with 64 channels (ReLU after all but the last) on the bicubic-upsampled frame, plus that
frame (global residual learning). Adaptation, exactly: RGB in and out (VDSR worked on Y); one input frame
(``num_frame = 1``: the window is the centre frame alone). F^SR is the ReLU output of layer 19 — 64 channels at
4h×4w, the input of ``conv_last``. The network has no LR stage; ``feat_lr`` is its first feature map, at HR
(``lr_features = False``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from stdvsr.models.common import Features


class VDSR(nn.Module):
    lr_features = False

    def __init__(self, num_feat: int = 64, num_layers: int = 20):
        super().__init__()
        self.num_frame, self.scale = 1, 4
        self.conv_first = nn.Conv2d(3, num_feat, 3, 1, 1)
        self.body = nn.ModuleList(nn.Conv2d(num_feat, num_feat, 3, 1, 1) for _ in range(num_layers - 2))
        self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)
        for conv in (self.conv_first, *self.body):  # He init, as the paper
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.conv_last.bias)

    def forward_features(self, lq: torch.Tensor) -> Features:
        if lq.dim() != 5 or lq.shape[1] != 1:
            raise ValueError(f"VDSR expects one frame, (B, 1, 3, h, w), got {tuple(lq.shape)}")
        up = F.interpolate(lq[:, 0], scale_factor=4, mode="bicubic", align_corners=False)
        first = F.relu(self.conv_first(up), inplace=True)
        x = first
        for conv in self.body:
            x = F.relu(conv(x))
        return Features(self.conv_last(x) + up, x, first)

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        return self.forward_features(lq).sr
