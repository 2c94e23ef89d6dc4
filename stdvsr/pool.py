"""Independent jobs side by side, one spawned process each: how ``pipelines/demo.py``, ``pipelines/ablations.py`` and
the studies train several runs at once (a 2-core machine trains two single-threaded runs about twice as fast as
one), and how such a script's ``main`` is run.

Every call runs in a fresh process of its own, started with ``spawn`` (nothing inherited from the parent's memory;
not daemonic, so its DataLoader may start workers). Only the standard library, :mod:`stdvsr.errors` and
:mod:`stdvsr.heap` are imported here, so a worker starts by importing what its function needs and no more.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Hashable

from stdvsr.errors import StdvsrError
from stdvsr.heap import keep_freed_memory

#: What :func:`run_in_processes` runs: ``(function, positional arguments)``, both picklable.
Call = tuple[Callable[..., Any], tuple]


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as its ``__cause__`` in this process."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def run_in_processes(jobs: int, calls: dict[Hashable, Call], done: Callable[[Hashable, Any], None],
                     after: dict[Hashable, Hashable] | None = None) -> None:
    """Run ``calls`` (key → (function, args)) at most ``jobs`` at a time, each in a spawned process, and call
    ``done(key, result)`` here as each finishes (in the order they finish).

    ``after`` maps a call to another whose result it needs: it starts only once that one has finished (and its
    ``done`` has run); otherwise calls start in the order given, each as soon as a process is free.

    A call's exception is raised here (its worker's traceback as the cause). That, Ctrl-C, SIGTERM (raised here as
    :class:`KeyboardInterrupt`, from the first call on, for the rest of the script) or an exception in ``done``
    terminates the running workers before it goes on, so none is left training into a run folder that the next
    invocation resumes (their checkpoints let it continue).
    """
    context = multiprocessing.get_context("spawn")
    signal.signal(signal.SIGTERM, _interrupt)
    after = after or {}
    unknown = {k: v for k, v in after.items() if k not in calls or v not in calls}
    if unknown:
        raise ValueError(f"after= names calls that are not in calls: {unknown}")
    waiting = list(calls.items())
    running: dict[Connection, tuple[Hashable, multiprocessing.process.BaseProcess]] = {}
    finished: set[Hashable] = set()
    try:
        while waiting or running:
            while len(running) < jobs:
                ready = [i for i, (key, _) in enumerate(waiting) if key not in after or after[key] in finished]
                if not ready:
                    if not running:  # nothing left can ever finish what they wait for
                        raise ValueError(f"after= waits in a cycle: {[key for key, _ in waiting]}")
                    break
                key, (function, args) = waiting.pop(ready[0])
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_work, args=(send, function, args))
                process.start()
                send.close()  # the worker holds the only sending end now: its exit ends the pipe
                running[receive] = (key, process)
            for receive in wait(list(running)):
                key, process = running.pop(receive)
                done(key, _outcome(receive, key, process))
                finished.add(key)
    except BaseException:
        for _, process in running.values():
            process.terminate()
        raise


def run_script(main: Callable[[], None]) -> None:
    """Run a script's ``main`` whose runs are reused when it is run again: an error is one ``Error:`` line; Ctrl-C
    keeps the finished runs (the others resume from their checkpoints when the same command runs again). Freed
    memory stays in the process's heap for the next step, as under the ``stdvsr`` command (``stdvsr.heap``)."""
    keep_freed_memory()
    try:
        main()
    except StdvsrError as e:
        raise SystemExit(f"Error: {e}") from None
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept and the others continue from their checkpoints when the same "
              "command is run again", file=sys.stderr, flush=True)
        os._exit(130)  # without joining the terminated workers, as multiprocessing would at exit


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def _work(send: Connection, function: Callable[..., Any], args: tuple) -> None:
    """A worker's body: send back ``(True, result, None)`` or ``(False, exception, traceback text)``."""
    keep_freed_memory()  # a spawned process starts with glibc's defaults
    try:
        outcome = (True, function(*args), None)
    except BaseException as e:  # KeyboardInterrupt too: the parent decides what it means
        outcome = (False, e, traceback.format_exc())
    try:
        send.send(outcome)
    except Exception:  # a result or exception that does not pickle
        send.send((False, RuntimeError(f"the worker's outcome does not pickle: {outcome[1]!r}"[:500]),
                   traceback.format_exc()))
    finally:
        send.close()


def _outcome(receive: Connection, key: Hashable, process: multiprocessing.process.BaseProcess) -> Any:
    """The result a worker sent, or its exception raised here."""
    try:
        ok, value, trace = receive.recv()
    except EOFError:  # it died without a word: killed, out of memory, a crash in native code
        process.join()
        raise ChildProcessError(f"the worker of {key!r} ended without a result (exit code {process.exitcode})") \
            from None
    finally:
        receive.close()
    process.join()
    if not ok:
        raise value from RemoteTraceback(trace)
    return value
