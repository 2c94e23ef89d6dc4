"""Pieces every training stage shares: learning-rate schedules, EMA, the step-indexed batch order that makes
resumption exact, resuming (config checks, metrics.jsonl), atomic checkpoints, and the device choice. The losses
(L_rec's Charbonnier included) are in :mod:`stdvsr.losses`."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import math
import multiprocessing.util  # registers multiprocessing's exit handler now, before _end_daemon_children
import random
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, TypeVar

import torch
from torch import nn

from stdvsr import __version__, interrupts
from stdvsr.errors import StdvsrError
from stdvsr.io import atomic_path
from stdvsr.options import flag_of


def check_schedule(cfg) -> None:
    """Refuse learning-rate settings that cannot train (shared by both training stages): a NaN, negative or zero
    ``--lr`` would run to the end and save a student that never moved, or weights full of NaN."""
    for name, value, low in (("lr", cfg.lr, 0.0), ("min_lr", cfg.min_lr, None), ("lr_gamma", cfg.lr_gamma, 0.0)):
        flag = "--" + name.replace("_", "-")
        if not math.isfinite(value) or (low is not None and value <= low) or value < 0:
            need = "> 0" if low is not None else "≥ 0"
            raise StdvsrError(f"{flag} {value} must be a finite number {need}")
    if cfg.min_lr > cfg.lr:
        raise StdvsrError(f"--min-lr {cfg.min_lr} is above --lr {cfg.lr}; the cosine schedule decays from --lr to it")


def learning_rate(step: int, base_lr: float, total_steps: int, schedule: str = "cosine", min_lr: float = 1e-7,
                  step_size: int = 200_000, gamma: float = 0.5, warmup_steps: int = 0) -> float:
    """The learning rate at ``step`` (0-based), a pure function of the step so that resuming needs no state.

    ``cosine``: from ``base_lr`` down to ``min_lr`` over ``total_steps`` (after a linear warm-up of
    ``warmup_steps``); ``step``: ``base_lr · gamma^(step // step_size)`` (the paper: halve every 200K).
    """
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))
    if schedule == "step":
        return base_lr * gamma ** (step // step_size)
    raise StdvsrError(f"unknown --schedule {schedule!r}; use cosine or step")


# ------------------------------------------------------------------------------------------ the loop skeleton
# What both training loops do around their own step, written once; each stage keeps its loop visible.
def set_learning_rate(optimizer: torch.optim.Optimizer, cfg, step: int) -> float:
    """Set every parameter group to the schedule's rate at (0-based) ``step`` (``cfg``'s ``lr``, ``steps``,
    ``schedule``, ``min_lr``, ``lr_step``, ``lr_gamma``); returns it."""
    lr = learning_rate(step, cfg.lr, cfg.steps, cfg.schedule, cfg.min_lr, cfg.lr_step, cfg.lr_gamma)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def check_finite(loss: float, done: int, last: Path | None, what: str, fix: str, terms: dict | None = None) -> None:
    """Stop a run whose loss became NaN or inf at step ``done`` (1-based), naming the loss ``terms`` if given and
    the last good checkpoint ``last``: ``"{what} at step N (terms); the last good checkpoint is …; {fix}"``."""
    if math.isfinite(loss):
        return
    shown = " (" + ", ".join(f"{k} {v:.4g}" for k, v in terms.items()) + ")" if terms else ""
    hint = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    raise StdvsrError(f"{what} at step {done}{shown}; {hint}; {fix}")


def smoothed(previous: float | None, loss: float) -> float:
    """The progress line's loss: an exponential average (0.95), checkpointed so a resumed run continues it."""
    return loss if previous is None else 0.95 * previous + 0.05 * loss


def due(done: int, every: int, steps: int) -> bool:
    """Whether a periodic action (a log row, a validation, a checkpoint) falls after step ``done`` of ``steps``:
    every ``every`` steps, and always after the last."""
    return done % every == 0 or done == steps


@dataclasses.dataclass
class LoopState:
    """What a training loop changes besides the weights and the optimizer, checkpointed with them."""

    step: int = 0  # optimizer steps finished
    smoothed_loss: float | None = None  # see smoothed()


def folder_config(config: dict, model: dict, **facts) -> dict:
    """What a run's ``config.json`` holds: the resolved config, the model it trains, facts the stage resolved
    (``facts``, in order) and the version."""
    return {**config, "model": model, **facts, "stdvsr": __version__}


def announce_start(out: str | Path, start_step: int, steps: int, resume: str | None, show: bool) -> None:
    """The line a training stage starts with when resuming (or when ``--resume auto`` found nothing to resume)."""
    if not show:
        return
    if start_step:
        _say(f"resuming {out} from step {start_step} of {steps}")
    elif resume == "auto":
        _say(f"--resume auto: no checkpoint in {Path(out) / 'checkpoints'}; starting fresh at step 1 of {steps}")


def _say(text: str) -> None:
    """One line on stderr, as the training stages print their notes."""
    from stdvsr.progress import stderr

    stderr().print(text, highlight=False, soft_wrap=True)


class EMA:
    """Exponential moving average of a model's parameters (buffers are copied), kept in float32.

    The decay warms up as ``min(decay, (1 + step) / (10 + step))``: without it, a run of a few thousand steps
    at decay 0.999 would still carry 0.999^steps of the random initial weights (13 % after 2,000 steps).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in the weights after ``step`` (0-based) optimizer steps."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].mul_(decay).add_(v.detach().float(), alpha=1 - decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return {k: v.clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = {k: v.detach().clone().float() for k, v in state.items()}

    def weights(self, like: nn.Module) -> dict:
        """The averaged weights in ``like``'s dtypes and device (what a deployed file holds)."""
        own = like.state_dict()
        return {k: v.to(dtype=own[k].dtype, device=own[k].device) for k, v in self.shadow.items()}


def score_weights(score: Callable[[nn.Module], float], model: nn.Module, ema: EMA | None) -> float:
    """``score(model)`` of the EMA weights when there are any (they are what gets shipped), else of the raw
    weights; the model holds its raw weights again afterwards."""
    if ema is None:
        return score(model)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(ema.weights(model))
    try:
        return score(model)
    finally:
        model.load_state_dict(raw)


class StepBatches(torch.utils.data.Sampler):
    """Batches of ``(epoch, index)`` keys as a function of the global step only.

    Epoch ``e`` visits the items in ``randperm(n)`` seeded by ``(seed, e)``; step ``s`` takes batch
    ``s mod batches_per_epoch`` of epoch ``s div batches_per_epoch``. Starting at ``start_step`` therefore gives
    exactly the batches an uninterrupted run would have seen from there on, whatever the number of workers.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int = 0):
        if num_items < batch_size:
            raise StdvsrError(f"--batch-size {batch_size} is larger than the {num_items} training samples; "
                              "lower it or add data")
        self.n, self.batch_size, self.seed, self.start_step = num_items, batch_size, seed, start_step
        self.per_epoch = num_items // batch_size  # the incomplete last batch of an epoch is dropped

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            epoch, pos = divmod(step, self.per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
            for b in range(pos, self.per_epoch):
                yield [(epoch, int(i)) for i in perm[b * self.batch_size:(b + 1) * self.batch_size]]
            step = (epoch + 1) * self.per_epoch

    def __len__(self) -> int:  # infinite in principle; DataLoader only needs a number
        return 2 ** 62


def loader_worker_init(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM and SIGINT: a scheduler signals the whole process group, and so does
    Ctrl-C in a terminal; a worker dying first would fail the main process's next batch before it can save. The
    main process ends its workers itself."""
    import signal
    import sys
    import threading

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.excepthook = quiet_handover(threading.excepthook)
    sys.excepthook = quiet_handover_sys(sys.excepthook)


def quiet_handover(default):
    """A ``threading.excepthook`` for DataLoader workers: a worker hands each batch's tensors to the main process
    through multiprocessing's ``resource_sharer`` thread, and when the main process stops (Ctrl-C, SIGTERM) in the
    middle of a handover, that thread's send fails with a connection error whose traceback would land on the user's
    terminal beside the one-line "saved step N" message. Those errors are dropped; any other goes to ``default``."""
    def hook(args) -> None:
        if not _handover_error(args.exc_type, args.exc_traceback):
            default(args)
    return hook


def quiet_handover_sys(default):
    """:func:`quiet_handover` for ``sys.excepthook``, which is what ``resource_sharer``'s serving loop calls with
    the errors it catches (an ``accept`` reset by a main process that stopped, for one), not the thread hook."""
    def hook(exc_type, value, tb) -> None:
        if not _handover_error(exc_type, tb):
            default(exc_type, value, tb)
    return hook


def _handover_error(exc_type, tb) -> bool:
    """A connection error (OSError, EOFError) raised inside multiprocessing's resource_sharer."""
    import traceback

    return tb is not None and issubclass(exc_type, (OSError, EOFError)) and any(
        frame.f_code.co_filename.endswith("resource_sharer.py") for frame, _ in traceback.walk_tb(tb))


def _end_daemon_children() -> None:
    """Registered with atexit after multiprocessing's own exit handler, so it runs before it (handlers run
    last-registered first). multiprocessing ends daemonic children (DataLoader workers) with SIGTERM and then waits
    for them; our workers ignore SIGTERM (:func:`loader_worker_init`), so one still alive would make the process
    hang at exit. Here they get the same SIGTERM, a second to act on it, and then SIGKILL. In normal use
    :func:`loader_batches` has ended them already; this is the safety net for a loop that does not use it."""
    import time

    children = [p for p in multiprocessing.active_children() if p.daemon]
    for p in children:
        p.terminate()
    deadline = time.monotonic() + 1.0
    for p in children:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


atexit.register(_end_daemon_children)  # after multiprocessing.util's (imported at the top): runs before it


@contextlib.contextmanager
def loader_batches(loader: torch.utils.data.DataLoader) -> Iterator:
    """``iter(loader)`` whose worker processes are ended on leaving the block, however it is left. Needed because
    the workers ignore SIGTERM (:func:`loader_worker_init`): an error's traceback keeps the iterator, and with it
    the workers, alive until interpreter exit, where multiprocessing's ``terminate()`` (a SIGTERM) cannot end them
    and its ``join()`` would wait for ever: the command printed its error and never exited."""
    batches = iter(loader)
    try:
        yield batches
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # the single-process iterator has none
        if shutdown is not None:
            shutdown()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict) -> None:
    """``torch.save`` through a temporary file and a rename: a crash never leaves a truncated checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # a field this stage's checkpoints do not have (None is a value: "no EMA", "not frozen")


@dataclasses.dataclass
class Checkpoint:
    """The one checkpoint schema of both training stages, the only place its keys are spelled.

    :meth:`resumable` is what ``checkpoints/step_N.pth`` holds to ``--resume`` exactly; :meth:`deployable` what the
    final ``teacher.pth`` / ``student.pth`` keep (what :func:`stdvsr.models.load_model` and ``--weights`` read);
    :meth:`read` takes either back, including files written by earlier versions (a missing entry reads as None).
    Each stage has one ``state_of`` that fills it and one ``restore`` that reads it. Fields a stage does not have
    stay :data:`UNSET` and are not written. The field order is the order written.
    """

    model: dict  # {"name", "kwargs"}: what load_model builds
    config: dict  # the resolved stage config (dataclasses.asdict), nanoGPT-style
    step: int  # optimizer steps finished
    params: dict  # the trained network's weights (BasicSR's name): the teacher, or the student alone
    params_ema: dict | None = UNSET  # teacher: the EMA weights (None without --ema)
    distill: dict = UNSET  # distill: student + adapter + ConvLSTM; its presence marks a distill checkpoint
    optimizer: dict = UNSET
    rng: dict = UNSET  # rng_state()
    smoothed_loss: float | None = UNSET  # the progress line's loss, continued on resume
    td_frozen_at: int | None = UNSET  # distill: the step L_TD's ConvLSTM froze at, or None
    kd: str = UNSET  # student.pth: the --kd it was distilled with
    feature: str = UNSET  # student.pth: the distilled feature, sr or lr
    cache_fingerprint: dict = UNSET  # distill: the cache it trained against (resuming refuses another)
    stdvsr: str | None = dataclasses.field(default_factory=lambda: __version__)  # the version that wrote it

    # what only a deployed file records, and what it keeps (in this order)
    DEPLOYED_ONLY: ClassVar[tuple[str, ...]] = ("kd", "feature")
    DEPLOYED: ClassVar[tuple[str, ...]] = ("model", "params", "params_ema", "config", "step", "kd", "feature",
                                           "cache_fingerprint", "stdvsr")

    def _set(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not UNSET}

    def resumable(self) -> dict:
        """A ``checkpoints/step_N.pth``: everything to continue the run exactly."""
        return {k: v for k, v in self._set().items() if k not in self.DEPLOYED_ONLY}

    def deployable(self) -> dict:
        """A final ``teacher.pth`` / ``student.pth``: the weights and what they are. A teacher's file always has
        ``params_ema`` (what ``--weights`` takes first): the raw weights when trained without EMA."""
        state = self._set()
        if "params_ema" in state and state["params_ema"] is None:
            state["params_ema"] = state["params"]
        return {k: state[k] for k in self.DEPLOYED if k in state}

    @classmethod
    def read(cls, saved: dict) -> "Checkpoint":
        """A loaded checkpoint (:func:`stdvsr.models.read_checkpoint`) as a :class:`Checkpoint`; entries it lacks
        read as None, entries this version does not know are ignored."""
        return cls(**{f.name: saved.get(f.name) for f in dataclasses.fields(cls)})

    def save(self, path: Path) -> None:
        """Write :meth:`deployable` atomically (the resumable form goes through :class:`RunFolder`)."""
        save_checkpoint(path, self.deployable())


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise StdvsrError(f"--device {name!r} is not a device name; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StdvsrError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the highest step in ``folder`` (``step_<7-digit step>.pth``), or None."""
    found = sorted(folder.glob("step_*.pth"))
    return found[-1] if found else None


Config = TypeVar("Config")


def resolved_specs(cfg: Config) -> Config:
    """``cfg`` with its dataset specs (``data``, ``val_data``) holding absolute paths (:func:`stdvsr.data.resolve_spec`):
    the run's config.json and checkpoints then name the same data from any directory, and ``folder:tiny`` and
    ``folder:/abs/tiny`` are one setting on ``--resume``."""
    from stdvsr.data import resolve_spec

    names = [n for n in ("data", "val_data") if hasattr(cfg, n)]
    return dataclasses.replace(cfg, **{n: resolve_spec(getattr(cfg, n)) for n in names})


def _newest_intact(folder: Path, warn: bool) -> tuple[Path | None, Checkpoint | None]:
    """The newest checkpoint in ``folder`` that loads, and its contents; ``(None, None)`` if there is none. Newer
    ones that do not load (a disk that filled up, a copy cut short) are passed over with a warning naming them; if
    none loads, that is an error."""
    from stdvsr.models import read_checkpoint

    bad = []
    for path in sorted(folder.glob("step_*.pth"), reverse=True):
        try:
            ckpt = Checkpoint.read(read_checkpoint(path, "--resume auto"))
        except StdvsrError as e:
            bad.append((path, str(e)))
            continue
        if bad and warn:
            names = ", ".join(p.name for p, _ in bad)
            _say(f"warning: --resume auto: {names} in {folder} cannot be loaded ({bad[0][1]}); resuming from "
                 f"{path.name} (step {ckpt.step}), the newest intact checkpoint")
        return path, ckpt
    if bad:
        raise StdvsrError(f"--resume auto: no checkpoint in {folder} can be loaded ({bad[0][1]}); move them away to "
                          "start fresh, or pass --resume PATH")
    return None, None


def _as_set(f: dataclasses.Field, value) -> str:
    """How a stored setting reads in a refusal: ``with 2``, ``without --td-forget-bias`` (None: the option was not
    given), ``with --online-teacher`` / ``without --online-teacher``, ``with --no-augment``."""
    flag = flag_of(f)
    if value is None:
        return f"without {flag} (its default)"
    if isinstance(value, bool):
        if flag.startswith("--no-"):  # --no-space-check sets check_space to False
            return f"with {flag}" if not value else f"without {flag}"
        if f.default is True:  # --augment/--no-augment
            return f"with {flag}" if value else f"with --no-{flag[2:]}"
        return f"with {flag}" if value else f"without {flag}"
    return f"with {value!r}"


def resume_run(cfg: Config, resume: str | None, explicit: set[str] | None, resumable: set[str],
               kind: str | None = None, warn: bool = True) -> tuple[Config, Checkpoint | None]:
    """The config and checkpoint a run continues from: ``(cfg, None)`` for a fresh run.

    ``resume``: None, ``"auto"`` (the newest checkpoint in ``cfg.out`` that loads, passing over newer ones that do
    not with a warning if ``warn``; none yet = fresh) or a checkpoint path (which must load). The checkpoint's
    config is used; of the fields named in ``explicit`` (default: all), those in ``resumable`` override it and any
    other that differs is an error naming the flag. A fresh run into a folder that already holds checkpoints is
    refused. ``kind``: the :class:`Checkpoint` field that marks the stage's checkpoints (``"distill"``), checked if
    given.
    """
    from stdvsr.models import read_checkpoint

    cfg = resolved_specs(cfg)
    ckpt = None
    if resume is not None:
        if resume == "auto":
            path, ckpt = _newest_intact(Path(cfg.out) / "checkpoints", warn)
        else:
            path, ckpt = Path(resume), Checkpoint.read(read_checkpoint(resume, "--resume"))
        if path is not None:
            if ckpt.config is None or (kind is not None and getattr(ckpt, kind) is None):
                raise StdvsrError(f"--resume {path} is not a checkpoint of this stage ({kind or 'stdvsr'})")
            if (ckpt.step or 0) > cfg.steps:
                raise StdvsrError(f"--steps {cfg.steps} is below step {ckpt.step} of {path}: the run is already "
                                  f"past it; raise --steps, or start a new --out folder")
            # a setting added since the checkpoint was written takes the value that reproduces its run
            stored = resolved_specs(type(cfg)(**{**getattr(cfg, "BEFORE_RECORDED", {}), **ckpt.config}))
            fields = {f.name: f for f in dataclasses.fields(cfg)}
            # explicit None compares every field, except one the checkpoint predates: nobody asked to change it
            unrecorded = set(getattr(cfg, "BEFORE_RECORDED", {})) - set(ckpt.config)
            names = set(fields) - unrecorded if explicit is None else explicit
            for name in sorted(names):
                mine, theirs = getattr(cfg, name), getattr(stored, name)
                if mine == theirs:
                    continue
                if name not in resumable:
                    shown = "unset" if mine is None else repr(mine)
                    raise StdvsrError(f"--resume: {flag_of(fields[name])} is {shown} but {path} was trained "
                                      f"{_as_set(fields[name], theirs)}; drop the flag or start a new --out folder")
                setattr(stored, name, mine)
            cfg = stored
    if ckpt is None and latest_checkpoint(Path(cfg.out) / "checkpoints") is not None:
        raise StdvsrError(f"--out {cfg.out} already holds checkpoints of a run; pass --resume auto to continue it, "
                          "or choose another --out")
    return cfg, ckpt


def open_metrics(path: Path, resumed_at: int | None):
    """``metrics.jsonl`` opened for appending rows. A fresh run starts it empty; a run resumed at step N keeps the
    rows up to N and drops the later ones (logged after the last checkpoint, they are logged again), so every
    step appears once and a resumed log reads like an uninterrupted one."""
    from stdvsr.io import write_text

    path = Path(path)
    if resumed_at is None or not path.is_file():
        return open(path, "w")
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the half-written last line of a killed run
            continue
        if isinstance(row, dict) and row.get("step", 0) <= resumed_at:
            kept.append(line + "\n")
    write_text(path, "".join(kept))
    return open(path, "a")


class RunFolder:
    """The run folder both training stages write, written once: ``config.json``, ``metrics.jsonl`` (rows past a
    resumed step dropped, see :func:`open_metrics`), ``checkpoints/step_N.pth`` (atomic, the newest ``keep``
    kept) and, on Ctrl-C or SIGTERM, a checkpoint of the finished steps.

    ``state_of(step)`` is the stage's run at ``step`` as a :class:`Checkpoint` (its resumable form is written). Only
    the writing rank (``write``) touches the disk; the others get the same calls as no-ops, so a training loop reads
    the same on every rank. The optimizer step goes inside :meth:`updating`: an interrupt landing there saves
    nothing (the weights would be ahead of the step count).
    """

    def __init__(self, out: Path, config: dict, state_of: Callable[[int], Checkpoint], start_step: int,
                 resumed: bool, keep: int, write: bool = True):
        from stdvsr.io import write_text

        self.out, self.state_of, self.keep, self.write = Path(out), state_of, keep, write
        self.completed = self.saved = start_step
        self.in_update, self.last = False, None
        self.log = None
        if write:
            (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
            write_text(self.out / "config.json", json.dumps(config, indent=1))
            self.log = open_metrics(self.out / "metrics.jsonl", start_step if resumed else None)

    def record(self, **row) -> None:
        if self.log is not None:
            self.log.write(json.dumps(row) + "\n")
            self.log.flush()

    def save(self, step: int) -> Path | None:
        """Checkpoint ``step``; returns its path (None on a rank that does not write). A Ctrl-C or SIGTERM during
        the write waits for it (:func:`stdvsr.interrupts.deferred`)."""
        if not self.write:
            self.saved = step
            return None
        path = self.out / "checkpoints" / f"step_{step:07d}.pth"
        with interrupts.deferred():
            save_checkpoint(path, self.state_of(step).resumable())
            self.saved, self.last = step, path
            # keep the newest `keep` up to this step; a higher step left by an earlier attempt (a damaged one that
            # resume passed over, or one beyond a --resume PATH) is not ours to prune in favour of itself
            for old in [p for p in sorted(path.parent.glob("step_*.pth")) if p.name <= path.name][:-self.keep]:
                old.unlink()
        return path

    @contextlib.contextmanager
    def updating(self, step: int):
        """Around the weights' update to ``step``: afterwards the step counts as finished. A Ctrl-C or SIGTERM
        inside waits for the update (:func:`stdvsr.interrupts.deferred`); a KeyboardInterrupt raised otherwise
        (Python's own handler) marks the step unsaveable."""
        with interrupts.deferred():
            self.in_update = True
            yield
            self.completed, self.in_update = step, False

    @contextlib.contextmanager
    def saving_on_interrupt(self):
        """Ctrl-C / SIGTERM inside the block saves the finished steps (unless it landed mid-update), so
        ``--resume auto`` loses nothing, and says what is saved (:func:`stdvsr.interrupts.announce`); any error
        closes the log (after the block, :meth:`close` does)."""
        try:
            yield self
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                self._save_on_interrupt(e)
            self.close()
            raise

    def _save_on_interrupt(self, error: KeyboardInterrupt) -> None:
        if not self.write:
            interrupts.announce(error, None)  # the writing rank reports for all
            return
        if self.completed > self.saved and not self.in_update:
            path = self.save(self.completed)
            interrupts.announce(error, f"saved step {self.saved} to {path}; rerun with --resume auto to continue")
            return
        path = self.last or self.out / "checkpoints" / f"step_{self.saved:07d}.pth"
        if self.saved and path.is_file():
            interrupts.announce(error, f"step {self.saved} is saved in {path}; rerun with --resume auto to continue")
        else:  # no step finished since the run (or its resumed checkpoint, kept elsewhere) started
            since = f"after step {self.saved}" if self.saved else "yet"
            interrupts.announce(error, f"no step finished {since}; nothing to save (rerun the same command)")

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


class StepTimes:
    """Where a training step's seconds go — ``data`` (waiting for the batch), ``teacher`` (its targets), ``student``
    (the student's forward), ``terms`` (the loss terms' forward: SD, TD's ConvLSTM, …), ``backward``, ``optimizer``
    (the update, EMA included), ``step`` (all of it, so also what no phase names) — over the window since the last
    log row and over the whole run. Validation and checkpoints are outside the step."""

    PHASES = ("data", "teacher", "student", "terms", "backward", "optimizer", "step")

    def __init__(self):
        self.totals = dict.fromkeys(self.PHASES, 0.0)
        self.steps = 0
        self._reset()

    def _reset(self) -> None:
        self.window, self.n = dict.fromkeys(self.PHASES, 0.0), 0

    def add(self, **seconds: float) -> None:
        """One step's seconds per phase (a phase not given took none)."""
        for k, v in seconds.items():
            self.window[k] += v
            self.totals[k] += v
        self.n += 1
        self.steps += 1

    def wait_frac(self) -> float:
        """The window's share of step time spent waiting for data (the progress line's ``wait``)."""
        return self.window["data"] / max(self.window["step"], 1e-9)

    def row(self) -> dict:
        """The window's means for a metrics.jsonl row; starts a new window."""
        n = max(self.n, 1)
        out = {"data_wait_s": round(self.window["data"] / n, 5),
               **{f"{k}_s": round(self.window[k] / n, 5) for k in self.PHASES[1:]},
               "data_wait_frac": round(self.wait_frac(), 4)}
        self._reset()
        return out

    def summary(self) -> dict:
        """The run's means per step: ``<phase>_s`` for every phase but data, and ``data_wait_frac``."""
        n = max(self.steps, 1)
        return {**{f"{k}_s": self.totals[k] / n for k in self.PHASES[1:]},
                "data_wait_frac": self.totals["data"] / max(self.totals["step"], 1e-9)}


def print_training(title: str, result: dict, rows: list[tuple[str, str]], label: str, weights: str) -> None:
    """The table a training command ends with: held-out PSNR next to bicubic, the stage's ``rows``, the time, the
    weights, and the run's curves.png."""
    from rich.table import Table

    from stdvsr.progress import stdout

    table = Table(title=title)
    table.add_column("", justify="left")
    table.add_column("value", justify="right")
    if result["val_psnr"] is not None:
        if result.get("val_of") == "teacher":  # LR footage: no GT, so how closely it reproduces the teacher
            table.add_row("Y-PSNR to the teacher, held-back frames (dB)", f"{result['val_psnr']:.2f}")
            table.add_row("bicubic's Y-PSNR to the teacher (dB)", f"{result['bicubic_psnr']:.2f}")
        else:
            table.add_row("held-out Y-PSNR (dB)", f"{result['val_psnr']:.2f}")
            table.add_row("bicubic Y-PSNR (dB)", f"{result['bicubic_psnr']:.2f}")
    for row in rows:
        table.add_row(*row)
    table.add_row("training time (s)", f"{result['seconds']:.0f}")
    table.add_row(label, weights)
    _add_curves(table, Path(weights).parent)
    stdout().print(table)


def _add_curves(table, run: Path) -> None:
    """Draw ``run/curves.png`` (loss terms, lr, validation PSNR) at the end of a training command and list it; the
    weights are saved by then, so a picture that cannot be written is a warning, not a failed run."""
    from stdvsr.plot import write_run_plot
    from stdvsr.progress import stderr

    try:
        path = write_run_plot(run)
    except (StdvsrError, OSError) as e:
        stderr().print(f"warning: no curves.png ({e})", highlight=False, soft_wrap=True)
        return
    if path is not None:
        table.add_row("curves", str(path))
