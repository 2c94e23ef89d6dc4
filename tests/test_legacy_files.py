"""Files written by an earlier stdvsr still load: a teacher checkpoint, a Zarr and an HDF5 cache, a distillation
run folder (a resumable checkpoint and student.pth), all in ``tests/data/legacy`` and written by the commit named
in its ``written_by.json`` with the small dataset they were made from (before #15 generated the options from the stage dataclasses).

Regenerate only when a format changes on purpose (and then keep reading the old one):
``python -m tests.test_legacy_files --write``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from stdvsr.cache import CacheReader
from stdvsr.cache.check import verify
from stdvsr.distill import DistillConfig, run
from stdvsr.models import load_model

LEGACY = Path(__file__).parent / "data" / "legacy"
# a small student run: what the run folder holds (2 steps, a checkpoint after each, the last one kept)
RUN = dict(student="fastdvdnet-quarter", clip_frames=3, patch_size=32, batch_size=1, steps=2, warmup_steps=0,
           workers=0, val_data=None, log_every=1, ckpt_every=1, keep_checkpoints=1, device="cpu", td_hidden=4,
           seed=3)


def _copy(tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(LEGACY / name, tmp_path / name))


def test_old_caches_open_verify_and_read(tmp_path):
    for name in ("cache.zarr", "cache.h5"):
        root = _copy(tmp_path, name)
        assert verify(root) == [], name
        reader = CacheReader(root)
        assert [c["name"] for c in reader.clips] == ["a"]
        assert reader.fingerprint["degradation"] == "bd" and reader.scale == 4


def test_old_student_and_teacher_checkpoints_load_and_run():
    lq = torch.rand(1, 7, 3, 16, 16)
    student, _ = load_model(LEGACY / "run" / "student.pth")
    assert student(lq).shape == (1, 3, 64, 64)
    teacher, _ = load_model(LEGACY / "teacher.pth")  # a 3-frame tiny EDVR
    assert teacher(lq[:, 2:5]).shape == (1, 3, 64, 64)


def test_an_old_run_resumes_and_a_new_one_trains_the_same_weights(tmp_path):
    """The old run's checkpoint continues for one more step; a run started now, same settings, ends with the old
    run's weights (single thread, as they were written): the training behaviour did not change either."""
    cache, old, data = _copy(tmp_path, "cache.zarr"), _copy(tmp_path, "run"), _copy(tmp_path, "data")
    moved = {**RUN, "cache": str(cache), "data": f"folder:{data}"}  # the caches name the folder they were made in
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run(DistillConfig(**{**moved, "out": str(old), "steps": 3}), resume="auto", show_progress=False)
        assert result["resumed_from"] == 2 and result["steps"] == 3
        # the step as it ran then (since #23 the defaults are bf16 where native and channels-last)
        run(DistillConfig(**{**moved, "out": str(tmp_path / "new"), "precision": "fp32", "channels_last": False}),
            show_progress=False)
    finally:
        torch.set_num_threads(threads)
    then = torch.load(LEGACY / "run" / "student.pth", weights_only=True)["params"]
    now = torch.load(tmp_path / "new" / "student.pth", weights_only=True)["params"]
    assert then.keys() == now.keys()
    for k in then:
        torch.testing.assert_close(now[k], then[k], rtol=0, atol=1e-6, msg=k)


def _write() -> None:
    """Write the files with the code checked out now (run from the repository root)."""
    from stdvsr.cache.build import CacheConfig, run as build
    from tests.helpers import decode_frames, write_clips
    from tests.test_cache import make_teacher
    from stdvsr.demo_set import locate_videos

    shutil.rmtree(LEGACY, ignore_errors=True)
    LEGACY.mkdir(parents=True)
    make_teacher(LEGACY / "teacher.pth", seed=0)
    frames = decode_frames(locate_videos()["carphone"], 6)
    data = write_clips(LEGACY / "data", {"a": ("carphone", 0, 6, 40, 56, 64, 64)}, {"carphone": frames})
    for fmt, name in (("zarr", "cache.zarr"), ("hdf5", "cache.h5")):
        build(CacheConfig(weights=str(LEGACY / "teacher.pth"), data=f"folder:{data}", out=str(LEGACY / name),
                          format=fmt, device="cpu", chunk=16), show_progress=False)
    torch.set_num_threads(1)
    run(DistillConfig(**{**RUN, "cache": str(LEGACY / "cache.zarr"), "out": str(LEGACY / "run")}),
        show_progress=False)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (LEGACY / "written_by.json").write_text(json.dumps({"commit": commit, "torch": torch.__version__}) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_legacy_files --write")
    _write()
    print(f"wrote {LEGACY}")
