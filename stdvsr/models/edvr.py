"""EDVR (Wang et al., "EDVR: Video Restoration with Enhanced Deformable Convolutional Networks", CVPRW 2019).

The teacher of the STD paper. This is BasicSR's EDVR: the same constructor arguments and **the same state-dict
keys and shapes**, so official BasicSR checkpoints (``{'params': …}``) load with ``strict=True`` and compute the same
numbers (pre-2020 xinntao/EDVR checkpoints load through ``stdvsr.models.load_weights``, which renames their keys).

Pipeline for a window of ``T`` LR frames centred on frame ``c``:
per-frame features (conv_first, or the predeblur module) → residual blocks → a 3-level pyramid (strided convs) →
**PCD** alignment of every frame to the centre frame (pyramid of modulated deformable convs, coarse to fine, then a
cascading DCN at full resolution) → **TSA** fusion (temporal attention: sigmoid of the per-pixel correlation with the
centre frame's embedding; spatial attention: a 2-level max/avg-pool pyramid) → reconstruction blocks (F^LR) →
two pixel-shuffle ×2 steps → ``conv_hr`` + LeakyReLU (F^SR, 64 channels) → ``conv_last`` → plus the bilinear ×4
upsampling of the centre frame (``align_corners=False``).

Unlike BasicSR, PCD aligns all ``T`` frames in one batched call (identical arithmetic, fewer kernel launches), and
the upsampling head is exposed as :meth:`EDVR.upsample_head` / :meth:`EDVR.to_rgb` so that a cache of F^LR can
be turned back into F^SR and SR exactly.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from stdvsr.models.common import Features, ResidualBlockNoBN, lrelu, make_layer
from stdvsr.models.dcn import DCNv2Pack
from stdvsr.perf import pixel_shuffle


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class PCDAlignment(nn.Module):
    """Pyramid, Cascading and Deformable alignment of neighbour features to the reference (centre) features."""

    def __init__(self, num_feat: int = 64, deformable_groups: int = 8):
        super().__init__()
        self.offset_conv1 = nn.ModuleDict()
        self.offset_conv2 = nn.ModuleDict()
        self.offset_conv3 = nn.ModuleDict()
        self.dcn_pack = nn.ModuleDict()
        self.feat_conv = nn.ModuleDict()
        for i in (3, 2, 1):  # l3 = 1/4 size, l2 = 1/2, l1 = full size; creation order matches BasicSR's
            level = f"l{i}"
            self.offset_conv1[level] = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
            if i == 3:
                self.offset_conv2[level] = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            else:
                self.offset_conv2[level] = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
                self.offset_conv3[level] = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.dcn_pack[level] = DCNv2Pack(num_feat, num_feat, 3, padding=1, deformable_groups=deformable_groups)
            if i < 3:
                self.feat_conv[level] = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
        self.cas_offset_conv1 = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
        self.cas_offset_conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.cas_dcnpack = DCNv2Pack(num_feat, num_feat, 3, padding=1, deformable_groups=deformable_groups)

    def forward(self, nbr: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
        """``nbr`` / ``ref``: ``[L1, L2, L3]`` features ``(N, C, h/2^l, w/2^l)``; returns aligned L1 features."""
        up_offset = up_feat = None
        for i in (3, 2, 1):
            level = f"l{i}"
            offset = lrelu(self.offset_conv1[level](torch.cat([nbr[i - 1], ref[i - 1]], dim=1)))
            if i == 3:
                offset = lrelu(self.offset_conv2[level](offset))
            else:
                offset = lrelu(self.offset_conv2[level](torch.cat([offset, up_offset], dim=1)))
                offset = lrelu(self.offset_conv3[level](offset))
            feat = self.dcn_pack[level](nbr[i - 1], offset)
            if i < 3:
                feat = self.feat_conv[level](torch.cat([feat, up_feat], dim=1))
            if i > 1:
                feat = lrelu(feat)
                # offsets are in pixels of their level: twice the resolution means twice the displacement
                up_offset, up_feat = _up2(offset) * 2, _up2(feat)
        offset = torch.cat([feat, ref[0]], dim=1)
        offset = lrelu(self.cas_offset_conv2(lrelu(self.cas_offset_conv1(offset))))
        return lrelu(self.cas_dcnpack(feat, offset))


class TSAFusion(nn.Module):
    """Temporal and Spatial Attention fusion of ``T`` aligned feature maps into one."""

    def __init__(self, num_feat: int = 64, num_frame: int = 5, center_frame_idx: int = 2):
        super().__init__()
        self.center_frame_idx = center_frame_idx
        self.temporal_attn1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.temporal_attn2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.feat_fusion = nn.Conv2d(num_frame * num_feat, num_feat, 1, 1)
        self.spatial_attn1 = nn.Conv2d(num_frame * num_feat, num_feat, 1)
        self.spatial_attn2 = nn.Conv2d(num_feat * 2, num_feat, 1)
        self.spatial_attn3 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.spatial_attn4 = nn.Conv2d(num_feat, num_feat, 1)
        self.spatial_attn5 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.spatial_attn_l1 = nn.Conv2d(num_feat, num_feat, 1)
        self.spatial_attn_l2 = nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1)
        self.spatial_attn_l3 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.spatial_attn_add1 = nn.Conv2d(num_feat, num_feat, 1)
        self.spatial_attn_add2 = nn.Conv2d(num_feat, num_feat, 1)

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.max_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1)], dim=1)

    def forward(self, aligned: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = aligned.shape
        # temporal attention: per-pixel similarity of each frame's embedding with the centre frame's
        emb_ref = self.temporal_attn1(aligned[:, self.center_frame_idx])
        emb = self.temporal_attn2(aligned.reshape(-1, c, h, w)).view(b, t, -1, h, w)
        corr = torch.sigmoid((emb * emb_ref.unsqueeze(1)).sum(dim=2))  # (b, t, h, w)
        aligned = (aligned * corr.unsqueeze(2)).reshape(b, t * c, h, w)

        feat = lrelu(self.feat_fusion(aligned))

        # spatial attention on a two-level pyramid
        attn = lrelu(self.spatial_attn1(aligned))
        attn = lrelu(self.spatial_attn2(self._pool(attn)))
        attn_level = lrelu(self.spatial_attn_l1(attn))
        attn_level = lrelu(self.spatial_attn_l2(self._pool(attn_level)))
        attn_level = _up2(lrelu(self.spatial_attn_l3(attn_level)))
        attn = lrelu(self.spatial_attn3(attn)) + attn_level
        attn = _up2(lrelu(self.spatial_attn4(attn)))
        attn = self.spatial_attn5(attn)
        attn_add = self.spatial_attn_add2(lrelu(self.spatial_attn_add1(attn)))
        # ×2: sigmoid starts near 0.5, so the attention starts near the identity
        return feat * torch.sigmoid(attn) * 2 + attn_add


class PredeblurModule(nn.Module):
    """EDVR's pre-deblurring pyramid (used for deblurring and the blurry-input SR variant)."""

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, hr_in: bool = False):
        super().__init__()
        self.hr_in = hr_in
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        if hr_in:  # HR input: two stride-2 convs bring it to LR size first
            self.stride_conv_hr1 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
            self.stride_conv_hr2 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        self.stride_conv_l2 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        self.stride_conv_l3 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        self.resblock_l3 = ResidualBlockNoBN(num_feat)
        self.resblock_l2_1 = ResidualBlockNoBN(num_feat)
        self.resblock_l2_2 = ResidualBlockNoBN(num_feat)
        self.resblock_l1 = nn.ModuleList([ResidualBlockNoBN(num_feat) for _ in range(5)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat_l1 = lrelu(self.conv_first(x))
        if self.hr_in:
            feat_l1 = lrelu(self.stride_conv_hr2(lrelu(self.stride_conv_hr1(feat_l1))))
        feat_l2 = lrelu(self.stride_conv_l2(feat_l1))
        feat_l3 = lrelu(self.stride_conv_l3(feat_l2))
        feat_l2 = self.resblock_l2_1(feat_l2) + _up2(self.resblock_l3(feat_l3))
        feat_l2 = _up2(self.resblock_l2_2(feat_l2))
        feat_l1 = self.resblock_l1[1](self.resblock_l1[0](feat_l1)) + feat_l2
        for block in self.resblock_l1[2:]:
            feat_l1 = block(feat_l1)
        return feat_l1


class EDVR(nn.Module):
    """EDVR ×4 video SR (or, with ``hr_in``, same-size restoration). Arguments and defaults as BasicSR's.

    ``forward(lq)``: ``lq`` is ``(B, num_frame, 3, h, w)`` in [0, 1] with ``h``, ``w`` multiples of 4 (of 16 with
    ``hr_in``); returns the centre frame's ``(B, 3, 4h, 4w)`` reconstruction.
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_frame: int = 5,
                 deformable_groups: int = 8, num_extract_block: int = 5, num_reconstruct_block: int = 10,
                 center_frame_idx: int | None = None, hr_in: bool = False, with_predeblur: bool = False,
                 with_tsa: bool = True):
        super().__init__()
        if hr_in and not with_predeblur:
            raise ValueError("EDVR with hr_in=True needs with_predeblur=True (it brings HR input down to LR size)")
        self.num_frame = num_frame
        self.center_frame_idx = num_frame // 2 if center_frame_idx is None else center_frame_idx
        self.hr_in, self.with_predeblur, self.with_tsa = hr_in, with_predeblur, with_tsa
        self.scale = 1 if hr_in else 4

        if with_predeblur:
            self.predeblur = PredeblurModule(num_in_ch, num_feat, hr_in)
            self.conv_1x1 = nn.Conv2d(num_feat, num_feat, 1, 1)
        else:
            self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.feature_extraction = make_layer(ResidualBlockNoBN, num_extract_block, num_feat=num_feat)
        self.conv_l2_1 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        self.conv_l2_2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_l3_1 = nn.Conv2d(num_feat, num_feat, 3, 2, 1)
        self.conv_l3_2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

        self.pcd_align = PCDAlignment(num_feat, deformable_groups)
        if with_tsa:
            self.fusion = TSAFusion(num_feat, num_frame, self.center_frame_idx)
        else:
            self.fusion = nn.Conv2d(num_frame * num_feat, num_feat, 1, 1)

        self.reconstruction = make_layer(ResidualBlockNoBN, num_reconstruct_block, num_feat=num_feat)
        # the HR head always ends in 64 channels (F^SR), whatever num_feat is
        self.upconv1 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
        self.upconv2 = nn.Conv2d(num_feat, 64 * 4, 3, 1, 1)
        self.conv_hr = nn.Conv2d(64, 64, 3, 1, 1)
        self.conv_last = nn.Conv2d(64, num_out_ch, 3, 1, 1)

    # ------------------------------------------------------------------------------------------------ stages
    def extract(self, lq: torch.Tensor) -> list[torch.Tensor]:
        """Per-frame pyramid features ``[L1, L2, L3]``, each ``(B·T, C, h/2^l, w/2^l)`` (frames are independent)."""
        b, t, c, h, w = lq.shape
        x = lq.reshape(b * t, c, h, w)
        feat_l1 = self.conv_1x1(self.predeblur(x)) if self.with_predeblur else lrelu(self.conv_first(x))
        feat_l1 = self.feature_extraction(feat_l1)
        feat_l2 = lrelu(self.conv_l2_2(lrelu(self.conv_l2_1(feat_l1))))
        feat_l3 = lrelu(self.conv_l3_2(lrelu(self.conv_l3_1(feat_l2))))
        return [feat_l1, feat_l2, feat_l3]

    def fuse(self, pyramid: list[torch.Tensor], b: int) -> torch.Tensor:
        """Align every frame to the centre one (PCD) and fuse (TSA): returns F^LR ``(B, C, h, w)``."""
        t = self.num_frame
        nbr = pyramid
        ref = [f.view(b, t, *f.shape[1:])[:, self.center_frame_idx] for f in pyramid]
        ref = [r.repeat_interleave(t, dim=0) for r in ref]  # row b·t + i pairs frame i with its centre frame
        aligned = self.pcd_align(nbr, ref)
        aligned = aligned.view(b, t, *aligned.shape[1:])
        feat = self.fusion(aligned) if self.with_tsa else self.fusion(aligned.flatten(1, 2))
        return self.reconstruction(feat)

    def upsample_head(self, feat_lr: torch.Tensor) -> torch.Tensor:
        """F^LR → F^SR: two pixel-shuffle ×2 steps and ``conv_hr``, each followed by LeakyReLU(0.1)."""
        x = lrelu(pixel_shuffle(self.upconv1(feat_lr), 2))
        x = lrelu(pixel_shuffle(self.upconv2(x), 2))
        return lrelu(self.conv_hr(x))

    def to_rgb(self, feat_sr: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        """F^SR → SR: ``conv_last`` plus the (bilinear ×4) centre frame."""
        center = lq[:, self.center_frame_idx]
        base = center if self.hr_in else F.interpolate(center, scale_factor=4, mode="bilinear", align_corners=False)
        return self.conv_last(feat_sr) + base

    # ----------------------------------------------------------------------------------------- the contract
    def _check(self, lq: torch.Tensor) -> None:
        if lq.dim() != 5 or lq.shape[1] != self.num_frame:
            raise ValueError(f"EDVR expects (B, {self.num_frame}, C, h, w) input, got {tuple(lq.shape)}")
        m = 16 if self.hr_in else 4
        if lq.shape[-1] % m or lq.shape[-2] % m:
            raise ValueError(f"EDVR needs frame sizes that are multiples of {m}, got {lq.shape[-2]}×{lq.shape[-1]}")

    def forward_features(self, lq: torch.Tensor) -> Features:
        self._check(lq)
        feat_lr = self.fuse(self.extract(lq), lq.shape[0])
        feat_sr = self.upsample_head(feat_lr)
        return Features(self.to_rgb(feat_sr, lq), feat_sr, feat_lr)

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        return self.forward_features(lq).sr

    def forward_windows(self, frames: torch.Tensor, windows: torch.Tensor, chunk: int = 1) -> Features:
        """All windows of a clip, extracting each frame's pyramid features only once.

        ``frames``: ``(B, N, 3, h, w)`` (a clip); ``windows``: ``(W, num_frame)`` frame indices (e.g. from
        ``stdvsr.data.window_indices``). Returns Features whose tensors have leading dims ``(B, W)``; window ``i``
        equals ``forward_features(frames[:, windows[i]])``. Per-frame extraction (conv_first, the residual blocks,
        the pyramid) runs N instead of W·num_frame times — what a teacher cache needs for every frame of a clip.
        Alignment, fusion and reconstruction run ``chunk`` windows at a time (larger chunks were slower on a CPU).
        """
        outs = [features for _, features in self.iter_windows(frames, windows, chunk)]
        return Features(*(torch.cat(parts, dim=1) for parts in zip(*outs)))

    def iter_windows(self, frames: torch.Tensor, windows: torch.Tensor,
                     chunk: int = 1) -> Iterator[tuple[range, Features]]:
        """:meth:`forward_windows` one chunk at a time: yields ``(window positions, Features)`` so that a caller
        can store each chunk's outputs before the next is computed (a long clip's F^SR does not fit in memory)."""
        b, n, c, h, w = frames.shape
        if windows.dim() != 2 or windows.shape[1] != self.num_frame:
            raise ValueError(f"windows must be (W, {self.num_frame}) frame indices, got {tuple(windows.shape)}")
        self._check(frames[:, windows[0]])
        pyramid = [f.view(b, n, *f.shape[1:]) for f in self.extract(frames)]
        for start in range(0, len(windows), chunk):
            part = windows[start:start + chunk]
            feat_lr = self.fuse([f[:, part].flatten(0, 2) for f in pyramid], b * len(part))
            feat_sr = self.upsample_head(feat_lr)
            sr = self.to_rgb(feat_sr, frames[:, part].flatten(0, 1))
            yield range(start, start + len(part)), Features(*(x.view(b, len(part), *x.shape[1:])
                                                              for x in (sr, feat_sr, feat_lr)))
