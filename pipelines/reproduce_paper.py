"""Reproduce the paper's Table 1 (Xiao et al., CVPR 2021): four compact students distilled from an EDVR-L teacher on
Vimeo90K (BD ×4), each trained twice — Charbonnier only (`--kd none`, the paper's baseline) and with Space-Time
Distillation (`--kd std`) — and scored on Vid4 and Vimeo90K-T next to the paper's figures.

    python pipelines/reproduce_paper.py --vimeo /data/vimeo_septuplet --vid4 /data/vid4 --gpus 4
    python pipelines/reproduce_paper.py ... --teacher-weights EDVR_L_BD.pth        # skip training the teacher
    python pipelines/reproduce_paper.py ... --students fastdvdnet --stages cache,distill,evaluate,compare
    python pipelines/reproduce_paper.py ... --dry-run                              # print every command, run none

What the paper reports for the main row (Table 1, Vid4 Y-PSNR in dB; all rows in pipelines/paper/paper_results.json):

    FastDVDnet        22.11  26.34  24.80  28.45  average 25.43     (--kd none)
    FastDVDnet STD    22.71  27.18  25.46  29.22  average 26.14     (--kd std: +0.71 dB)
                      calendar city  foliage walk

Stages (``--stages``, in this order; each one resumable, and a step whose final output exists is skipped with a note):

    teacher   stdvsr train-teacher --config pipelines/paper/teacher_edvr_l.toml --preset edvr-l --data vimeo90k:VIMEO
              --out OUT/teacher --device cuda --resume auto                      → OUT/teacher/teacher.pth
              Only without --teacher-weights (no public EDVR checkpoint exists for BD; a BasicSR-trained EDVR-L BD
              checkpoint can be given instead). One GPU: train-teacher has no multi-GPU mode.
    cache     [torchrun --standalone --nproc_per_node G] -m stdvsr cache-teacher --config
              pipelines/paper/cache_vimeo90k.toml --weights TEACHER --data vimeo90k:VIMEO --out CACHE --device cuda
              → CACHE (complete once its manifest.json says so; a re-run resumes the missing clips)
    distill   per student and --kd none / std: [torchrun ...] -m stdvsr distill --config pipelines/paper.toml
              --cache CACHE --student S --kd KD --out OUT/S-kd-KD --device cuda --resume auto --batch-size B
              → OUT/S-kd-KD/student.pth. B = 2 // G per rank (at least 1), keeping the paper's batch of 2 on 1 or 2
              GPUs; with G > 2 the global batch becomes G (a warning says so). Keep --gpus unchanged when resuming:
              a resumed run refuses another --batch-size.
    evaluate  stdvsr evaluate --bicubic --model teacher=... --model S=OUT/S-kd-none/student.pth
              --model S_std=OUT/S-kd-std/student.pth ... on vid4 (--root VID4) and vimeo90k-fast, -medium, -slow and
              -test (--root VIMEO) → OUT/table1_<set>.json, crop pictures in OUT/figures/<set>/. With
              --teacher-weights, the file is first re-saved as a stdvsr checkpoint (OUT/teacher/teacher_eval.pth):
              `stdvsr evaluate` loads only checkpoints that name their architecture, and has no --preset.
    compare   reads those JSONs and prints, per benchmark, ours / the paper's / the difference for every model, per
              Vid4 clip and per Vimeo90K-T speed (the Vimeo "average" is vimeo90k-test: the paper's average is over
              all test clips); writes OUT/table1.md.

Expected cost — an ESTIMATE, not a measurement (no GPU was available when this was written). Training compute per
step = the students' MACs per output frame (README "The students", at 120×180 LR) scaled to the 64×64 LR crop,
× 14 frames (batch 2 × 7-frame clips) × 3 (forward + backward); STD adds the teacher head rebuilt from the cached
trunk (6.2 GMACs per frame, forward only) and the ConvLSTM at HR 256×256 with 64 hidden channels (19.3 GMACs per
time step, 7 steps, teacher and student sequences, × 3). Hours assume 30 TFLOP/s sustained on one A100/H100-class
GPU (1 MAC = 2 FLOP) — an assumption; steps this small may well be bound by kernel launches or data loading
instead, so treat these as lower bounds:

    run (800K steps)      TMACs/step   GPU-hours        run (800K steps)      TMACs/step   GPU-hours
    fastdvdnet  none      0.34         5                vsrnet      none      1.29         19
    fastdvdnet  std       2.05         30               vsrnet      std       3.00         44
    vespcn      none      0.14         2                vdsr        none      1.84         27
    vespcn      std       1.85         27               vdsr        std       3.55         53
                                                        all 8 distillations:               ≈ 210

    teacher   EDVR-L, 600K steps of batch 8 at 256×256 HR: 4.5 TMACs/step → ≈ 50 GPU-hours at 30 TFLOP/s; its
              deformable convolutions run below that rate, so plan on 2-4 days on one GPU.
    cache     EDVR-L over 64,612 × 7 windows at 112×64 LR (327 GMACs each, an upper bound: features are shared by
              a clip's windows) ≈ 3 GPU-hours, ÷ G with G ranks, plus decoding 452K PNGs and writing the cache.
    evaluate  Vimeo90K-T twice (the three speeds, then the whole test list) and Vid4: decoding and the BD blur
              dominate; well under an hour (guess).

More GPUs shorten the cache and, up to 2, distillation: beyond 2 GPUs each rank already holds one clip per step,
so 800K steps take as long and only the global batch grows. With many GPUs, run students side by side instead
(`--dry-run` lists their commands; give each its own CUDA_VISIBLE_DEVICES).

Disk: the cache is 415 GB (EDVR-L trunk in int8; 830 GB in fp16) + 39 GB of LR input for Vimeo90K's 64,612 training
septuplets (README "The teacher cache"; cache-teacher prints its estimate and refuses a disk with less free space).
Teacher checkpoints ≈ 1 GB (three kept), student runs a few hundred MB (an estimate); evaluation pictures are
written for the first 40 clips of each set only (`stdvsr evaluate --max-figures`).
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
TEACHER_TOML = HERE / "paper" / "teacher_edvr_l.toml"
CACHE_TOML = HERE / "paper" / "cache_vimeo90k.toml"
DISTILL_TOML = HERE / "paper.toml"
PAPER_RESULTS = HERE / "paper" / "paper_results.json"

STAGES = ("teacher", "cache", "distill", "evaluate", "compare")
STUDENTS = ("fastdvdnet", "vsrnet", "vespcn", "vdsr")  # Table 1's students, as stdvsr names them
KDS = ("none", "std")                                   # the paper's baseline (Charbonnier only) and STD
PAPER_BATCH = 2                                         # §4.1: "Each mini-batch consists of 2 samples"
EVAL_SETS = ("vid4", "vimeo90k-fast", "vimeo90k-medium", "vimeo90k-slow", "vimeo90k-test")
# Table 1's row names for the names our evaluation JSONs use
PAPER_ROWS = {"bicubic": "Bicubic", "teacher": "EDVR", "fastdvdnet": "FastDVDnet", "vsrnet": "VSRNet",
              "vespcn": "VESPCN", "vdsr": "VDSR"}
# per benchmark: column → (evaluation set, clip or None for the set's average)
BENCHMARKS = {
    "vid4": {c: ("vid4", None if c == "average" else c) for c in ("calendar", "city", "foliage", "walk", "average")},
    "vimeo90k": {"fast": ("vimeo90k-fast", None), "medium": ("vimeo90k-medium", None),
                 "slow": ("vimeo90k-slow", None), "average": ("vimeo90k-test", None)},
}
BENCHMARK_TITLES = {"vid4": "Vid4", "vimeo90k": "Vimeo90K-T"}


@dataclass(frozen=True)
class Step:
    """One unit of work: a command (``argv``), or a Python ``action`` where no stdvsr command does the job.

    ``done``: the output whose existence means the step is finished (skipped then); ``needs``: files that must exist
    before it starts (produced by an earlier stage).
    """
    what: str
    argv: tuple[str, ...] = ()
    action: Callable[[], None] | None = field(default=None, compare=False)
    done: Path | None = None
    needs: tuple[Path, ...] = ()

    def shell(self) -> str:
        return shlex.join(self.argv) if self.argv else f"# in this process: {self.what}"


@dataclass(frozen=True)
class Stage:
    name: str
    steps: tuple[Step, ...]


# ------------------------------------------------------------------------------------------------ commands
def per_rank_batch(gpus: int) -> tuple[int, str | None]:
    """``--batch-size`` per rank that keeps the paper's global batch of 2, and a warning where it cannot."""
    batch = max(1, PAPER_BATCH // gpus)
    if batch * gpus == PAPER_BATCH:
        return batch, None
    return batch, (f"--gpus {gpus}: distillation needs at least one clip per rank, so the global batch becomes "
                   f"{batch * gpus} instead of the paper's {PAPER_BATCH} (800K steps see {batch * gpus / PAPER_BATCH:g}× the "
                   "samples and take as long as on 2 GPUs)")


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter commands), else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def launcher(gpus: int) -> list[str]:
    """How a stdvsr stage starts: one process, or torchrun with one rank per GPU (cache-teacher and distill)."""
    if gpus == 1:
        return [sys.executable, "-m", "stdvsr"]
    torchrun = Path(sys.executable).with_name("torchrun")  # the environment's own, even when it is not activated
    return [str(torchrun) if torchrun.exists() else "torchrun", "--standalone", "--nproc_per_node", str(gpus),
            "-m", "stdvsr"]


def teacher_for_cache(args: argparse.Namespace) -> Path:
    return Path(args.teacher_weights) if args.teacher_weights else Path(args.out) / "teacher" / "teacher.pth"


def teacher_for_eval(args: argparse.Namespace) -> Path:
    return (Path(args.out) / "teacher" / "teacher_eval.pth" if args.teacher_weights
            else Path(args.out) / "teacher" / "teacher.pth")


def student_run(args: argparse.Namespace, student: str, kd: str) -> Path:
    return Path(args.out) / f"{student}-kd-{kd}"


def eval_json(out: str | Path, set_name: str) -> Path:
    return Path(out) / f"table1_{set_name}.json"


def commands(args: argparse.Namespace) -> list[Stage]:
    """Every stage the arguments ask for, in order, as commands (pure: runs and reads nothing)."""
    out, cache, py = Path(args.out), Path(args.cache), [sys.executable, "-m", "stdvsr"]
    students = args.students
    stages = []
    if "teacher" in args.stages and not args.teacher_weights:
        teacher = out / "teacher"
        stages.append(Stage("teacher", (Step(
            "train the EDVR-L teacher (Charbonnier, BD ×4) on Vimeo90K, one GPU",
            argv=(*py, "train-teacher", "--config", _shown(TEACHER_TOML), "--preset", "edvr-l",
                  "--data", f"vimeo90k:{args.vimeo}", "--out", str(teacher), "--device", "cuda", "--resume", "auto"),
            done=teacher / "teacher.pth"),)))
    if "cache" in args.stages:
        weights = teacher_for_cache(args)
        stages.append(Stage("cache", (Step(
            f"cache the teacher's trunk for every Vimeo90K training frame ({args.gpus} rank(s))",
            argv=(*launcher(args.gpus), "cache-teacher", "--config", _shown(CACHE_TOML), "--weights", str(weights),
                  "--data", f"vimeo90k:{args.vimeo}", "--out", str(cache), "--device", "cuda"),
            done=cache / "manifest.json", needs=(weights,)),)))
    if "distill" in args.stages:
        batch, _ = per_rank_batch(args.gpus)
        steps = []
        for student in students:
            for kd in KDS:
                run = student_run(args, student, kd)
                steps.append(Step(
                    f"distill {student} --kd {kd} (800K steps, global batch {batch * args.gpus})",
                    argv=(*launcher(args.gpus), "distill", "--config", _shown(DISTILL_TOML), "--cache", str(cache),
                          "--student", student, "--kd", kd, "--out", str(run), "--device", "cuda",
                          "--resume", "auto", "--batch-size", str(batch)),
                    done=run / "student.pth", needs=(cache / "manifest.json",)))
        stages.append(Stage("distill", tuple(steps)))
    if "evaluate" in args.stages:
        teacher = teacher_for_eval(args)
        steps = []
        if args.teacher_weights:
            steps.append(Step(f"re-save {args.teacher_weights} as a stdvsr checkpoint for evaluate → {teacher}",
                              action=functools.partial(import_teacher, Path(args.teacher_weights), teacher),
                              done=teacher, needs=(Path(args.teacher_weights),)))
        models = ["--model", f"teacher={teacher}"]
        needs = [teacher]
        for student in students:
            for kd in KDS:
                ckpt = student_run(args, student, kd) / "student.pth"
                models += ["--model", f"{student}{'_std' if kd == 'std' else ''}={ckpt}"]
                needs.append(ckpt)
        for set_name in EVAL_SETS:
            root = args.vid4 if set_name == "vid4" else args.vimeo
            target = eval_json(out, set_name)
            steps.append(Step(
                f"evaluate bicubic, the teacher and {2 * len(students)} students on {set_name}",
                argv=(*py, "evaluate", "--set", set_name, "--root", str(root), "--bicubic", *models,
                      "--json", str(target), "--figures", str(out / "figures" / set_name), "--device", "cuda"),
                done=target, needs=tuple(needs)))
        stages.append(Stage("evaluate", tuple(steps)))
    if "compare" in args.stages:
        stages.append(Stage("compare", (Step(
            f"compare {eval_json(out, '<set>')} with the paper's Table 1 → {out / 'table1.md'}",
            action=functools.partial(compare, out)),)))
    return stages


# ---------------------------------------------------------------------------------------------- the teacher
def import_teacher(src: Path, dst: Path) -> None:
    """Re-save a teacher checkpoint (BasicSR's EDVR-L, or any stdvsr one) as a stdvsr checkpoint that names its
    architecture, which is what ``stdvsr evaluate`` loads. The weights are loaded strictly first."""
    from stdvsr.models import build_model, load_weights, read_checkpoint
    from stdvsr.training import save_checkpoint

    ckpt = read_checkpoint(src)
    spec = ckpt["model"] if isinstance(ckpt.get("model"), dict) else {"name": "edvr-l", "kwargs": {}}
    model = build_model(spec["name"], **spec.get("kwargs", {}))
    used = load_weights(model, src)["key"]
    save_checkpoint(dst, {"model": spec, "params": model.state_dict(), "source": str(src), "source_key": used})


# ------------------------------------------------------------------------------------------------- compare
def load_results(out: str | Path) -> dict[str, dict]:
    """The evaluation JSONs that exist, by set name."""
    results = {}
    for set_name in EVAL_SETS:
        path = eval_json(out, set_name)
        if not path.is_file():
            continue
        try:
            results[set_name] = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SystemExit(f"Error: {path} is not valid JSON ({e}); delete it and run --stages evaluate again")
    return results


def paper_row(name: str) -> str | None:
    """Table 1's row for one of our model names (``fastdvdnet_std`` → ``FastDVDnet STD``), or None."""
    base, std = (name[:-4], True) if name.endswith("_std") else (name, False)
    row = PAPER_ROWS.get(base)
    if row is None or (std and base not in STUDENTS):
        return None
    return f"{row} STD" if std else row


def comparison(results: dict[str, dict], paper: dict) -> dict[str, list[dict]]:
    """Per benchmark, one row per model: ``{"model", "paper_row", "cells": {column: {"ours", "paper", "diff"}}}``
    (None where a figure is missing). Models appear in the order of the first evaluation that has them."""
    table = {}
    for bench, columns in BENCHMARKS.items():
        paper_columns = paper["table1"][bench]["columns"]
        paper_rows = paper["table1"][bench]["rows"]
        names = list(dict.fromkeys(m["name"] for s, _ in columns.values() if s in results
                                   for m in results[s]["models"]))
        rows = []
        for name in names:
            row = paper_row(name)
            cells = {}
            for column, (set_name, clip) in columns.items():
                ours = _psnr(results.get(set_name), name, clip)
                theirs = paper_rows[row][paper_columns.index(column)] if row in paper_rows else None
                diff = round(ours - theirs, 4) if ours is not None and theirs is not None else None
                cells[column] = {"ours": ours, "paper": theirs, "diff": diff}
            rows.append({"model": name, "paper_row": row, "cells": cells})
        table[bench] = rows
    return table


def _psnr(result: dict | None, model: str, clip: str | None) -> float | None:
    if result is None:
        return None
    entry = next((m for m in result["models"] if m["name"] == model), None)
    if entry is None:
        return None
    if clip is None:
        return entry["average"]["psnr"]
    row = next((c for c in entry["clips"] if c["clip"].lower() == clip), None)
    return None if row is None else row["psnr"]


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _header(bench: str) -> list[str]:
    return ["model", "paper row", *[h for c in BENCHMARKS[bench] for h in (f"{c} ours", "paper", "Δ")]]


def _cells(row: dict) -> list[str]:
    return [row["model"], row["paper_row"] or "—",
            *[v for c in row["cells"].values() for v in (_fmt(c["ours"]), _fmt(c["paper"]), _fmt(c["diff"], True))]]


def to_markdown(table: dict[str, list[dict]], results: dict[str, dict], paper: dict) -> str:
    from stdvsr.evaluate import protocol_title

    lines = ["# Table 1 reproduced", "",
             f"Y-PSNR (dB): ours, the paper's ({paper['source']}) and ours − paper. Written by "
             "pipelines/reproduce_paper.py.", ""]
    for bench, rows in table.items():
        sets = dict.fromkeys(s for s, _ in BENCHMARKS[bench].values())
        lines += [f"## {BENCHMARK_TITLES[bench]}", ""]
        for s in sets:
            lines.append(f"- `{s}`: " + (protocol_title(results[s]["protocol"]) if s in results
                                         else "not evaluated yet (run --stages evaluate)"))
        lines.append("")
        if rows:
            header = _header(bench)
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
            lines.append("")
        shown = {r["paper_row"] for r in rows}
        others = [r for r in paper["table1"][bench]["rows"] if r not in shown]
        if others:
            lines += [f"Paper rows not reproduced here: {', '.join(others)}.", ""]
    return "\n".join(lines)


def compare(out: str | Path) -> Path:
    """Print ours next to the paper's Table 1 (one rich table per benchmark) and write ``out/table1.md``."""
    from rich.table import Table

    from stdvsr.io import write_text
    from stdvsr.progress import stderr, stdout

    results = load_results(out)
    if not results:
        raise SystemExit(f"Error: compare: no evaluation results in {out} (table1_<set>.json for "
                         f"{', '.join(EVAL_SETS)}); run --stages evaluate first")
    missing = [str(eval_json(out, s)) for s in EVAL_SETS if s not in results]
    if missing:
        stderr().print(f"compare: not evaluated yet, shown as —: {', '.join(missing)}", highlight=False)
    paper = json.loads(PAPER_RESULTS.read_text())
    table = comparison(results, paper)
    console = stdout()
    for bench, rows in table.items():
        if not rows:
            continue
        t = Table(title=f"{BENCHMARK_TITLES[bench]}: Y-PSNR (dB), ours / paper (Table 1) / Δ")
        for i, h in enumerate(_header(bench)):
            if i != 1:  # the paper's row names are in table1.md; the terminal needs the width
                t.add_column(h.replace(" ours", "\nours"), justify="left" if i == 0 else "right", no_wrap=True)
        for r in rows:
            cells = _cells(r)
            t.add_row(cells[0], *cells[2:])
        console.print(t)
    path = Path(out) / "table1.md"
    write_text(path, to_markdown(table, results, paper))
    stderr().print(f"wrote {path}", highlight=False)
    return path


# ----------------------------------------------------------------------------------------------------- run
def finished(path: Path) -> bool:
    """A step's output is there: a file, or for a cache its manifest marked complete."""
    if path.name == "manifest.json":
        try:
            return bool(json.loads(path.read_text()).get("complete"))
        except (OSError, json.JSONDecodeError):
            return False
    return path.exists()


def run_stages(stages: list[Stage]) -> None:
    """Run every step in order; a failing command ends the script with one ``Error:`` line (exit status 1)."""
    from stdvsr.errors import StdvsrError
    from stdvsr.progress import stderr

    console = stderr()
    for stage in stages:
        for step in stage.steps:
            if step.done is not None and finished(step.done):
                console.print(f"[bold]{stage.name}[/]: skipped, {step.done} exists ({step.what})", highlight=False)
                continue
            for need in step.needs:
                if not finished(need):
                    raise SystemExit(f"Error: {stage.name}: {need} is missing or incomplete; run the stage that "
                                     "makes it first (see --stages) or check the path")
            console.rule(f"[bold]{stage.name}[/]: {step.what}")
            console.print(step.shell(), highlight=False, soft_wrap=True)
            t0 = time.perf_counter()
            if step.action is not None:
                try:
                    step.action()
                except StdvsrError as e:
                    raise SystemExit(f"Error: {stage.name} failed: {e}") from None
            else:
                code = subprocess.run(list(step.argv), check=False).returncode
                if code != 0:
                    raise SystemExit(f"Error: {stage.name} failed (exit {code}): {step.shell()}")
            console.print(f"{stage.name}: done in {(time.perf_counter() - t0) / 3600:.2f} h", highlight=False)


def _csv(choices: tuple[str, ...], flag: str):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: choose from {','.join(choices)}")
        return [c for c in choices if c in items]  # the pipeline's order, whatever the order given
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vimeo", required=True, help="Vimeo90K septuplet folder (sequences/, sep_trainlist.txt, "
                                                   "sep_testlist.txt, the fast/medium/slow lists)")
    ap.add_argument("--vid4", required=True, help="Vid4 folder (GT/<clip>/%%08d.png)")
    ap.add_argument("--gpus", type=int, default=1, help="GPUs for cache-teacher and distill (torchrun ranks)")
    ap.add_argument("--teacher-weights", help="an EDVR-L BD ×4 checkpoint (BasicSR or stdvsr) instead of training one")
    ap.add_argument("--students", type=_csv(STUDENTS, "--students"), default=list(STUDENTS),
                    help=f"comma list (default: {','.join(STUDENTS)})")
    ap.add_argument("--stages", type=_csv(STAGES, "--stages"), default=list(STAGES),
                    help=f"comma list (default: {','.join(STAGES)})")
    ap.add_argument("--out", default="runs/paper", help="teacher, student runs, evaluation JSONs, table1.md")
    ap.add_argument("--cache", default="cache/vimeo90k-edvr-l.zarr", help="the teacher cache (about 454 GB)")
    ap.add_argument("--dry-run", action="store_true", help="print every command without running anything")
    args = ap.parse_args(argv)
    if args.gpus < 1:
        ap.error("--gpus must be at least 1")
    return args


def check_inputs(args: argparse.Namespace) -> None:
    """Refuse missing dataset folders and weights up front (one line), for the stages that read them."""
    uses_vimeo = {"cache", "evaluate"} | (set() if args.teacher_weights else {"teacher"})
    if uses_vimeo & set(args.stages) and not Path(args.vimeo).is_dir():
        raise SystemExit(f"Error: --vimeo {args.vimeo} is not a folder; give the Vimeo90K septuplet folder "
                         "(sequences/, sep_trainlist.txt, sep_testlist.txt)")
    if "evaluate" in args.stages and not Path(args.vid4).is_dir():
        raise SystemExit(f"Error: --vid4 {args.vid4} is not a folder; give the Vid4 folder (GT/<clip>/%08d.png)")
    if args.teacher_weights and {"cache", "evaluate"} & set(args.stages) and not Path(args.teacher_weights).is_file():
        raise SystemExit(f"Error: --teacher-weights {args.teacher_weights} does not exist")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stages = commands(args)
    _, warning = per_rank_batch(args.gpus)
    if warning and "distill" in args.stages:
        print(f"Warning: {warning}", file=sys.stderr)
    if args.teacher_weights and "teacher" in args.stages:
        print(f"teacher: not trained, --teacher-weights {args.teacher_weights} is the teacher", file=sys.stderr)
    if args.dry_run:
        for stage in stages:
            print(f"# --- {stage.name}")
            for step in stage.steps:
                note = "  # output exists: would be skipped" if step.done is not None and finished(step.done) else ""
                print(step.shell() + note)
        return
    check_inputs(args)
    run_stages(stages)


if __name__ == "__main__":
    main()
