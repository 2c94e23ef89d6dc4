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

Part 2 (the rows of step 5 beyond steps × lr; fixed 2026-12-07 before any of them ran): each a change of one setting
from the defaults, with the transductive protocol on carphone, seeds 0, 1, 2, paired with the default row:
``--kd sd`` and ``--kd std`` (the paper's terms at adaptation time, on the teacher's features of the footage);
``--views 2`` (the teacher also labels the horizontally flipped frames); ``--mix-cache`` (a quarter of the steps on
the demo's GT training cache, bikes only); ``--steps`` 100 / 400 / 1600 (gain against wall time); ``--student`` the
demo's output-KD student. A row on bigbuckbunny (seed 0) beside each screens it on validation; a default of adapt
changes only if a row beats the default there by > 0.1 dB and then holds over 3 seeds on bigbuckbunny. Forgetting:
every row is also scored on every 4th frame of ``--forget-clip`` (bigbuckbunny for carphone, which no row adapts
to or mixes in), before and after, against its GT. The labelling time per frame is the teacher pass over the
footage divided by the frames it labelled.

    python pipelines/studies/adapt_study.py --clip carphone --seeds 0,1,2 --steps 1200,100,400,1600 --kd output,sd,std --views 1,2 \
        --mix 0,0.25 --student PLAIN,OUTPUT_KD --forget-clip bigbuckbunny --out runs/adapt_study2/test

(every option with a comma list is swept one at a time from the defaults, not as a grid; ``--grid`` sweeps the grid)

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
#: What a row may change, and how the swept values are read from their comma list.
SWEPT = {"mode": str, "steps": int, "lr": float, "kd": str, "views": int, "mix": float, "student": str}


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


def rows_to_run(args) -> list[dict]:
    """The rows: every swept value of one setting with the others at their defaults (the first value of each
    list), or with ``--grid`` the whole product; each for every seed."""
    values = {k: [SWEPT[k](v) for v in str(getattr(args, k)).split(",")] for k in SWEPT}
    if args.grid:
        settings = [dict(zip(values, combo)) for combo in itertools.product(*values.values())]
    else:
        base = {k: v[0] for k, v in values.items()}
        settings = [base] + [{**base, k: v} for k, vs in values.items() for v in vs[1:]]
    return [{**row, "seed": seed} for row in settings for seed in map(int, args.seeds.split(","))]


def row_name(row: dict, students: list[str]) -> str:
    mix = f"-mix{row['mix']:g}" if row["mix"] else ""
    student = f"-student{students.index(row['student'])}" if students.index(row["student"]) else ""
    return (f"{row['mode']}-s{row['steps']}-lr{row['lr']:g}" + (f"-kd{row['kd']}" if row["kd"] != "output" else "")
            + (f"-v{row['views']}" if row["views"] > 1 else "") + mix + student + f"-seed{row['seed']}")


class Scorer:
    """Y-PSNR against GT of the footage clip (and of ``--forget-clip``: every 4th frame), with the references —
    the student before adaptation and the teacher — computed once per (student, frames)."""

    def __init__(self, lq, gt, forget):
        self.lq, self.gt, self.forget, self.cache = lq, gt, forget, {}

    def frames(self, mode: str) -> list[int]:
        n = len(self.gt)
        return list(range(n)) if mode == "transductive" else list(range(n - held_back(n, HOLDOUT[mode]), n))

    def forgetting(self, model) -> float | None:
        if self.forget is None:
            return None
        lq, gt = self.forget
        return psnr(model, lq, gt, list(range(0, len(gt), 4)))

    def references(self, student: str, mode: str) -> dict:
        key = (student, mode)
        if key not in self.cache:
            before = load_model(student)[0]
            self.cache[key] = {"before": psnr(before, self.lq, self.gt, self.frames(mode)),
                               "teacher": self.cache.get(("teacher", mode)) or psnr(
                                   load_model(DEMO_TEACHER)[0], self.lq, self.gt, self.frames(mode)),
                               "forget_before": self.forgetting(before)}
            self.cache[("teacher", mode)] = self.cache[key]["teacher"]
        return self.cache[key]


def labels(args, out: Path, root: Path, views: int) -> tuple[Path, dict]:
    """The teacher's labels of the footage with ``views`` views (built once, trunk and SR: every --kd reads them)."""
    cfg = AdaptConfig(student=args.student.split(",")[0], data=f"folder:{root}", out=str(out), views=views)
    folder = out / args.clip / (f"views{views}" if views > 1 else "")
    ccfg = dataclasses.replace(cache_config(cfg, folder), store="trunk,sr")
    t0 = time.perf_counter()
    result = build_cache(ccfg, show_progress=False)
    seconds = (result.get("summary") or {}).get("teacher_s") or time.perf_counter() - t0
    return folder, {"views": views, "frames": result["frames"], "teacher_s": round(seconds, 1),
                    "built_now": result["processed"] > 0, "s_per_frame": round(seconds / result["frames"], 3)}


def run_row(row: dict, args, out: Path, root: Path, caches: dict, scorer: Scorer) -> dict:
    students = args.student.split(",")
    cfg = AdaptConfig(student=row["student"], data=f"folder:{root}", out=str(out), workers=0, steps=row["steps"],
                      lr=row["lr"], seed=row["seed"], holdout=HOLDOUT[row["mode"]], kd=row["kd"], views=row["views"],
                      mix_cache=args.mix_cache if row["mix"] else None,
                      mix_share=row["mix"] or _default("mix_share"))
    run_dir = out / args.clip / row_name(row, students)
    dcfg = dataclasses.replace(distill_config(cfg, caches[row["views"]]), out=str(run_dir))
    t0 = time.perf_counter()
    run_or_reuse(dcfg, show_progress=False)
    seconds = time.perf_counter() - t0
    adapted = load_model(run_dir / "student.pth")[0]
    refs = scorer.references(row["student"], row["mode"])
    return {**row, "after": psnr(adapted, scorer.lq, scorer.gt, scorer.frames(row["mode"])), **refs,
            "forget_after": scorer.forgetting(adapted), "finetune_s": round(seconds, 1),
            "frames_scored": len(scorer.frames(row["mode"]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="runs/demo/fastdvdnet-quarter-kd_none/student.pth",
                    help="comma-separated students; the first is the default row's")
    ap.add_argument("--clip", default="bigbuckbunny", help="demo clip whose LR frames are the footage")
    ap.add_argument("--mode", default="transductive", help="transductive and/or inductive")
    ap.add_argument("--steps", default=str(_default("steps")), help="comma-separated fine-tuning steps")
    ap.add_argument("--lr", default=f"{_default('lr'):g}", help="comma-separated learning rates")
    ap.add_argument("--kd", default=_default("kd"), help="comma-separated losses (output, sd, std, td)")
    ap.add_argument("--views", default=str(_default("views")), help="comma-separated view counts")
    ap.add_argument("--mix", default="0", help="comma-separated --mix-share values (0: no --mix-cache)")
    ap.add_argument("--mix-cache", default="cache/demo-6clips-edvr-sr.zarr", help="the GT cache --mix rows mix in")
    ap.add_argument("--forget-clip", default=None, help="demo clip scored before/after for forgetting")
    ap.add_argument("--grid", action="store_true", help="sweep every combination, not one setting at a time")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/adapt_study")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    root, lq, gt = footage(args.clip, out / "footage")
    # the forgetting clip lies apart: the footage folder holds the adapted clip alone (it is a folder: dataset)
    forget = footage(args.forget_clip, out / "forget")[1:] if args.forget_clip else None
    todo = rows_to_run(args)
    caches, label_info = {}, []
    for views in sorted({r["views"] for r in todo}):
        caches[views], info = labels(args, out, root, views)
        label_info.append(info)
    scorer, rows = Scorer(lq, gt, forget), []
    for row in todo:
        rows.append(run_row(row, args, out, root, caches, scorer))
        print(json.dumps(rows[-1]), flush=True)
        write_results(out, args, label_info, rows)  # after every row: a long study's progress is on disk
    print_summary(args.clip, summarise(rows))


def write_results(out: Path, args, label_info: list[dict], rows: list[dict]) -> None:
    write_text(out / "results.json", json.dumps({"protocol": __doc__.split("\n\n", 1)[1].split("Writes")[0],
                                                  "clip": args.clip, "forget_clip": args.forget_clip,
                                                  "mix_cache": args.mix_cache, "labels": label_info, "rows": rows,
                                                  "summary": summarise(rows)}, indent=1))


KEY = ("mode", "steps", "lr", "kd", "views", "mix", "student")


def summarise(rows: list[dict]) -> list[dict]:
    """Per setting: mean ± std over seeds of the paired gain, the share of the gap closed, forgetting."""
    out = []
    for key, group in itertools.groupby(sorted(rows, key=lambda r: [str(r[k]) for k in KEY]),
                                        key=lambda r: tuple(r[k] for k in KEY)):
        group = list(group)
        gains = [r["after"] - r["before"] for r in group]
        gap = [(r["after"] - r["before"]) / (r["teacher"] - r["before"]) for r in group]
        forget = [r["forget_after"] - r["forget_before"] for r in group if r.get("forget_after") is not None]
        out.append({**dict(zip(KEY, key)), "seeds": len(group), "before": group[0]["before"],
                    "teacher": group[0]["teacher"], "gain_mean": statistics.mean(gains),
                    "gain_std": statistics.stdev(gains) if len(gains) > 1 else 0.0, "gain_min": min(gains),
                    "gap_closed": statistics.mean(gap), "finetune_s": statistics.mean(r["finetune_s"] for r in group),
                    "forget_mean": statistics.mean(forget) if forget else None})
    return out


def print_summary(clip: str, summary: list[dict]) -> None:
    from rich.table import Table

    table = Table(title=f"stdvsr adapt on {clip}'s LR frames, Y-PSNR (dB) against its GT")
    for col in ("mode", "steps", "lr", "kd", "views", "mix", "student", "seeds", "before", "teacher",
                "gain (mean ± std)", "min gain", "gap closed", "other clip Δ", "fine-tune s"):
        table.add_column(col)
    for s in summary:
        forget = "—" if s["forget_mean"] is None else f"{s['forget_mean']:+.2f}"
        table.add_row(s["mode"], str(s["steps"]), f"{s['lr']:g}", s["kd"], str(s["views"]), f"{s['mix']:g}",
                      Path(s["student"]).parent.name, str(s["seeds"]), f"{s['before']:.2f}", f"{s['teacher']:.2f}",
                      f"{s['gain_mean']:+.2f} ± {s['gain_std']:.2f}", f"{s['gain_min']:+.2f}",
                      f"{100 * s['gap_closed']:.0f} %", forget, f"{s['finetune_s']:.0f}")
    stdout().print(table)


if __name__ == "__main__":
    main()
