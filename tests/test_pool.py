"""stdvsr.pool: the calls' results reach ``done`` here, a failing call or a dead worker stops the others, and no worker
outlives the pool. The calls are standard-library functions, so each spawned worker starts in a fraction of a second."""

import math
import multiprocessing
import operator
import os
import signal
import time

import pytest

from stdvsr.pool import RemoteTraceback, run_in_processes


@pytest.fixture(autouse=True)
def sigterm_handler():
    """run_in_processes turns SIGTERM into KeyboardInterrupt for the rest of the script; not for the test session."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def no_children_left(seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not multiprocessing.active_children()


def test_every_result_reaches_done():
    results = {}
    run_in_processes(2, {(a, b): (operator.mul, (a, b)) for a, b in ((2, 3), (4, 5), (6, 7))},
                     lambda key, value: results.__setitem__(key, value))
    assert results == {(2, 3): 6, (4, 5): 20, (6, 7): 42}
    assert no_children_left()


def test_a_failing_call_raises_here_and_ends_the_others():
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="math domain error") as raised:
        run_in_processes(2, {"slow": (time.sleep, (60,)), "bad": (math.sqrt, (-1,))}, lambda *_: None)
    assert isinstance(raised.value.__cause__, RemoteTraceback)  # the worker's traceback comes with it
    assert time.monotonic() - t0 < 30  # the sleeping worker was terminated, not waited for
    assert no_children_left()


def test_a_worker_that_dies_without_a_result_is_an_error():
    with pytest.raises(ChildProcessError, match="'gone'.*exit code 3"):
        run_in_processes(1, {"gone": (os._exit, (3,))}, lambda *_: None)
    assert no_children_left()


def test_an_exception_in_done_ends_the_workers():
    def done(key, value):
        raise RuntimeError("done failed")

    with pytest.raises(RuntimeError, match="done failed"):
        run_in_processes(2, {"quick": (operator.add, (1, 2)), "slow": (time.sleep, (60,))}, done)
    assert no_children_left()


def test_a_call_after_another_starts_once_that_one_is_done_and_others_go_first():
    """``after={"dep": "slow"}``: dep (given before free) waits for slow's result; free takes the second process."""
    order, finished_at = [], {}

    def done(key, value):
        order.append(key)
        finished_at[key] = time.time()
        if key != "slow":
            finished_at[key + "_ran_at"] = value

    run_in_processes(2, {"slow": (time.sleep, (1.0,)), "dep": (time.time, ()), "free": (time.time, ())}, done,
                     after={"dep": "slow"})
    assert order == ["free", "slow", "dep"]
    assert finished_at["dep_ran_at"] >= finished_at["slow"]
    with pytest.raises(ValueError, match="not in calls"):
        run_in_processes(1, {"a": (time.time, ())}, done, after={"a": "b"})
    with pytest.raises(ValueError, match="cycle"):
        run_in_processes(2, {"a": (time.time, ()), "b": (time.time, ())}, done, after={"a": "b", "b": "a"})
    assert no_children_left()
