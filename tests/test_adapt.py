"""``stdvsr adapt`` end to end on a tiny clip of real LR footage, a tiny EDVR teacher and a tiny random student:
the adapted student loads and is the run's; the agreement before/after is what the teacher-agreement metric says;
a rerun reuses every phase (no second labelling); no ground-truth file is opened; the footage, students and folders
it cannot adapt are refused in one line before anything is written (issue #22)."""

from __future__ import annotations

import builtins
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from stdvsr import adapt
from stdvsr.cache import CacheReader
from stdvsr.cli import cli
from stdvsr.configs import AdaptConfig
from stdvsr.data import degrade, to_tensor
from stdvsr.distill.agreement import TeacherAgreement
from stdvsr.io import read_image, write_image
from stdvsr.metrics import tensor_to_uint8
from stdvsr.models import build_model, load_model, model_spec
from tests.helpers import write_clips
from tests.test_cache import assert_one_error_line, make_teacher, one_thread

STUDENT = "fastdvdnet-quarter"
# the HR original of the footage: carphone 96×128 (BD ×4 → 24×32 LR), 10 frames
GT_CLIP = {"a": ("carphone", 0, 10, 16, 24, 96, 128)}


def save_student(path: Path, seed: int = 0) -> Path:
    """A tiny random student saved as distill saves one (its name and preset arguments)."""
    torch.manual_seed(seed)
    model = build_model(STUDENT)
    torch.save({"model": {"name": STUDENT, "kwargs": model_spec(STUDENT)[1]}, "params": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pth", seed=0)


@pytest.fixture(scope="module")
def footage(tmp_path_factory, carphone_frames):
    """``gt/a``: HR frames, never to be read; ``lr/a``: their BD ×4 as uint8 PNGs, the footage."""
    root = tmp_path_factory.mktemp("footage")
    frames = carphone_frames + carphone_frames[:2]  # 10 frames
    gt = write_clips(root / "gt", GT_CLIP, {"carphone": frames})
    hr = to_tensor([read_image(p) for p in sorted((gt / "a").iterdir())])
    for i, lq in enumerate(degrade(hr, "bd", 4)):
        write_image(root / "lr" / "a" / f"{i:08d}.png", tensor_to_uint8(lq))
    return {"gt": gt, "lr": root / "lr"}


def config(teacher, footage_root: Path, student: Path, out: Path, **kw) -> AdaptConfig:
    base = dict(student=str(student), data=f"folder:{footage_root}", out=str(out), teacher_weights=str(teacher.path),
                steps=3, lr=1e-3, batch_size=2, patch_size=32, clip_frames=3, holdout=0.2, workers=0, device="cpu")
    return AdaptConfig(**{**base, **kw})


class ReadLog:
    """Every file path opened through Python's open() or numpy.fromfile (how stdvsr reads frames) while active."""

    def __init__(self, monkeypatch):
        self.paths: list[Path] = []
        real_open, real_fromfile = builtins.open, np.fromfile

        def logged_open(file, *a, **kw):
            if isinstance(file, (str, Path)):
                self.paths.append(Path(file).resolve())
            return real_open(file, *a, **kw)

        def logged_fromfile(file, *a, **kw):
            self.paths.append(Path(file).resolve())
            return real_fromfile(file, *a, **kw)

        monkeypatch.setattr(builtins, "open", logged_open)
        monkeypatch.setattr(np, "fromfile", logged_fromfile)

    def under(self, root: Path) -> list[Path]:
        root = root.resolve()
        return [p for p in self.paths if p == root or root in p.parents]


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, teacher, footage):
    """One adaptation, its report, and the mtimes of what a rerun must not rewrite."""
    root = tmp_path_factory.mktemp("adapted")
    student = save_student(root / "student.pth")
    cfg = config(teacher, footage["lr"], student, root / "out")
    with one_thread():
        report = adapt.run(cfg, show_progress=False)
    return cfg, report


def test_adapt_writes_a_loadable_student_that_is_the_runs(adapted):
    cfg, report = adapted
    out = Path(cfg.out)
    model, ckpt = load_model(out / "student.pth")
    run_model, _ = load_model(out / "run" / "student.pth")
    assert ckpt["model"]["name"] == STUDENT and (out / "student.pth").read_bytes() == (
        out / "run" / "student.pth").read_bytes()
    start, _ = load_model(cfg.student)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), start.state_dict().values()))
    assert report["complete"] and json.loads((out / "adapt.json").read_text()) == report
    assert report["phases"] == {"label": "built", "finetune": "trained"}
    assert report["frames"] == {"labelled": 10, "views": 1, "held_back": 2}
    reader = CacheReader(out / "cache")
    assert not reader.has_gt and reader.tiers == ["lq", "sr"]
    # before / after are the teacher-agreement metric of the two students on the 2 held-back frames
    agreement = TeacherAgreement(reader, 0.2, 1)
    a = report["agreement"]
    assert a["frames"] == agreement.frames == 2
    assert a["before"] == pytest.approx(agreement(start), abs=1e-3)
    assert a["after"] == pytest.approx(agreement(model), abs=1e-3)
    assert a["gain"] == pytest.approx(a["after"] - a["before"], abs=1e-3) and a["bicubic"] == pytest.approx(
        agreement.bicubic)
    assert set(report["seconds"]) >= {"label", "finetune", "score_before", "score_after"}


def test_rerun_reuses_every_phase(adapted):
    cfg, _ = adapted
    out = Path(cfg.out)
    watched = [out / "cache" / "manifest.json", *sorted((out / "cache" / "progress").iterdir()),
               out / "run" / "student.pth", out / "run" / "metrics.jsonl"]
    mtimes = [p.stat().st_mtime_ns for p in watched]
    result = CliRunner().invoke(cli, ["adapt", "--student", cfg.student, "--data", cfg.data, "--out", str(out),
                                      "--teacher-weights", cfg.teacher_weights, "--steps", "3", "--lr", "1e-3",
                                      "--batch-size", "2", "--patch-size", "32", "--clip-frames", "3",
                                      "--holdout", "0.2", "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert [p.stat().st_mtime_ns for p in watched] == mtimes  # no second labelling, no second fine-tuning
    report = json.loads((out / "adapt.json").read_text())
    assert report["phases"] == {"label": "reused", "finetune": "reused"}
    assert "nothing to do" in result.stderr and "reusing it" in result.stderr
    text = " ".join(result.stdout.split())
    assert "agreement with the teacher on 2 held-back frames" in text and "reused now" in text
    assert f"{report['agreement']['gain']:+.2f}" in text and str(out / "student.pth") in text


def test_no_ground_truth_file_is_opened(tmp_path, teacher, footage, monkeypatch):
    student = save_student(tmp_path / "student.pth", seed=1)
    log = ReadLog(monkeypatch)
    read_image(next((footage["gt"] / "a").iterdir()))
    assert log.under(footage["gt"])  # the log sees a frame read: the check below is not vacuous
    log.paths.clear()
    with one_thread():
        report = adapt.run(config(teacher, footage["lr"], student, tmp_path / "out", steps=2), show_progress=False)
    assert report["complete"] and log.under(footage["lr"])  # the footage was read ...
    assert log.under(footage["gt"]) == []  # ... and its HR original never


def test_cli_help_has_examples():
    text = " ".join(CliRunner().invoke(cli, ["adapt", "--help"]).stdout.split())
    assert "Examples: stdvsr adapt --student" in text and "chosen on bigbuckbunny" in text and "never on carphone" in text


# ---------------------------------------------------------------------------------------------------- errors
@pytest.fixture()
def invoke(teacher, footage, tmp_path):
    student = save_student(tmp_path / "student.pth")

    def run(*extra: str, data: str | None = None, student_path: Path = student, out: Path = tmp_path / "out"):
        args = ["adapt", "--student", str(student_path), "--data", data or f"folder:{footage['lr']}", "--out",
                str(out), "--teacher-weights", str(teacher.path), "--patch-size", "32", "--clip-frames", "3",
                "--steps", "2", "--workers", "0", "--device", "cpu", *extra]
        return CliRunner().invoke(cli, args)
    return run


def test_refusals_before_anything_is_written(invoke, tmp_path, teacher, footage, carphone_frames):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_error_line(invoke(data=f"folder:{empty}"), f"clip folder {empty} has no frames")
    small = write_clips(tmp_path / "small", {"s": ("carphone", 0, 5, 0, 0, 7, 40)}, {"carphone": carphone_frames})
    assert_one_error_line(invoke(data=f"folder:{small}"), "--patch-size 32 needs footage of at least 8×8 LR pixels",
                          "clip s is 40×7")
    assert_one_error_line(invoke("--patch-size", "128"), "--patch-size 128 needs footage of at least 32×32",
                          "clip a is 32×24")
    assert_one_error_line(invoke("--holdout", "0.9"), "clip a has 10 frames: with --holdout 0.9 it keeps 1",
                          "fewer than --clip-frames 3")
    assert_one_error_line(invoke("--batch-size", "20"), "--batch-size 20 is larger than the 7 training samples")
    assert_one_error_line(invoke(student_path=teacher.path), "is not a student checkpoint of stdvsr",
                          "it records 'edvr'")
    assert_one_error_line(invoke(student_path=tmp_path / "nope.pth"), "checkpoint", "does not exist", "--student")
    assert_one_error_line(invoke(data="vid4:/data/Vid4"), "vid4 holds HR ground truth",
                          "folder:/data/Vid4/BDx4")
    assert_one_error_line(invoke(data="demo"), "name the clips to take as footage, e.g. demo:carphone")
    assert_one_error_line(invoke(data=f"folder:{footage['lr']}", out=footage["lr"] / "adapted"),
                          "lies inside the footage folder")
    assert not out.exists() and not (footage["lr"] / "adapted").exists()


def test_the_students_own_folder_is_not_overwritten(invoke, tmp_path):
    """--out = the folder of the student being adapted: its student.pth (not written by adapt) must survive."""
    own = tmp_path / "trained"
    own.mkdir()
    student = own / "student.pth"
    shutil.copyfile(tmp_path / "student.pth", student)
    before = student.read_bytes()
    assert_one_error_line(invoke(student_path=student, out=own), f"--out {own} holds student.pth but no adapt.json",
                          "choose another --out")
    assert student.read_bytes() == before and sorted(p.name for p in own.iterdir()) == ["student.pth"]


def test_a_cache_as_footage_is_refused(invoke, tmp_path, teacher, footage):
    from stdvsr import cache
    from stdvsr.cache import CacheConfig

    gt_cache = tmp_path / "gt.zarr"
    with one_thread():
        cache.run(CacheConfig(weights=str(teacher.path), data=f"folder:{footage['gt']}", out=str(gt_cache)),
                  show_progress=False)
    for spec in (str(gt_cache), f"folder:{gt_cache}"):
        assert_one_error_line(invoke(data=spec), f"--data {spec} is a teacher cache, not footage")
    assert not (tmp_path / "out").exists()


def test_a_student_of_another_scale_is_refused(invoke, tmp_path, monkeypatch):
    """No registered student is ×2: a loaded one is made so, as a student for another teacher would be."""
    import stdvsr.models

    real = stdvsr.models.load_model

    def as_x2(*a, **kw):
        model, ckpt = real(*a, **kw)
        model.scale = 2
        return model, ckpt

    monkeypatch.setattr(stdvsr.models, "load_model", as_x2)
    assert_one_error_line(invoke(), "is a ×2 fastdvdnet-quarter but the teacher upscales ×4")
    assert not (tmp_path / "out").exists()


def test_other_settings_into_the_same_folder_are_refused(adapted, teacher, footage, tmp_path):
    cfg, _ = adapted
    args = ["adapt", "--student", cfg.student, "--data", cfg.data, "--out", cfg.out, "--teacher-weights",
            cfg.teacher_weights, "--steps", "3", "--lr", "1e-3", "--patch-size", "32", "--clip-frames", "3",
            "--holdout", "0.2", "--workers", "0", "--device", "cpu"]
    before = (Path(cfg.out) / "adapt.json").read_text()
    assert_one_error_line(CliRunner().invoke(cli, [*args, "--seed", "5"]), "was started with other settings",
                          "--seed was 0, now 5")
    other = save_student(tmp_path / "other.pth", seed=7)
    args[2] = str(other)
    assert_one_error_line(CliRunner().invoke(cli, args), "was started with other settings", "--student")
    assert (Path(cfg.out) / "adapt.json").read_text() == before


def test_mix_cache_mixes_ground_truth_batches_in_and_refuses_footage(invoke, tmp_path, teacher, footage):
    """--mix-cache: a quarter of the steps train on that cache's ground truth; a footage cache there is refused
    before the teacher labels anything."""
    from stdvsr import cache
    from stdvsr.cache import CacheConfig

    gt_cache = tmp_path / "gt.zarr"
    with one_thread():
        cache.run(CacheConfig(weights=str(teacher.path), data=f"folder:{footage['gt']}", out=str(gt_cache)),
                  show_progress=False)
    with one_thread():
        result = invoke("--mix-cache", str(gt_cache), "--steps", "4")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("batch_of") == "mix_cache"] == [4]
    assert json.loads((tmp_path / "out" / "adapt.json").read_text())["settings"]["mix_cache"] == str(gt_cache)
    result = invoke("--mix-cache", str(tmp_path / "out" / "cache"), out=tmp_path / "other")
    assert_one_error_line(result, "--mix-cache", "is LR footage without ground truth")
    assert not (tmp_path / "other").exists()
