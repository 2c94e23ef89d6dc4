"""`stdvsr evaluate` on small fake Vid4 / Vimeo90K trees made of real frames: the JSON equals stdvsr.metrics applied
directly to independently computed outputs, each protocol option changes exactly what it should, pictures have the
right shapes, and bad roots / flags are refused in one line."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

from stdvsr.cli import cli
from stdvsr.data import bd_downsample, bi_downsample
from stdvsr.errors import StdvsrError
from stdvsr.evaluate import EvalConfig, run
from stdvsr.io import read_image
from stdvsr.metrics import psnr, ssim, tensor_to_uint8
from stdvsr.models import build_model
from tests.helpers import make_vid4, make_vimeo
from tests.test_cache import assert_one_error_line


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("fastdvdnet-quarter").eval()
    path = tmp_path_factory.mktemp("plain") / "plain" / "student.pth"
    path.parent.mkdir()
    torch.save({"model": {"name": "fastdvdnet-quarter", "kwargs": {}}, "params": model.state_dict()}, path)
    return path, model


@pytest.fixture(scope="module")
def vid4(tmp_path_factory, carphone_frames):
    return make_vid4(tmp_path_factory.mktemp("vid4"), carphone_frames[:6])


@pytest.fixture(scope="module")
def vimeo(tmp_path_factory, carphone_frames):
    return make_vimeo(tmp_path_factory.mktemp("vimeo"), carphone_frames)


def hr_frames(folder: Path) -> torch.Tensor:
    frames = [read_image(p) for p in sorted(folder.glob("*.png"))]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255


def windows_sr(model, lq: torch.Tensor) -> torch.Tensor:
    """Every frame's 7-frame replicate-padded window through the model, written out independently of infer.py."""
    n = len(lq)
    outs = []
    with torch.no_grad():
        for t in range(n):
            idx = [min(max(i, 0), n - 1) for i in range(t - 3, t + 4)]
            outs.append(model(lq[idx][None])[0].clamp(0, 1))
    return torch.stack(outs)


def direct(sr: torch.Tensor, gt: torch.Tensor, frames, crop=0, y=True) -> tuple[float, float]:
    p = [psnr(tensor_to_uint8(sr[f]), tensor_to_uint8(gt[f]), crop, y) for f in frames]
    s = [ssim(tensor_to_uint8(sr[f]), tensor_to_uint8(gt[f]), crop, y) for f in frames]
    return float(np.mean(p)), float(np.mean(s))


def by_name(result: dict) -> dict:
    return {m["name"]: m for m in result["models"]}


def test_vid4_scores_equal_the_metrics_applied_directly(vid4, student, tmp_path):
    path, model = student
    result = run(EvalConfig(set="vid4", root=str(vid4), models=(str(path),), bicubic=True, json=str(tmp_path / "r.json"),
                            csv=str(tmp_path / "r.csv"), figures=str(tmp_path / "fig"), device="cpu"),
                 show_progress=False)
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(result))
    models = by_name(result)
    assert list(models) == ["bicubic", "plain"]  # a student.pth is named after its folder
    clip_means = {"bicubic": [], "plain": []}
    for clip in ("calendar", "city"):
        gt = hr_frames(vid4 / "GT" / clip)
        lq = bd_downsample(gt, 4)
        outputs = {"bicubic": F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1),
                   "plain": windows_sr(model, lq)}
        for name, sr in outputs.items():
            p, s = direct(sr, gt, range(6))
            row = next(c for c in models[name]["clips"] if c["clip"] == clip)
            assert row["frames"] == 6
            assert row["psnr"] == pytest.approx(p, abs=1e-9) and row["ssim"] == pytest.approx(s, abs=1e-9)
            clip_means[name].append(p)
    for name, means in clip_means.items():
        assert models[name]["average"]["psnr"] == pytest.approx(np.mean(means), abs=1e-9)
    assert models["plain"]["params"] == sum(p.numel() for p in model.parameters())
    assert models["plain"]["gmacs"] > 0 and models["plain"]["lr_size"] == [36, 44]
    rows = list(csv.reader((tmp_path / "r.csv").open()))
    assert rows[0] == ["model", "clip", "frames", "psnr", "ssim"] and len(rows) == 1 + 2 * 3
    assert result["protocol"]["channel"] == "Y" and result["protocol"]["frames"] == "all frames"


@pytest.mark.parametrize("option,expected", [
    (dict(crop_border=8), dict(crop=8)),
    (dict(color="rgb"), dict(y=False)),
    (dict(frames="skip-border-2"), dict(frames=range(2, 4))),
    (dict(degradation="bi"), dict(lq="bi")),
    (dict(degradation="lr-folder"), dict(lq="folder")),
])
def test_each_protocol_option_changes_exactly_what_it_should(vid4, tmp_path, option, expected):
    result = run(EvalConfig(set="vid4", root=str(vid4), bicubic=True, figures=str(tmp_path), device="cpu", **option),
                 show_progress=False)
    gt = hr_frames(vid4 / "GT" / "city")
    lq = {"bd": bd_downsample(gt, 4), "bi": bi_downsample(gt, 4), "folder": hr_frames(vid4 / "BDx4" / "city")}[
        expected.get("lq", "bd")]
    sr = F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    p, s = direct(sr, gt, expected.get("frames", range(6)), expected.get("crop", 0), expected.get("y", True))
    row = next(c for c in result["models"][0]["clips"] if c["clip"] == "city")
    assert row["psnr"] == pytest.approx(p, abs=1e-9) and row["ssim"] == pytest.approx(s, abs=1e-9)
    assert row["frames"] == len(expected.get("frames", range(6)))
    default = run(EvalConfig(set="vid4", root=str(vid4), bicubic=True, figures=str(tmp_path), device="cpu"),
                  show_progress=False)
    assert default["models"][0]["average"]["psnr"] != pytest.approx(result["models"][0]["average"]["psnr"], abs=1e-6)


def test_vimeo90k_test_scores_the_centre_frame_only(vimeo, student, tmp_path):
    path, model = student
    result = run(EvalConfig(set="vimeo90k-test", root=str(vimeo), models=(f"mine={path}",), figures=str(tmp_path),
                            device="cpu"), show_progress=False)
    (m,) = result["models"]
    assert m["name"] == "mine" and m["frames_scored"] == 1 and result["protocol"]["frames"] == "centre frame (im4)"
    gt = hr_frames(vimeo / "sequences" / "00002" / "0001")
    sr = windows_sr(model, bd_downsample(gt, 4))
    p, _ = direct(sr, gt, [3])
    assert m["average"]["psnr"] == pytest.approx(p, abs=1e-9)
    slow = run(EvalConfig(set="vimeo90k-slow", root=str(vimeo), bicubic=True, figures=str(tmp_path), device="cpu"),
               show_progress=False)
    assert slow["protocol"]["set"] == "Vimeo90K-T (slow)" and slow["models"][0]["frames_scored"] == 1


def test_pictures_temporal_profile_and_crop_shapes(vid4, student, tmp_path):
    path, _ = student
    result = run(EvalConfig(set="vid4", root=str(vid4), models=(str(path),), bicubic=True, temporal_profile=100,
                            figures=str(tmp_path / "fig"), save_images=str(tmp_path / "sr"), device="cpu"),
                 show_progress=False)
    profile = read_image(tmp_path / "fig" / "calendar_profile_row100.png")
    reps = 64 // 6
    # GT, bicubic and the model side by side: 3 panels of width 176, 2 gaps of 4; a 20-pixel label band on top
    assert profile.shape == (20 + 6 * reps, 3 * 176 + 2 * 4, 3)
    gt = hr_frames(vid4 / "GT" / "calendar")
    expected_gt = np.repeat(np.stack([tensor_to_uint8(gt[f])[100] for f in range(6)]), reps, 0)
    np.testing.assert_array_equal(profile[20:, :176], expected_gt)
    crop = read_image(tmp_path / "fig" / "calendar_crop_frame3.png")
    assert crop.shape == (20 + 192, 3 * 192 + 2 * 4, 3)  # 96-pixel crops zoomed ×2
    assert sorted(p.name for p in (tmp_path / "sr" / "plain" / "city").iterdir()) == [f"{i:08d}.png" for i in range(6)]
    assert read_image(tmp_path / "sr" / "plain" / "city" / "00000000.png").shape == (144, 176, 3)
    assert len(result["pictures"]) == 4

    # pictures only for the first --max-figures clips (Vimeo90K-T would otherwise write ~7,800 of them)
    few = run(EvalConfig(set="vid4", root=str(vid4), bicubic=True, temporal_profile=100, max_figures=1,
                         figures=str(tmp_path / "few"), device="cpu"), show_progress=False)
    assert sorted(Path(p).name for p in few["pictures"]) == ["calendar_crop_frame3.png", "calendar_profile_row100.png"]
    assert sorted(q.name for q in (tmp_path / "few").iterdir()) == sorted(Path(p).name for p in few["pictures"])
    none = run(EvalConfig(set="vid4", root=str(vid4), bicubic=True, max_figures=0, figures=str(tmp_path / "none"),
                          device="cpu"), show_progress=False)
    assert none["pictures"] == [] and not (tmp_path / "none").exists()
    assert none["models"][0]["average"] == result["models"][0]["average"]


def test_bad_sets_roots_and_flags_are_refused(tmp_path, vid4, student):
    with pytest.raises(StdvsrError, match="needs --root PATH, the dataset folder holding GT/<clip>"):
        run(EvalConfig(set="vid4", bicubic=True))
    with pytest.raises(StdvsrError, match="is not a Vid4 folder.*GT/<clip>/%08d.png"):
        run(EvalConfig(set="vid4", root=str(tmp_path), bicubic=True))
    with pytest.raises(StdvsrError, match="needs a clip list"):
        run(EvalConfig(set="vimeo90k-fast", root=str(tmp_path), bicubic=True))
    with pytest.raises(StdvsrError, match="is not one of vid4"):
        run(EvalConfig(set="reds4", bicubic=True))
    with pytest.raises(StdvsrError, match="nothing to evaluate"):
        run(EvalConfig(set="vid4", root=str(vid4)))
    with pytest.raises(StdvsrError, match="--temporal-profile 999 is outside"):
        run(EvalConfig(set="vid4", root=str(vid4), bicubic=True, temporal_profile=999, figures=str(tmp_path)),
            show_progress=False)
    no_lr = make_vid4(tmp_path / "nolr", [read_image(p) for p in sorted((vid4 / "GT" / "city").glob("*.png"))],
                      clips=("city",), lq=False)
    with pytest.raises(StdvsrError, match="has no LR folder"):
        run(EvalConfig(set="vid4", root=str(no_lr), bicubic=True, degradation="lr-folder", figures=str(tmp_path)),
            show_progress=False)
    with pytest.raises(StdvsrError, match="does not exist"):
        run(EvalConfig(set="vid4", root=str(vid4), models=(str(tmp_path / "missing.pth"),)), show_progress=False)


def test_cli_prints_the_protocol_and_both_tables(vid4, student, tmp_path):
    path, _ = student
    result = CliRunner().invoke(cli, ["evaluate", "--set", f"folder:{vid4 / 'GT'}", "--bicubic", "--model", str(path),
                                      "--figures", str(tmp_path), "--crop-border", "4", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "Y-PSNR/SSIM ×4, crop 4, all frames" in result.stdout.replace("\n", " ").replace("  ", " ")
    assert "Average" in result.stdout and "GMACs" in result.stdout
    bad = CliRunner().invoke(cli, ["evaluate", "--set", "vid4", "--root", str(tmp_path / "nope"), "--bicubic"])
    assert_one_error_line(bad, "vid4")


def test_demo_set_works_offline(demo_home, tmp_path):
    result = run(EvalConfig(set="demo", bicubic=True, frames="skip-border-2", figures=str(tmp_path), device="cpu",
                            chunk_frames=64), show_progress=False)
    (m,) = result["models"]
    assert m["clips"][0]["clip"] == "carphone" and m["frames_scored"] == 120 - 4
    assert 20 < m["average"]["psnr"] < 30


# ------------------------------------------------------------------------------------------- issue #16 items
@pytest.mark.parametrize("wrap", ["raw", "params_ema"])
def test_raw_and_basicsr_state_dicts_are_scored_with_arch(vid4, student, tmp_path, wrap):
    path, model = student
    weights = tmp_path / "net_g_latest.pth"
    torch.save(model.state_dict() if wrap == "raw" else {"params_ema": model.state_dict()}, weights)
    args = ["evaluate", "--set", f"folder:{vid4 / 'GT'}", "--model", f"ckpt={path}", "--model", f"weights={weights}",
            "--figures", str(tmp_path / "fig"), "--max-figures", "0", "--device", "cpu"]
    refused = CliRunner().invoke(cli, args)
    assert_one_error_line(refused, f"{weights} is not a stdvsr checkpoint", "--arch, one of edvr, ")
    assert "--weights" not in refused.stderr  # the old hint named a flag evaluate does not have
    result = CliRunner().invoke(cli, [*args, "--arch", "fastdvdnet-quarter", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    scores = by_name(json.loads((tmp_path / "r.json").read_text()))
    assert scores["weights"]["average"] == scores["ckpt"]["average"]  # --arch is ignored for the stdvsr checkpoint


def test_basicsr_edvr_checkpoint_is_scored_with_arch(vid4, tmp_path):
    """BasicSR's EDVR key names are stdvsr's (tests/test_edvr.py): {'params': …} of an EDVR loads with --arch."""
    torch.manual_seed(0)
    teacher = build_model("edvr-s").eval()
    weights = tmp_path / "EDVR_S_x4.pth"
    torch.save({"params": teacher.state_dict()}, weights)
    result = run(EvalConfig(set=f"folder:{vid4 / 'GT' / 'city'}", models=(str(weights),), arch="edvr-s",
                            max_figures=0, device="cpu"), show_progress=False)
    lq = bd_downsample(hr_frames(vid4 / "GT" / "city"))
    expected = direct(windows_sr(teacher, lq), hr_frames(vid4 / "GT" / "city"), range(len(lq)))
    # evaluate batches the windows otherwise than the reference does; on one thread oneDNN then rounds differently
    # (3.2e-6 dB measured with OMP_NUM_THREADS=1, < 1e-6 on 2 threads)
    assert result["models"][0]["average"]["psnr"] == pytest.approx(expected[0], abs=1e-5)


@pytest.mark.parametrize("arg", ["plain=", "=runs/x.pth", " = "])
def test_model_name_without_a_path_is_refused(vid4, arg):
    result = CliRunner().invoke(cli, ["evaluate", "--set", f"folder:{vid4 / 'GT'}", "--model", arg])
    assert_one_error_line(result, f"--model {arg!r}: NAME=PATH needs both a name and a path")


def test_missing_model_names_the_model_flag(vid4, tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", "--set", f"folder:{vid4 / 'GT'}", "--model",
                                      str(tmp_path / "missing.pth")])
    assert_one_error_line(result, f"checkpoint {tmp_path / 'missing.pth'} does not exist", "--model")
    assert "--weights" not in result.stderr and "--resume" not in result.stderr


def test_progress_lines_when_stderr_is_not_a_terminal(vid4, student, tmp_path, monkeypatch):
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    path, _ = student
    result = CliRunner().invoke(cli, ["evaluate", "--set", f"folder:{vid4 / 'GT' / 'city'}", "--bicubic", "--model",
                                      str(path), "--max-figures", "0", "--chunk-frames", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("evaluate: ")]
    # 6 frames × 2 rows in chunks of 3, counted in frames so one long clip shows progress too
    assert [line.split("  ")[0] for line in lines] == [f"evaluate: {n}/12 frames" for n in (3, 6, 9, 12)]


# ------------------------------------------------------------------------------------------- issue #26 items
def _no_scoring(monkeypatch):
    import stdvsr.evaluate

    def fail(*args, **kwargs):
        raise AssertionError("a frame was scored before the outputs were checked")

    monkeypatch.setattr(stdvsr.evaluate, "upscale_frames", fail)
    monkeypatch.setattr(stdvsr.evaluate, "bicubic", fail)


@pytest.mark.parametrize("flag, name", [("--json", "r.json"), ("--csv", "r.csv"), ("--figures", "fig"),
                                        ("--save-images", "sr")])
@pytest.mark.parametrize("how", ["file-as-folder", "read-only"])
def test_unwritable_outputs_are_refused_before_the_first_frame_is_scored(vid4, student, tmp_path, monkeypatch,
                                                                          flag, name, how):
    if how == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        blocker = tmp_path / "ro"
        blocker.mkdir()
        blocker.chmod(0o555)
    else:
        blocker = tmp_path / "blocker"
        blocker.write_text("a file where a folder is needed")  # ENOTDIR, also as root
    _no_scoring(monkeypatch)
    args = ["evaluate", "--set", f"folder:{vid4 / 'GT' / 'city'}", "--bicubic", "--model", str(student[0]),
            "--device", "cpu", "--figures", str(tmp_path / "figures"), flag, str(blocker / "sub" / name)]
    result = CliRunner().invoke(cli, args)
    assert_one_error_line(result, flag, str(blocker))
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [blocker.name]  # the check leaves nothing behind


def test_tables_are_printed_and_other_files_written_when_one_cannot_be(vid4, student, tmp_path, monkeypatch):
    import stdvsr.evaluate

    # the location breaks after the up-front check (a disk filling up, a folder replaced while scoring)
    monkeypatch.setattr(stdvsr.evaluate, "check_writable", lambda *args, **kwargs: None)
    (tmp_path / "blocker").write_text("a file where a folder is needed")
    bad_csv, good_json = tmp_path / "blocker" / "r.csv", tmp_path / "out" / "r.json"
    result = CliRunner().invoke(cli, ["evaluate", "--set", f"folder:{vid4 / 'GT' / 'city'}", "--bicubic", "--device",
                                      "cpu", "--figures", str(tmp_path / "blocker" / "fig"), "--json", str(good_json),
                                      "--csv", str(bad_csv)])
    assert "Average" in result.stdout  # the scores are not lost
    assert json.loads(good_json.read_text())["models"][0]["name"] == "bicubic"
    assert json.loads(good_json.read_text())["pictures"] == []  # the picture that failed is not listed
    assert_one_error_line(result, "2 file(s) could not be written", f"--csv {bad_csv}", "--figures",
                          "tables above")


def test_empty_or_unknown_demo_clip_lists_are_refused(demo_home):
    for spec in ("demo:", "demo: ", "demo:,"):
        with pytest.raises(StdvsrError, match=f"dataset spec {spec}.*names no clip.*carphone"):
            run(EvalConfig(set=spec, bicubic=True, max_figures=0, device="cpu"), show_progress=False)
    with pytest.raises(StdvsrError, match="no demo clip named nonexistent; the demo clips are .*carphone"):
        run(EvalConfig(set="demo:nonexistent", bicubic=True, max_figures=0, device="cpu"), show_progress=False)
    for spec in ("folder:", "video:"):
        with pytest.raises(StdvsrError, match="needs a path"):
            run(EvalConfig(set=spec, bicubic=True, max_figures=0, device="cpu"), show_progress=False)
    result = CliRunner().invoke(cli, ["evaluate", "--set", "demo:", "--bicubic", "--max-figures", "0"])
    assert_one_error_line(result, "demo:", "names no clip", "carphone")
    assert result.stdout == ""


def test_video_set_is_scored_like_its_frames(vid4, tmp_path, stdvsr_home):
    from tests.helpers import write_video

    frames = [read_image(p) for p in sorted((vid4 / "GT" / "city").glob("*.png"))]
    video = write_video(tmp_path / "city.mp4", frames)
    from_video = run(EvalConfig(set=f"video:{video}", bicubic=True, max_figures=0, device="cpu"), show_progress=False)
    decoded = next((stdvsr_home / "videos").glob("city-*")) / "city"
    from_folder = run(EvalConfig(set=f"folder:{decoded}", bicubic=True, max_figures=0, device="cpu"),
                      show_progress=False)
    assert from_video["protocol"]["set"] == f"video:{video}"
    assert from_video["models"][0]["average"] == from_folder["models"][0]["average"]
    assert from_video["models"][0]["frames_scored"] == len(frames)
