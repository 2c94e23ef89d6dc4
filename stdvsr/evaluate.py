"""``stdvsr evaluate``: PSNR/SSIM of several models side by side on a benchmark set, under a stated protocol.

Protocol (README "Evaluation"; every part an option, all of it printed in the table title and written to JSON):
outputs clamped to [0, 1] and rounded to uint8; PSNR/SSIM on Y = 16 + 65.481R + 128.553G + 24.966B (``color="y"``)
or RGB; ``crop_border`` pixels removed per side before the conversion; per-frame values averaged per clip, then
clips averaged with equal weight. Frames: all, or all but the first and last two (``skip-border-2``); Vimeo90K-T
scores the centre frame (im4) of each septuplet only. LR input: the BD or BI degradation of the (mod-cropped) HR
frames, or the dataset's own LR folder (``lr-folder``: Vid4's BDx4, else BIx4). Every output frame t comes from the
window centred on t, padded at the clip's ends with ``padding`` (replicate, as the paper). Bicubic is PyTorch's
(a = −0.75, align_corners=False) upsampling of the same LR frames.

Long clips are processed ``chunk_frames`` outputs at a time, windows ``batch_size`` at a time on the device; only
the scores, one temporal-profile row per frame and one crop per clip are kept.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from stdvsr.configs import EvalConfig
from stdvsr.data import Clip, load_clips, read_frames
from stdvsr.errors import StdvsrError, os_advice
from stdvsr.infer import padded_size, upscale_frames
from stdvsr.io import check_writable, write_image, write_text
from stdvsr.metrics import VideoMetrics, tensor_to_uint8
from stdvsr.names import EVAL_SETS, FRAME_MODES
from stdvsr.options import check_fields
from stdvsr.training import resolve_device

VIMEO_CENTRE = 3  # im4, the centre of a septuplet
BICUBIC = "bicubic"


# ------------------------------------------------------------------------------------------------- the set
def resolve_set(cfg: EvalConfig) -> tuple[list[Clip], str, bool]:
    """``(clips, human-readable set name, centre_only)``."""
    name = cfg.set
    if name.startswith(("folder:", "demo:", "video:")):  # their frames are the GT; LR comes from --degradation
        return load_clips(name), name, False
    if name == "demo":
        return load_clips("demo", "test"), "demo (held-out carphone)", False
    if name not in EVAL_SETS:
        raise StdvsrError(f"--set {name!r} is not one of {', '.join(EVAL_SETS)} or folder:PATH / video:FILE / demo:CLIP")
    if not cfg.root:
        layout = ("GT/<clip>/%08d.png (optional BDx4/, BIx4/)" if name == "vid4" else
                  "sequences/<5 digits>/<4 digits>/im1..7.png with sep_testlist.txt (or sep_testlist_<speed>.txt)")
        raise StdvsrError(f"--set {name} needs --root PATH, the dataset folder holding {layout}")
    if name == "vid4":
        return load_clips(f"vid4:{cfg.root}"), "Vid4", False
    split = name.split("-", 1)[1]
    clips = load_clips(f"vimeo90k:{cfg.root}", split)
    return clips, f"Vimeo90K-T ({split})" if split != "test" else "Vimeo90K-T", True


def scored_frames(n: int, mode: str, centre_only: bool) -> list[int]:
    if centre_only:
        return [VIMEO_CENTRE] if n > VIMEO_CENTRE else []
    if mode == "all":
        return list(range(n))
    if mode == "skip-border-2":
        return list(range(2, n - 2))
    raise StdvsrError(f"--frames {mode!r} is not one of {', '.join(FRAME_MODES)}")


def protocol(cfg: EvalConfig, set_name: str, centre_only: bool) -> dict:
    frames = "centre frame (im4)" if centre_only else {"all": "all frames",
                                                        "skip-border-2": "all but first/last 2 frames"}[cfg.frames]
    lr = {"bd": "BD (13×13 Gaussian σ 1.6)", "bi": "BI (MATLAB bicubic)", "lr-folder": "dataset LR folder"}
    return {"set": set_name, "channel": "Y" if cfg.color == "y" else "RGB", "crop_border": cfg.crop_border,
            "frames": frames, "degradation": cfg.degradation, "lr": lr[cfg.degradation], "scale": 4,
            "padding": cfg.padding, "mod_crop": True, "uint8": True}


def protocol_title(p: dict) -> str:
    return (f"{p['set']}: {p['channel']}-PSNR/SSIM ×4, crop {p['crop_border']}, {p['frames']}, LR {p['lr']}, "
            f"{p['padding']} padding")


def read_clip(clip: Clip, degradation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lq, gt)`` float32 for the whole clip (HR mod-cropped to ×4)."""
    if degradation == "lr-folder":
        which = "bd" if "bd" in clip.lq_frames else "bi" if "bi" in clip.lq_frames else None
        if which is None:
            raise StdvsrError(f"--degradation lr-folder: clip {clip.name} has no LR folder (Vid4: BDx4/<clip> or "
                              "BIx4/<clip>); use --degradation bd or bi to compute LR frames from GT")
        return read_frames(clip, range(len(clip)), 4, which, lq_from_disk=True, mod_crop=True)
    return read_frames(clip, range(len(clip)), 4, degradation, mod_crop=True)


# ------------------------------------------------------------------------------------- validation in training
def validation_clips(val_data: str | None, data: str, max_clips: int = 0) -> list[Clip]:
    """The held-out clips a training run validates on: none for ``val_data=None``; for ``"auto"`` the held-out
    split of ``data`` when it has one (demo, vimeo90k), else none; otherwise the clips of ``val_data`` (its
    held-out split where it has one). More than ``max_clips`` (> 0) are thinned evenly (Vimeo90K-T has 7,824)."""
    if val_data is None:
        return []
    if val_data == "auto":
        if data.partition(":")[0] not in ("demo", "vimeo90k"):
            return []  # no held-out split to take: validation only when --val-data names one
        clips = load_clips(data, "test")
    else:
        clips = load_clips(val_data, "test")  # demo / vimeo90k: the held-out split; others: every clip
    if max_clips and len(clips) > max_clips:
        step = len(clips) / max_clips
        clips = [clips[int(i * step)] for i in range(max_clips)]
    return clips


class Validator:
    """Y-PSNR of a model on held-out clips (every ``stride``-th frame) during training, and of bicubic once."""

    def __init__(self, clips, degradation: str, padding: str, stride: int):
        self.items = []
        for clip in clips:
            lq, gt = read_frames(clip, range(len(clip)), 4, degradation)
            frames = list(range(0, len(clip), stride))
            self.items.append((clip.name, lq, gt, frames))
        self.padding = padding
        self.bicubic = self._score(lambda lq, frames: F.interpolate(lq[frames], scale_factor=4, mode="bicubic",
                                                                      align_corners=False).clamp(0, 1))

    def _score(self, upscale) -> float:
        metrics = VideoMetrics(metrics=("psnr",))
        for name, lq, gt, frames in self.items:
            for f, sr in zip(frames, upscale(lq, frames)):
                metrics.add(name, f, sr, gt[f])
        return metrics.summary()["psnr"]

    def __call__(self, model) -> float:
        was_training = model.training
        model.eval()
        try:
            return self._score(lambda lq, frames: upscale_frames(model, lq, frames, self.padding))
        finally:
            model.train(was_training)


# ---------------------------------------------------------------------------------------------- the models
def model_label(arg: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH``; the label of a bare path is its stem, or its folder for generic stems."""
    if "=" in arg and not Path(arg).exists():
        name, path = arg.split("=", 1)
        if not name.strip() or not path.strip():
            raise StdvsrError(f"--model {arg!r}: NAME=PATH needs both a name and a path, e.g. "
                              "--model distilled=runs/distill/student.pth")
        return name, Path(path)
    path = Path(arg)
    generic = {"student", "teacher", "model", "last", "best", "latest"}
    return (path.parent.name if path.stem in generic and path.parent.name else path.stem), path


def load_models(cfg: EvalConfig, device) -> list[tuple[str, str, torch.nn.Module]]:
    from stdvsr.models import load_model

    out, seen = [], {BICUBIC} if cfg.bicubic else set()
    for arg in cfg.models:
        name, path = model_label(arg)
        base, k = name, 2
        while name in seen:
            name, k = f"{base}-{k}", k + 1
        seen.add(name)
        model, _ = load_model(path, arch=cfg.arch, flag="--model")
        out.append((name, str(path), model.to(device).eval()))
    if not out and not cfg.bicubic:
        raise StdvsrError("nothing to evaluate: give --model CKPT (repeatable) and/or --bicubic")
    return out


def bicubic(lq: torch.Tensor, frames: list[int]) -> torch.Tensor:
    return F.interpolate(lq[frames], scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)


def complexity(model: torch.nn.Module, lr_size: tuple[int, int]) -> dict:
    from stdvsr.profile import count_macs

    h, w = padded_size(*lr_size)
    device = next(model.parameters()).device
    lq = torch.zeros(1, model.num_frame, 3, h, w, device=device)
    return {"params": sum(p.numel() for p in model.parameters()), "gmacs": count_macs(model, lq) / 1e9,
            "lr_size": [h, w], "opencv_flow": getattr(model, "flow_method", None) is not None}


# ------------------------------------------------------------------------------------------------ pictures
def _label(img: np.ndarray, text: str) -> np.ndarray:
    """``img`` with a 20-pixel white band on top holding ``text``."""
    band = np.full((20, img.shape[1], 3), 255, np.uint8)
    cv2.putText(band, text[: max(1, img.shape[1] // 8)], (3, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.concatenate([band, img], 0)


def side_by_side(panels: list[tuple[str, np.ndarray]], gap: int = 4) -> np.ndarray:
    h = max(p.shape[0] for _, p in panels)
    parts = []
    for name, p in panels:
        p = np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255)
        parts += [_label(p, name), np.full((h + 20, gap, 3), 255, np.uint8)]
    return np.concatenate(parts[:-1], 1)


def crop_box(h: int, w: int, row: int | None, size: int = 96) -> tuple[int, int, int]:
    """A square HR crop around the frame's centre (or centred on the profile row)."""
    s = min(size, h, w)
    top = min(max(0, (row if row is not None else h // 2) - s // 2), h - s)
    return top, (w - s) // 2, s


# ----------------------------------------------------------------------------------------------------- run
def run(cfg: EvalConfig, show_progress: bool = True, report: Callable[[dict], None] | None = None) -> dict:
    """Evaluate; returns the JSON document (``protocol``, ``models`` with per-clip rows and averages, paths).

    Every output location is checked writable before the first frame is scored; ``report`` (the CLI prints the
    tables) gets the result before ``--json`` / ``--csv`` are written. A file that cannot be written does not stop
    the others: all are tried, then one :class:`StdvsrError` names every file that failed."""
    check_fields(cfg)  # choices and ranges, from the fields' options
    figures = Path(cfg.figures or Path("runs") / "evaluate" / re.sub(r"[^\w.-]+", "_", cfg.set))
    for flag, path, folder in (("--json", cfg.json, False), ("--csv", cfg.csv, False),
                               ("--figures", cfg.max_figures and figures, True),
                               ("--save-images", cfg.save_images, True)):
        if path:
            check_writable(path, flag, folder)
    device = resolve_device(cfg.device)
    clips, set_name, centre_only = resolve_set(cfg)
    if cfg.max_clips:
        clips = clips[:cfg.max_clips]
    models = load_models(cfg, device)
    names = ([BICUBIC] if cfg.bicubic else []) + [m[0] for m in models]
    proto = protocol(cfg, set_name, centre_only)
    score = _Scores(names, cfg)
    pictures: list[str] = []

    from stdvsr.progress import work_progress

    total = 0
    # counted in frames × models, so one long clip shows progress too (plain lines in logs: progress.WorkBar)
    work = len(names) * sum(len(scored_frames(len(c), cfg.frames, centre_only)) for c in clips)
    with work_progress(work, "evaluate", "frames", enabled=show_progress) as bar:
        for index, clip in enumerate(clips):
            frames = scored_frames(len(clip), cfg.frames, centre_only)
            if not frames:
                continue
            views = score.clip(clip, frames, models, bar.advance)
            total += len(frames)
            if index < cfg.max_figures:
                pictures += _clip_figures(views, figures / clip.name.replace("/", "_"), score.failed)
    if total == 0:
        raise StdvsrError(f"no frame of --set {cfg.set} was scored (clips shorter than 5 frames with "
                          "--frames skip-border-2?)")
    result = {"protocol": proto, "models": [], "pictures": pictures}
    paths = {n: p for n, p, _ in models}
    for name in names:
        summary = score.metrics[name].summary()
        entry = {"name": name, "path": paths.get(name), "average": {"psnr": summary["psnr"], "ssim": summary["ssim"]},
                 "clips": score.metrics[name].clip_rows(), "frames_scored": summary["frames"],
                 "ms_per_frame": 1000 * score.seconds[name] / max(score.counted[name], 1), "device": str(device)}
        entry.update(score.info.get(name, {}))
        result["models"].append(entry)
    if report is not None:
        report(result)
    if cfg.json:
        _try_write(score.failed, "--json", Path(cfg.json), write_text, json.dumps(result, indent=1))
    if cfg.csv:
        _try_write(score.failed, "--csv", Path(cfg.csv), write_text, to_csv(result))
    if score.failed:
        shown = "; ".join(score.failed[:3]) + (f"; and {len(score.failed) - 3} more" if len(score.failed) > 3 else "")
        raise StdvsrError(f"every frame was scored{' (tables above)' if report else ''}, but {len(score.failed)} "
                          f"file(s) could not be written: {shown}; free space or fix the location and rerun")
    return result


def _try_write(failed: list[str], flag: str, path: Path, write: Callable, *args) -> bool:
    """``write(path, *args)``; an OSError (full disk, lost permission) is added to ``failed`` instead of raised,
    so one file that cannot be written does not lose the others or the scores."""
    try:
        write(path, *args)
        return True
    except OSError as e:
        failed.append(f"{flag} {path} ({os_advice(e)})")
        return False


class _Scores:
    """Every model's PSNR/SSIM, time and frame count over the clips scored so far, and its complexity."""

    def __init__(self, names: list[str], cfg: EvalConfig):
        self.cfg = cfg
        self.metrics = {n: VideoMetrics(cfg.crop_border, cfg.color == "y") for n in names}
        self.seconds = dict.fromkeys(names, 0.0)
        self.counted = dict.fromkeys(names, 0)
        self.info: dict[str, dict] = {}
        self.failed: list[str] = []  # files that could not be written, one line each (see _try_write)

    def clip(self, clip, frames: list[int], models: list, advance) -> dict:
        """Score every model (and bicubic) on ``frames`` of ``clip``; returns what the clip's pictures show:
        ``crops`` (name → the crop of the middle scored frame), ``profiles`` (name → the --temporal-profile row of
        every scored frame), ``row``, ``middle``."""
        cfg = self.cfg
        lq, gt = read_clip(clip, cfg.degradation)
        H, W = gt.shape[-2:]
        row = cfg.temporal_profile
        if row is not None and not 0 <= row < H:
            raise StdvsrError(f"--temporal-profile {row} is outside the {H}-row HR frames of clip {clip.name}")
        top, left, size = crop_box(H, W, row)
        middle = frames[len(frames) // 2]
        profiles = {"GT": [tensor_to_uint8(gt[f])[row] for f in frames] if row is not None else []}
        crops = {"GT": tensor_to_uint8(gt[middle])[top:top + size, left:left + size]}
        for name in self.metrics:
            model = None if name == BICUBIC else next(m for n, _, m in models if n == name)
            if model is not None and name not in self.info:
                self.info[name] = complexity(model, lq.shape[-2:])
            rows = []
            for i in range(0, len(frames), cfg.chunk_frames):
                part = frames[i:i + cfg.chunk_frames]
                t0 = time.perf_counter()
                sr = bicubic(lq, part) if model is None else upscale_frames(model, lq, part, cfg.padding,
                                                                           cfg.batch_size)
                self.seconds[name] += time.perf_counter() - t0
                self.counted[name] += len(part)
                advance(len(part))
                for f, out in zip(part, sr):
                    self.metrics[name].add(clip.name, f, out, gt[f])
                    img = tensor_to_uint8(out)
                    if row is not None:
                        rows.append(img[row])
                    if f == middle:
                        crops[name] = img[top:top + size, left:left + size]
                    if cfg.save_images:
                        _try_write(self.failed, "--save-images",
                                   Path(cfg.save_images) / name / clip.name.replace("/", "_") / f"{f:08d}.png",
                                   write_image, img)
            if row is not None:
                profiles[name] = rows
        return {"crops": crops, "profiles": profiles, "row": row, "middle": middle, "frames": len(frames)}


def _clip_figures(views: dict, stem: Path, failed: list[str]) -> list[str]:
    """The clip's pictures: the temporal profiles side by side (with --temporal-profile) and the crops of the
    middle scored frame, enlarged; returns the paths written (those that could not be are added to ``failed``)."""
    written = []
    row, n = views["row"], views["frames"]
    if row is not None and n > 1:
        reps = max(1, 64 // n)  # short clips: repeat rows so the profile is visible
        panels = [(name, np.repeat(np.stack(r), reps, 0)) for name, r in views["profiles"].items()]
        path = stem.parent / f"{stem.name}_profile_row{row}.png"
        if _try_write(failed, "--figures", path, write_image, side_by_side(panels)):
            written.append(str(path))
    zoom = max(1, 192 // views["crops"]["GT"].shape[0])
    panels = [(name, np.repeat(np.repeat(c, zoom, 0), zoom, 1)) for name, c in views["crops"].items()]
    path = stem.parent / f"{stem.name}_crop_frame{views['middle']}.png"
    if _try_write(failed, "--figures", path, write_image, side_by_side(panels)):
        written.append(str(path))
    return written


def to_csv(result: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["model", "clip", "frames", "psnr", "ssim"])
    for m in result["models"]:
        for c in m["clips"]:
            writer.writerow([m["name"], c["clip"], c["frames"], f"{c['psnr']:.4f}", f"{c['ssim']:.6f}"])
        writer.writerow([m["name"], "Average", m["frames_scored"], f"{m['average']['psnr']:.4f}",
                         f"{m['average']['ssim']:.6f}"])
    return buf.getvalue()


def print_evaluation(result: dict) -> None:
    """The score table (clips + Average, PSNR/SSIM per model) and the cost table of :func:`run`'s result on
    stdout, the pictures written on stderr (``stdvsr evaluate`` and ``pipelines/demo.py`` print this)."""
    from rich.table import Table

    from stdvsr.progress import stderr, stdout

    out = stdout()
    models = result["models"]
    table = Table(title=protocol_title(result["protocol"]))
    table.add_column("clip", justify="left")
    for m in models:
        table.add_column(f"{m['name']}\nPSNR", justify="right")
        table.add_column("SSIM", justify="right")
    clips = [c["clip"] for c in models[0]["clips"]]
    if len(clips) <= 40:
        for i, clip in enumerate(clips):
            table.add_row(clip, *[v for m in models for v in (f"{m['clips'][i]['psnr']:.2f}",
                                                               f"{m['clips'][i]['ssim']:.4f}")])
    else:
        table.caption = f"{len(clips)} clips: per-clip rows are in --json / --csv"
    table.add_row("Average", *[v for m in models for v in (f"{m['average']['psnr']:.2f}",
                                                            f"{m['average']['ssim']:.4f}")], style="bold")
    out.print(table)
    costed = [m for m in models if "params" in m]
    if costed:
        h, w = costed[0]["lr_size"]
        cost = Table(title=f"Cost per output frame (MACs at LR {h}×{w}; time measured here on {costed[0]['device']})")
        for col in ("model", "params (M)", "GMACs", "ms / frame"):
            cost.add_column(col, justify="left" if col == "model" else "right")
        for m in costed:
            cost.add_row(m["name"], f"{m['params'] / 1e6:.3f}", f"{m['gmacs']:.2f}", f"{m['ms_per_frame']:.1f}")
        flows = [m["name"] for m in costed if m.get("opencv_flow")]
        if flows:
            cost.caption = (f"{', '.join(flows)}: the OpenCV optical flow is inside ms / frame and outside GMACs "
                            "(stdvsr profile times it alone)")
        out.print(cost)
    for path in result["pictures"][:6]:
        stderr().print(f"wrote {path}", highlight=False)
    if len(result["pictures"]) > 6:
        stderr().print(f"… and {len(result['pictures']) - 6} more pictures", highlight=False)
