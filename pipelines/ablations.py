"""The paper's ablations at CPU scale on the demo data: every row the same student budget, several seeds, mean ± std.

    Table 2  w/o STD, SD, TD, STD                  --kd none | sd | td | std
    Table 3  STD vs KD-MSE vs KD-M²_mean           --kd std | mse | mean2 (Gao et al., on F^LR)
    Table 4  F^SR vs F^LR                           --kd std --feature sr | lr
    Table 5  w/o STD, STD from EDVR, STD from RBPN  --kd none | std on --cache | std on --rbpn-cache (also with
                                                    --sd-norm l2, a post-hoc check of the attention maps' scale)
    Table 6  width 1/4, 1/2, 1, each w/o and with STD   fastdvdnet-quarter | -half | fastdvdnet
    Table x  (not the paper's) STD with λ2 = 10, λ1 = 0.1, L2-normalised attention maps: the loss-scale levers

Each distinct run (student, kd, feature, seed) is trained once and shared by the tables that list it; finished runs
are reused when the script is run again (``stdvsr.distill.run_or_reuse``), so it can be stopped and continued.
Every student is scored with ``stdvsr evaluate --set demo`` (held-out carphone, every frame, Y-PSNR/SSIM, the
default protocol). Writes ``--json`` (every run's settings and scores) and prints the tables.

    python pipelines/ablations.py --cache cache/demo-4clips-edvr.zarr --steps 800 --seeds 0,1,2
    python pipelines/ablations.py --tables 2 --seeds 0 --steps 200        # a quick look
    python pipelines/ablations.py --tables 5 --seeds 0,1 --cache cache/demo-6clips-edvr-sr.zarr \
        --rbpn-cache cache/demo-6clips-rbpn.zarr                          # the two teachers (RBPN: see --help)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from stdvsr.distill import DistillConfig
from stdvsr.experiments import chosen, train_and_score
from stdvsr.io import write_text
from stdvsr.pool import run_in_processes, run_script
from stdvsr.progress import stdout, work_progress

PAPER_FILE = Path(__file__).parent / "paper" / "paper_results.json"

# table → [(row label, student, distill overrides)]; a student of None means --student
TABLES = {
    "2": [("w/o STD", None, {"kd": "none"}), ("SD", None, {"kd": "sd"}), ("TD", None, {"kd": "td"}),
          ("STD", None, {"kd": "std"})],
    "3": [("STD", None, {"kd": "std"}), ("KD-MSE", None, {"kd": "mse"}), ("KD-M²_mean", None, {"kd": "mean2"})],
    "4": [("F^SR", None, {"kd": "std"}), ("F^LR", None, {"kd": "std", "feature": "lr"})],
    # "cache": a key of CACHES, the teacher whose cache the row reads (the others read --cache, the EDVR one)
    "5": [("w/o STD", None, {"kd": "none"}), ("STD-EDVR", None, {"kd": "std"}),
          ("STD-RBPN", None, {"kd": "std", "cache": "rbpn"}),
          # added after the first three rows were scored, to test a mechanism, not as a recipe: the demo RBPN's
          # attention maps are ~65x the demo EDVR's, and L2-normalised maps (--sd-norm l2) take the scale away
          ("STD-RBPN, L2-normalised maps (post hoc)", None, {"kd": "std", "cache": "rbpn", "sd_norm": "l2"})],
    "6": [(f"{name} {label}", student, {"kd": kd})
          for name, student in (("width 1/4", "fastdvdnet-quarter"), ("width 1/2", "fastdvdnet-half"),
                                ("width 1", "fastdvdnet"))
          for label, kd in (("w/o STD", "none"), ("STD", "std"))],
    # not in the paper: the loss-scale levers tried when STD did not beat the baseline at this scale
    "x": [("STD λ1=1 λ2=100 (paper)", None, {"kd": "std"}), ("STD λ2=10", None, {"kd": "std", "lambda_td": 10.0}),
          ("STD λ1=0.1", None, {"kd": "std", "lambda_sd": 0.1}),
          ("STD, L2-normalised maps", None, {"kd": "std", "sd_norm": "l2"})],
}


CACHES = {"rbpn": "rbpn_cache"}  # a row's "cache" override → the option naming that cache


def run_name(student: str, overrides: dict, seed: int) -> str:
    parts = [student] + [f"{k}-{v}" for k, v in sorted(overrides.items()) if v is not None] + [f"seed{seed}"]
    return "_".join(parts)


# (table, row) → (paper table, paper row, column): the paper's Vid4 average (Table 6: Vid4-Walk) for that row
PAPER_ROWS = {
    ("2", "w/o STD"): ("table2", "FastDVDnet w/o STD", -1), ("2", "SD"): ("table2", "FastDVDnet w/ SD", -1),
    ("2", "TD"): ("table2", "FastDVDnet w/ TD", -1), ("2", "STD"): ("table2", "FastDVDnet w/ STD", -1),
    ("3", "STD"): ("table3", "KD-Ours (STD)", -1), ("3", "KD-MSE"): ("table3", "KD-MSE", -1),
    ("3", "KD-M²_mean"): ("table3", "KD-M2_mean", -1),
    ("4", "F^SR"): ("table4", "KD-F_SR", -1), ("4", "F^LR"): ("table4", "KD-F_LR", -1),
    ("5", "w/o STD"): ("table5", "FastDVDnet", -1), ("5", "STD-EDVR"): ("table5", "FastDVDnet-EDVR", -1),
    ("5", "STD-RBPN"): ("table5", "FastDVDnet-RBPN", -1),
    **{("6", f"width {w} {label}"): ("table6", f"FastDVDnet {paper}", i)
       for i, w in enumerate(("1/4", "1/2", "1")) for label, paper in (("w/o STD", "w/o STD"), ("STD", "w/ STD"))},
}
COLUMNS = ("row", "student", "PSNR mean ± std", "Δ (paired)", "SSIM", "per seed", "paper", "paper Δ")


def reference_row(table: str, label: str) -> str:
    """The row a row is compared with: the table's first row, or in Table 6 the same width without STD."""
    if table == "6":
        return label.replace(" STD", " w/o STD") if not label.endswith("w/o STD") else label
    return TABLES[table][0][0]


def paper_value(table: str, label: str) -> float | None:
    key = PAPER_ROWS.get((table, label))
    if key is None:
        return None
    return json.loads(PAPER_FILE.read_text())[key[0]]["rows"][key[1]][key[2]]


def table_rows(table: str, args, scores: dict) -> list[dict]:
    """Each row's per-seed held-out PSNR, mean ± std, and its difference to the reference row seed by seed (the
    same seed means the same initial weights and crops, so the paired difference is the sharper statistic)."""
    seeds = table_seeds(args, table)
    psnr, ssim, student_of = {}, {}, {}
    for label, student, overrides in TABLES[table]:
        student_of[label] = student = student or args.student
        runs = [scores[run_name(student, overrides, seed)] for seed in seeds]
        psnr[label], ssim[label] = [r["psnr"] for r in runs], [r["ssim"] for r in runs]
    rows = []
    for label, _, _ in TABLES[table]:
        ref = reference_row(table, label)
        diff = [a - b for a, b in zip(psnr[label], psnr[ref])]
        paper, paper_ref = paper_value(table, label), paper_value(table, ref)
        rows.append({"row": label, "student": student_of[label], "seeds": seeds, "psnr": psnr[label],
                     "psnr_mean": statistics.mean(psnr[label]), "psnr_std": spread(psnr[label]),
                     "ssim_mean": statistics.mean(ssim[label]), "reference": ref,
                     "delta_mean": statistics.mean(diff), "delta_std": spread(diff),
                     "paper": paper, "paper_delta": None if paper is None or paper_ref is None else paper - paper_ref})
    return rows


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def format_row(row: dict) -> list[str]:
    same, one = row["reference"] == row["row"], len(row["psnr"]) == 1  # one seed: no spread to show
    return [row["row"], row["student"], f"{row['psnr_mean']:.2f}" + ("" if one else f" ± {row['psnr_std']:.2f}"),
            "—" if same else f"{row['delta_mean']:+.2f}" + ("" if one else f" ± {row['delta_std']:.2f}"),
            f"{row['ssim_mean']:.4f}",
            " ".join(f"{x:.2f}" for x in row["psnr"]), "—" if row["paper"] is None else f"{row['paper']:.2f}",
            "—" if same or row["paper_delta"] is None else f"{row['paper_delta']:+.2f}"]


def table_title(table: str, args) -> str:
    seeds = ",".join(map(str, table_seeds(args, table)))
    name = "Table x (loss scales)" if table == "x" else f"Table {table}"
    return (f"{name} at demo scale: held-out carphone Y-PSNR (dB), seeds {seeds}, {args.steps} steps each "
            f"({args.warmup_steps} warm-up); Δ vs {'the same width w/o STD' if table == '6' else TABLES[table][0][0]}"
            f"; paper: {'Vid4-Walk' if table == '6' else 'Vid4 average'}")


def markdown(document: dict, args) -> str:
    lines = []
    for table, rows in document["tables"].items():
        lines += [f"**{table_title(table, args)}**", "", "| " + " | ".join(COLUMNS) + " |",
                  "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(format_row(row)) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def table_seeds(args, table: str) -> list[int]:
    """The seeds of one table: ``--table-seeds 6=0,1`` overrides ``--seeds`` for table 6 (its width-1 runs are the
    costliest)."""
    for spec in args.table_seeds or ():
        key, _, seeds = spec.partition("=")
        if key == table:
            return [int(x) for x in seeds.split(",")]
    return [int(x) for x in args.seeds.split(",")]


def plan_runs(args, tables: list[str]) -> dict[str, DistillConfig]:
    """The distinct runs of ``tables``, in table order: each row at each of its table's seeds, on its teacher's
    cache. Refuses a cache that does not exist, naming the row that needs it."""
    plan: dict[str, DistillConfig] = {}
    for table in tables:
        for label, student, overrides in TABLES[table]:
            student = student or args.student
            cache = getattr(args, CACHES[overrides["cache"]]) if "cache" in overrides else args.cache
            if not Path(cache).exists():
                raise SystemExit(f"Error: cache {cache} (Table {table}, row {label}) does not exist; see --help")
            options = {k: v for k, v in overrides.items() if k != "cache"}
            for seed in table_seeds(args, table):
                name = run_name(student, overrides, seed)
                settings = dict(student=student, cache=cache, out=str(Path(args.out) / name), seed=seed,
                                steps=args.steps, warmup_steps=args.warmup_steps, lambda_sd=args.lambda_sd,
                                lambda_td=args.lambda_td, lr=args.lr, workers=args.workers, val_every=0,
                                ckpt_every=max(args.steps // 4, 1))
                plan.setdefault(name, DistillConfig(**{**settings, **options}))
    return plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="cache/demo-4clips-edvr.zarr",
                    help="teacher cache of the ablations (build it with: stdvsr cache-teacher --max-clips 4 "
                         "--out cache/demo-4clips-edvr.zarr)")
    ap.add_argument("--rbpn-cache", default="cache/demo-6clips-rbpn.zarr",
                    help="Table 5's RBPN cache, of the same clips as --cache (build it with: stdvsr cache-teacher "
                         "--teacher rbpn --max-clips 6 "
                         "--out cache/demo-6clips-rbpn.zarr)")
    ap.add_argument("--student", default="fastdvdnet-quarter", help="student of tables 2-5")
    ap.add_argument("--tables", default="2,3,4,x,6", help="comma list of 2, 3, 4, 5, 6, x")
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
    ap.add_argument("--markdown", help="also write the tables as Markdown (docs/RESULTS.md includes them)")
    args = ap.parse_args()
    tables = chosen(args.tables, TABLES, "--tables")
    console = Console(stderr=True)

    plan = plan_runs(args, tables)
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
            run_in_processes(args.jobs, {name: (train_and_score, (name, cfg, threads)) for name, cfg in plan.items()},
                             done)

    document = {"settings": vars(args), "tables": {t: table_rows(t, args, scores) for t in tables}, "runs": scores}
    out = stdout()
    for table in tables:
        t = Table(title=table_title(table, args))
        for col in COLUMNS:
            t.add_column(col, justify="left" if col in ("row", "student") else "right")
        for row in document["tables"][table]:
            t.add_row(*format_row(row))
        out.print(t)
    if args.markdown:
        write_text(args.markdown, markdown(document, args))
        console.print(f"wrote {args.markdown}", highlight=False)
    write_text(args.json, json.dumps(document, indent=1))
    console.print(f"wrote {args.json}", highlight=False)


if __name__ == "__main__":
    run_script(main)
