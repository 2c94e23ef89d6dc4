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
from stdvsr.infer import upscale_frames
from stdvsr.metrics import VideoMetrics, tensor_to_uint8


class TeacherAgreement:
    """``agreement(model)`` → Y-PSNR of ``model`` against the teacher's SR on every ``stride``-th held-back frame of
    each clip of ``reader`` (views other than the identity are skipped: they are the same frames transformed);
    ``.bicubic`` is bicubic's agreement, ``.frames`` how many frames are scored. The teacher's SR of those frames is
    read (or rebuilt by the cached head) once, as uint8 — what the metric compares anyway; each call reads the LR
    frames the held-back windows need, so long footage holds no float frames between validations."""

    def __init__(self, reader: CacheReader, holdout: float, stride: int = 1):
        self.reader, self.padding = reader, reader.fingerprint["padding"]
        self.items = []  # (clip index, clip name, frames scored)
        self.teacher = {}  # (clip index, frame) → the teacher's SR, uint8
        head = reader.head() if "sr" not in reader.tiers else None
        for c in reader.clips:
            held = held_back(c["frames"], holdout)
            if held and "@t" not in c["name"]:
                frames = list(range(c["frames"] - held, c["frames"], stride))
                self.teacher.update({(c["index"], f): tensor_to_uint8(_teacher_sr(reader, head, c["index"], f))
                                     for f in frames})
                self.items.append((c["index"], c["name"], frames))
        self.frames = sum(len(frames) for _, _, frames in self.items)
        self.bicubic = self._score(lambda lq, frames: F.interpolate(lq[frames], scale_factor=reader.scale,
                                                                     mode="bicubic", align_corners=False).clamp(0, 1),
                                   num_frame=1) if self.items else None

    def _score(self, upscale, num_frame: int) -> float:
        metrics = VideoMetrics(metrics=("psnr",))
        for index, name, frames in self.items:
            length = self.reader.clips[index]["frames"]
            needed = [i for f in frames for i in window_indices(f, length, num_frame, self.padding)]
            lo, hi = min(needed), max(needed) + 1
            # every window of the held-back frames reads frames in [lo, hi) only, so scoring that range gives the
            # whole clip's windows as long as the padding at its ends agrees: hi is the clip's end (held-back frames
            # are its last), and lo > 0 only when no window reaches the clip's start
            lq = self.reader.read_lq(index, range(lo, hi))
            for f, sr in zip(frames, upscale(lq, [f - lo for f in frames])):
                metrics.add(name, f, sr, self.teacher[index, f])
        return metrics.summary()["psnr"]

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> float:
        was_training = model.training
        model.eval()
        try:
            return self._score(lambda lq, frames: upscale_frames(model, lq, frames, self.padding), model.num_frame)
        finally:
            model.train(was_training)


def _teacher_sr(reader: CacheReader, head, index: int, frame: int) -> torch.Tensor:
    """The teacher's SR ``(3, H, W)`` of one frame: the stored ``sr`` tier, else rebuilt by the cached ``head``."""
    item = reader.read(index, range(frame, frame + 1), tiers=["sr" if head is None else "trunk"], gt=False, lq=False)
    batch = {k: v.unsqueeze(0) for k, v in item.items() if isinstance(v, torch.Tensor)}
    return cached_targets(batch, head, {"sr"}, "sr", "cpu")["sr"][0, 0].clamp(0, 1)
