"""Process-level behaviour of the training helpers (stdvsr.training)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from stdvsr.errors import Terminated

LEFTOVER_WORKER = textwrap.dedent("""
    import torch
    from stdvsr.training import loader_worker_init

    class Zeros(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.zeros(2)

    loader = torch.utils.data.DataLoader(Zeros(), batch_size=2, num_workers=1, persistent_workers=True,
                                         worker_init_fn=loader_worker_init)
    batches = iter(loader)
    next(batches)
    KEPT = batches  # a loop that leaves its worker running (no loader_batches), as an error's traceback would
    print("reached the end", flush=True)
""")


def test_a_process_exits_even_when_a_sigterm_ignoring_worker_outlives_its_loop():
    """Our DataLoader workers ignore SIGTERM, which is all multiprocessing sends its daemonic children at exit
    before waiting for them: without training's exit handler this process would never end (the CI hang of
    2026-12-03). With it: SIGTERM, a second's grace, then SIGKILL."""
    proc = subprocess.run([sys.executable, "-c", LEFTOVER_WORKER], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "reached the end" in proc.stdout, proc.stderr


# ------------------------------------------------------------------------------------------------ interrupts
@pytest.fixture()
def our_signal_handlers():
    """stdvsr's SIGINT / SIGTERM handling (what ``stdvsr.cli.main`` installs) in this process, for one test."""
    from stdvsr import interrupts

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupts.install()
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


def test_a_signal_inside_a_deferred_block_waits_for_it_and_a_second_is_ignored(our_signal_handlers, capfd):
    from stdvsr import interrupts

    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of a save
            reached.append("after the first Ctrl-C")
            os.kill(os.getpid(), signal.SIGTERM)
            reached.append("after a SIGTERM on top")
    assert reached == ["after the first Ctrl-C", "after a SIGTERM on top"]
    os.kill(os.getpid(), signal.SIGINT)  # stopping already: ignored outside a block as well
    assert "already stopping" in capfd.readouterr().err


def test_ctrl_c_during_a_checkpoint_write_lets_it_finish_and_says_what_is_saved(our_signal_handlers, tmp_path,
                                                                                  capsys):
    """The write of step 1 is under way when Ctrl-C comes: it completes (a checkpoint that loads, not a
    half-written temporary), then the run stops and names it."""
    from stdvsr.models import read_checkpoint
    from stdvsr.training import Checkpoint, RunFolder

    def state_of(step: int) -> Checkpoint:
        os.kill(os.getpid(), signal.SIGINT)
        return Checkpoint(model={"name": "vdsr", "kwargs": {}}, config={}, step=step,
                          params={"w": torch.arange(1000.0)})

    folder = RunFolder(tmp_path, {}, state_of, start_step=0, resumed=False, keep=3)
    with pytest.raises(KeyboardInterrupt):
        with folder.saving_on_interrupt():
            with folder.updating(1):
                pass
            folder.save(1)
            raise AssertionError("the interrupt did not stop the run")
    saved = tmp_path / "checkpoints" / "step_0000001.pth"
    assert read_checkpoint(saved)["step"] == 1 and sorted(os.listdir(saved.parent)) == [saved.name]
    assert f"Interrupted (Ctrl-C): step 1 is saved in {saved}; rerun with --resume auto" in capsys.readouterr().err


@pytest.mark.parametrize("error, code, line", [(KeyboardInterrupt, 130, "Interrupted (Ctrl-C); rerun the same"),
                                               (Terminated, 143, "Terminated (SIGTERM); rerun the same")])
def test_an_interrupted_command_that_saves_nothing_exits_130_or_143_with_one_line(monkeypatch, error, code, line):
    """Commands without their own interrupt line (evaluate, upscale, …) still exit as a shell reports a signal —
    not click's "Aborted!" and 1, which a scheduler cannot tell from an error."""
    import stdvsr.profile
    from click.testing import CliRunner

    from stdvsr.cli import cli

    def stopped(*args, **kwargs):
        raise error()

    monkeypatch.setattr(stdvsr.profile, "run", stopped)
    result = CliRunner().invoke(cli, ["profile", "--model", "vdsr", "--no-timing"])
    assert result.exit_code == code, result.output
    assert result.stderr.strip().splitlines() == [line + " command to continue (training: --resume auto)"]


def test_one_checkpoint_schema_writes_both_stages_files_and_reads_old_ones():
    """``Checkpoint`` is the one place the keys are spelled: a teacher's and a student's resumable checkpoint and
    final file hold exactly the keys (in the order) stdvsr has always written, and the legacy files read back."""
    from stdvsr.models import read_checkpoint
    from stdvsr.training import Checkpoint

    w = {"w": torch.zeros(1)}
    common = dict(model={"name": "x", "kwargs": {}}, config={"steps": 2}, step=2, params=w, optimizer={}, rng={},
                  smoothed_loss=0.5)
    teacher = Checkpoint(**common, params_ema=None)  # trained without EMA
    assert list(teacher.resumable()) == ["model", "config", "step", "params", "params_ema", "optimizer", "rng",
                                         "smoothed_loss", "stdvsr"]
    assert teacher.resumable()["params_ema"] is None
    final = teacher.deployable()
    assert list(final) == ["model", "params", "params_ema", "config", "step", "stdvsr"] and final["params_ema"] is w
    student = Checkpoint(**common, distill={}, td_frozen_at=None, kd="std", feature="sr", cache_fingerprint={})
    legacy = Path(__file__).parent / "data" / "legacy" / "run"
    old_ckpt = read_checkpoint(legacy / "checkpoints" / "step_0000002.pth")
    old_final = read_checkpoint(legacy / "student.pth")
    assert list(student.resumable()) == list(old_ckpt)
    assert list(student.deployable()) == list(old_final)
    read = Checkpoint.read(old_ckpt)
    assert read.step == old_ckpt["step"] == 2 and read.distill.keys() == old_ckpt["distill"].keys()
    assert read.kd is None and Checkpoint.read(old_final).kd == old_final["kd"]


def test_a_worker_hand_over_cut_short_by_the_stop_prints_no_traceback(capsys, monkeypatch):
    """multiprocessing's resource-sharer thread reports through sys.excepthook; while stdvsr is stopping on a signal a
    dropped hand-over is noise (seen as a traceback under the "saved step" line under load), before it is not."""
    import os
    import sys

    from stdvsr import interrupts

    def raised_in(filename: str):
        try:
            exec(compile("raise EOFError('hand-over cut')", filename, "exec"))
        except EOFError:
            return sys.exc_info()

    sharer = raised_in(os.path.join("lib", "python3", "multiprocessing", "resource_sharer.py"))
    other = raised_in(os.path.join("stdvsr", "training.py"))
    monkeypatch.setitem(interrupts._state, "excepthook", sys.__excepthook__)
    monkeypatch.setitem(interrupts._state, "stopping", False)
    interrupts._excepthook(*sharer)
    assert "hand-over cut" in capsys.readouterr().err  # not stopping: reported as before
    monkeypatch.setitem(interrupts._state, "stopping", True)
    interrupts._excepthook(*sharer)
    assert capsys.readouterr().err == ""
    interrupts._excepthook(*other)  # any other error is still reported while stopping
    assert "hand-over cut" in capsys.readouterr().err


def test_pruning_keeps_the_run_s_own_checkpoints_beside_a_damaged_newer_one(tmp_path):
    """Resumed from step 200 past a truncated step 300: saving 250 with keep=1 must keep 250 (and the run's own
    older ones are pruned), never prune down to the damaged 300 alone."""
    from stdvsr.models import read_checkpoint
    from stdvsr.training import Checkpoint, RunFolder

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "step_0000300.pth").write_bytes(b"truncated")
    (ckpts / "step_0000200.pth").write_bytes(b"the checkpoint resumed from")

    def state_of(step: int) -> Checkpoint:
        return Checkpoint(model={"name": "vdsr", "kwargs": {}}, config={}, step=step, params={"w": torch.ones(2)})

    folder = RunFolder(tmp_path, {}, state_of, start_step=200, resumed=True, keep=1)
    folder.save(250)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000250.pth", "step_0000300.pth"]
    assert read_checkpoint(ckpts / "step_0000250.pth")["step"] == 250 and folder.last == ckpts / "step_0000250.pth"


def _thread_error(code: str, filename: str):
    import threading
    try:
        exec(compile(code, filename, "exec"), {})
    except BaseException as error:  # noqa: B902 - the test raises it on purpose
        return threading.ExceptHookArgs([type(error), error, error.__traceback__, threading.current_thread()])
    raise AssertionError("the code did not raise")


def test_workers_drop_only_the_handover_errors_of_a_stopping_main_process():
    """A worker's resource_sharer thread failing to send to a main process that stopped prints nothing; any other
    thread error still reaches the default hook (seen: a resource_sharer traceback beside 'saved step N')."""
    from stdvsr.training import quiet_handover
    seen = []
    hook = quiet_handover(seen.append)
    sharer = "/usr/lib/python3/multiprocessing/resource_sharer.py"
    hook(_thread_error("raise BrokenPipeError(32, 'Broken pipe')", sharer))
    hook(_thread_error("raise ConnectionResetError()", "/x/multiprocessing/resource_sharer.py"))
    assert seen == []
    other = _thread_error("raise BrokenPipeError()", "/x/my_thread.py")
    bug = _thread_error("raise ValueError('a bug')", "/x/multiprocessing/resource_sharer.py")
    hook(other)
    hook(bug)
    assert seen == [other, bug]


def test_workers_drop_the_handover_errors_resource_sharer_reports_through_sys_excepthook():
    """resource_sharer's serving loop catches its own errors and calls sys.excepthook with them (seen: a reset
    accept → deliver_challenge traceback beside 'Interrupted (Ctrl-C): saved step 3'): dropped there too."""
    from stdvsr.training import quiet_handover_sys
    seen = []
    hook = quiet_handover_sys(lambda *exc: seen.append(exc))
    reset = _thread_error("raise ConnectionResetError(104, 'Connection reset by peer')",
                          "/x/multiprocessing/resource_sharer.py")
    hook(reset.exc_type, reset.exc_value, reset.exc_traceback)
    assert seen == []
    bug = _thread_error("raise ValueError('a bug')", "/x/multiprocessing/resource_sharer.py")
    other = _thread_error("raise ConnectionResetError()", "/x/my_server.py")
    for exc in (bug, other):
        hook(exc.exc_type, exc.exc_value, exc.exc_traceback)
    assert [e[1] for e in seen] == [bug.exc_value, other.exc_value]
