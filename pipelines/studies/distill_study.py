"""Does distillation pay, and which lever makes it pay? Paired runs of one student under one budget, tuned on a
validation video and reported on the held-out test clip.

Protocol (fixed before any result was looked at):

* student ``fastdvdnet-quarter``; cache: the demo teacher over the six bikes shots (``--max-clips 6``, 250 frames),
  optionally with cached dihedral views (``--views``); every run 800 steps of batch 2 × 7-frame clips at HR crop 64,
  Adam, lr 1e-3 cosine to 1e-6 — the same budget, crops and initial weights in every row of a seed;
* **validation** (the only thing rows are chosen on): ``demo:bigbuckbunny``, a video the student never trains on,
  all 132 frames; **test**: carphone (``stdvsr evaluate --set demo``), all 120 frames; Y-PSNR, no crop;
* seeds 0, 1, 2; a row's score is the mean ± std over seeds of its *paired* difference to ``plain`` (same seed);
* the recipe shipped is the row with the largest mean validation Δ among those whose every seed is positive on
  validation; its test Δ is reported as it comes out, whatever it is.

Rows are levers alone and combined (see ``ROWS``). Every run also logs its first distillation steps
(``--log-first``): each term's gradient norm, ratio and cosine to L_rec's, the share landing in the student's
reconstruction head and the share per frame of the clip — the mechanism, not only the score. Finished runs are
reused (``run_or_reuse``), so the study can be stopped and continued; ``--rows`` / ``--seeds`` pick a subset.

    python pipelines/studies/distill_study.py --rows plain,std,std-fit --seeds 0,1,2 \\
        --json docs/results/distill_study.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from pathlib import Path

from stdvsr.distill import DistillConfig
from stdvsr.experiments import chosen, score, train
from stdvsr.io import write_text
from stdvsr.pool import run_in_processes, run_script

VALIDATION = "demo:bigbuckbunny"
BASE = dict(student="fastdvdnet-quarter", steps=800, warmup_steps=400, lr=1e-3, batch_size=2, patch_size=64,
            clip_frames=7, workers=1, val_data=VALIDATION, val_every=200, val_stride=4, ckpt_every=200,
            log_first=20)
FIT = dict(adapter="fit", kd_ramp=100)

# row → (cache key, overrides of BASE). Cache keys: "v1" = one view (identity), "v2" = two cached views.
ROWS: dict[str, tuple[str, dict]] = {
    "plain": ("v1", dict(kd="none")),
    "std": ("v1", dict(kd="std")),                                   # the paper's terms, PyTorch adapter, no ramp
    "std-fit": ("v1", dict(kd="std", **FIT)),                        # switch-on shock removed
    "output": ("v1", dict(kd="output")),                             # teacher SR only, λ 1
    "std-fit-out": ("v1", dict(kd="std", lambda_out=1.0, **FIT)),    # STD + output KD
    "std-fit-fb1": ("v1", dict(kd="std", td_forget_bias=1.0, **FIT)),  # TD sees more than the last frame
    "std-fit-w100": ("v1", dict(kd="std", warmup_steps=100, **FIT)),   # distil 7/8 of the budget, not 1/2
    "std-fit-out-w100": ("v1", dict(kd="std", lambda_out=1.0, warmup_steps=100, **FIT)),
    "sd-l2": ("v1", dict(kd="sd", sd_norm="l2", lambda_sd=20.0)),    # shape of the maps, not their scale
    # second wave, added after seed 0 of the rows above on validation: output KD carries the gain, so give it the
    # whole budget (it has no switch-on shock to warm up past) and a larger weight
    "output-w0": ("v1", dict(kd="output", warmup_steps=0)),
    "output-w0-l2": ("v1", dict(kd="output", warmup_steps=0, lambda_sd=2.0)),
    "std-fit-out-w0": ("v1", dict(kd="std", lambda_out=1.0, warmup_steps=0, **FIT)),
    "plain-v2": ("v2", dict(kd="none")),                             # cached flipped views: both arms see them
    "std-fit-out-v2": ("v2", dict(kd="std", lambda_out=1.0, **FIT)),
}
REFERENCE = {"v1": "plain", "v2": "plain-v2"}


def run_row(row: str, seed: int, cfg: DistillConfig, threads: int) -> dict:
    """One run (trained or reused) scored on the validation video and the test clip; a worker process."""
    what, seconds = train(cfg, threads)
    student = Path(cfg.out) / "student.pth"
    rows = [json.loads(line) for line in open(Path(cfg.out) / "metrics.jsonl")]
    probes = [r for r in rows if r.get("event") == "probe"]
    scores_file = Path(cfg.out) / "scores.json"  # a reused run keeps its scores (evaluation is deterministic)
    if what == "reused" and scores_file.is_file():
        scores = json.loads(scores_file.read_text())
    else:
        scores = {split: {k: v for k, v in score(row, student, eval_set).items() if k != "protocol"}
                  for split, eval_set in (("val", VALIDATION), ("test", "demo"))}
        scores["train_seconds"] = round(seconds, 1)
        write_text(scores_file, json.dumps(scores))
    return {"row": row, "seed": seed, "run": what, "train_seconds": scores["train_seconds"],
            "val": scores["val"], "test": scores["test"],
            "val_curve": [(r["step"], r["val_psnr"]) for r in rows if "val_psnr" in r],
            "probe_first": probes[0] if probes else None, "probe_last": probes[-1] if probes else None,
            "config": dataclasses.asdict(cfg)}


def summarise(runs: list[dict], rows: list[str], seeds: list[int]) -> dict:
    """Per row: mean ± std of the paired Δ to its reference row on validation and test, and every seed's Δ."""
    by = {(r["row"], r["seed"]): r for r in runs}
    table = {}
    for row in rows:
        ref = REFERENCE[ROWS[row][0]]
        entry = {"reference": ref}
        for split in ("val", "test"):
            psnr = [by[row, s][split]["psnr"] for s in seeds if (row, s) in by]
            diff = [by[row, s][split]["psnr"] - by[ref, s][split]["psnr"] for s in seeds
                    if (row, s) in by and (ref, s) in by]
            entry[split] = {"psnr": psnr, "mean": statistics.mean(psnr) if psnr else None,
                            "delta": diff, "delta_mean": statistics.mean(diff) if diff else None,
                            "delta_std": statistics.stdev(diff) if len(diff) > 1 else None}
        table[row] = entry
    eligible = [r for r in rows if r not in REFERENCE.values() and len(table[r]["val"]["delta"]) == len(seeds)
                and all(d > 0 for d in table[r]["val"]["delta"])]
    chosen = max(eligible, key=lambda r: table[r]["val"]["delta_mean"], default=None)
    return {"rows": table, "chosen_on_validation": chosen}


def print_table(summary: dict, seeds: list[int]) -> None:
    print(f"{'row':18} {'val PSNR':>9} {'val Δ (paired)':>18} {'test PSNR':>10} {'test Δ (paired)':>18}  "
          f"per-seed test Δ")
    for row, e in summary["rows"].items():
        def fmt(split):
            d = e[split]
            if d["delta_mean"] is None or row == e["reference"]:
                return "—"
            return f"{d['delta_mean']:+.3f}" + (f" ± {d['delta_std']:.3f}" if d["delta_std"] is not None else "")
        mean = lambda split: f"{e[split]['mean']:.3f}" if e[split]["mean"] is not None else "—"  # noqa: E731
        print(f"{row:18} {mean('val'):>9} {fmt('val'):>18} {mean('test'):>10} {fmt('test'):>18}  "
              + " ".join(f"{d:+.3f}" for d in e["test"]["delta"]))
    print(f"chosen on validation (every seed positive, largest mean Δ): {summary['chosen_on_validation']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--cache", default="cache/demo-6clips-edvr.zarr", help="the one-view cache (key v1)")
    ap.add_argument("--cache-v2", default="cache/demo-6clips-2views-edvr.zarr", help="the two-view cache (key v2)")
    ap.add_argument("--steps", type=int, default=BASE["steps"],
                    help="a quick smoke run only (warm-ups are scaled with it); the study's budget is 800")
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at once, one single-threaded process each")
    ap.add_argument("--out", default="runs/study")
    ap.add_argument("--json", default="runs/study/results.json")
    args = ap.parse_args()
    rows = chosen(args.rows, ROWS, "--rows")
    rows = list(dict.fromkeys([*(REFERENCE[ROWS[r][0]] for r in rows), *rows]))  # references first
    seeds = [int(s) for s in args.seeds.split(",")]
    caches = {"v1": args.cache, "v2": args.cache_v2}
    def settings(row: str, seed: int) -> dict:
        s = {**BASE, **ROWS[row][1], "cache": caches[ROWS[row][0]], "seed": seed,
             "out": str(Path(args.out) / row / f"seed{seed}")}
        if args.steps != BASE["steps"]:
            factor = args.steps / BASE["steps"]
            s.update(steps=args.steps, warmup_steps=int(s["warmup_steps"] * factor),
                     kd_ramp=int(s.get("kd_ramp", 0) * factor), val_every=args.steps, ckpt_every=args.steps)
        return s

    plan = [(row, seed, DistillConfig(**settings(row, seed))) for seed in seeds for row in rows]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    previous = Path(args.json)
    runs = []
    def done(_, r: dict) -> None:
        runs.append(r)
        # progress shows the validation score only: rows are chosen on it, the test clip is for the report
        print(f"{r['row']} seed {r['seed']}: val {r['val']['psnr']:.3f} dB ({r['run']}, {r['train_seconds']:.0f} s)",
              file=sys.stderr, flush=True)
        write_text(previous, json.dumps({"protocol": __doc__.split("Protocol")[1].split("Rows are")[0].strip(),
                                         "base": BASE, "rows": {r: ROWS[r] for r in rows}, "seeds": seeds,
                                         "summary": summarise(runs, rows, seeds), "runs": runs}, indent=1))

    run_in_processes(args.jobs, {(row, seed): (run_row, (row, seed, cfg, threads)) for row, seed, cfg in plan},
                     done)
    print_table(summarise(runs, rows, seeds), seeds)


if __name__ == "__main__":
    run_script(main)
