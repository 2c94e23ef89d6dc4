"""Validation without ground truth: how closely a student's SR agrees with the teacher's on the frames of an LR
footage cache that training never used (the last ``holdout`` of each clip, :func:`~stdvsr.distill.plan.held_back`).

The score is Y-PSNR (dB) of the student's output against the teacher's cached SR, with the same conventions as
``stdvsr evaluate`` (uint8-rounded, Y channel, no border crop): higher means the student reproduces the teacher
more closely. It says nothing directly about the true HR frames, which do not exist for footage; where they do
(the demo's carphone), ``stdvsr evaluate`` scores against them."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from stdvsr.cache.reader import CacheReader
from stdvsr.data import window_indices
from stdvsr.distill.plan import held_back
from stdvsr.distill.targets import cached_targets
from stdvsr.infer import MULTIPLE, pad_bottom_right, padded_size
from stdvsr.metrics import VideoMetrics


class TeacherAgreement:
    """``agreement(model)`` → Y-PSNR of ``model`` against the teacher's SR on every ``stride``-th held-back frame of
    each clip of ``reader`` (views other than the identity are skipped: they are the same frames transformed);
    ``.bicubic`` is bicubic's agreement, ``.frames`` how many frames are scored. Frames are read from the cache
    at each call, so long footage costs no memory between validations."""

    def __init__(self, reader: CacheReader, holdout: float, stride: int = 1):
        self.reader, self.padding = reader, reader.fingerprint["padding"]
        self.items = []  # (clip index, clip name, frames scored)
        for c in reader.clips:
            held = held_back(c["frames"], holdout)
            if held and "@t" not in c["name"]:
                self.items.append((c["index"], c["name"], list(range(c["frames"] - held, c["frames"], stride))))
        self.frames = sum(len(frames) for _, _, frames in self.items)
        self._head = reader.head() if "sr" not in reader.tiers else None
        self.bicubic = self._score(lambda lq, idx: F.interpolate(lq[idx[len(idx) // 2]][None], scale_factor=reader.scale,
                                                                   mode="bicubic", align_corners=False)[0].clamp(0, 1),
                                   num_frame=1) if self.items else None

    def teacher_sr(self, index: int, frame: int) -> torch.Tensor:
        """The teacher's SR ``(3, H, W)`` of one frame: the stored ``sr`` tier, else rebuilt by the cached head."""
        tier = "sr" if self._head is None else "trunk"
        item = self.reader.read(index, range(frame, frame + 1), tiers=[tier], gt=False, lq=False)
        batch = {k: v.unsqueeze(0) for k, v in item.items() if isinstance(v, torch.Tensor)}
        return cached_targets(batch, self._head, {"sr"}, "sr", "cpu")["sr"][0, 0].clamp(0, 1)

    def _score(self, upscale, num_frame: int) -> float:
        metrics = VideoMetrics(metrics=("psnr",))
        for index, name, frames in self.items:
            length = self.reader.clips[index]["frames"]
            for f in frames:
                idx = window_indices(f, length, num_frame, self.padding)
                lo = min(idx)
                lq = self.reader.read_lq(index, range(lo, max(idx) + 1))
                metrics.add(name, f, upscale(lq, [i - lo for i in idx]), self.teacher_sr(index, f))
        return metrics.summary()["psnr"]

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> float:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()

        def upscale(lq, idx):
            h, w = lq.shape[-2:]
            x = pad_bottom_right(lq[idx], *padded_size(h, w, MULTIPLE))
            sr = model(x[None].to(device))[0, :, : h * model.scale, : w * model.scale]
            return sr.clamp(0, 1).float().cpu()

        try:
            return self._score(upscale, model.num_frame)
        finally:
            model.train(was_training)
