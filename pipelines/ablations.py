"""The paper's ablations at CPU scale on the demo data: every row the same student budget, several seeds, mean ± std.

    Table 2  w/o STD, SD, TD, STD                  --kd none | sd | td | std
    Table 3  STD vs KD-MSE vs KD-M²_mean           --kd std | mse | mean2 (Gao et al., on F^LR)
    Table 4  F^SR vs F^LR                           --kd std --feature sr | lr
    Table 6  width 1/4, 1/2, 1, each w/o and with STD   fastdvdnet-quarter | -half | fastdvdnet
    Table x  (not the paper's) STD with λ2 = 10, λ1 = 0.1, L2-normalised attention maps: the loss-scale levers

Each distinct run (student, kd, feature, seed) is trained once and shared by the tables that list it; finished runs
are reused when the script is run again (``stdvsr.distill.run_or_reuse``), so it can be stopped and continued.
Every student is scored with ``stdvsr evaluate --set demo`` (held-out carphone, every frame, Y-PSNR/SSIM, the
default protocol). Writes ``--json`` (every run's settings and scores) and prints the tables.

    python pipelines/ablations.py --cache cache/demo-4clips-edvr.zarr --steps 800 --seeds 0,1,2
    python pipelines/ablations.py --tables 2 --seeds 0 --steps 200        # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import signal
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from stdvsr.errors import StdvsrError
from stdvsr.distill import DistillConfig, run_or_reuse
from stdvsr.evaluate import EvalConfig
from stdvsr.evaluate import run as evaluate
from stdvsr.io import write_text
from stdvsr.progress import stdout, work_progress

# table → [(row label, student, distill overrides)]; a student of None means --student
TABLES = {
    "2": [("w/o STD", None, {"kd": "none"}), ("SD", None, {"kd": "sd"}), ("TD", None, {"kd": "td"}),
          ("STD", None, {"kd": "std"})],
    "3": [("STD", None, {"kd": "std"}), ("KD-MSE", None, {"kd": "mse"}), ("KD-M²_mean", None, {"kd": "mean2"})],
    "4": [("F^SR", None, {"kd": "std"}), ("F^LR", None, {"kd": "std", "feature": "lr"})],
    "6": [(f"{name} {label}", student, {"kd": kd})
          for name, student in (("width 1/4", "fastdvdnet-quarter"), ("width 1/2", "fastdvdnet-half"),
                                ("width 1", "fastdvdnet"))
          for label, kd in (("w/o STD", "none"), ("STD", "std"))],
    # not in the paper: the loss-scale levers tried when STD did not beat the baseline at this scale
    "x": [("STD λ1=1 λ2=100 (paper)", None, {"kd": "std"}), ("STD λ2=10", None, {"kd": "std", "lambda_td": 10.0}),
          ("STD λ1=0.1", None, {"kd": "std", "lambda_sd": 0.1}),
          ("STD, L2-normalised maps", None, {"kd": "std", "sd_norm": "l2"})],
}


def run_name(student: str, overrides: dict, seed: int) -> str:
    parts = [student] + [f"{k}-{v}" for k, v in sorted(overrides.items()) if v is not None] + [f"seed{seed}"]
    return "_".join(parts)


def table_seeds(args, table: str) -> list[int]:
    """The seeds of one table: ``--table-seeds 6=0,1`` overrides ``--seeds`` for table 6 (its width-1 runs are the
    costliest)."""
    for spec in args.table_seeds or ():
        key, _, seeds = spec.partition("=")
        if key == table:
            return [int(x) for x in seeds.split(",")]
    return [int(x) for x in args.seeds.split(",")]


def train_and_score(name: str, cfg: DistillConfig, threads: int, show_progress: bool = False) -> dict:
    """Train (or reuse) one run and score it on the held-out clip; runs in a worker process when --jobs > 1."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    _, what = run_or_reuse(cfg, show_progress=show_progress)
    result = evaluate(EvalConfig(set="demo", models=(f"{name}={Path(cfg.out) / 'student.pth'}",),
                                 figures=str(Path(cfg.out) / "figures")), show_progress=False)
    m = result["models"][0]
    return {"psnr": m["average"]["psnr"], "ssim": m["average"]["ssim"], "run": what,
            "seconds": round(time.perf_counter() - t0, 1), "config": dataclasses.asdict(cfg),
            "protocol": result["protocol"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="cache/demo-4clips-edvr.zarr", help="teacher cache (pipelines/demo.py builds "
                                                                            "this one)")
    ap.add_argument("--student", default="fastdvdnet-quarter", help="student of tables 2-4")
    ap.add_argument("--tables", default="2,3,4,x,6", help="comma list of 2, 3, 4, 6, x")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--warmup-steps", type=int, default=400,
                    help="L_rec-only steps: past the plateau where the student still outputs ~bicubic")
    ap.add_argument("--lambda-sd", type=float, default=1.0)
    ap.add_argument("--lambda-td", type=float, default=100.0)
    ap.add_argument("--lr", type=float, default=1e-3, help="peak Adam lr (cosine); 1e-3 suits these short runs")
    ap.add_argument("--table-seeds", action="append", metavar="TABLE=SEEDS",
                    help="other seeds for one table, e.g. 6=0,1 (repeatable)")
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at the same time, one process each")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads shared by the jobs")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default="runs/ablations")
    ap.add_argument("--json", default="runs/ablations/results.json")
    args = ap.parse_args()
    tables = [t.strip() for t in args.tables.split(",")]
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise SystemExit(f"Error: --tables {','.join(unknown)}: choose from {', '.join(TABLES)}")
    console = Console(stderr=True)

    plan: dict[str, DistillConfig] = {}  # distinct runs, in table order
    for table in tables:
        for label, student, overrides in TABLES[table]:
            student = student or args.student
            for seed in table_seeds(args, table):
                name = run_name(student, overrides, seed)
                settings = dict(student=student, cache=args.cache, out=str(Path(args.out) / name), seed=seed,
                                steps=args.steps, warmup_steps=args.warmup_steps, lambda_sd=args.lambda_sd,
                                lambda_td=args.lambda_td, lr=args.lr, workers=args.workers, val_every=0,
                                ckpt_every=max(args.steps // 4, 1))
                plan.setdefault(name, DistillConfig(**{**settings, **overrides}))
    threads = max(1, args.threads // args.jobs)
    console.print(f"{len(plan)} distinct runs, {args.jobs} at a time with {threads} torch thread(s) each", highlight=False)
    scores: dict[str, dict] = {}
    with work_progress(len(plan), "ablation runs", unit="runs") as bar:
        def done(name: str, score: dict) -> None:
            scores[name] = score
            console.print(f"{name}: {score['psnr']:.2f} dB ({score['run']}, {score['seconds']:.0f} s)",
                          highlight=False)
            bar.advance()
        if args.jobs == 1:
            torch.set_num_threads(threads)
            for name, cfg in plan.items():
                done(name, train_and_score(name, cfg, threads, show_progress=True))
        else:  # one process per run: a 2-core machine trains two single-threaded runs ~2x faster than one
            pool = ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
            try:
                futures = {pool.submit(train_and_score, name, cfg, threads): name for name, cfg in plan.items()}
                for future in as_completed(futures):
                    done(futures[future], future.result())
            except BaseException:  # Ctrl-C, kill or a failed run: stop the training workers too (their
                for process in list(pool._processes.values()):  # checkpoints let the next call continue)
                    process.terminate()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()

    out = stdout()
    document = {"settings": vars(args), "tables": {}, "runs": scores}
    for table in tables:
        t = Table(title=f"Table {table} at demo scale: held-out carphone Y-PSNR (dB), mean ± std over seeds "
                        f"{','.join(map(str, table_seeds(args, table)))}, {args.steps} steps each")
        for col in ("row", "student", "PSNR", "SSIM", "per seed"):
            t.add_column(col, justify="left" if col in ("row", "student") else "right")
        rows = []
        for label, student, overrides in TABLES[table]:
            student = student or args.student
            vals = [scores[run_name(student, overrides, s)] for s in table_seeds(args, table)]
            p, s_ = [v["psnr"] for v in vals], [v["ssim"] for v in vals]
            sd = statistics.stdev(p) if len(p) > 1 else 0.0
            rows.append({"row": label, "student": student, "psnr_mean": statistics.mean(p), "psnr_std": sd,
                         "ssim_mean": statistics.mean(s_), "psnr": p})
            t.add_row(label, student, f"{statistics.mean(p):.2f} ± {sd:.2f}", f"{statistics.mean(s_):.4f}",
                      " ".join(f"{x:.2f}" for x in p))
        document["tables"][table] = rows
        out.print(t)
    write_text(args.json, json.dumps(document, indent=1))
    console.print(f"wrote {args.json}", highlight=False)


if __name__ == "__main__":
    try:
        main()
    except StdvsrError as e:
        raise SystemExit(f"Error: {e}") from None
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept and the others continue from their checkpoints when the same "
              "command is run again", file=sys.stderr, flush=True)
        os._exit(130)  # without waiting for multiprocessing's helper threads of the terminated workers
