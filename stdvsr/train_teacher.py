"""``stdvsr train-teacher``: train the teacher (EDVR) with the Charbonnier loss, for users without BD weights.

One readable loop: random scale-aligned crops of ``num_frame`` consecutive frames (flips and rotations on), the
centre frame's HR crop as the target, Adam with a cosine or step schedule, optional EMA of the weights, periodic
Y-PSNR on the held-out clip(s) next to bicubic, atomic checkpoints every ``ckpt_every`` steps holding the resolved
config, and ``resume="auto"``, which continues from the newest checkpoint in ``out`` with exactly the batches an
uninterrupted run would have seen (Ctrl-C writes a checkpoint of the finished steps first). A non-finite loss stops the run with a clear error; the last checkpoint stays.

Outputs in ``out``: ``config.json``, ``metrics.jsonl`` (one JSON object per log/validation line),
``checkpoints/step_XXXXXXX.pth`` (the last three), and ``teacher.pth`` — the final weights alone (model name and
arguments, ``params`` and ``params_ema``), what ``--weights`` and ``stdvsr.models.load_model`` take.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from stdvsr import __version__
from stdvsr.configs import TeacherConfig
from stdvsr.data import ClipDataset, load_clips
from stdvsr.errors import StdvsrError
from stdvsr.evaluate import Validator, validation_clips
from stdvsr.io import folder_lock
from stdvsr.progress import stderr, training_progress
from stdvsr.models import build_model, load_weights, model_spec
from stdvsr.options import check_fields, resumable
from stdvsr.losses import charbonnier
from stdvsr.training import (EMA, RunFolder, StepBatches, check_schedule, learning_rate, loader_batches,
                             loader_worker_init, resolve_device, resume_run, rng_state, save_checkpoint,
                             seed_everything, set_rng_state)


# Fields a resumed run may change; anything else must match the checkpoint.
RESUMABLE_CHANGES = resumable(TeacherConfig)


def run(cfg: TeacherConfig, resume: str | None = None, explicit: set[str] | None = None,
        show_progress: bool = True) -> dict:
    """Train the teacher (see :func:`_run`), holding the lock on ``cfg.out``: a second writer is refused."""
    with folder_lock(cfg.out):
        return _run(cfg, resume, explicit, show_progress)


def _run(cfg: TeacherConfig, resume: str | None = None, explicit: set[str] | None = None,
         show_progress: bool = True) -> dict:
    """Train the teacher; returns ``{"teacher": path, "val_psnr": …, "bicubic_psnr": …, "steps": …, ...}``.

    ``resume``: None, ``"auto"`` or a checkpoint path, as for :func:`stdvsr.training.resume_run`."""
    check_fields(cfg)
    check_schedule(cfg)
    cfg, ckpt = resume_run(cfg, resume, explicit, RESUMABLE_CHANGES)
    out = Path(cfg.out)
    if cfg.teacher != "edvr":
        raise StdvsrError(f"--teacher {cfg.teacher!r} is not supported; the teacher is edvr")
    arch, kwargs = model_spec(cfg.preset, **cfg.model_args)
    if arch != cfg.teacher:
        raise StdvsrError(f"--preset {cfg.preset} is not an {cfg.teacher} preset")

    device = resolve_device(cfg.device)
    model, ema, optimizer, start_step = _networks(cfg, ckpt, device)

    loader = _loader(cfg, model, start_step)
    validator = Validator(validation_clips(cfg.val_data, cfg.data, cfg.val_clips), cfg.degradation, cfg.padding,
                          cfg.val_stride)
    has_val = bool(validator.items)

    config = dataclasses.asdict(cfg)
    # the progress line's smoothed loss continues where the checkpoint left it, as if never interrupted
    state = {"smoothed": ckpt.get("smoothed_loss") if ckpt is not None else None}

    def payload(step: int) -> dict:
        return {"model": {"name": cfg.preset, "kwargs": kwargs}, "config": config, "step": step,
                "params": model.state_dict(), "params_ema": ema.state_dict() if ema else None,
                "optimizer": optimizer.state_dict(), "rng": rng_state(), "smoothed_loss": state["smoothed"],
                "stdvsr": __version__}

    folder = RunFolder(out, {**config, "model": {"name": cfg.preset, "kwargs": kwargs}, "stdvsr": __version__},
                       payload, start_step, ckpt is not None, cfg.keep_checkpoints)
    center, val_psnr = model.num_frame // 2, None
    if ckpt is not None and show_progress:
        stderr().print(f"resuming {out} from step {start_step} of {cfg.steps}", highlight=False, soft_wrap=True)
    elif resume == "auto" and show_progress:
        stderr().print(f"--resume auto: no checkpoint in {out / 'checkpoints'}; starting fresh at step 1 of "
                       f"{cfg.steps}", highlight=False, soft_wrap=True)
    start_time, data_wait = time.perf_counter(), 0.0
    model.train()
    with folder.saving_on_interrupt(), loader_batches(loader) as batches, \
            training_progress(cfg.steps, start_step, enabled=show_progress, log_every=cfg.log_every) as progress:
        for step in range(start_step, cfg.steps):
            t0 = time.perf_counter()
            batch = next(batches)
            data_wait += time.perf_counter() - t0
            lr = learning_rate(step, cfg.lr, cfg.steps, cfg.schedule, cfg.min_lr, cfg.lr_step, cfg.lr_gamma)
            for group in optimizer.param_groups:
                group["lr"] = lr
            lq, gt = batch["lq"].to(device), batch["gt"][:, center].to(device)
            loss = charbonnier(model(lq), gt)
            if not torch.isfinite(loss):
                last = folder.last
                hint = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
                raise StdvsrError(f"training loss became {loss.item()} at step {step + 1}; {hint}; "
                                  "lower --lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            done = step + 1
            with folder.updating(done):  # in here the weights, optimizer and EMA disagree about the step
                optimizer.step()
                if ema is not None:
                    ema.update(model, step)
            value = loss.item()
            state["smoothed"] = value if state["smoothed"] is None else 0.95 * state["smoothed"] + 0.05 * value
            progress.update(done, loss=state["smoothed"], lr=lr, psnr=val_psnr)
            if done % cfg.log_every == 0 or done == cfg.steps:
                folder.record(step=done, loss=value, lr=lr, data_wait=round(data_wait, 3),
                              elapsed=round(time.perf_counter() - start_time, 2))
            if has_val and (done % cfg.val_every == 0 or done == cfg.steps):
                val_psnr = _validate(validator, model, ema, device)
                folder.record(step=done, val_psnr=val_psnr, bicubic_psnr=validator.bicubic)
                progress.update(done, loss=state["smoothed"], lr=lr, psnr=val_psnr)
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                folder.save(done)
    folder.close()

    teacher = out / "teacher.pth"
    save_checkpoint(teacher, {"model": {"name": cfg.preset, "kwargs": kwargs}, "params": model.state_dict(),
                              "params_ema": ema.state_dict() if ema else model.state_dict(),
                              "config": config, "step": cfg.steps, "stdvsr": __version__})
    return {"teacher": str(teacher), "steps": cfg.steps, "val_psnr": val_psnr,
            "bicubic_psnr": validator.bicubic if has_val else None, "seconds": time.perf_counter() - start_time,
            "resumed_from": start_step}



def _networks(cfg: TeacherConfig, ckpt: dict | None, device) -> tuple:
    """``(model, ema, optimizer, start_step)``: seeded fresh ones (from --weights if given), or the checkpoint's."""
    seed_everything(cfg.seed)
    model = build_model(cfg.preset, **cfg.model_args).to(device)
    if cfg.init_weights and ckpt is None:
        load_weights(model, cfg.init_weights)
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    if ckpt is None:
        return model, ema, optimizer, 0
    model.load_state_dict(ckpt["params"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if ema is not None:
        ema.load_state_dict(ckpt["params_ema"])
    set_rng_state(ckpt["rng"])
    return model, ema, optimizer, ckpt["step"]


def _loader(cfg: TeacherConfig, model, start_step: int) -> torch.utils.data.DataLoader:
    """Random crops of the training clips in an order fixed by (seed, step): resuming continues it."""
    dataset = ClipDataset(load_clips(cfg.data, "train"), num_frames=model.num_frame, scale=model.scale,
                          patch_size=cfg.patch_size, degradation=cfg.degradation, augment=cfg.augment, seed=cfg.seed)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatches(len(dataset), cfg.batch_size, cfg.seed, start_step),
        num_workers=cfg.workers, persistent_workers=cfg.workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed), worker_init_fn=loader_worker_init)

def _validate(validator: Validator, model, ema: EMA | None, device) -> float:
    """Validate the EMA weights when there are any (they are what gets shipped), else the raw weights."""
    if ema is None:
        return validator(model)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.to(device) for k, v in ema.shadow.items()})
    try:
        return validator(model)
    finally:
        model.load_state_dict(raw)
