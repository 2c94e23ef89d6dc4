"""The shipped demo teachers (edvr-s, rbpn-s): stdvsr checkpoints inside the package that load safely and beat
bicubic."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from stdvsr.data import to_tensor
from stdvsr.degradations import bd_downsample
from stdvsr.infer import upscale_frames
from stdvsr.metrics import VideoMetrics
from stdvsr.models import DEMO_TEACHERS, load_model

SHIPPED = pytest.mark.parametrize("teacher, preset", [("edvr", "edvr-s"), ("rbpn", "rbpn-s")])


@SHIPPED
def test_demo_teacher_ships_small_and_loads(teacher, preset):
    path = DEMO_TEACHERS[teacher]
    assert path.is_file(), f"run pipelines/train_demo_teacher.sh {teacher}"
    assert path.stat().st_size < 5e6
    model, ckpt = load_model(path)
    assert ckpt["model"]["name"] == preset and model.num_frame == 7 and model.scale == 4
    assert ckpt["config"]["degradation"] == "bd"


@SHIPPED
def test_demo_teacher_beats_bicubic_on_held_out_frames(carphone_frames, teacher, preset):
    model, _ = load_model(DEMO_TEACHERS[teacher])
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


def test_train_demo_teacher_refuses_an_unknown_teacher_in_one_line(tmp_path):
    import subprocess
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "pipelines" / "train_demo_teacher.sh"
    r = subprocess.run(["bash", str(script), "vdsr"], capture_output=True, text=True, env={"OUT": str(tmp_path / "o"),
                                                                                         "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and r.stderr.strip() == "Error: unknown teacher 'vdsr'; use edvr or rbpn"
    assert not (tmp_path / "o").exists()
