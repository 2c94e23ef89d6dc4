"""The paper's ablations at CPU scale on the demo data: every row the same student budget, several seeds, mean ± std.

    Table 2  w/o STD, SD, TD, STD                  --kd none | sd | td | std
    Table 3  STD vs KD-MSE vs KD-M²_mean           --kd std | mse | mean2 (Gao et al., on F^LR)
    Table 4  F^SR vs F^LR                           --kd std --feature sr | lr
    Table 6  width 1/4, 1/2, 1, each w/o and with STD   fastdvdnet-quarter | -half | fastdvdnet

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
import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table

from stdvsr.distill import DistillConfig, run_or_reuse
from stdvsr.evaluate import EvalConfig
from stdvsr.evaluate import run as evaluate
from stdvsr.io import write_text

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
}


def run_name(student: str, overrides: dict, seed: int) -> str:
    parts = [student] + [f"{k}-{v}" for k, v in sorted(overrides.items()) if v is not None] + [f"seed{seed}"]
    return "_".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="cache/demo-4clips-edvr.zarr", help="teacher cache (pipelines/demo.py builds "
                                                                            "this one)")
    ap.add_argument("--student", default="fastdvdnet-quarter", help="student of tables 2-4")
    ap.add_argument("--tables", default="2,3,4,6", help="comma list of 2, 3, 4, 6")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--warmup-steps", type=int, default=80)
    ap.add_argument("--lambda-sd", type=float, default=1.0)
    ap.add_argument("--lambda-td", type=float, default=100.0)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="runs/ablations")
    ap.add_argument("--json", default="runs/ablations/results.json")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    tables = [t.strip() for t in args.tables.split(",")]
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise SystemExit(f"Error: --tables {','.join(unknown)}: choose from {', '.join(TABLES)}")
    console = Console(stderr=True)

    scores: dict[str, dict] = {}
    for table in tables:
        for label, student, overrides in TABLES[table]:
            student = student or args.student
            for seed in seeds:
                name = run_name(student, overrides, seed)
                if name in scores:
                    continue
                cfg = DistillConfig(student=student, cache=args.cache, out=str(Path(args.out) / name), seed=seed,
                                    steps=args.steps, warmup_steps=args.warmup_steps, lambda_sd=args.lambda_sd,
                                    lambda_td=args.lambda_td, lr=args.lr, workers=args.workers, val_every=0,
                                    ckpt_every=max(args.steps // 4, 1), **overrides)
                console.rule(f"table {table}: {label}, seed {seed} ({name})")
                _, what = run_or_reuse(cfg)
                result = evaluate(EvalConfig(set="demo", models=(f"{name}={Path(cfg.out) / 'student.pth'}",),
                                             figures=str(Path(cfg.out) / "figures")), show_progress=False)
                m = result["models"][0]
                scores[name] = {"psnr": m["average"]["psnr"], "ssim": m["average"]["ssim"], "run": what,
                                "config": dataclasses.asdict(cfg), "protocol": result["protocol"]}
                console.print(f"{name}: {m['average']['psnr']:.2f} dB ({what})", highlight=False)

    out = Console()
    document = {"settings": vars(args), "tables": {}, "runs": scores}
    for table in tables:
        t = Table(title=f"Table {table} at demo scale: held-out carphone Y-PSNR (dB), mean ± std over seeds "
                        f"{args.seeds}, {args.steps} steps each")
        for col in ("row", "student", "PSNR", "SSIM", "per seed"):
            t.add_column(col, justify="left" if col in ("row", "student") else "right")
        rows = []
        for label, student, overrides in TABLES[table]:
            student = student or args.student
            vals = [scores[run_name(student, overrides, s)] for s in seeds]
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
    main()
