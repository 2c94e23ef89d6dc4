"""``stdvsr adapt``: make a trained student better on the user's own footage, for which no HR original exists
(issue #22).

The teacher labels the footage once — its SR frames of the LR frames as given, cached by stage one with
``--degradation none`` — and the student is fine-tuned towards those labels by stage two (``distill --init``), so
nothing here needs ground truth. The last ``holdout`` of each clip's frames is kept out of the fine-tuning; the
student's *agreement* with the teacher there (Y-PSNR of student SR vs teacher SR,
:class:`stdvsr.distill.agreement.TeacherAgreement`) is scored before and after. Agreement is not accuracy against
an HR original: where one exists (the demo's carphone), ``stdvsr evaluate`` measures that.

Everything goes into one folder, and each phase resumes or is reused when the same command runs again::

    OUT/cache/        the teacher cache of the footage (stdvsr cache-teacher --degradation none)
    OUT/run/          the fine-tuning run (stdvsr distill --init STUDENT): checkpoints, metrics.jsonl, curves.png
    OUT/student.pth   the adapted student (a copy of run/student.pth), for evaluate / upscale / export
    OUT/adapt.json    the settings, agreement before / after, frames, time per phase (complete: true at the end)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path

from stdvsr import __version__
from stdvsr.cache import CacheConfig, CacheReader
from stdvsr.cache import run as build_cache
from stdvsr.cache.layout import MANIFEST, first_difference, lookup
from stdvsr.configs import AdaptConfig, DistillConfig
from stdvsr.data import check_clip, load_clips, parse_spec, resolve_spec
from stdvsr.errors import StdvsrError
from stdvsr.io import atomic_path, check_writable, folder_lock, sha256_file, write_text
from stdvsr.options import check_fields, resumable
from stdvsr.progress import stderr, stdout
from stdvsr.training import resolve_device

__all__ = ["AdaptConfig", "run", "print_adaptation"]

REPORT = "adapt.json"
#: Settings a rerun into the same --out may change (where it runs, not what it computes).
RERUN_CHANGES = resumable(AdaptConfig)


def distill_config(cfg: AdaptConfig, out: Path) -> DistillConfig:
    """The fine-tuning as a distillation run: from the student's weights, on the footage cache, every term from
    step 1 (no warm-up: the teacher's SR is the reconstruction target itself), validated on the held-back frames at
    the end."""
    return DistillConfig(init=str(Path(cfg.student).expanduser().resolve()), cache=str(out / "cache"),
                         out=str(out / "run"), kd=cfg.kd, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size,
                         patch_size=cfg.patch_size, clip_frames=cfg.clip_frames, holdout=cfg.holdout, seed=cfg.seed,
                         device=cfg.device, workers=cfg.workers, warmup_steps=0, val_stride=1,
                         mix_cache=str(Path(cfg.mix_cache).expanduser().resolve()) if cfg.mix_cache else None,
                         mix_share=cfg.mix_share,
                         ckpt_every=min(100, cfg.steps))


def cache_config(cfg: AdaptConfig, out: Path) -> CacheConfig:
    """The labelling as a footage cache: the teacher's SR frames, and where SD / TD need features its trunk (EDVR)
    or its F^SR itself (RBPN, which has no trunk to cache)."""
    from stdvsr.cache.build import teacher_arch
    from stdvsr.names import NO_TRUNK

    teacher = teacher_arch(cfg.teacher_weights, cfg.teacher_preset)
    features = "feat_sr" if teacher in NO_TRUNK else "trunk"
    return CacheConfig(teacher=teacher, weights=cfg.teacher_weights, preset=cfg.teacher_preset,
                       data=resolve_spec(cfg.data), views=cfg.views, out=str(out / "cache"), degradation="none",
                       device=cfg.device, store="sr" if cfg.kd == "output" else f"{features},sr")


# ------------------------------------------------------------------------------------------------- checks
def check_footage_spec(spec: str, out: Path) -> None:
    """Footage is frames as given: folder:ROOT, video:FILE or demo:CLIP. A teacher cache, an HR benchmark (whose
    frames are ground truth) or the whole demo set is refused, as is an --out inside the footage folder."""
    kind, _, arg = spec.partition(":")
    path = Path(arg if kind == "folder" else spec).expanduser()
    if path.is_dir() and (path / MANIFEST).is_file():
        raise StdvsrError(f"--data {spec} is a teacher cache, not footage: adapt labels the footage itself into "
                          f"{out / 'cache'}; pass the LR frames as folder:ROOT or video:FILE")
    kind, arg = parse_spec(spec)
    if kind in ("vimeo90k", "vid4"):
        hint = f"; for Vid4's own LR frames use folder:{Path(arg) / 'BDx4'}" if kind == "vid4" else ""
        raise StdvsrError(f"--data {spec}: {kind} holds HR ground truth, and adapt reads --data as LR footage; pass "
                          f"LR frames as folder:ROOT or video:FILE{hint}")
    if kind == "demo" and not arg:
        raise StdvsrError("--data demo names the demo's training split; name the clips to take as footage, e.g. "
                          "demo:carphone")
    if kind == "folder":
        root = Path(arg).expanduser().resolve()
        if out.resolve() == root or root in out.resolve().parents:
            raise StdvsrError(f"--out {out} lies inside the footage folder {root} (it would become a clip of it); "
                              "choose an --out outside it")


def check_student(path: str, teacher_scale: int) -> str:
    """The student checkpoint loads and is a stdvsr student of the teacher's scale; returns its network name."""
    from stdvsr.distill.plan import checkpoint_student
    from stdvsr.models import load_model

    name = checkpoint_student(path, "--student")
    model, _ = load_model(path, flag="--student")
    if model.scale != teacher_scale:
        raise StdvsrError(f"--student {path} is a ×{model.scale} {name} but the teacher upscales ×{teacher_scale}; "
                          f"adapt a ×{teacher_scale} student, or use a ×{model.scale} teacher (--teacher-weights)")
    return name


def check_mix(cfg: AdaptConfig, scale: int) -> None:
    """--mix-cache opens, has ground truth and the student's scale: refused before the teacher labels anything."""
    from stdvsr.distill.plan import check_mix_cache

    if cfg.mix_cache:
        check_mix_cache(distill_config(cfg, Path(cfg.out)), CacheReader(Path(cfg.mix_cache).expanduser()), scale)


def check_clips(clips, cfg: AdaptConfig) -> None:
    """Every clip must hold a training crop (--patch-size) and, after --holdout, a training sample
    (--clip-frames), and there must be a batch of samples: refused here, before the teacher labels anything."""
    from stdvsr.distill.plan import held_back

    lr_patch = cfg.patch_size // 4
    samples = 0
    for clip in clips:
        h, w = check_clip(clip, scale=1)
        if min(h, w) < lr_patch:
            raise StdvsrError(f"--patch-size {cfg.patch_size} needs footage of at least {lr_patch}×{lr_patch} LR "
                              f"pixels, but clip {clip.name} is {w}×{h}; lower --patch-size (a multiple of 16 for "
                              f"FastDVDnet, at most {4 * min(h, w)}) or use larger footage")
        left = len(clip) - held_back(len(clip), cfg.holdout)
        if left < cfg.clip_frames:
            raise StdvsrError(f"clip {clip.name} has {len(clip)} frames: with --holdout {cfg.holdout} it keeps {left} "
                              f"for fine-tuning, fewer than --clip-frames {cfg.clip_frames}; lower --holdout or "
                              "--clip-frames")
        samples += (left - cfg.clip_frames + 1) * cfg.views
    if samples < cfg.batch_size:
        raise StdvsrError(f"--batch-size {cfg.batch_size} is larger than the {samples} training samples of the footage "
                          f"({cfg.clip_frames} consecutive frames each); lower it")


def settings(cfg: AdaptConfig, student_sha256: str) -> dict:
    """What the folder's results depend on: the settings but where they run, the student's content, the data."""
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RERUN_CHANGES | {"out"}}
    if cfg.mix_cache:
        values["mix_cache"] = str(Path(cfg.mix_cache).expanduser().resolve())
    else:  # as folders written before --mix-cache existed recorded it
        del values["mix_cache"], values["mix_share"]
    return {**values, "student": str(Path(cfg.student).expanduser().resolve()), "student_sha256": student_sha256,
            "data": resolve_spec(cfg.data)}


def check_same_settings(out: Path, mine: dict) -> None:
    """A rerun into a folder continues or reuses it only with the settings it was started with."""
    path = out / REPORT
    if not path.is_file():
        ours = [name for name in ("run", "cache", "student.pth") if (out / name).exists()]
        if ours:  # e.g. the folder of the student being adapted: its student.pth would be overwritten
            raise StdvsrError(f"--out {out} holds {', '.join(ours)} but no {REPORT}: it was not written by stdvsr "
                              "adapt, and adapt writes those names; choose another --out")
        return
    try:
        before = json.loads(path.read_text())["settings"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise StdvsrError(f"{path} is damaged; delete {out} to start over, or choose another --out") from None
    diff = first_difference(before, mine)
    if diff:
        flag = "--" + diff.split(".")[0].replace("_", "-")
        what = "the --student file's content" if diff == "student_sha256" else flag
        raise StdvsrError(f"--out {out} was started with other settings: {what} was {lookup(before, diff)!r}, now "
                          f"{lookup(mine, diff)!r}; rerun with the same settings to continue, or choose another --out")


# ---------------------------------------------------------------------------------------------------- run
def run(cfg: AdaptConfig, show_progress: bool = True) -> dict:
    """Label the footage with the teacher (or reuse the labels), score the student's agreement with the teacher on
    the held-back frames, fine-tune it (or reuse / resume the fine-tuning), score it again, and write
    ``OUT/student.pth`` and ``OUT/adapt.json``. Returns the report (what adapt.json holds, plus ``phases``: what each
    phase did this time — built / resumed / reused, trained / resumed / reused)."""
    from stdvsr.cache.build import load_teacher
    from stdvsr.distill import run_or_reuse, validate_config
    from stdvsr.distill.agreement import TeacherAgreement

    check_fields(cfg)
    out = Path(cfg.out).expanduser()
    check_writable(out, "--out", folder=True)
    check_footage_spec(cfg.data, out)
    ccfg, dcfg = cache_config(cfg, out), distill_config(cfg, out)
    teacher, teacher_info = load_teacher(ccfg)
    name = check_student(cfg.student, teacher.scale)
    dcfg = dataclasses.replace(dcfg, student=name)
    validate_config(dcfg)  # settings that cannot train are refused before the teacher runs
    check_mix(cfg, teacher.scale)
    clips = load_clips(ccfg.data, ccfg.split)
    check_clips(clips, cfg)
    mine = settings(cfg, sha256_file(Path(cfg.student).expanduser()))
    console = stderr()
    times, phases = {}, {}
    with folder_lock(out, "--out"):
        check_same_settings(out, mine)
        out.mkdir(parents=True, exist_ok=True)
        started = _read_report(out) or {"settings": mine, "complete": False, "stdvsr": __version__}
        if not started.get("complete"):
            write_text(out / REPORT, json.dumps(started, indent=1) + "\n")

        console.rule(f"[bold]1/3 the teacher labels {cfg.data}")
        t0 = time.perf_counter()
        labelled = build_cache(ccfg, show_progress=show_progress)
        times["label"] = time.perf_counter() - t0
        phases["label"] = "reused" if labelled["processed"] == 0 else "resumed" if labelled["done"] > labelled[
            "processed"] else "built"
        reader = CacheReader(out / "cache")

        console.rule("[bold]2/3 the student's agreement with the teacher, before")
        t0 = time.perf_counter()
        agreement = TeacherAgreement(reader, cfg.holdout, 1) if cfg.holdout > 0 else None
        before = _score(agreement, cfg.student, cfg.device)
        times["score_before"] = time.perf_counter() - t0

        console.rule(f"[bold]3/3 fine-tuning {name}: {cfg.steps} steps of --kd {cfg.kd}")
        t0 = time.perf_counter()
        result, phases["finetune"] = run_or_reuse(dcfg, show_progress=show_progress)
        times["finetune"] = time.perf_counter() - t0
        if phases["finetune"] == "reused":
            console.print(f"{dcfg.out} finished with these settings before; reusing it", highlight=False)
        t0 = time.perf_counter()
        trained = Path(dcfg.out) / "student.pth"
        after = _score(agreement, trained, cfg.device)
        times["score_after"] = time.perf_counter() - t0
        with atomic_path(out / "student.pth") as tmp:
            shutil.copyfile(trained, tmp)

        report = _report(mine, teacher_info, labelled, agreement, before, after, cfg, phases, times, out, dcfg)
        write_text(out / REPORT, json.dumps(report, indent=1) + "\n")
    return report


def _report(mine: dict, teacher_info: dict, labelled: dict, agreement, before: float | None, after: float | None,
            cfg: AdaptConfig, phases: dict, times: dict, out: Path, dcfg: DistillConfig) -> dict:
    """What adapt.json holds: the settings, the teacher, the agreement before / after, the frames, the time of each
    phase (a reused phase reports the time it took when it ran) and where everything is."""
    summary = labelled.get("summary") or {}
    report = {
        "settings": mine, "complete": True, "stdvsr": __version__,
        "teacher": {"weights": teacher_info["weights"], "sha256": teacher_info["weights_sha256"],
                    "name": teacher_info["name"]},
        "agreement": {"before": before, "after": after,
                      "gain": None if before is None else round(after - before, 4),
                      "bicubic": None if agreement is None else agreement.bicubic,
                      "metric": "Y-PSNR (dB) of the student's SR against the teacher's SR, uint8, no border "
                                "crop, on the held-back frames",
                      "frames": 0 if agreement is None else agreement.frames},
        "frames": {"labelled": labelled["frames"], "views": cfg.views,
                   "held_back": 0 if agreement is None else agreement.frames},
        "seconds": {**{k: round(v, 2) for k, v in times.items()}, "teacher_total": summary.get("teacher_s")},
        "phases": phases,
        "paths": {"student": str(out / "student.pth"), "cache": str(out / "cache"), "run": dcfg.out,
                  "report": str(out / REPORT), "from": mine["student"]},
    }
    earlier = (_read_report(out) or {}).get("seconds", {})
    if phases["label"] == "reused":
        report["seconds"]["label"] = earlier.get("label") or summary.get("teacher_s")
    if phases["finetune"] == "reused":
        report["seconds"]["finetune"] = earlier.get("finetune")
    return report


def _read_report(out: Path) -> dict | None:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return json.loads((out / REPORT).read_text())
    return None


def _score(agreement, student: str | Path, device: str) -> float | None:
    """The agreement (dB) of the student saved at ``student``; None without held-back frames (--holdout 0)."""
    from stdvsr.models import load_model

    if agreement is None:
        return None
    model, _ = load_model(student, flag="--student")
    return round(float(agreement(model.to(resolve_device(device)))), 4)


# -------------------------------------------------------------------------------------------------- report
def print_adaptation(report: dict) -> None:
    """The table `stdvsr adapt` ends with: agreement before / after and the gain, bicubic's, frames, the time of
    each phase and where everything is."""
    from rich.table import Table

    a, s, f, p = report["agreement"], report["seconds"], report["frames"], report["paths"]
    cfg = report["settings"]

    def db(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f}"

    table = Table(title=f"{cfg['data']} — agreement with the teacher on {f['held_back']} held-back frames "
                        "(Y-PSNR to the teacher's SR, dB; no ground truth involved)")
    table.add_column("", justify="left")
    table.add_column("value", justify="right")
    table.add_row("student before", db(a["before"]))
    table.add_row(f"student after {cfg['steps']} steps of --kd {cfg['kd']}", db(a["after"]))
    table.add_row("gain", "—" if a["gain"] is None else f"{a['gain']:+.2f}", style="bold")
    table.add_row("bicubic", db(a["bicubic"]))
    views = f" ({f['views']} views)" if f["views"] > 1 else ""
    table.add_row("frames labelled / held back", f"{f['labelled']}{views} / {f['held_back']}")
    for key, label in (("label", "teacher labelling"), ("finetune", "fine-tuning")):
        seconds = "—" if s.get(key) is None else f"{s[key]:.1f} s"
        status = report["phases"][key]
        table.add_row(label, seconds if status not in ("reused",) else f"{seconds} (earlier; reused now)")
    table.add_row("adapted student", p["student"])
    table.add_row("teacher cache", p["cache"])
    table.add_row("fine-tuning run", p["run"])
    table.add_row("report", p["report"])
    stdout().print(table)
    if a["before"] is None:
        stdout().print("--holdout 0: every frame trained on, none left to score the agreement on", highlight=False)
