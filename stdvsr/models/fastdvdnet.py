"""FastDVDnet (Tassano, Delon & Veit, "FastDVDnet: Towards Real-Time Deep Video Denoising Without Flow
Estimation", CVPR 2020), adapted to ×4 video super-resolution with 7 input frames as the STD paper's student.

FastDVDnet is two stages of one shared "denoising block", a small U-Net that maps 3 consecutive frames to one:
an input block that gives every frame its own 30 channels (a grouped conv) and merges them into 32, two stride-2
down blocks (64, 128 channels), two pixel-shuffle up blocks with additive skips, and an output block.

Adaptation, exactly:
* the noise-level map is dropped (3 channels per frame, not 4);
* 7 frames: stage 1 runs the shared block on the triplets (0,1,2), (2,3,4), (4,5,6), each predicting a refined LR
  frame as a residual on its middle frame; stage 2 runs a second block on those three and outputs F^LR
  (64 channels) instead of an image;
* batch normalisation is removed (as EDSR showed for SR; it also behaves badly with the batch of 2 the paper uses);
* reconstruction: EDVR's head — conv → pixel shuffle ×2 → LReLU, twice, then conv_hr → LReLU gives F^SR
  (64 channels at 4h×4w), ``conv_last`` makes RGB, plus the bilinear ×4 centre frame;
* ``width`` scales every channel count in front of the reconstruction — per-frame 30, U-Net 32/64/128, F^LR and
  F^SR 64 — so width 1, 1/2, 1/4 give F^SR of 64, 32, 16 channels; ``head_feat`` keeps the reconstruction head
  (F^LR → F^SR) at a width of its own, e.g. 64 as the teacher's. Table 6's wording ("the number of channels in
  front of the reconstruction backbone ... set to 32 and 16") admits both readings; the ``-h64`` presets are the
  second, with F^SR as wide as the teacher's (no adapter needed) at about the cost of the full-width head.
Input sizes must be multiples of 4 (two stride-2 levels).
"""

from __future__ import annotations

import torch
from torch import nn

from stdvsr.models.common import Features, PixelShuffleHead, scaled, upsample_base
from stdvsr.perf import PixelShuffle


def _conv_relu(cin: int, cout: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, groups=groups), nn.ReLU(inplace=True)]


class DenBlock(nn.Module):
    """FastDVDnet's 3-frame U-Net (without BN): ``(B, 9, h, w)`` → ``(B, out_ch, h, w)``."""

    def __init__(self, out_ch: int, width: float = 1.0, in_frames: int = 3):
        super().__init__()
        per_frame, c0, c1, c2 = (scaled(c, width) for c in (30, 32, 64, 128))
        self.inc = nn.Sequential(*_conv_relu(3 * in_frames, per_frame * in_frames, groups=in_frames),
                                 *_conv_relu(per_frame * in_frames, c0))
        self.down0 = nn.Sequential(*_conv_relu(c0, c1, stride=2), *_conv_relu(c1, c1), *_conv_relu(c1, c1))
        self.down1 = nn.Sequential(*_conv_relu(c1, c2, stride=2), *_conv_relu(c2, c2), *_conv_relu(c2, c2))
        self.up2 = nn.Sequential(*_conv_relu(c2, c2), *_conv_relu(c2, c2), nn.Conv2d(c2, c1 * 4, 3, 1, 1),
                                 PixelShuffle(2))
        self.up1 = nn.Sequential(*_conv_relu(c1, c1), *_conv_relu(c1, c1), nn.Conv2d(c1, c0 * 4, 3, 1, 1),
                                 PixelShuffle(2))
        self.outc = nn.Sequential(*_conv_relu(c0, c0), nn.Conv2d(c0, out_ch, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.inc(x)
        x1 = self.down0(x0)
        x2 = self.up2(self.down1(x1))
        x1 = self.up1(x1 + x2)
        return self.outc(x0 + x1)


class FastDVDnet(nn.Module):
    """FastDVDnet-VSR: ``(B, 7, 3, h, w)`` → ``(B, 3, 4h, 4w)``; see the module docstring for the adaptation."""

    size_multiple = 4  # LR height and width: the U-Net halves them twice

    def __init__(self, num_frame: int = 7, width: float = 1.0, head_feat: int | None = None):
        super().__init__()
        if num_frame != 7:
            raise ValueError("FastDVDnet-VSR takes 7 frames (two stages of 3-frame blocks)")
        self.num_frame, self.scale, self.width = num_frame, 4, width
        feat = scaled(64, width)
        head = head_feat or feat
        self.stage1 = DenBlock(3, width)
        self.stage2 = DenBlock(feat, width)
        self.head = PixelShuffleHead(feat, head, head)
        self.conv_last = nn.Conv2d(head, 3, 3, 1, 1)

    def forward_features(self, lq: torch.Tensor) -> Features:
        b, t, c, h, w = lq.shape
        if t != 7 or h % 4 or w % 4:
            raise ValueError(f"FastDVDnet-VSR expects (B, 7, 3, h, w) with h, w multiples of 4, got {tuple(lq.shape)}")
        # stage 1: the shared block on three triplets at once (batched), each a residual on its middle frame
        triplets = torch.stack([lq[:, 0:3], lq[:, 2:5], lq[:, 4:7]], dim=1)  # (B, 3, 3, C, h, w)
        x = triplets.reshape(b * 3, 3 * c, h, w)
        refined = self.stage1(x) + triplets[:, :, 1].reshape(b * 3, c, h, w)
        feat_lr = self.stage2(refined.reshape(b, 3 * c, h, w))
        feat_sr = self.head(feat_lr)
        sr = self.conv_last(feat_sr) + upsample_base(lq[:, 3], 4)
        return Features(sr, feat_sr, feat_lr)

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        return self.forward_features(lq).sr
