"""A distillation run as one unit of an experiment: trained (or reused) on a set number of torch threads, then
scored on an evaluation set. What ``pipelines/ablations.py`` and the studies under ``pipelines/studies/`` share; they
train several at once in the processes of :mod:`stdvsr.pool`, so each function here is what one worker runs.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from stdvsr.distill import DistillConfig, run_or_reuse
from stdvsr.evaluate import EvalConfig
from stdvsr.evaluate import run as evaluate


def train(cfg: DistillConfig, threads: int, show_progress: bool = False) -> tuple[str, float]:
    """Train ``cfg``'s run on ``threads`` torch threads, or reuse it if it already ended with these settings;
    returns what :func:`stdvsr.distill.run_or_reuse` did and the seconds it took."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    _, what = run_or_reuse(cfg, show_progress=show_progress)
    return what, time.perf_counter() - t0


def score(name: str, student: str | Path, eval_set: str = "demo", figures: str | Path | None = None) -> dict:
    """Y-PSNR/SSIM of one checkpoint on ``eval_set`` under ``stdvsr evaluate``'s default protocol (every frame):
    ``{"psnr", "ssim", "protocol"}``. Crop and temporal-profile pictures go to ``figures`` (None: none)."""
    cfg = EvalConfig(set=eval_set, models=(f"{name}={student}",), figures=None if figures is None else str(figures))
    if figures is None:
        cfg = dataclasses.replace(cfg, max_figures=0)
    result = evaluate(cfg, show_progress=False)
    average = result["models"][0]["average"]
    return {"psnr": average["psnr"], "ssim": average["ssim"], "protocol": result["protocol"]}


def train_and_score(name: str, cfg: DistillConfig, threads: int, show_progress: bool = False) -> dict:
    """One run trained (or reused) and its student scored on the demo's held-out clip (carphone), pictures in the
    run folder's ``figures/``: the scores, what was done, the seconds both took, the settings and the protocol."""
    t0 = time.perf_counter()
    what, _ = train(cfg, threads, show_progress)
    scores = score(name, Path(cfg.out) / "student.pth", "demo", Path(cfg.out) / "figures")
    return {"psnr": scores["psnr"], "ssim": scores["ssim"], "run": what,
            "seconds": round(time.perf_counter() - t0, 1), "config": dataclasses.asdict(cfg),
            "protocol": scores["protocol"]}


def chosen(text: str, known, flag: str) -> list[str]:
    """The comma-separated names of ``text`` (a script's ``--rows`` / ``--tables``), each one of ``known``, or an
    ``Error:`` exit naming ``flag`` and the choices."""
    names = [n.strip() for n in text.split(",")]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"Error: {flag} {','.join(unknown)}: choose from {', '.join(known)}")
    return names
