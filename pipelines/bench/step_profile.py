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


def validation_seconds(student: Path, args) -> float:
    """One call of the validator a run with ``--val-data`` makes, on ``student``, at this process's threads."""
    from stdvsr.cache import CacheReader
    from stdvsr.evaluate import Validator, validation_clips

    reader = CacheReader(args.cache)
    validator = Validator(validation_clips(args.val_data, reader.data, None), reader.fingerprint["degradation"],
                          reader.fingerprint["padding"], args.val_stride)
    model = load_model(student)[0]
    validator(model)  # the first call reads and degrades the frames once; a run pays that once too
    t0 = time.perf_counter()
    validator(model)
    return time.perf_counter() - t0


def profile(kd: str, args, work: Path) -> dict:
    cfg = DistillConfig(student=args.student, cache=args.cache, out=str(work / kd), kd=kd, steps=args.steps,
                        warmup_steps=0, batch_size=args.batch_size, patch_size=args.patch_size,
                        clip_frames=args.clip_frames, workers=args.workers, seed=args.seed, val_every=0,
                        log_every=1, ckpt_every=args.steps, device="cpu")
    result = distill(cfg, show_progress=False)
    means = phase_means(work / kd / "metrics.jsonl", args.warm)
    val_s = validation_seconds(Path(result["student"]), args) if args.val_every else 0.0
    per_step = means["step"] + val_s / max(args.val_every, 1)
    return {**means, "validation_call_s": val_s, "validation_per_step_s": val_s / max(args.val_every, 1),
            "samples_per_s": args.batch_size / per_step}


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
    for kd in rows:
        table.add_column(f"--kd {kd}", justify="right")
    for phase in (*PHASES, "other", "step"):
        cells = [f"{1000 * r[phase]:.1f} ({100 * r[phase] / r['step']:.0f} %)" for r in rows.values()]
        table.add_row(phase, *cells, style="bold" if phase == "step" else None)
    table.add_row(f"validation (every {args.val_every})", *[f"{1000 * r['validation_per_step_s']:.1f}"
                                                          for r in rows.values()])
    table.add_row("samples / s, end to end", *[f"{r['samples_per_s']:.2f}" for r in rows.values()], style="bold")
    base = rows.get("none")
    if base:
        table.add_row("step ÷ plain step", *[f"{r['step'] / base['step']:.2f}×" for r in rows.values()])
    stdout().print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kd", default="none,output,std", help="comma-separated --kd modes, one run each")
    ap.add_argument("--student", default="fastdvdnet-quarter")
    ap.add_argument("--cache", default="cache/demo-6clips-edvr.zarr", help="a teacher cache (make demo builds this)")
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
    if not Path(args.cache).is_dir():
        raise StdvsrError(f"--cache {args.cache} does not exist; run make demo (or stdvsr cache-teacher) first")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="step_profile_") as tmp:
        rows = {kd: profile(kd, args, Path(tmp)) for kd in args.kd.split(",")}
    print_table(rows, args)
    if args.json:
        write_text(Path(args.json), json.dumps({"settings": vars(args), "cpu": cpu_name(),
                                                "torch": torch.__version__, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    run_script(main)
