"""The main job end to end on the embedded demo set (what `make demo` runs): does distillation help a compact student?

    stage 1  stdvsr cache-teacher   the shipped demo teacher over the first --clips demo training clips
    stage 2  stdvsr distill ×2      the same student, steps and seed: --kd none (the plain baseline) and --kd std
    stage 3  stdvsr evaluate        bicubic, the teacher and both students on the held-out clip (carphone)

It prints the evaluation table and writes ``runs/demo/``: ``summary.json`` (held-out Y-PSNR per row and the wall
time per stage), ``evaluation.json``, the crop comparison and temporal-profile pictures under ``figures/`` and one
run folder per student. Re-running reuses what is finished: a complete cache, a student whose run ended (its
``student.pth`` exists with the same settings); an interrupted run continues from its last checkpoint.

    python pipelines/demo.py                    # the defaults make demo uses (about 13 minutes on 2 CPU cores)
    python pipelines/demo.py --steps 200        # a quicker look
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from stdvsr.cache import CacheConfig
from stdvsr.cache import run as build_cache
from stdvsr.distill import DistillConfig, run_or_reuse
from stdvsr.errors import StdvsrError
from stdvsr.evaluate import EvalConfig, protocol_title
from stdvsr.evaluate import run as evaluate
from stdvsr.io import write_text
from stdvsr.models import DEMO_TEACHER
from stdvsr.progress import stderr, stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo", help="where runs, pictures and summary.json go")
    ap.add_argument("--cache", default="cache/demo-4clips-edvr.zarr", help="the teacher cache to build or reuse")
    ap.add_argument("--clips", type=int, default=4, help="demo training clips to cache (7: all, ~6.5 min)")
    ap.add_argument("--student", default="fastdvdnet-quarter", help="the compact student")
    ap.add_argument("--steps", type=int, default=800, help="distillation steps per student")
    ap.add_argument("--warmup-steps", type=int, default=400,
                    help="L_rec-only steps before STD starts (past the plateau where the student outputs ~bicubic)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak Adam lr, cosine to 1e-6 (1e-3 suits short runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--profile-row", type=int, default=72, help="HR row of the temporal profiles (carphone: 144)")
    args = ap.parse_args()
    out = Path(args.out)
    times: dict[str, float] = {}
    console = stderr()

    console.rule("[bold]1/3 teacher cache")
    t0 = time.perf_counter()
    build_cache(CacheConfig(data="demo", max_clips=args.clips, out=args.cache))
    times["cache"] = time.perf_counter() - t0

    students = {}
    for kd in ("none", "std"):
        console.rule(f"[bold]2/3 distill {args.student} --kd {kd}")
        cfg = DistillConfig(student=args.student, cache=args.cache, out=str(out / f"{args.student}-kd-{kd}"), kd=kd,
                            steps=args.steps, warmup_steps=args.warmup_steps, lr=args.lr, seed=args.seed,
                            workers=args.workers,
                            val_every=max(args.steps // 4, 1), ckpt_every=max(args.steps // 4, 1))
        t0 = time.perf_counter()
        _, what = run_or_reuse(cfg)
        times[f"distill_kd_{kd}"] = time.perf_counter() - t0
        console.print(f"student --kd {kd}: {what} ({times[f'distill_kd_{kd}']:.0f} s)", highlight=False)
        students[kd] = Path(cfg.out) / "student.pth"

    console.rule("[bold]3/3 evaluate on the held-out clip")
    t0 = time.perf_counter()
    result = evaluate(EvalConfig(set="demo", bicubic=True, temporal_profile=args.profile_row,
                                 models=(f"teacher={DEMO_TEACHER}", f"student_kd_none={students['none']}",
                                         f"student_kd_std={students['std']}"),
                                 figures=str(out / "figures"), json=str(out / "evaluation.json")))
    times["evaluate"] = time.perf_counter() - t0

    from stdvsr.cli import print_evaluation

    print_evaluation(result)
    psnr = {m["name"]: round(m["average"]["psnr"], 4) for m in result["models"]}
    summary = {**psnr, "protocol": protocol_title(result["protocol"]), "student": args.student,
               "steps": args.steps, "warmup_steps": args.warmup_steps, "lr": args.lr, "seed": args.seed,
               "cache_clips": args.clips,
               "seconds": {k: round(v, 1) for k, v in times.items()}, "pictures": result["pictures"]}
    write_text(out / "summary.json", json.dumps(summary, indent=1))
    gain = psnr["student_kd_std"] - psnr["student_kd_none"]
    stdout().print(f"STD vs the plain student after {args.steps} steps: {gain:+.2f} dB held-out Y-PSNR "
                   f"(teacher {psnr['teacher'] - psnr['student_kd_none']:+.2f} dB); {out / 'summary.json'}",
                   highlight=False)


if __name__ == "__main__":
    try:
        main()
    except StdvsrError as e:
        raise SystemExit(f"Error: {e}")
