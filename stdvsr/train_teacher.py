"""``stdvsr train-teacher``: train the teacher (EDVR, or RBPN) with the Charbonnier loss, for users without BD weights.

One readable loop: random scale-aligned crops of ``num_frame`` consecutive frames (flips and rotations on), the
centre frame's HR crop as the target, Adam with a cosine or step schedule, optional EMA of the weights, periodic
Y-PSNR on the held-out clip(s) next to bicubic, atomic checkpoints every ``ckpt_every`` steps holding the resolved
config, and ``resume="auto"``, which continues from the newest checkpoint in ``out`` with exactly the batches an
uninterrupted run would have seen (Ctrl-C writes a checkpoint of the finished steps first). A non-finite loss stops
the run with a clear error; the last checkpoint stays.

RBPN takes optical flow from the centre frame to each neighbour. The flows of a training window are computed by
:class:`WithFlows` where the sample is made — in the DataLoader workers, as the official code does in its
``Dataset`` — so OpenCV runs beside the step rather than inside it (with ``workers=0`` it runs in the loop's
process); they are the flows the network would compute itself from the same window (:func:`window_flows`).
Validation runs the network on whole frames, where it computes its flows itself.

Outputs in ``out``: ``config.json``, ``metrics.jsonl`` (one JSON object per log/validation line),
``checkpoints/step_<7-digit step>.pth`` (the last three), and ``teacher.pth`` — the final weights alone (model name and
arguments, ``params`` and ``params_ema``), what ``--weights`` and ``stdvsr.models.load_model`` take. Both are
:class:`stdvsr.training.Checkpoint`, filled by :func:`state_of` and read back by :func:`restore`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from torch import nn

from stdvsr.configs import TeacherConfig
from stdvsr.data import ClipDataset, load_clips
from stdvsr.errors import StdvsrError
from stdvsr.evaluate import Validator, validation_clips
from stdvsr.io import folder_lock
from stdvsr.progress import training_progress
from stdvsr.models import build_model, load_weights, model_spec
from stdvsr.models.flow import window_flows
from stdvsr.names import SMALL_TEACHER, TEACHERS, teacher_presets
from stdvsr.options import check_fields, resumable
from stdvsr.losses import charbonnier
from stdvsr.training import (EMA, Checkpoint, LoopState, RunFolder, StepBatches, announce_start, check_finite,
                             check_schedule, due, folder_config, loader_batches, loader_worker_init, resolve_device,
                             resume_run, rng_state, score_weights, seed_everything, set_learning_rate, set_rng_state,
                             smoothed)


# Fields a resumed run may change; anything else must match the checkpoint.
RESUMABLE_CHANGES = resumable(TeacherConfig)


def run(cfg: TeacherConfig, resume: str | None = None, explicit: set[str] | None = None,
        show_progress: bool = True) -> dict:
    """Train the teacher (see :func:`_run`), holding the lock on ``cfg.out``: a second writer is refused."""
    with folder_lock(cfg.out):
        return _run(cfg, resume, explicit, show_progress)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What the loop trains with, built once by :func:`_setup`; the loop changes only the weights, the optimizer's
    and EMA's state inside, and its :class:`~stdvsr.training.LoopState`."""

    cfg: TeacherConfig  # resolved (the checkpoint's, when resuming)
    model_spec: dict  # {"name", "kwargs"}: what load_model builds
    device: torch.device
    model: nn.Module
    ema: EMA | None
    optimizer: torch.optim.Optimizer
    loader: torch.utils.data.DataLoader
    validator: Validator | None  # held-out PSNR, None without held-out clips


def _run(cfg: TeacherConfig, resume: str | None = None, explicit: set[str] | None = None,
         show_progress: bool = True) -> dict:
    """Train the teacher; returns ``{"teacher": path, "preset", "val_psnr", "bicubic_psnr", "steps", ...}``.

    ``resume``: None, ``"auto"`` or a checkpoint path, as for :func:`stdvsr.training.resume_run`."""
    check_fields(cfg)
    check_schedule(cfg)
    if cfg.preset is None:  # each teacher's CPU-sized preset; resolved before it is compared with a checkpoint's
        cfg = dataclasses.replace(cfg, preset=SMALL_TEACHER[cfg.teacher])
    cfg, ckpt = resume_run(cfg, resume, explicit, RESUMABLE_CHANGES)
    setup, state = _setup(cfg, ckpt)
    folder = RunFolder(cfg.out, folder_config(dataclasses.asdict(cfg), setup.model_spec),
                       lambda step: state_of(setup, state, step), state.step, ckpt is not None, cfg.keep_checkpoints)
    announce_start(Path(cfg.out), state.step, cfg.steps, resume, show_progress)
    start_time, start_step = time.perf_counter(), state.step
    val_psnr = _train(setup, state, folder, show_progress)
    folder.close()

    teacher = Path(cfg.out) / "teacher.pth"
    state_of(setup, state, cfg.steps).save(teacher)
    return {"teacher": str(teacher), "preset": cfg.preset, "steps": cfg.steps, "val_psnr": val_psnr,
            "bicubic_psnr": setup.validator.bicubic if setup.validator is not None else None,
            "seconds": time.perf_counter() - start_time, "resumed_from": start_step}


def _train(setup: Setup, state: LoopState, folder: RunFolder, show: bool) -> float | None:
    """The loop, from ``state.step`` to ``cfg.steps``; returns the last held-out PSNR (None without validation)."""
    cfg, model, ema, optimizer, device = setup.cfg, setup.model, setup.ema, setup.optimizer, setup.device
    validator = setup.validator
    center, val_psnr = model.num_frame // 2, None
    start_time, data_wait = time.perf_counter(), 0.0
    model.train()
    with folder.saving_on_interrupt(), loader_batches(setup.loader) as batches, \
            training_progress(cfg.steps, state.step, enabled=show, log_every=cfg.log_every) as progress:
        for step in range(state.step, cfg.steps):
            t0 = time.perf_counter()
            batch = next(batches)
            data_wait += time.perf_counter() - t0
            lr = set_learning_rate(optimizer, cfg, step)
            lq, gt = batch["lq"].to(device), batch["gt"][:, center].to(device)
            flows = batch["flows"].to(device) if "flows" in batch else None  # RBPN: made by the loader
            loss = charbonnier(model(lq) if flows is None else model(lq, flows=flows), gt)
            value = loss.item()
            check_finite(value, step + 1, folder.last, f"training loss became {value}", "lower --lr or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            done = step + 1
            with folder.updating(done):  # in here the weights, optimizer and EMA disagree about the step
                optimizer.step()
                if ema is not None:
                    ema.update(model, step)
            state.step, state.smoothed_loss = done, smoothed(state.smoothed_loss, value)
            progress.update(done, loss=state.smoothed_loss, lr=lr, psnr=val_psnr)
            if due(done, cfg.log_every, cfg.steps):
                folder.record(step=done, loss=value, lr=lr, data_wait=round(data_wait, 3),
                              elapsed=round(time.perf_counter() - start_time, 2))
            if validator is not None and due(done, cfg.val_every, cfg.steps):
                val_psnr = score_weights(validator, model, ema)
                folder.record(step=done, val_psnr=val_psnr, bicubic_psnr=validator.bicubic)
                progress.update(done, loss=state.smoothed_loss, lr=lr, psnr=val_psnr)
            if due(done, cfg.ckpt_every, cfg.steps):
                folder.save(done)
    return val_psnr


def _setup(cfg: TeacherConfig, ckpt: Checkpoint | None) -> tuple[Setup, LoopState]:
    """The seeded network (from ``--init-weights`` on a fresh run), its EMA and optimizer (restored from ``ckpt``
    when resuming), the batches and the validator; and the loop's state at the start."""
    if cfg.teacher not in TEACHERS:
        raise StdvsrError(f"--teacher {cfg.teacher!r} is not supported; use one of {', '.join(TEACHERS)}")
    arch, kwargs = model_spec(cfg.preset, **cfg.model_args)
    if arch != cfg.teacher:
        raise StdvsrError(f"--preset {cfg.preset} is not an {cfg.teacher} preset; use "
                          f"{' or '.join(p for p in teacher_presets() if model_spec(p)[0] == cfg.teacher)}")
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    model = build_model(cfg.preset, **cfg.model_args).to(device)
    if cfg.init_weights and ckpt is None:
        load_weights(model, cfg.init_weights)
    ema = EMA(model, cfg.ema) if cfg.ema > 0 else None
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    state = restore(ckpt, model, ema, optimizer) if ckpt is not None else LoopState()
    loader = _loader(cfg, model, state.step)
    validator = Validator(validation_clips(cfg.val_data, cfg.data, cfg.val_clips), cfg.degradation, cfg.padding,
                          cfg.val_stride)
    return Setup(cfg, {"name": cfg.preset, "kwargs": kwargs}, device, model, ema, optimizer, loader,
                 validator if validator.items else None), state


def state_of(setup: Setup, state: LoopState, step: int) -> Checkpoint:
    """The run at ``step``: a resumable checkpoint, or (``.deployable()``) ``teacher.pth``."""
    return Checkpoint(model=setup.model_spec, config=dataclasses.asdict(setup.cfg), step=step,
                      params=setup.model.state_dict(), params_ema=setup.ema.state_dict() if setup.ema else None,
                      optimizer=setup.optimizer.state_dict(), rng=rng_state(), smoothed_loss=state.smoothed_loss)


def restore(ckpt: Checkpoint, model: nn.Module, ema: EMA | None, optimizer: torch.optim.Optimizer) -> LoopState:
    """Load a checkpoint written by :func:`state_of`; returns the loop's state at that step."""
    model.load_state_dict(ckpt.params)
    optimizer.load_state_dict(ckpt.optimizer)
    if ema is not None:
        ema.load_state_dict(ckpt.params_ema)
    set_rng_state(ckpt.rng)
    # the progress line's smoothed loss continues where the checkpoint left it, as if never interrupted
    return LoopState(step=ckpt.step, smoothed_loss=ckpt.smoothed_loss)


def _loader(cfg: TeacherConfig, model, start_step: int) -> torch.utils.data.DataLoader:
    """Random crops of the training clips in an order fixed by (seed, step): resuming continues it."""
    dataset = ClipDataset(load_clips(cfg.data, "train"), num_frames=model.num_frame, scale=model.scale,
                          patch_size=cfg.patch_size, degradation=cfg.degradation, augment=cfg.augment, seed=cfg.seed)
    if getattr(model, "flow_method", None) is not None:
        dataset = WithFlows(dataset, model.flow_method)
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatches(len(dataset), cfg.batch_size, cfg.seed, start_step),
        num_workers=cfg.workers, persistent_workers=cfg.workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed), worker_init_fn=loader_worker_init)


class WithFlows(torch.utils.data.Dataset):
    """A training set whose samples also carry ``flows`` ``(N − 1, 2, h, w)``: from the centre LR frame of the
    sample's window to each other frame, in window order (RBPN's layout), by OpenCV ``method`` without gradient."""

    def __init__(self, dataset: torch.utils.data.Dataset, method: str):
        self.dataset, self.method = dataset, method

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> dict:
        sample = self.dataset[key]
        return {**sample, "flows": torch.stack(window_flows(sample["lq"][None], self.method), dim=1)[0]}
