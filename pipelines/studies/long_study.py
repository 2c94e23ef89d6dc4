"""Does the paper's distillation pay once runs are 10× longer and less noisy? (#23) Paired runs of one student at
10× the demo's budget, with EMA weights scored beside the raw ones, and a perturbation control that measures the
noise floor at that budget.

Protocol (fixed on 2026-12-07, before any run of it was looked at):

* student ``fastdvdnet-quarter``; cache: the demo's (the demo teacher over the six bikes shots, trunk + SR frames,
  built on 2 threads); **8000 steps** of batch 2 × 7-frame clips at HR crop 64, Adam, lr 1e-3 cosine to 1e-6,
  today's defaults (``--precision auto``, channels-last) — the same budget, crops and initial weights in every row
  of a seed. Warm-ups and ramps are the first study's (``distill_study.py``) scaled by 10 with the budget.
* every run keeps an EMA of its weights (``--ema 0.999``) and is scored twice from the one trajectory: its raw
  weights and its EMA weights;
* rows: ``plain`` (``--kd none``); ``std`` (the paper's SD + TD as ``--kd std`` runs, warm-up 4000);
  ``output-w0`` (output KD from step 0, the recipe the first study chose); ``std-fit-out-w0`` (the best STD
  combination of the first study's levers on validation: fitted adapter, ramp 1000, ``--lambda-out 1``, from step
  0); and the **control** ``output-w0-t1``: output-w0 on the same cache rebuilt on 1 thread (fp16 values that differ
  in the last place), whose paired Δ to output-w0 is the noise floor a one-ulp change in the targets causes;
* **validation** (the only thing rows are chosen on): ``demo:bigbuckbunny``, all 132 frames, never trained on;
  **test**: carphone, all 120 frames; Y-PSNR, no crop. Held-out PSNR every 1000 steps on every 4th bigbuckbunny
  frame shows whether 8000 steps is converged (< 0.02 dB per 1000 steps at the end);
* seeds 0, 1, 2; a row's score is the mean ± std over seeds of its paired Δ to ``plain`` (same seed); the control's
  is its Δ to ``output-w0``;
* ``plain-fp32`` (plain in fp32, contiguous, as the step ran before #23), paired with plain, measures what the
  bf16 default costs in PSNR — at the demo's budget too (``--steps 800``), since the default serves it;
* Table 2 of the paper at this budget (added 2026-12-08, before any of its runs): ``sd`` and ``td`` (``--kd sd`` /
  ``--kd td``, warm-up 4000 like ``std``), paired with plain; with ``plain`` and ``std`` they are Table 2's four rows
  (``--rows plain,sd,td,std``), scored on carphone like every row, reported as the paper's table is;
* decision: a row that beats plain on validation at every seed is a candidate; it resolves the claim if its test Δ
  is ≥ 0.15 dB at every seed with paired std ≤ 0.05 dB and the control's |Δ| ≤ 0.05 dB. Otherwise the answer is a
  null with the bounds measured (mean ± std of each row's paired test Δ) at this budget.

The mechanism is logged: every run's loss terms every 20 steps, and the gradient probe (each term's gradient ratio
and cosine to L_rec's, where it lands) at the first 20 distillation steps and every 1000 steps after. Runs are resumable (checkpoints every 500 steps; a re-run
reuses finished runs and continues interrupted ones); ``--rows`` / ``--seeds`` pick a subset, ``--steps`` a smoke
run.

    python pipelines/studies/long_study.py --rows plain,output-w0,output-w0-t1 --seeds 0,1,2
    python pipelines/studies/long_study.py --rows plain,sd,td,std --seeds 0,1,2 --jobs 1 --threads 1   # Table 2
    python pipelines/studies/long_study.py --steps 40 --seeds 0 --out runs/long_smoke --json runs/long_smoke.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from pathlib import Path

import torch

from stdvsr.distill import DistillConfig
from stdvsr.experiments import chosen, score, train
from stdvsr.io import write_text
from stdvsr.pool import run_in_processes, run_script
from stdvsr.training import save_checkpoint

VALIDATION = "demo:bigbuckbunny"
STEPS = 8000
BASE = dict(student="fastdvdnet-quarter", steps=STEPS, lr=1e-3, batch_size=2, patch_size=64, clip_frames=7,
            workers=1, val_data=VALIDATION, val_every=1000, val_stride=4, ckpt_every=500, log_first=20, ema=0.999)
FIT = dict(adapter="fit", kd_ramp=1000)
LATE = dict(probe_every=1000)  # the distilled rows' gradient probe every 1000 steps too (the mechanism, late)
# row → (cache key, overrides of BASE). "t2": the demo's cache (2 threads); "t1": the same rebuilt on 1 thread
ROWS: dict[str, tuple[str, dict]] = {
    "plain": ("t2", dict(kd="none", warmup_steps=0)),
    "output-w0": ("t2", dict(kd="output", warmup_steps=0, **LATE)),
    "output-w0-t1": ("t1", dict(kd="output", warmup_steps=0, **LATE)),  # the control
    "std-fit-out-w0": ("t2", dict(kd="std", lambda_out=1.0, warmup_steps=0, **FIT, **LATE)),
    "std": ("t2", dict(kd="std", warmup_steps=4000, **LATE)),
    "sd": ("t2", dict(kd="sd", warmup_steps=4000, **LATE)),  # Table 2's single terms, as the paper's std runs
    "td": ("t2", dict(kd="td", warmup_steps=4000, **LATE)),
    # the precision check: plain as the step ran before #23 (fp32, contiguous), paired with plain (bf16 here)
    "plain-fp32": ("t2", dict(kd="none", warmup_steps=0, precision="fp32", channels_last=False)),
}
REFERENCE = {"output-w0-t1": "output-w0"}  # every other row's reference is plain
WEIGHTS = ("raw", "ema")


def raw_weights(student: Path) -> Path:
    """A copy of ``student.pth`` without ``params_ema``, so the raw weights are scored as a user would load them."""
    ckpt = torch.load(student, weights_only=True)
    ckpt.pop("params_ema", None)
    path = student.with_name("student_raw.pth")
    save_checkpoint(path, ckpt)
    return path


def run_row(row: str, seed: int, cfg: DistillConfig, threads: int) -> dict:
    """One run (trained, resumed or reused) scored raw and EMA on validation and test; a worker process."""
    what, seconds = train(cfg, threads)
    out = Path(cfg.out)
    scores_file = out / "scores.json"  # a reused run keeps its scores (evaluation is deterministic)
    if what == "reused" and scores_file.is_file():
        scores = json.loads(scores_file.read_text())
    else:
        paths = {"ema": out / "student.pth", "raw": raw_weights(out / "student.pth")}
        scores = {w: {split: {k: v for k, v in score(row, paths[w], eval_set).items() if k != "protocol"}
                      for split, eval_set in (("val", VALIDATION), ("test", "demo"))} for w in WEIGHTS}
        scores["train_seconds"] = round(seconds, 1)
        write_text(scores_file, json.dumps(scores))
    logged = [json.loads(line) for line in open(out / "metrics.jsonl")]
    probes = [r for r in logged if r.get("event") == "probe"]
    losses = [{k: v for k, v in r.items() if k == "step" or k.startswith("loss_")} for r in logged
              if "loss_total" in r and "event" not in r]
    return {"row": row, "seed": seed, "run": what, "train_seconds": scores["train_seconds"],
            **{w: scores[w] for w in WEIGHTS},
            "val_curve": [(r["step"], r["val_psnr"]) for r in logged if "val_psnr" in r],
            "losses": losses[::10], "probe_first": probes[0] if probes else None,
            "probes_late": [p for p in probes if p["step"] % 1000 == 0], "threads": threads,
            "config": dataclasses.asdict(cfg)}


def paired(runs: dict, row: str, ref: str, seeds: list[int], weights: str, split: str) -> dict:
    psnr = [runs[row, s][weights][split]["psnr"] for s in seeds if (row, s) in runs]
    diff = [runs[row, s][weights][split]["psnr"] - runs[ref, s][weights][split]["psnr"] for s in seeds
            if (row, s) in runs and (ref, s) in runs]
    return {"psnr": psnr, "mean": statistics.mean(psnr) if psnr else None, "delta": diff,
            "delta_mean": statistics.mean(diff) if diff else None,
            "delta_std": statistics.stdev(diff) if len(diff) > 1 else None}


def summarise(runs: list[dict], rows: list[str], seeds: list[int]) -> dict:
    """Per row and weights (raw, EMA): the paired Δ to its reference on validation and test, and every seed's."""
    by = {(r["row"], r["seed"]): r for r in runs}
    table = {row: {"reference": REFERENCE.get(row, "plain"),
                   **{w: {split: paired(by, row, REFERENCE.get(row, "plain"), seeds, w, split)
                          for split in ("val", "test")} for w in WEIGHTS}} for row in rows}
    # EMA vs raw on the same trajectory: what averaging the weights is worth, per row
    for row in rows:
        gain = [by[row, s]["ema"]["test"]["psnr"] - by[row, s]["raw"]["test"]["psnr"] for s in seeds if (row, s) in by]
        table[row]["ema_minus_raw_test"] = gain
    return {"rows": table}


def print_table(summary: dict) -> None:
    print(f"{'row':16} {'weights':7} {'val PSNR':>9} {'val Δ (paired)':>17} {'test PSNR':>10} "
          f"{'test Δ (paired)':>17}  per-seed test Δ")
    for row, e in summary["rows"].items():
        for w in WEIGHTS:
            def fmt(split):
                d = e[w][split]
                if d["delta_mean"] is None or row == e["reference"]:
                    return "—"
                return f"{d['delta_mean']:+.3f}" + (f" ± {d['delta_std']:.3f}" if d["delta_std"] is not None else "")

            def mean(split):
                return f"{e[w][split]['mean']:.3f}" if e[w][split]["mean"] is not None else "—"

            print(f"{row:16} {w:7} {mean('val'):>9} {fmt('val'):>17} {mean('test'):>10} {fmt('test'):>17}  "
                  + " ".join(f"{d:+.3f}" for d in e[w]["test"]["delta"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--cache", default="cache/demo-6clips-edvr-sr.zarr", help="the demo's cache (key t2)")
    ap.add_argument("--cache-t1", default="cache/demo-6clips-edvr-sr-t1.zarr",
                    help="the same cache built on 1 thread (key t1): OMP_NUM_THREADS=1 stdvsr cache-teacher --data "
                         "demo --max-clips 6 --store trunk,sr --out cache/demo-6clips-edvr-sr-t1.zarr")
    ap.add_argument("--steps", type=int, default=STEPS, help=f"a smoke run only (warm-ups scale); the study's is {STEPS}")
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at once, one process each")
    ap.add_argument("--threads", type=int, help="torch threads per run (default: the cores ÷ --jobs); e.g. --jobs 1 "
                    "--threads 1 leaves a core to other work")
    ap.add_argument("--out", default="runs/long_study")
    ap.add_argument("--json", default="runs/long_study/results.json")
    args = ap.parse_args()
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"Error: --threads {args.threads}: give 1 or more torch threads per run")
    rows = chosen(args.rows, ROWS, "--rows")
    seeds = [int(s) for s in args.seeds.split(",")]
    caches = {"t2": args.cache, "t1": args.cache_t1}
    for key in {ROWS[r][0] for r in rows}:
        if not Path(caches[key]).is_dir():
            raise SystemExit(f"Error: cache {caches[key]} (rows of key {key}) does not exist; see --help")

    def settings(row: str, seed: int) -> dict:
        s = {**BASE, **ROWS[row][1], "cache": caches[ROWS[row][0]], "seed": seed,
             "out": str(Path(args.out) / row / f"seed{seed}")}
        if args.steps != STEPS:
            factor = args.steps / STEPS
            s.update(steps=args.steps, warmup_steps=int(s["warmup_steps"] * factor),
                     kd_ramp=int(s.get("kd_ramp", 0) * factor), val_every=max(1, args.steps // 2),
                     ckpt_every=max(1, args.steps // 2))
        return s

    # the cheap rows of every seed first, so that the comparisons they make are complete soonest
    plan = [(row, seed, DistillConfig(**settings(row, seed))) for row in rows for seed in seeds]
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    runs = []

    def done(_, r: dict) -> None:
        runs.append(r)
        # progress shows the validation score only: rows are chosen on it, the test clip is for the report
        print(f"{r['row']} seed {r['seed']}: val {r['ema']['val']['psnr']:.3f} dB EMA, {r['raw']['val']['psnr']:.3f}"
              f" raw ({r['run']}, {r['train_seconds']:.0f} s)", file=sys.stderr, flush=True)
        write_text(Path(args.json), json.dumps({"protocol": __doc__.split("Protocol")[1].split("The mechanism")[0]
                                                .strip(), "base": BASE, "rows": {r: ROWS[r] for r in rows},
                                                "seeds": seeds, "summary": summarise(runs, rows, seeds),
                                                "runs": runs}, indent=1))

    run_in_processes(args.jobs, {(row, seed): (run_row, (row, seed, cfg, threads)) for row, seed, cfg in plan}, done)
    print_table(summarise(runs, rows, seeds))


if __name__ == "__main__":
    run_script(main)
