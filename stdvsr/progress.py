"""Terminal output shared by the CLI and the stages: results to stdout, progress and logs to stderr (rich)."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def stdout() -> Console:
    return Console(soft_wrap=False)


def stderr() -> Console:
    return Console(stderr=True)


def progress_bar(transient: bool = False) -> Progress:
    """The progress-bar layout for counted work (frames, clips): count, elapsed, ETA."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=stderr(), transient=transient)


class TrainingBar:
    """What a training loop updates: the step, and the loss / lr / validation figures shown after the bar."""

    def __init__(self, progress: Progress | None = None, task=None):
        self.progress, self.task = progress, task

    def update(self, step: int, loss: float | None = None, lr: float | None = None, psnr: float | None = None,
               **extra: float) -> None:
        if self.progress is None:
            return
        parts = [f"loss {loss:.4f}" if loss is not None else "", f"lr {lr:.2e}" if lr is not None else ""]
        parts += [f"{k} {v:.4g}" for k, v in extra.items()]
        if psnr is not None:
            parts.append(f"val {psnr:.2f} dB")
        speed = self.progress.tasks[0].speed
        self.progress.update(self.task, completed=step, stats="  ".join(p for p in parts if p),
                             rate=f"{speed:.2f} it/s" if speed else "")


@contextlib.contextmanager
def training_progress(total: int, start: int = 0, enabled: bool = True) -> Iterator[TrainingBar]:
    """A step bar for training loops on stderr: step/total, it/s, elapsed, ETA, then the loss/lr/val text."""
    if not enabled:
        yield TrainingBar()
        return
    progress = Progress(TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(bar_width=24),
                        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=stderr())
    with progress:
        task = progress.add_task("train", total=total, completed=start, stats="", rate="")
        yield TrainingBar(progress, task)
