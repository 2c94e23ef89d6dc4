"""How much does `stdvsr adapt` lift a student on footage whose HR original it never reads? (issue #22, step 5)

Protocol, fixed before any result was looked at:
- the student: the demo's plain student (``--student``, default ``runs/demo/fastdvdnet-quarter-kd_none/student.pth``);
  the teacher: the shipped demo EDVR-s;
- the footage: a demo clip's LR frames, BD ×4 of its GT rounded to 8-bit PNGs (what a camera gives); the teacher
  labels them once per clip, shared by every row of that clip;
- each row is ``adapt``'s fine-tuning (``stdvsr.adapt.distill_config``: the same code path as the command) with its
  defaults but the swept ``--steps`` / ``--lr``, for each ``--seeds`` (crops and batch order; the initial weights
  are the student's for every seed);
- ``transductive``: adapt's default ``--holdout 0.1``, scored on all frames; ``inductive``: ``--holdout 0.5``, the
  first half adapted on, scored on the second half only;
- the metric: Y-PSNR (uint8, Y channel, no border crop) against the clip's GT, which nothing in the adaptation reads,
  with the same 8-bit LR frames as input for the student before and after and for the teacher (its ceiling here);
  reported per seed, as mean ± std of the paired gains (after − before), and as the fraction of the
  student→teacher gap closed;
- choosing settings: on ``bigbuckbunny`` (the validation clip) only; ``carphone`` (the test clip) is run with the
  settings chosen there, never compared across settings.

    python pipelines/adapt_study.py --clip bigbuckbunny --steps 400,1200 --lr 1e-4,3e-4 --out runs/adapt_study/val
    python pipelines/adapt_study.py --clip carphone --seeds 0,1,2 --modes transductive --out runs/adapt_study/test_t
    python pipelines/adapt_study.py --clip carphone --seeds 0,1,2 --modes inductive --out runs/adapt_study/test_i

(the published runs: docs/results/adapt_study_*.json; --steps / --lr default to adapt's own defaults, the
settings chosen on bigbuckbunny)

Writes ``OUT/results.json`` (every row, the protocol, the times) and prints a table; reruns reuse finished runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from stdvsr.adapt import AdaptConfig, cache_config, distill_config
from stdvsr.cache import run as build_cache
from stdvsr.data import list_frames, load_clips, read_hr, to_tensor, write_footage
from stdvsr.distill import held_back, run_or_reuse
from stdvsr.infer import upscale_frames
from stdvsr.io import read_image, write_text
from stdvsr.metrics import VideoMetrics
from stdvsr.models import DEMO_TEACHER, load_model
from stdvsr.progress import stdout

HOLDOUT = {"transductive": 0.1, "inductive": 0.5}


def footage(clip_name: str, root: Path) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """The clip's LR frames as 8-bit PNGs in ``root/<clip>/`` (written once), and (LR as read back, GT) tensors."""
    clip = load_clips(f"demo:{clip_name}")[0]
    folder = write_footage(clip, root / clip_name)
    lq = to_tensor([read_image(p) for p in list_frames(folder)])
    return root, lq, read_hr(clip, range(len(clip)))


def psnr(model, lq: torch.Tensor, gt: torch.Tensor, frames: list[int]) -> float:
    metrics = VideoMetrics(metrics=("psnr",))
    with torch.no_grad():
        for f, sr in zip(frames, upscale_frames(model, lq, frames)):
            metrics.add("clip", f, sr, gt[f])
    return metrics.summary()["psnr"]


def _default(name: str):
    return next(f.default for f in dataclasses.fields(AdaptConfig) if f.name == name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="runs/demo/fastdvdnet-quarter-kd_none/student.pth")
    ap.add_argument("--clip", default="bigbuckbunny", help="demo clip whose LR frames are the footage")
    ap.add_argument("--steps", default=str(_default("steps")), help="comma-separated fine-tuning steps")
    ap.add_argument("--lr", default=f"{_default('lr'):g}", help="comma-separated learning rates")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--modes", default="transductive", help="transductive and/or inductive")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/adapt_study")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    root, lq, gt = footage(args.clip, out / "footage")
    n = len(gt)
    base = AdaptConfig(student=args.student, data=f"folder:{root}", out=str(out), workers=0)
    t0 = time.perf_counter()
    build_cache(cache_config(base, out / args.clip))  # the labels, shared by every row
    label_s = time.perf_counter() - t0
    before_model = load_model(args.student)[0]
    teacher = load_model(DEMO_TEACHER)[0]
    rows, references = [], {}  # references: frames scored → (before, teacher), computed once
    for mode, steps, lr, seed in itertools.product(args.modes.split(","), map(int, args.steps.split(",")),
                                                   map(float, args.lr.split(",")), map(int, args.seeds.split(","))):
        frames = list(range(n)) if mode == "transductive" else list(range(n - held_back(n, HOLDOUT[mode]), n))
        cfg = dataclasses.replace(base, steps=steps, lr=lr, seed=seed, holdout=HOLDOUT[mode])
        run_dir = out / args.clip / f"{mode}-s{steps}-lr{lr:g}-seed{seed}"
        dcfg = dataclasses.replace(distill_config(cfg, out / args.clip), out=str(run_dir))
        t0 = time.perf_counter()
        run_or_reuse(dcfg, show_progress=False)
        seconds = time.perf_counter() - t0
        after = psnr(load_model(run_dir / "student.pth")[0], lq, gt, frames)
        if mode not in references:
            references[mode] = psnr(before_model, lq, gt, frames), psnr(teacher, lq, gt, frames)
        rows.append({"mode": mode, "steps": steps, "lr": lr, "seed": seed, "after": after,
                     "before": references[mode][0], "teacher": references[mode][1],
                     "finetune_s": round(seconds, 1), "frames_scored": len(frames)})
        print(json.dumps(rows[-1]), flush=True)
    summary = summarise(rows)
    write_text(out / "results.json", json.dumps({"protocol": __doc__.split("\n\n")[1], "clip": args.clip,
                                                  "student": args.student, "label_s": round(label_s, 1),
                                                  "rows": rows, "summary": summary}, indent=1))
    print_summary(args.clip, summary)


def summarise(rows: list[dict]) -> list[dict]:
    """Per (mode, steps, lr): mean ± std over seeds of the paired gain, and the share of the gap closed."""
    out = []
    for key, group in itertools.groupby(sorted(rows, key=lambda r: (r["mode"], r["steps"], r["lr"])),
                                        key=lambda r: (r["mode"], r["steps"], r["lr"])):
        group = list(group)
        gains = [r["after"] - r["before"] for r in group]
        gap = [(r["after"] - r["before"]) / (r["teacher"] - r["before"]) for r in group]
        out.append({"mode": key[0], "steps": key[1], "lr": key[2], "seeds": len(group),
                    "before": group[0]["before"], "teacher": group[0]["teacher"],
                    "gain_mean": statistics.mean(gains), "gain_std": statistics.stdev(gains) if len(gains) > 1 else 0.0,
                    "gain_min": min(gains), "gap_closed": statistics.mean(gap),
                    "finetune_s": statistics.mean(r["finetune_s"] for r in group)})
    return out


def print_summary(clip: str, summary: list[dict]) -> None:
    from rich.table import Table

    table = Table(title=f"stdvsr adapt on {clip}'s LR frames, Y-PSNR (dB) against its GT")
    for col in ("mode", "steps", "lr", "seeds", "before", "teacher", "gain (mean ± std)", "min gain", "gap closed",
                "fine-tune s"):
        table.add_column(col)
    for s in summary:
        table.add_row(s["mode"], str(s["steps"]), f"{s['lr']:g}", str(s["seeds"]), f"{s['before']:.2f}",
                      f"{s['teacher']:.2f}", f"{s['gain_mean']:+.2f} ± {s['gain_std']:.2f}", f"{s['gain_min']:+.2f}",
                      f"{100 * s['gap_closed']:.0f} %", f"{s['finetune_s']:.0f}")
    stdout().print(table)


if __name__ == "__main__":
    main()
