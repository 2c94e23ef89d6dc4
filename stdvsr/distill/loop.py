"""The distillation run: :func:`run` sets up (:func:`_setup` → :class:`Setup` and :class:`DistillState`), trains in
one visible loop (:func:`_train`), and writes ``student.pth``. Checkpoints are a
:class:`stdvsr.training.Checkpoint`, filled by :func:`state_of` and read back by :func:`restore`."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from stdvsr.cache.layout import first_difference, lookup
from stdvsr.cache.reader import CacheReader
from stdvsr.configs import DistillConfig
from stdvsr.distill.agreement import TeacherAgreement
from stdvsr.distill.distiller import Distiller, gradient_probe, now, student_channels
from stdvsr.distill.plan import (check_cache, check_mix_cache, kd_weight, mixed_steps, resolve_init,
                                 validate_config)
from stdvsr.distill.samples import DistillDataset, RankBatches, collate
from stdvsr.distill.targets import TeacherSide, Targets, augment_batch, cached_targets, online_targets, teacher_side
from stdvsr.distributed import digests_across_ranks, end_process_group, mean_across_ranks, torchrun_group
from stdvsr.errors import StdvsrError
from stdvsr.io import folder_lock
from stdvsr.models import build_model, model_spec, read_checkpoint
from stdvsr.options import flag_of, resumable
from stdvsr.perf import adam, channels_last, resolve_precision
from stdvsr.progress import stderr, training_progress
from stdvsr.training import (EMA, Checkpoint, LoopState, RunFolder, StepTimes, announce_start, check_finite, due,
                             folder_config, latest_checkpoint, loader_batches, loader_worker_init, resolve_device,
                             resolved_specs, resume_run, rng_state, score_weights, seed_everything,
                             set_learning_rate, set_rng_state, smoothed)

if TYPE_CHECKING:
    from stdvsr.evaluate import Validator

# Fields a resumed run may change; anything else must match the checkpoint.
RESUMABLE_CHANGES = resumable(DistillConfig)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What the loop trains with, built once by :func:`_setup`; the loop changes only the weights and optimizer
    state inside, and its :class:`DistillState`."""

    cfg: DistillConfig  # resolved (the checkpoint's, when resuming)
    rank: int
    world: int
    device: torch.device
    reader: CacheReader
    student_spec: dict  # {"name", "kwargs"}: what load_model builds
    teacher: TeacherSide
    distiller: Distiller  # the student (distiller.student), the adapter and the ConvLSTM
    synced: nn.Module  # the distiller as the loop calls it: DDP-wrapped under torchrun, the distiller itself alone
    optimizer: torch.optim.Optimizer
    ema: EMA | None  # --ema: the student's averaged weights (validated and deployed)
    loader: torch.utils.data.DataLoader
    mix_loader: torch.utils.data.DataLoader | None  # --mix-cache's batches (GT, no teacher targets)
    validator: Validator | None  # held-out PSNR, on rank 0 with --val-data


@dataclasses.dataclass
class DistillState(LoopState):
    td_frozen_at: int | None = None  # the step L_TD's ConvLSTM froze at (the collapse guard, §3.2)


def run(cfg: DistillConfig, resume: str | None = None, explicit: set[str] | None = None,
        show_progress: bool = True) -> dict:
    """Distil (see :func:`_run`); under torchrun the process group is shut down at the end, success or not."""
    validate_config(cfg)
    cfg = resolve_init(cfg, explicit)
    try:
        # one writer per run folder (rank 0 writes for all ranks)
        with folder_lock(cfg.out) if torchrun_group()[0] == 0 else contextlib.nullcontext():
            return _run(cfg, resume, explicit, show_progress)
    finally:
        end_process_group()


def _run(cfg: DistillConfig, resume: str | None = None, explicit: set[str] | None = None,
         show_progress: bool = True) -> dict:
    """Distil; returns ``{"student": path, "val_psnr", "bicubic_psnr", "steps", "seconds", "td_frozen_at", ...}``.

    ``resume``: None (fresh run), ``"auto"`` (newest checkpoint in ``cfg.out``, if any) or a checkpoint path; when
    resuming, flags in ``explicit`` outside :data:`RESUMABLE_CHANGES` must match the checkpoint's config.
    """
    rank, world, local_rank = torchrun_group()  # validate_config(cfg) ran in run()
    cfg, ckpt = resume_run(cfg, resume, explicit, RESUMABLE_CHANGES, kind="distill", warn=rank == 0)
    setup, state = _setup(cfg, ckpt, rank, world, local_rank)
    folder = RunFolder(cfg.out, folder_config(dataclasses.asdict(cfg), setup.student_spec,
                                              feature_resolved=setup.teacher.feature, tiers_read=setup.teacher.tiers,
                                              precision_resolved=setup.distiller.precision,
                                              cache_fingerprint=setup.reader.fingerprint, world_size=world),
                       lambda step: state_of(setup, state, step), state.step, ckpt is not None, cfg.keep_checkpoints,
                       write=rank == 0)
    show = show_progress and rank == 0
    announce_start(cfg.out, state.step, cfg.steps, resume, show)
    if show and cfg.precision == "auto" and setup.distiller.precision == "bf16":
        stderr().print(f"--precision auto: bf16 autocast on this {setup.device.type.upper()}, which does bf16 arithmetic "
                       "natively (the weights stay fp32; --precision fp32 trains as before)", highlight=False)
    start_time, start_step = time.perf_counter(), state.step
    val_psnr, times = _train(setup, state, folder, show)
    if world > 1:
        _check_ranks_in_sync(setup, folder)
    folder.close()
    path = Path(cfg.out) / "student.pth"
    if rank == 0:
        state_of(setup, state, cfg.steps).save(path)
    return {"student": str(path), "steps": cfg.steps, "resumed_from": start_step, "val_psnr": val_psnr,
            "bicubic_psnr": setup.validator.bicubic if setup.validator is not None else None,
            "seconds": time.perf_counter() - start_time, "td_frozen_at": state.td_frozen_at,
            "tiers_read": setup.teacher.tiers, **times.summary(), "rank": rank, "world_size": world,
            "student_name": cfg.student, "init": cfg.init, "val_of": "gt" if setup.reader.has_gt else "teacher",
            "precision": setup.distiller.precision}


def _train(setup: Setup, state: DistillState, folder: RunFolder, show: bool) -> tuple[float | None, StepTimes]:
    """The loop, from ``state.step`` to ``cfg.steps``: L = L_rec + kd_weight·(λ1·L_SD + λ2·L_TD) (Eq. 9) at every
    step — but on ``--mix-cache``'s steps, L_rec to that cache's ground truth alone. Returns the last held-out PSNR
    (None without validation) and where the steps' time went."""
    cfg = setup.cfg
    start_time, times, val_psnr = time.perf_counter(), StepTimes(), None
    setup.distiller.train()
    with folder.saving_on_interrupt(), loader_batches(setup.loader) as batches, \
            loader_batches(setup.mix_loader) if setup.mix_loader else contextlib.nullcontext() as mix_batches, \
            training_progress(cfg.steps, state.step, enabled=show, log_every=cfg.log_every) as progress:
        for step in range(state.step, cfg.steps):
            done = step + 1
            mixed = mixed_steps(cfg, done) > mixed_steps(cfg, step)
            t0 = time.perf_counter()
            batch = next(mix_batches if mixed else batches)
            t1 = time.perf_counter()
            lr = set_learning_rate(setup.optimizer, cfg, step)
            weight = kd_weight(cfg, step) if setup.teacher.needs and not mixed else 0.0
            # the gradient probe of the first distillation steps and every --probe-every (one process: it needs
            # the whole batch's graph)
            probe = weight > 0 and setup.world == 1 and (step - cfg.warmup_steps < cfg.log_first
                                                         or (cfg.probe_every > 0 and done % cfg.probe_every == 0))
            losses, t2 = _losses(setup, batch, weight, probe, mixed)
            t3 = now(setup.device)
            values = mean_across_ranks(losses, setup.world)
            check_finite(values["total"], done, folder.last, "the distillation loss became non-finite",
                         "lower --lr or --lambda-td / --lambda-sd", terms=values)
            if probe:
                folder.record(step=done, event="probe", kd_scale=weight, **{f"loss_{k}": v for k, v in values.items()},
                              terms=gradient_probe(setup.distiller, losses, weight))
                setup.distiller.probe_feat = None
            t_backward = now(setup.device)  # the probe's and the check's time is the step's, no phase's
            setup.optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            t4 = now(setup.device)
            state.td_frozen_at = _collapse_guard(setup, state.td_frozen_at, values, done, folder, show)
            with folder.updating(done):  # in here the weights, optimizer and EMA disagree about the step
                setup.optimizer.step()
                if setup.ema is not None:
                    setup.ema.update(setup.distiller.student, step)
            t5 = now(setup.device)
            times.add(data=t1 - t0, teacher=t2 - t1, student=setup.distiller.student_done - t2,
                      terms=t3 - setup.distiller.student_done, backward=t4 - t_backward, optimizer=t5 - t4,
                      step=t5 - t0)
            state.step, state.smoothed_loss = done, smoothed(state.smoothed_loss, values["total"])
            progress.update(done, loss=state.smoothed_loss, lr=lr, psnr=val_psnr,
                            **{k: v for k, v in values.items() if k != "total"}, wait=times.wait_frac())
            if due(done, cfg.log_every, cfg.steps) or probe:
                folder.record(step=done, **{f"loss_{k}": v for k, v in values.items()}, lr=lr, distil=weight > 0,
                              kd_scale=weight, **times.row(), elapsed=round(time.perf_counter() - start_time, 2),
                              **({"batch_of": "mix_cache"} if mixed else {}))
            if setup.validator is not None and due(done, cfg.val_every, cfg.steps):
                t_val = time.perf_counter()
                val_psnr = score_weights(setup.validator, setup.distiller.student, setup.ema)
                folder.record(step=done, val_psnr=val_psnr, bicubic_psnr=setup.validator.bicubic,
                              val_s=round(time.perf_counter() - t_val, 3),
                              **({} if setup.reader.has_gt else {"val_of": "teacher"}))  # footage: agreement
                progress.update(done, loss=state.smoothed_loss, lr=lr, psnr=val_psnr)
            if due(done, cfg.ckpt_every, cfg.steps):
                folder.save(done)
    return val_psnr, times


def _losses(setup: Setup, batch: dict, weight: float, probe: bool, mixed: bool = False) -> tuple[dict, float]:
    """The teacher's targets for ``batch`` (cached or online; none while ``weight`` is 0, nor for a ``mixed`` batch
    of --mix-cache, whose L_rec takes its ground truth) and the loss terms of Eq. 9 as tensors; also the time the
    targets were ready (for the step-time split)."""
    targets = Targets()
    if not mixed and (weight > 0 or not setup.reader.has_gt):  # LR footage: the teacher's SR is L_rec's target
        t = setup.teacher
        targets = (online_targets(batch, t.online, t.needs, t.feature, setup.reader.scale, setup.cfg.patch_size,
                                  setup.device)
                   if t.online is not None else cached_targets(batch, t.head, t.needs, t.feature, setup.device,
                                                               setup.distiller.precision))
    targets_ready = now(setup.device)
    windows, gt, targets = augment_batch(batch, targets)
    gt = gt.to(setup.device) if gt is not None else None
    return setup.synced(windows.to(setup.device), gt, targets, weight, probe), targets_ready


def _collapse_guard(setup: Setup, frozen_at: int | None, values: dict, done: int, folder: RunFolder,
                    show: bool) -> int | None:
    """The collapse guard (§3.2): L_TD ~ 0 means the ConvLSTM maps everything to ~0, so from the first step it
    falls below ``td_freeze`` the ConvLSTM stops training (its gradients are dropped before the update). Returns
    the step it froze at."""
    cfg = setup.cfg
    if "td" in values and frozen_at is None and values["td"] < cfg.td_freeze:
        frozen_at = done
        folder.record(step=done, event="td_frozen", td=values["td"])
        if show:
            stderr().print(f"step {done}: L_TD = {values['td']:.3g} < {cfg.td_freeze:g}; "
                           "the ConvLSTM is frozen from here on")
    if frozen_at is not None and setup.distiller.convlstm is not None:
        # Adam skips parameters without a gradient. (Their requires_grad stays on: DDP must not see the set of
        # trained parameters change after it was built.)
        for p in setup.distiller.convlstm.parameters():
            p.grad = None
    return frozen_at


def _check_ranks_in_sync(setup: Setup, folder: RunFolder) -> None:
    """DDP keeps replicas identical by construction; check it, since a silent divergence would waste a run."""
    digests = digests_across_ranks(setup.distiller, setup.world)
    folder.record(step=setup.cfg.steps, event="ranks_in_sync", digests=digests)
    if len(set(digests)) != 1:
        raise StdvsrError(f"the {setup.world} ranks ended with different weights ({digests}); report this as a bug")


def _setup(cfg: DistillConfig, ckpt: Checkpoint | None, rank: int, world: int,
           local_rank: int) -> tuple[Setup, DistillState]:
    """Everything a run trains with: the cache, the student inside its :class:`Distiller` (restored from ``ckpt``
    when resuming), the optimizer, the batches and the validator; and the loop's state at the start."""
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    reader = CacheReader(cfg.cache, data=cfg.data)
    if ckpt is not None:
        diff = first_difference(ckpt.cache_fingerprint, reader.fingerprint)
        if diff:
            raise StdvsrError(f"--resume: cache {reader.root} differs from the one this run started with: {diff} "
                              f"is {lookup(reader.fingerprint, diff)!r}, was {lookup(ckpt.cache_fingerprint, diff)!r}")
    seed_everything(cfg.seed)
    student = build_model(cfg.student).to(device)
    if cfg.init and ckpt is None:  # after the seeded build: the RNG stream is a fresh run's
        from stdvsr.models import load_model

        student.load_state_dict(load_model(cfg.init, flag="--init")[0].state_dict())
    if cfg.channels_last:
        channels_last(student)
    check_cache(cfg, reader, student)
    teacher = teacher_side(cfg, reader, device)
    sr_ch, lr_ch = student_channels(student, teacher.feature)
    distiller = Distiller(student, cfg, teacher.channels, sr_ch if teacher.feature == "sr" else lr_ch,
                          footage=not reader.has_gt, precision=resolve_precision(cfg.precision, device)).to(device)
    optimizer = adam(distiller.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    ema = EMA(student, cfg.ema) if cfg.ema > 0 else None
    state = restore(ckpt, distiller, optimizer, ema) if ckpt is not None else DistillState()
    online_frames = teacher.online.num_frame if teacher.online is not None else None
    mixes = mixed_steps(cfg, state.step)  # batches of --mix-cache so far; the rest were the cache's
    loader = _loader(cfg, reader, student.num_frame, teacher.tiers, online_frames, state.step - mixes, rank, world)
    mix_loader = None
    if cfg.mix_cache:
        mix = CacheReader(cfg.mix_cache)
        check_mix_cache(cfg, mix, student.scale)
        mix_loader = _loader(cfg, mix, student.num_frame, [], None, mixes, rank, world)
    synced = distiller
    if world > 1:
        synced = nn.parallel.DistributedDataParallel(
            distiller, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=distiller.adapter is not None or distiller.convlstm is not None)
    validator = _validator(cfg, reader) if rank == 0 else None
    return Setup(cfg, rank, world, device, reader, {"name": cfg.student, "kwargs": model_spec(cfg.student)[1]},
               teacher, distiller, synced, optimizer, ema, loader, mix_loader, validator), state


def state_of(setup: Setup, state: DistillState, step: int) -> Checkpoint:
    """The run at ``step``: a resumable checkpoint (weights, adapter / ConvLSTM, optimizer, RNG, EMA), or
    (``.deployable()``) ``student.pth``, the student alone (with --ema its averaged weights as ``params_ema``, which
    loading takes first)."""
    ema = {} if setup.ema is None else {"params_ema": setup.ema.weights(setup.distiller.student)}
    return Checkpoint(model=setup.student_spec, config=dataclasses.asdict(setup.cfg), step=step,
                      params=setup.distiller.student.state_dict(), **ema, distill=setup.distiller.state_dict(),
                      optimizer=setup.optimizer.state_dict(), rng=rng_state(), smoothed_loss=state.smoothed_loss,
                      td_frozen_at=state.td_frozen_at, kd=setup.cfg.kd, feature=setup.teacher.feature,
                      cache_fingerprint=setup.reader.fingerprint)


def restore(ckpt: Checkpoint, distiller: Distiller, optimizer: torch.optim.Optimizer,
            ema: EMA | None) -> DistillState:
    """Load a checkpoint written by :func:`state_of`; returns the loop's state at that step."""
    distiller.load_state_dict(ckpt.distill)
    optimizer.load_state_dict(ckpt.optimizer)
    if ema is not None:
        ema.load_state_dict(ckpt.params_ema)
    set_rng_state(ckpt.rng)
    # the progress line's smoothed loss continues where the checkpoint left it, as if never interrupted
    return DistillState(step=ckpt.step, smoothed_loss=ckpt.smoothed_loss, td_frozen_at=ckpt.td_frozen_at)


def _validator(cfg: DistillConfig, reader: CacheReader) -> Validator | TeacherAgreement | None:
    """Held-out Y-PSNR on ``--val-data`` (degraded as the cache was); for LR footage the agreement with the
    teacher on the held-back frames (:class:`TeacherAgreement`); or None."""
    if not reader.has_gt:
        return TeacherAgreement(reader, cfg.holdout, cfg.val_stride) if cfg.val_every and cfg.holdout > 0 else None
    if not (cfg.val_every and cfg.val_data is not None):
        return None
    from stdvsr.evaluate import Validator, validation_clips

    validator = Validator(validation_clips(cfg.val_data, reader.data, cfg.val_clips),
                          reader.fingerprint["degradation"], reader.fingerprint["padding"], cfg.val_stride)
    return validator if validator.items else None


def _loader(cfg: DistillConfig, reader: CacheReader, student_frames: int, tiers: list[str],
            online_frames: int | None, start_step: int, rank: int, world: int) -> torch.utils.data.DataLoader:
    """Batches of this rank's share of each step of ``reader``'s, in an order fixed by (seed, how many batches it
    gave before): resuming continues it. ``online_frames``: the online teacher's window, whose whole frames the
    samples then carry."""
    reader.keep_in_memory(cfg.cache_ram_mb * 2**20)
    dataset = DistillDataset(reader, cfg.clip_frames, student_frames, cfg.patch_size, tiers, cfg.seed,
                             cfg.augment, online_frames, holdout=cfg.holdout if not reader.has_gt else 0.0)
    if len(dataset) < cfg.batch_size * world:
        raise StdvsrError(f"--batch-size {cfg.batch_size} × {world} rank(s) is larger than the {len(dataset)} "
                          f"samples in {reader.root}; lower it")
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=RankBatches(len(dataset), cfg.batch_size, cfg.seed, start_step, rank, world),
        num_workers=cfg.workers, persistent_workers=cfg.workers > 0, collate_fn=collate,
        generator=torch.Generator().manual_seed(cfg.seed), worker_init_fn=loader_worker_init)


def run_or_reuse(cfg: DistillConfig, show_progress: bool = True) -> tuple[dict | None, str]:
    """Train ``cfg`` unless an identical finished run is in ``cfg.out`` (its ``student.pth`` has the same config);
    an interrupted run continues from its last checkpoint. Returns ``(run's result or None, "trained" | "resumed" |
    "reused")``. For pipelines that re-run many students (the demo, the ablations)."""
    cfg = resolve_init(cfg, None)
    out = Path(cfg.out)
    done = out / "student.pth"
    if done.is_file():
        stored = Checkpoint.read(read_checkpoint(done)).config or {}
        known = {f.name for f in dataclasses.fields(cfg)}
        # options added since it was written take the values it ran with, or else their defaults
        stored = {**cfg.BEFORE_RECORDED, **stored}
        mine = dataclasses.asdict(resolved_specs(cfg))
        theirs = dataclasses.asdict(resolved_specs(type(cfg)(**stored))) if stored.keys() <= known else None
        if theirs == mine:
            return None, "reused"
        fields = {f.name: f for f in dataclasses.fields(cfg)}
        # the settings that change what is trained first (a moved folder or another --ckpt-every matter less)
        differ = sorted((k for k in fields if theirs is not None and theirs[k] != mine[k]),
                        key=lambda k: k in RESUMABLE_CHANGES)
        what = (f" ({flag_of(fields[differ[0]])} was {theirs[differ[0]]!r}, now {mine[differ[0]]!r}"
                + (f", and {len(differ) - 1} more" if len(differ) > 1 else "") + ")") if differ else ""
        raise StdvsrError(f"{out} holds a finished run with other settings{what}; delete it or use another --out")
    resume = "auto" if latest_checkpoint(out / "checkpoints") is not None else None
    result = run(cfg, resume=resume, explicit=set() if resume else None, show_progress=show_progress)
    return result, "resumed" if resume else "trained"
