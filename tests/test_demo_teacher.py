"""The shipped demo teacher: a stdvsr checkpoint inside the package that loads safely and beats bicubic."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from stdvsr.data import to_tensor
from stdvsr.degradations import bd_downsample
from stdvsr.infer import upscale_frames
from stdvsr.metrics import VideoMetrics
from stdvsr.models import DEMO_TEACHER, load_model


def test_demo_teacher_ships_small_and_loads():
    assert DEMO_TEACHER.is_file(), "run pipelines/train_demo_teacher.sh"
    assert DEMO_TEACHER.stat().st_size < 5e6
    model, ckpt = load_model(DEMO_TEACHER)
    assert ckpt["model"]["name"] == "edvr-s" and model.num_frame == 7 and model.scale == 4
    assert ckpt["config"]["degradation"] == "bd"


def test_demo_teacher_beats_bicubic_on_held_out_frames(carphone_frames):
    model, _ = load_model(DEMO_TEACHER)
    gt = to_tensor(carphone_frames)  # 8 real held-out frames, 144×176
    lq = bd_downsample(gt, 4)
    frames = [2, 3, 4, 5]
    teacher, bicubic = VideoMetrics(metrics=("psnr",)), VideoMetrics(metrics=("psnr",))
    sr = upscale_frames(model, lq, frames)
    bic = F.interpolate(lq[frames], scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    for i, f in enumerate(frames):
        teacher.add("carphone", f, sr[i], gt[f])
        bicubic.add("carphone", f, bic[i], gt[f])
    gain = teacher.summary()["psnr"] - bicubic.summary()["psnr"]
    assert gain > 1.0, f"teacher only {gain:.2f} dB above bicubic"
    assert torch.isfinite(sr).all()
