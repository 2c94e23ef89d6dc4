"""Distilling on a cache of LR footage (issue #22 step 2): no ground truth, so L_rec's target is the teacher's SR;
the last ``--holdout`` of each clip is never trained on and validation is the student's agreement with the teacher
there; ``--init`` starts from a trained student; nothing reads a GT frame."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from stdvsr import data
from stdvsr.cache import CacheReader
from stdvsr.cli import cli
from stdvsr.configs import DistillConfig
from stdvsr.distill import DistillDataset, Distiller, TeacherAgreement, Targets, held_back, run
from stdvsr.infer import upscale_frames
from stdvsr.losses import charbonnier
from stdvsr.metrics import VideoMetrics
from stdvsr.models import build_model, load_model, save_random
from tests.helpers import decode_frames, write_clips
from tests.test_cache import assert_one_error_line, make_teacher
from tests.test_footage_cache import build

# 12 frames of 16×16 LR (64×64 HR: one crop of the default patch), and a second clip of 10
FOOTAGE = {"a": ("carphone", 0, 12, 40, 60, 16, 16), "b": ("bikes", 0, 10, 100, 200, 16, 16)}


@pytest.fixture(scope="module")
def footage(tmp_path_factory, demo_videos):
    tmp = tmp_path_factory.mktemp("footage")
    teacher = make_teacher(tmp / "teacher.pth", seed=0)
    videos = {"carphone": decode_frames(demo_videos["carphone"], 12), "bikes": decode_frames(demo_videos["bikes"], 10)}
    root = write_clips(tmp / "lr", FOOTAGE, videos)
    build(tmp / "cache.zarr", teacher, root)
    student = save_random("fastdvdnet-quarter", tmp / "init.pth", seed=1)
    return tmp / "cache.zarr", student


def config(cache, out, student, **kw) -> DistillConfig:
    base = dict(cache=str(cache), out=str(out), init=str(student), kd="output", warmup_steps=0, steps=6,
                batch_size=1, patch_size=64, lr=1e-3, val_every=6, val_stride=1, workers=0, log_every=1,
                ckpt_every=6, device="cpu")
    return DistillConfig(**{**base, **kw})


def test_held_back_frames_are_never_trained_on_and_are_what_validation_scores(footage):
    cache, _ = footage
    reader = CacheReader(cache)
    assert [held_back(n, 0.25) for n in (12, 10, 3)] == [3, 2, 1] and held_back(12, 0) == 0
    ds = DistillDataset(reader, 7, 7, 64, ["sr"], seed=0, holdout=0.25)
    for index, start in ds.items:  # every training sample's frames lie before the clip's held-back frames
        n = reader.clips[index]["frames"]
        assert start + 7 <= n - held_back(n, 0.25)
    assert len(ds) == (12 - 3 - 7 + 1) + (10 - 2 - 7 + 1)
    agreement = TeacherAgreement(reader, 0.25, stride=1)
    assert [(name, frames) for _, name, frames in agreement.items] == [("a", [9, 10, 11]), ("b", [8, 9])]


def test_agreement_is_the_y_psnr_of_the_student_against_the_cached_teacher_sr(footage):
    """Computed independently: the student over the whole clip (upscale_frames) against the stored sr tier."""
    cache, student_path = footage
    reader = CacheReader(cache)
    model = load_model(student_path)[0]
    expected = VideoMetrics(metrics=("psnr",))
    for index, name in ((0, "a"), (1, "b")):
        n = reader.clips[index]["frames"]
        frames = list(range(n - held_back(n, 0.25), n))
        lq = reader.read_lq(index, range(n))
        sr = upscale_frames(model, lq, frames, "replicate")
        teacher = reader.read(index, range(frames[0], n), tiers=["sr"], lq=False)["sr"].clamp(0, 1)
        for f, s, t in zip(frames, sr, teacher):
            expected.add(name, f, s, t)
    assert TeacherAgreement(reader, 0.25)(model) == pytest.approx(expected.summary()["psnr"], abs=1e-6)


def test_without_ground_truth_the_reconstruction_target_is_the_teachers_sr(footage):
    cache, _ = footage
    cfg = config(cache, "unused", footage[1])
    student = build_model("fastdvdnet-quarter")
    distiller = Distiller(student, cfg, 64, 16, footage=True)
    assert distiller.terms == set()  # output KD is L_rec itself here, not a second term
    windows, target = torch.rand(1, 2, student.num_frame, 3, 16, 16), torch.rand(1, 2, 3, 64, 64)
    losses = distiller(windows, None, Targets(sr=target), kd_weight=1.0)
    sr = student(windows.flatten(0, 1)).view(1, 2, 3, 64, 64)
    assert float(losses["total"].detach()) == pytest.approx(float(charbonnier(sr, target).detach()), rel=1e-6)


def test_adapting_from_a_checkpoint_raises_agreement_and_never_reads_ground_truth(footage, tmp_path, monkeypatch):
    cache, student_path = footage

    def no_gt(*args, **kwargs):
        raise AssertionError("a GT frame was read")

    monkeypatch.setattr(data, "read_hr", no_gt)
    reader = CacheReader(cache)
    before = TeacherAgreement(reader, 0.1)(load_model(student_path)[0])
    result = run(config(cache, tmp_path / "run", student_path, steps=12, val_every=12, ckpt_every=12),
                 show_progress=False)
    assert result["val_of"] == "teacher" and result["student_name"] == "fastdvdnet-quarter"
    after = TeacherAgreement(reader, 0.1)(load_model(result["student"])[0])
    assert result["val_psnr"] == pytest.approx(after, abs=1e-6)
    assert after > before + 0.5, (before, after)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss_total"] == r["loss_rec"] for r in rows if "loss_total" in r)
    from stdvsr.plot import curves_figure, read_metrics

    log = read_metrics(tmp_path / "run" / "metrics.jsonl")  # the curves say what validation measured
    assert log.to_teacher and log.series["val_psnr"][12] == pytest.approx(after, abs=1e-6)
    titles = [ax.get_title() for ax in curves_figure({"adapted": log}).axes]
    assert "Y-PSNR to the teacher, held-back frames (dB), bicubic dashed" in titles


def test_init_is_the_starting_point(footage, tmp_path):
    cache, student_path = footage
    run(config(cache, tmp_path / "run", student_path, steps=1, lr=1e-12, min_lr=0.0, val_every=0), show_progress=False)
    start, end = load_model(student_path)[0].state_dict(), load_model(tmp_path / "run" / "student.pth")[0].state_dict()
    assert all(torch.allclose(start[k], end[k], atol=1e-8) for k in start)


@pytest.mark.parametrize("flags, fragments", [
    (["--kd", "none"], ["LR footage without ground truth", "--kd output"]),
    (["--kd", "std", "--lambda-out", "1"], ["--lambda-out", "reconstruction target already"]),
    (["--holdout", "0.6"], ["keeps 5 for training, fewer than --clip-frames 7", "lower --holdout"]),
    (["--student", "vdsr"], ["--student vdsr differs from the network of --init", "fastdvdnet-quarter"]),
])
def test_footage_refusals_name_the_flag(footage, tmp_path, flags, fragments):
    cache, student_path = footage
    result = CliRunner().invoke(cli, ["distill", "--cache", str(cache), "--init", str(student_path), "--kd", "output",
                                      "--warmup-steps", "0", "--steps", "2", "--out", str(tmp_path / "run"), *flags])
    assert_one_error_line(result, *fragments)
    assert not (tmp_path / "run" / "student.pth").exists()


def test_init_must_be_a_student_checkpoint(footage, tmp_path):
    cache, _ = footage
    teacher = footage[0].parent / "teacher.pth"
    result = CliRunner().invoke(cli, ["distill", "--cache", str(cache), "--init", str(teacher), "--kd", "output",
                                      "--warmup-steps", "0", "--steps", "2", "--out", str(tmp_path / "run")])
    assert_one_error_line(result, "--init", "not a student checkpoint", "'edvr'")


# ------------------------------------------------------------------------------ --mix-cache: GT against forgetting
@pytest.fixture(scope="module")
def gt_cache(footage, demo_videos):
    """A cache with ground truth: 9 HR frames of 64×64 of bikes, BD ×4 (the teacher of the footage fixture)."""
    from stdvsr import cache as stage_one
    from stdvsr.configs import CacheConfig

    tmp = footage[0].parent
    root = write_clips(tmp / "hr", {"g": ("bikes", 20, 9, 0, 0, 64, 64)}, {"bikes": decode_frames(demo_videos["bikes"], 29)})
    stage_one.run(CacheConfig(weights=str(tmp / "teacher.pth"), data=f"folder:{root}", out=str(tmp / "gt.zarr")),
                  show_progress=False)
    return tmp / "gt.zarr"


def test_mixed_steps_are_spread_evenly_and_counted_from_the_step_alone():
    from stdvsr.distill import mixed_steps

    cfg = DistillConfig(mix_cache="x", mix_share=0.25)
    mixed = [s for s in range(12) if mixed_steps(cfg, s + 1) > mixed_steps(cfg, s)]
    assert mixed == [3, 7, 11] and mixed_steps(cfg, 12) == 3
    assert mixed_steps(DistillConfig(), 12) == 0  # no --mix-cache: every step is the cache's


def test_mixed_steps_train_on_the_ground_truth_and_only_they_read_it(footage, gt_cache, tmp_path, monkeypatch):
    cache, student_path = footage
    real, reads = data.read_hr, []

    def counting(clip, *args, **kwargs):
        reads.append(clip.name)
        return real(clip, *args, **kwargs)

    monkeypatch.setattr(data, "read_hr", counting)
    run(config(cache, tmp_path / "run", student_path, steps=8, mix_cache=str(gt_cache), mix_share=0.25),
        show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in rows if "loss_total" in r}
    assert [s for s, r in steps.items() if r.get("batch_of") == "mix_cache"] == [4, 8]
    assert set(reads) == {"g"} and len(reads) == 2  # one GT read per mixed step (batch 1), none for the footage
    assert all(r["loss_total"] == r["loss_rec"] and r["kd_scale"] == 0 for s, r in steps.items() if s in (4, 8))


def test_a_mixed_run_resumes_exactly(footage, gt_cache, tmp_path):
    """Both batch streams continue where they were: resumed from step 5's checkpoint, the run ends as it did in one
    go (5 = 2 of the mixed cache's batches + 3 of the footage's)."""
    import shutil

    cache, student_path = footage
    cfg = config(cache, tmp_path / "a", student_path, steps=8, mix_cache=str(gt_cache), mix_share=0.4, val_every=0,
                 ckpt_every=1, keep_checkpoints=8)
    straight = run(cfg, show_progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "student.pth").unlink()
    for ckpt in (tmp_path / "b" / "checkpoints").glob("step_*.pth"):
        if int(ckpt.stem.split("_")[1]) > 5:
            ckpt.unlink()
    resumed = run(dataclasses.replace(cfg, out=str(tmp_path / "b")), resume="auto", show_progress=False)
    assert resumed["resumed_from"] == 5
    a, b = (load_model(r["student"])[0].state_dict() for r in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("flags, fragments", [
    (["--mix-share", "0.5"], ["--mix-share 0.5 has no effect without --mix-cache"]),
    (["--mix-cache", "FOOTAGE"], ["--mix-cache", "is LR footage without ground truth"]),
    (["--mix-cache", "MISSING"], ["MISSING"]),
])
def test_mix_refusals_name_the_flag(footage, tmp_path, flags, fragments):
    cache, student_path = footage
    flags = [{"FOOTAGE": str(cache), "MISSING": str(tmp_path / "MISSING")}.get(f, f) for f in flags]
    result = CliRunner().invoke(cli, ["distill", "--cache", str(cache), "--init", str(student_path), "--kd", "output",
                                      "--warmup-steps", "0", "--steps", "2", "--out", str(tmp_path / "run"), *flags])
    assert_one_error_line(result, *fragments)
    assert not (tmp_path / "run" / "student.pth").exists()


def test_mix_cache_is_for_footage_only(gt_cache, footage, tmp_path):
    result = CliRunner().invoke(cli, ["distill", "--cache", str(gt_cache), "--init", str(footage[1]), "--kd", "none",
                                      "--steps", "2", "--mix-cache", str(gt_cache), "--out", str(tmp_path / "run")])
    assert_one_error_line(result, "--mix-cache acts on fine-tuning on LR footage", "has ground truth")


def test_with_ema_validation_scores_the_averaged_weights_that_student_pth_deploys(footage, tmp_path):
    cache, student_path = footage
    result = run(config(cache, tmp_path / "run", student_path, steps=6, ema=0.5), show_progress=False)
    reader = CacheReader(cache)
    deployed = TeacherAgreement(reader, 0.1)(load_model(result["student"])[0])  # params_ema, taken first
    raw = build_model("fastdvdnet-quarter")
    raw.load_state_dict(torch.load(result["student"], weights_only=True)["params"])
    assert result["val_psnr"] == pytest.approx(deployed, abs=1e-6)
    assert abs(TeacherAgreement(reader, 0.1)(raw) - deployed) > 1e-3
