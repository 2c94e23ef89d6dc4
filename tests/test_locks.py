"""One writer per output folder: a second distill / train-teacher / cache-teacher into the same --out is refused
with one line naming it, and a killed holder leaves no stale lock (the kernel drops flock with the process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from stdvsr import cache, train_teacher
from stdvsr.cli import cli
from stdvsr.errors import StdvsrError
from stdvsr.io import folder_lock
from tests.test_cache import assert_one_error_line


def test_a_second_holder_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "run"
    with folder_lock(out):
        with pytest.raises(StdvsrError, match=rf"--out {out} is in use by another stdvsr process \(pid {os.getpid()}\)"):
            with folder_lock(out):
                pass
    with folder_lock(out):  # released at the end of the block
        pass
    assert not out.exists()  # the lock lives next to the folder, which it does not create
    assert list(tmp_path.iterdir()) == []  # and is removed when released


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from stdvsr.io import folder_lock\n"
                               f"with folder_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StdvsrError, match=rf"in use by another stdvsr process \(pid {holder.pid}\)"):
            with folder_lock(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with folder_lock(out):
        pass


def test_ranks_of_a_sharded_cache_build_hold_their_own_lock(tmp_path):
    out = tmp_path / "c.zarr"
    with folder_lock(out, rank=0), folder_lock(out, rank=1):
        with pytest.raises(StdvsrError, match="in use"):
            with folder_lock(out, rank=1):
                pass


def test_every_writing_stage_takes_the_lock(tmp_path):
    out = tmp_path / "busy"
    with folder_lock(out):
        with pytest.raises(StdvsrError, match="is in use by another stdvsr process"):
            train_teacher.run(train_teacher.TeacherConfig(out=str(out)), show_progress=False)
        with pytest.raises(StdvsrError, match="is in use by another stdvsr process"):
            cache.run(cache.CacheConfig(out=str(out)), show_progress=False)
        result = CliRunner().invoke(cli, ["distill", "--out", str(out)])
        assert_one_error_line(result, f"--out {out} is in use by another stdvsr process")
