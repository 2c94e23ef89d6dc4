"""Held-out quality of a teacher checkpoint on the demo's test clip (carphone, all 120 frames) next to bicubic.

    .venv/bin/python pipelines/eval_demo_teacher.py [stdvsr/weights/edvr_s_demo.pth] [--key params]

Y-PSNR and Y-SSIM, no border crop, per frame → per clip → mean (stdvsr.metrics); BD ×4 inputs made from the
clip's HR frames; windows padded by replication at the clip's ends. (`stdvsr evaluate` will generalise this.)
"""

from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

from stdvsr.data import load_clips, read_frames
from stdvsr.infer import upscale_frames
from stdvsr.metrics import VideoMetrics
from stdvsr.models import DEMO_TEACHER, load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", nargs="?", default=str(DEMO_TEACHER))
    ap.add_argument("--key", default=None, help="params or params_ema (default: params_ema when present)")
    args = ap.parse_args()
    model, _ = load_model(args.weights, key=args.key)
    rows = {"teacher": VideoMetrics(), "bicubic": VideoMetrics()}
    for clip in load_clips("demo", "test"):
        lq, gt = read_frames(clip, range(len(clip)))
        sr = upscale_frames(model, lq)
        bic = F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
        for f in range(len(clip)):
            rows["teacher"].add(clip.name, f, sr[f], gt[f])
            rows["bicubic"].add(clip.name, f, bic[f], gt[f])
    print(f"held-out demo clip(s), {len(clip)} frames, Y channel, crop 0, BD x4 — {args.weights}")
    for name, m in rows.items():
        s = m.summary()
        print(f"  {name:8s} PSNR {s['psnr']:.2f} dB  SSIM {s['ssim']:.4f}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
