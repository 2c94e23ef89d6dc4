"""Terminal output shared by the CLI and the stages: results to stdout, progress and logs to stderr (rich)."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def stdout() -> Console:
    console = Console(soft_wrap=False)
    if not console.is_terminal:  # logs and pipes: tables keep their columns instead of rich's 80-column default
        console.width = max(console.width, 160)
    return console


def stderr() -> Console:
    return Console(stderr=True)


def progress_bar(transient: bool = False) -> Progress:
    """The progress-bar layout for counted work (frames, clips): count, elapsed, ETA."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=stderr(), transient=transient)


class TrainingBar:
    """What a training loop updates: the step, and the loss / lr / validation figures shown after the bar.

    On a terminal this drives a rich bar; otherwise (a log file, CI) it prints one plain line after the first step,
    every ``log_every`` steps, at the last step and at least every ``every_s`` seconds, so long runs (a teacher on a
    CPU: minutes per 20 steps) still show progress where no bar can be drawn.
    """

    def __init__(self, progress: Progress | None = None, task=None, total: int = 0, start: int = 0,
                 log_every: int = 0, every_s: float = 10.0):
        self.progress, self.task, self.total, self.log_every = progress, task, total, log_every
        self.t0, self.start, self.every_s = time.perf_counter(), start, every_s
        self.last_line = self.t0

    def update(self, step: int, loss: float | None = None, lr: float | None = None, psnr: float | None = None,
               **extra: float) -> None:
        parts = [f"loss {loss:.4f}" if loss is not None else "", f"lr {lr:.2e}" if lr is not None else ""]
        parts += [f"{k} {v:.4g}" for k, v in extra.items()]
        if psnr is not None:
            parts.append(f"val {psnr:.2f} dB")
        stats = "  ".join(p for p in parts if p)
        if self.progress is not None:
            speed = self.progress.tasks[0].speed
            self.progress.update(self.task, completed=step, stats=stats, rate=f"{speed:.2f} it/s" if speed else "")
        elif self.log_every:
            now = time.perf_counter()
            due = step % self.log_every == 0 or step in (self.total, self.start + 1)
            if not (due or now - self.last_line >= self.every_s):
                return
            self.last_line = now
            rate = (step - self.start) / max(now - self.t0, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else 0
            stderr().print(f"step {step}/{self.total}  {rate:.2f} it/s  ETA {eta / 60:.0f} min  {stats}",
                           soft_wrap=True, highlight=False)


@contextlib.contextmanager
def training_progress(total: int, start: int = 0, enabled: bool = True, log_every: int = 50) -> Iterator[TrainingBar]:
    """A step bar for training loops on stderr: step/total, it/s, elapsed, ETA, then the loss/lr/val text.

    Without a terminal on stderr it falls back to a plain line every ``log_every`` steps; ``enabled=False`` is silent.
    """
    if not enabled:
        yield TrainingBar()
        return
    console = stderr()
    if not console.is_terminal:
        yield TrainingBar(total=total, start=start, log_every=log_every)
        return
    progress = Progress(TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(bar_width=24),
                        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=console)
    with progress:
        task = progress.add_task("train", total=total, completed=start, stats="", rate="")
        yield TrainingBar(progress, task, total, start)


class WorkBar:
    """What a long job over items (clips, frames) updates: items done and bytes written, shown as items/s and MB/s.

    Without a bar (stderr is not a terminal) it prints a plain line such as ``upscale: 40/120 frames  3.10
    frames/s  ETA 0.4 min`` every ``every`` items and at least every ``every_s`` seconds of work, and when the
    last item is done; ``total=None`` (unknown) drops the ``/total`` and the ETA.
    """

    def __init__(self, progress: Progress | None, task, total: int | None, unit: str, every: int,
                 description: str = "", every_s: float = 0.0):
        self.progress, self.task, self.total, self.unit, self.every = progress, task, total, unit, every
        self.description, self.every_s = description, every_s
        self.done, self.bytes, self.t0 = 0, 0, time.perf_counter()
        self.last_line = self.t0

    def advance(self, items: int = 1, nbytes: int = 0) -> None:
        self.done += items
        self.bytes += nbytes
        now = time.perf_counter()
        dt = max(now - self.t0, 1e-9)
        rate = f"{self.done / dt:.2f} {self.unit}/s"
        if self.bytes:
            rate += f"  {self.bytes / dt / 2**20:.1f} MB/s"
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done, rate=rate)
            return
        if not (self.every or self.every_s):  # disabled
            return
        due = (self.every and self.done % self.every == 0) or self.done == self.total
        if not (due or (self.every_s and now - self.last_line >= self.every_s)):
            return
        self.last_line = now
        head = f"{self.description}: " if self.description else ""
        if self.total:
            eta = (self.total - self.done) * dt / self.done
            line = f"{head}{self.done}/{self.total} {self.unit}  {rate}  ETA {eta / 60:.1f} min"
        else:
            line = f"{head}{self.done} {self.unit}  {rate}"
        stderr().print(line, soft_wrap=True, highlight=False, markup=False)


@contextlib.contextmanager
def work_progress(total: int | None, description: str, unit: str = "clips", enabled: bool = True,
                  every_s: float = 10.0) -> Iterator[WorkBar]:
    """A bar for counted work that may also write data: count, items/s, MB/s, elapsed, ETA (stderr).

    Without a terminal it prints a plain line about every 5 % of the work and at least every ``every_s`` seconds
    (:class:`WorkBar`), so logs and CI show progress too; ``total=None`` means unknown. ``enabled=False`` is silent.
    """
    if not enabled or total == 0:
        yield WorkBar(None, None, total, unit, 0)
        return
    console = stderr()
    if not console.is_terminal:
        yield WorkBar(None, None, total, unit, max(1, total // 20) if total else 0, description, every_s)
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn(unit), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), console=console)
    with progress:
        task = progress.add_task(description, total=total, rate="")
        yield WorkBar(progress, task, total, unit, 0)
