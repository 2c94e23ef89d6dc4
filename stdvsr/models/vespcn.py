"""VESPCN (Caballero et al., "Real-Time Video Super-Resolution with Spatio-Temporal Networks and Motion
Compensation", CVPR 2017), as the STD paper's 3-frame student.

Motion compensation by a spatial transformer: a coarse flow network (strided convs 5-3-5-3-3 with 24/24/24/24/32
channels, tanh, pixel shuffle ×4 → a 2-channel flow) followed by a fine one (5-3-3-3-3, 24/24/24/24/8, tanh,
pixel shuffle ×2) that sees both frames, the coarsely warped neighbour and the coarse flow; the sum of both flows
warps each neighbour onto the centre frame with bilinear ``grid_sample`` (the last conv of each flow network
starts at zero, i.e. from the identity warp). Flows are in ``grid_sample``'s
normalised coordinates (−1..1 spans the frame), as in the original spatial transformer. Then early fusion: the
two warped neighbours and the centre frame (9 channels) go through an ESPCN-style network of 3×3 convs
(64 channels, 7 layers, ReLU) ending in a sub-pixel convolution.

Adaptation, exactly: RGB (VESPCN used Y); ×4 with 3 frames; the sub-pixel layer produces ``16·64`` channels that
the pixel shuffle turns into F^SR (64 channels at 4h×4w, ReLU), and ``conv_last`` (3×3) makes RGB from it — the
minimal change that gives an HR feature in front of the RGB conv; the bilinear ×4 centre frame is added (a global
residual, as the other students). Its training losses are available from :meth:`VESPCN.motion_losses`:
the warping error ``mean((I_t − warp(I_{t±1}))²)`` and the flow smoothness, a Huber penalty on flow gradients.
Input sizes must be multiples of 4 (the coarse flow works at 1/4 size).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from stdvsr.models.common import Features, upsample_base
from stdvsr.perf import PixelShuffle, pixel_shuffle


def _flow_net(cin: int, kernels, channels, strides, shuffle: int) -> nn.Sequential:
    layers, c = [], cin
    for i, (k, cout, s) in enumerate(zip(kernels, channels, strides)):
        layers.append(nn.Conv2d(c, cout, k, s, k // 2))
        layers.append(nn.Tanh() if i == len(kernels) - 1 else nn.ReLU(inplace=True))
        c = cout
    layers.append(PixelShuffle(shuffle))
    return nn.Sequential(*layers)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` (B, C, h, w) at identity + ``flow`` (B, 2, h, w; x then y, normalised coordinates)."""
    b, _, h, w = image.shape
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=image.device, dtype=image.dtype)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=image.device, dtype=image.dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).unsqueeze(0)  # (1, h, w, 2): x, y
    return F.grid_sample(image, grid + flow.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                         align_corners=False)


class MotionCompensation(nn.Module):
    """Coarse-to-fine flow of a neighbour onto the reference, and the neighbour warped by it."""

    def __init__(self):
        super().__init__()
        self.coarse = _flow_net(6, (5, 3, 5, 3, 3), (24, 24, 24, 24, 32), (2, 1, 2, 1, 1), 4)
        self.fine = _flow_net(11, (5, 3, 3, 3, 3), (24, 24, 24, 24, 8), (2, 1, 1, 1, 1), 2)
        for net in (self.coarse, self.fine):  # start from zero flow: the identity warp
            nn.init.zeros_(net[-3].weight)
            nn.init.zeros_(net[-3].bias)

    def forward(self, ref: torch.Tensor, nbr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coarse = self.coarse(torch.cat([ref, nbr], 1))
        warped = warp(nbr, coarse)
        flow = coarse + self.fine(torch.cat([ref, nbr, warped, coarse], 1))
        return warp(nbr, flow), flow


class VESPCN(nn.Module):
    """VESPCN-VSR: ``(B, 3, 3, h, w)`` → ``(B, 3, 4h, 4w)``; see the module docstring for the adaptation."""

    size_multiple = 4  # LR height and width: the coarse flow works at 1/4

    def __init__(self, num_feat: int = 64, num_layers: int = 7, feat_sr: int = 64):
        super().__init__()
        self.num_frame, self.scale = 3, 4
        self.motion = MotionCompensation()
        layers, c = [], 9
        for _ in range(num_layers - 1):
            layers += [nn.Conv2d(c, num_feat, 3, 1, 1), nn.ReLU(inplace=True)]
            c = num_feat
        self.body = nn.Sequential(*layers)
        self.subpixel = nn.Conv2d(num_feat, feat_sr * 16, 3, 1, 1)
        self.conv_last = nn.Conv2d(feat_sr, 3, 3, 1, 1)

    def compensate(self, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Both neighbours warped onto the centre frame in one batched pass: ``(warped (B,2,3,h,w), flows
        (B,2,2,h,w), centre)``."""
        center = lq[:, 1]
        nbrs = torch.cat([lq[:, 0], lq[:, 2]], 0)
        warped, flows = self.motion(torch.cat([center, center], 0), nbrs)
        # (2B, …) → (B, 2, …) without a Python-int batch size, so traced/exported graphs keep a dynamic batch
        return warped.unflatten(0, (2, -1)).transpose(0, 1), flows.unflatten(0, (2, -1)).transpose(0, 1), center

    def forward_features(self, lq: torch.Tensor) -> Features:
        if lq.dim() != 5 or lq.shape[1] != 3 or lq.shape[-1] % 4 or lq.shape[-2] % 4:
            raise ValueError(f"VESPCN expects (B, 3, 3, h, w) with h, w multiples of 4, got {tuple(lq.shape)}")
        warped, _, center = self.compensate(lq)
        fused = torch.cat([warped[:, 0], center, warped[:, 1]], 1)
        feat_lr = self.body(fused)
        feat_sr = F.relu(pixel_shuffle(self.subpixel(feat_lr), 4))
        return Features(self.conv_last(feat_sr) + upsample_base(center, 4), feat_sr, feat_lr)

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        return self.forward_features(lq).sr

    def motion_losses(self, lq: torch.Tensor, huber_delta: float = 0.01) -> dict[str, torch.Tensor]:
        """VESPCN's motion-compensation losses: ``warp`` = MSE between the centre frame and each warped neighbour,
        ``smooth`` = Huber penalty on the flows' spatial gradients (the paper weights it by λ = 0.01)."""
        warped, flows, center = self.compensate(lq)
        warp_loss = ((warped - center.unsqueeze(1)) ** 2).mean()
        dx = flows[..., :, 1:] - flows[..., :, :-1]
        dy = flows[..., 1:, :] - flows[..., :-1, :]
        smooth = (F.huber_loss(dx, torch.zeros_like(dx), delta=huber_delta)
                  + F.huber_loss(dy, torch.zeros_like(dy), delta=huber_delta))
        return {"warp": warp_loss, "smooth": smooth}
