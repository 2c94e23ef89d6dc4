"""Ctrl-C and SIGTERM, the same way in every command.

The first SIGINT (Ctrl-C) or SIGTERM (how cluster schedulers preempt a job) raises :class:`KeyboardInterrupt` or
:class:`~stdvsr.errors.Terminated` in the main thread; the stage saves what it finished and says so with
:func:`announce`, and the CLI exits 130 or 143. From then on the process is stopping: further signals are ignored
(with one note), so a second Ctrl-C cannot cut the save in half or break the interpreter's exit. Code that must not
be cut at all — a checkpoint write, an optimizer step — runs inside :func:`deferred`, where even the first signal
waits until the block is done.

Only :func:`install` (called by ``stdvsr.cli.main``) changes signal handling; library use in Python keeps Python's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Iterator

from stdvsr.errors import Terminated

_state = {"installed": False, "stopping": False, "depth": 0, "pending": None, "noted": False}


def install() -> None:
    """Route SIGINT and SIGTERM through :func:`_handle` (main thread only, as Python requires), and keep
    :func:`_excepthook` from printing a worker's hand-over cut short by the stop."""
    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)
    if sys.excepthook is not _excepthook:
        _state["excepthook"] = sys.excepthook
        sys.excepthook = _excepthook
    _state.update(installed=True, stopping=False, depth=0, pending=None, noted=False)


def _excepthook(kind, value, tb) -> None:
    """While stopping, multiprocessing's resource-sharer thread (it hands tensors' file descriptors to DataLoader
    workers) reports a connection that the ending workers dropped mid-hand-over through ``sys.excepthook``: a
    traceback under the "saved step N" line, seen under heavy load. It is not an error of the run being stopped, so
    it is not printed then; everything else is."""
    if _state["stopping"] and tb is not None:
        while tb.tb_next is not None and "multiprocessing" not in tb.tb_frame.f_code.co_filename:
            tb = tb.tb_next
        if tb.tb_frame.f_code.co_filename.endswith(os.path.join("multiprocessing", "resource_sharer.py")):
            return
    (_state.get("excepthook") or sys.__excepthook__)(kind, value, tb)


def _error(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handle(signum: int, frame) -> None:
    if _state["stopping"]:
        if not _state["noted"]:
            _state["noted"] = True
            # os.write, not print: the signal may have landed inside a write to sys.stderr
            os.write(2, b"\nstdvsr: already stopping (saving the finished work); the signal is ignored. "
                        b"Ctrl-\\ (SIGQUIT) quits at once without saving.\n")
        return
    _state["stopping"] = True
    if _state["depth"]:
        _state["pending"] = signum  # raised when the innermost deferred() block ends
        return
    raise _error(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block a signal must not cut in half: one that arrives inside is raised when the block has finished."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
    if _state["depth"] == 0 and _state["pending"] is not None:
        signum, _state["pending"] = _state["pending"], None
        raise _error(signum)


def exiting() -> None:
    """The interrupt is handled and the process only exits from here: later signals are left to the OS to ignore,
    since Python drops its own handlers while it shuts down and one landing then would kill the process mid-exit
    (status -2 instead of 130)."""
    if _state["installed"]:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stopped_by(error: KeyboardInterrupt) -> str:
    """``Interrupted (Ctrl-C)`` or ``Terminated (SIGTERM)``: how a stage's interrupt line begins."""
    return "Terminated (SIGTERM)" if isinstance(error, Terminated) else "Interrupted (Ctrl-C)"


def announce(error: KeyboardInterrupt, what: str | None) -> None:
    """Print the stage's own line about an interrupt — ``Interrupted (Ctrl-C): saved step 40 …`` — and mark
    ``error`` so that the CLI does not add its generic one. ``what=None`` marks it silently (a rank that does not
    write, whose line rank 0 prints)."""
    if what is not None:
        import click

        click.echo(f"{stopped_by(error)}: {what}", err=True)
    error.stdvsr_announced = True


def announced(error: KeyboardInterrupt) -> bool:
    """Whether a stage printed its own line about ``error`` (:func:`announce`)."""
    return getattr(error, "stdvsr_announced", False)
