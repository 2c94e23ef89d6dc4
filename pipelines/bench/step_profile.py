"""Where a distillation step's time goes, per phase, for ``--kd none``, ``output`` and ``std`` side by side (#23).

Each row is a real ``stdvsr distill`` run (``stdvsr.distill.run``) on the same cache, student, batch, crop, seed and
thread count; the loop itself splits every step into disjoint phases between its own timestamps (what every run
logs to metrics.jsonl): ``data`` (waiting for the batch), ``teacher`` (the targets: the cached head re-run on the
stored trunk, or a stored tier), ``student`` (its forward), ``terms`` (the loss terms' forward: SD, TD's ConvLSTM),
``backward``, ``optimizer``; ``other`` is the rest of the step (the loss check, logging). Means leave out the first
``--warm`` steps. Validation is timed apart — one call of the validator the run would use (``--val-data`` at
``--val-stride``), on the trained student — and spread over ``--val-every`` steps, as a run pays it. The last line is
the end-to-end rate, samples (clips of ``--clip-frames`` frames) per second, validation included.

    .venv/bin/python pipelines/bench/step_profile.py                       # the demo's student, cache and budget
    .venv/bin/python pipelines/bench/step_profile.py --kd none,std --steps 40 --json runs/step_profile.json
    .venv/bin/python pipelines/bench/step_profile.py --paths now          # today's step alone

``--paths before,now`` runs each mode twice, side by side: ``before`` is the step as it was until #23 as far as flags reach it (fp32,
contiguous tensors, every crop read from disk, the trunk-only ``--baseline-cache``, so output KD re-runs the
teacher's head for its SR targets; two changes have no flag: fused Adam and ground truth cropped before its
conversion to float), ``now`` today's defaults (``--precision auto``: bf16 where the CPU has bf16 arithmetic;
channels-last student; whole frames kept in RAM; the ``--cache`` with a stored ``sr`` tier, which make demo
builds). For today's commit itself, run the same bench from a checkout of it. The last table gives now ÷ before in
samples per second, and each mode's step ÷ the plain step.

Time it on a quiet machine (two jobs on two cores slow each other several-fold) and say which CPU it was.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from stdvsr.distill import DistillConfig
from stdvsr.distill import run as distill
from stdvsr.errors import StdvsrError
from stdvsr.io import write_text
from stdvsr.models import load_model
from stdvsr.perf import native_bf16
from stdvsr.pool import run_script

PHASES = ("data_wait", "teacher", "student", "terms", "backward", "optimizer")


def phase_means(metrics: Path, warm: int) -> dict:
    """Mean seconds per phase over the logged steps after ``warm`` (log_every 1), and ``other``."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows = [r for r in rows if "step_s" in r and r["step"] > warm]
    if not rows:
        raise StdvsrError(f"{metrics}: no step after --warm {warm} was logged; raise --steps")
    means = {k: statistics.mean(r[f"{k}_s"] for r in rows) for k in (*PHASES, "step")}
    means["other"] = max(means["step"] - sum(means[k] for k in PHASES), 0.0)
    return means | {"steps_timed": len(rows)}


#: the step before #23 and today's defaults (DistillConfig fields; "cache" names the argument with the cache)
PATHS = {"before": {"precision": "fp32", "channels_last": False, "cache_ram_mb": 0, "cache": "baseline_cache"},
         "now": {"precision": "auto", "channels_last": True, "cache_ram_mb": 1024, "cache": "cache"}}


def validation_seconds(student: Path, args, cache: str, fast_layout: bool) -> float:
    """One call of the validator a run with ``--val-data`` makes, on ``student`` (channels-last as the run holds
    it if ``fast_layout``), at this process's threads."""
    from stdvsr.cache import CacheReader
    from stdvsr.evaluate import Validator, validation_clips
    from stdvsr.perf import channels_last

    reader = CacheReader(cache)
    validator = Validator(validation_clips(args.val_data, reader.data, None), reader.fingerprint["degradation"],
                          reader.fingerprint["padding"], args.val_stride)
    model = load_model(student)[0]
    if fast_layout:
        channels_last(model)
    validator(model)  # the first call reads and degrades the frames once; a run pays that once too
    t0 = time.perf_counter()
    validator(model)
    return time.perf_counter() - t0


def profile(kd: str, path: str, args, work: Path) -> dict:
    settings = dict(PATHS[path])
    cache = getattr(args, settings.pop("cache"))
    out = work / f"{kd}-{path}"
    cfg = DistillConfig(student=args.student, cache=cache, out=str(out), kd=kd, steps=args.steps,
                        warmup_steps=0, batch_size=args.batch_size, patch_size=args.patch_size,
                        clip_frames=args.clip_frames, workers=args.workers, seed=args.seed, val_every=0,
                        log_every=1, ckpt_every=args.steps, device="cpu", **settings)
    result = distill(cfg, show_progress=False)
    means = phase_means(out / "metrics.jsonl", args.warm)
    val_s = validation_seconds(Path(result["student"]), args, cache, cfg.channels_last) if args.val_every else 0.0
    per_step = means["step"] + val_s / max(args.val_every, 1)
    return {**means, "validation_call_s": val_s, "validation_per_step_s": val_s / max(args.val_every, 1),
            "samples_per_s": args.batch_size / per_step, "precision": result["precision"],
            "tiers_read": result["tiers_read"], "cache": cache}


def cpu_name() -> str:
    """The CPU's model name (Linux), which decides the figures as much as the code does."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def print_table(rows: dict[str, dict], args) -> None:
    from rich.table import Table

    from stdvsr.progress import stdout

    table = Table(title=f"{args.student}, batch {args.batch_size} × {args.clip_frames} frames, HR crop "
                        f"{args.patch_size}, {torch.get_num_threads()} thread(s): ms per step (share of the step)")
    table.add_column("phase")
    for name, r in rows.items():
        table.add_column(f"--kd {name}\n{r['precision']}, {'+'.join(r['tiers_read']) or 'lq'}", justify="right")
    for phase in (*PHASES, "other", "step"):
        cells = [f"{1000 * r[phase]:.1f} ({100 * r[phase] / r['step']:.0f} %)" for r in rows.values()]
        table.add_row(phase, *cells, style="bold" if phase == "step" else None)
    table.add_row(f"validation (every {args.val_every})", *[f"{1000 * r['validation_per_step_s']:.1f}"
                                                          for r in rows.values()])
    table.add_row("samples / s, end to end", *[f"{r['samples_per_s']:.2f}" for r in rows.values()], style="bold")
    plain = {name.split("/")[1]: r for name, r in rows.items() if name.startswith("none/")}
    if plain:
        table.add_row("step ÷ plain step", *[f"{r['step'] / plain[name.split('/')[1]]['step']:.2f}×"
                                              if name.split("/")[1] in plain else "" for name, r in rows.items()])
    stdout().print(table)
    speedups = speedup_of(rows)
    if speedups:
        stdout().print("samples / s, now ÷ before (validation included): "
                       + ", ".join(f"--kd {kd} {x:.2f}×" for kd, x in speedups.items()))


def speedup_of(rows: dict[str, dict]) -> dict[str, float]:
    """Per --kd mode run both ways: samples/s of ``now`` ÷ ``before`` (end to end, validation included)."""
    kds = {name.split("/")[0] for name in rows}
    return {kd: rows[f"{kd}/now"]["samples_per_s"] / rows[f"{kd}/before"]["samples_per_s"]
            for kd in sorted(kds) if f"{kd}/now" in rows and f"{kd}/before" in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kd", default="none,output,std", help="comma-separated --kd modes, one run each")
    ap.add_argument("--student", default="fastdvdnet-quarter")
    ap.add_argument("--cache", default="cache/demo-6clips-edvr-sr.zarr",
                    help="the teacher cache of the now path (make demo builds this one: trunk and sr)")
    ap.add_argument("--baseline-cache", default="cache/demo-6clips-edvr.zarr",
                    help="the before path's cache, trunk only: stdvsr cache-teacher --data demo --max-clips 6 "
                         "--out cache/demo-6clips-edvr.zarr")
    ap.add_argument("--paths", default="before,now", help="comma-separated: before (the step until #23), now")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warm", type=int, default=10, help="first steps left out of the means")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--clip-frames", type=int, default=7)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the demo's students use 1)")
    ap.add_argument("--val-data", default="demo:bigbuckbunny")
    ap.add_argument("--val-stride", type=int, default=4)
    ap.add_argument("--val-every", type=int, default=200, help="0: leave validation out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    paths = args.paths.split(",")
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        raise StdvsrError(f"--paths {args.paths}: unknown {', '.join(unknown)}; use before and/or now")
    for path in paths:
        flag = PATHS[path]["cache"]
        if not Path(getattr(args, flag)).is_dir():
            raise StdvsrError(f"--{flag.replace('_', '-')} {getattr(args, flag)} does not exist; see --help for the "
                              "command that builds it (make demo builds --cache)")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="step_profile_") as tmp:
        rows = {f"{kd}/{path}": profile(kd, path, args, Path(tmp)) for kd in args.kd.split(",") for path in paths}
    print_table(rows, args)
    if args.json:
        write_text(Path(args.json), json.dumps({"settings": vars(args), "cpu": cpu_name(), "cpu_bf16":
                                                native_bf16(torch.device("cpu")), "torch": torch.__version__,
                                                "rows": rows, "now_over_before": speedup_of(rows)},
                                               indent=1) + "\n")


if __name__ == "__main__":
    run_script(main)
