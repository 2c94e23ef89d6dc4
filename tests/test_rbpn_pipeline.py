"""RBPN through every stage on tiny configurations and real frames (issue #24 step 4): train-teacher (flows made by
the loader are the flows the network computes), cache-teacher (F^SR and SR stored directly, equal to the teacher
run on the whole frames; no trunk, no head), distill from the cache and with the online teacher (their targets
agree), evaluate and profile of the checkpoint (the OpenCV flow stated apart from the MACs), a footage cache and
adapt; and the refusals of what an RBPN cache cannot hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from stdvsr import adapt, cache, distill, models, train_teacher
from stdvsr.cache import CacheConfig, CacheReader
from stdvsr.cache.check import info, verify
from stdvsr.cache.layout import HEAD, RBPN_FEATURE_POINT
from stdvsr.cli import cli
from stdvsr.configs import AdaptConfig, EvalConfig
from stdvsr.data import degrade, load_clips, read_hr, window_indices
from stdvsr.distill import DistillDataset, Distiller, cached_targets, collate, online_targets, student_channels
from stdvsr.errors import StdvsrError
from stdvsr.evaluate import run as evaluate
from stdvsr.infer import pad_to_multiple
from stdvsr.models import build_model, load_model
from stdvsr.models.flow import window_flows
from stdvsr.models.rbpn import RBPN
from stdvsr.profile import profile_model
from tests.helpers import write_clips
from tests.test_adapt import save_student
from tests.test_cache import FP16_TOL, assert_one_error_line, make_teacher, one_thread

#: A tiny rbpn-s: 3 frames, F^SR 16 channels (the students' adapter maps to it), F^LR 8.
TINY = dict(base_filter=8, feat=8, n_resblock=1, nFrames=3, sr_feat=16)
# clip name → (video, first frame, frames, top, left, HR height, HR width)
CLIPS = {"a": ("carphone", 0, 8, 0, 0, 64, 96), "b": ("bikes", 0, 4, 120, 300, 64, 64)}
# LR footage (no HR original): 24×32 and 20×28 (not a multiple of 4)
FOOTAGE = {"a": ("carphone", 0, 10, 40, 60, 24, 32), "b": ("bikes", 0, 4, 100, 200, 20, 28)}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, carphone_frames, bikes_frames):
    return write_clips(tmp_path_factory.mktemp("frames"), CLIPS, {"carphone": carphone_frames, "bikes": bikes_frames})


def teacher_config(data_root: Path, out: Path, **kw) -> train_teacher.TeacherConfig:
    base = dict(teacher="rbpn", model_args=dict(TINY), data=f"folder:{data_root}", val_data=f"folder:{data_root}",
                steps=12, batch_size=2, patch_size=32, lr=2e-3, ema=0.5, workers=0, device="cpu", out=str(out),
                log_every=1, val_every=12, val_stride=4, ckpt_every=6, augment=False)
    return train_teacher.TeacherConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """train-teacher --teacher rbpn (the preset defaults to rbpn-s), one DataLoader worker making the flows."""
    with one_thread():
        return train_teacher.run(teacher_config(data_root, tmp_path_factory.mktemp("teacher") / "run", workers=1),
                                 show_progress=False)


@pytest.fixture(scope="module")
def teacher(trained):
    return load_model(trained["teacher"])[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory, trained, data_root):
    """cache-teacher --teacher rbpn with the default tiers (feat_sr, sr)."""
    out = tmp_path_factory.mktemp("caches") / "rbpn.zarr"
    with one_thread():
        cache.run(CacheConfig(teacher="rbpn", weights=trained["teacher"], data=f"folder:{data_root}", out=str(out)),
                  show_progress=False)
    return out


# ----------------------------------------------------------------------------------------------- train-teacher
def test_train_teacher_writes_an_rbpn_s_teacher_that_learned(trained, teacher, data_root):
    ckpt = json.loads((Path(trained["teacher"]).parent / "config.json").read_text())
    assert trained["preset"] == "rbpn-s" and ckpt["model"] == {"name": "rbpn-s", "kwargs": {**TINY}}
    assert isinstance(teacher, RBPN) and teacher.sr_feat == 16 and teacher.num_frame == 3
    assert trained["val_psnr"] is not None and trained["bicubic_psnr"] is not None
    rows = [json.loads(line) for line in (Path(trained["teacher"]).parent / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3])


def test_loader_flows_are_those_the_network_computes(data_root, teacher):
    """Flows made with the sample (in the workers) = the network's own from the same window; so is the output."""
    from stdvsr.data import ClipDataset

    dataset = train_teacher.WithFlows(ClipDataset(load_clips(f"folder:{data_root}"), 3, patch_size=32), "dis")
    sample = dataset[2]
    assert sample["flows"].shape == (2, 2, 8, 8) and sample["flows"].abs().max() > 0
    torch.testing.assert_close(sample["flows"], torch.stack(window_flows(sample["lq"][None]), dim=1)[0],
                               rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(teacher(sample["lq"][None], flows=sample["flows"][None]),
                                   teacher(sample["lq"][None]), rtol=0, atol=0)


def test_train_teacher_refusals(data_root, tmp_path):
    with pytest.raises(StdvsrError, match="--preset edvr-s is not an rbpn preset; use rbpn-s or rbpn"):
        train_teacher.run(teacher_config(data_root, tmp_path / "x", preset="edvr-s", model_args={}),
                          show_progress=False)
    result = CliRunner().invoke(cli, ["train-teacher", "--teacher", "rbpn", "--num-feat", "8", "--out",
                                      str(tmp_path / "y")])
    assert_one_error_line(result, "--num-feat overrides an EDVR preset; --teacher rbpn takes its size from --preset")


# ------------------------------------------------------------------------------------------------------- cache
def test_cache_stores_f_sr_and_sr_as_the_teacher_makes_them(built, teacher, data_root):
    reader = CacheReader(built)
    fp = reader.fingerprint
    assert reader.tiers == ["lq", "feat_sr", "sr"] and not (built / HEAD).exists()
    assert fp["teacher"]["name"] == "rbpn" and fp["teacher"]["kwargs"] == TINY
    assert fp["feature_point"] == RBPN_FEATURE_POINT and "feature_point" not in fp["teacher"]
    assert reader.manifest["layout"]["channels"] == {"sr": 16, "lr": 8}
    assert reader.teacher_channels("sr") == 16
    for index, clip in enumerate(load_clips(f"folder:{data_root}")):
        n = len(clip)
        lq = degrade(read_hr(clip, range(n), 4), "bd", 4)
        windows = torch.tensor([window_indices(t, n, 3, "replicate") for t in range(n)])
        with torch.no_grad():
            online = teacher.forward_windows(pad_to_multiple(lq)[None], windows)
        stored = reader.read(index, tiers=["feat_sr", "sr"], gt=False)
        h, w = stored["sr"].shape[-2:]
        for tier, want in (("feat_sr", online.feat_sr[0]), ("sr", online.sr[0])):
            want = want[..., :h, :w]
            assert (stored[tier] - want).abs().max() <= FP16_TOL * want.abs().max(), tier
    assert verify(built) == [] and info(built)["feature_point"] == RBPN_FEATURE_POINT
    with pytest.raises(StdvsrError, match="stores no trunk"):
        reader.head()


def test_bytes_per_frame_of_the_tiers(built):
    """F^SR at 16 channels is 16/3 of SR's bytes per frame; nothing is stored at LR but the input."""
    summary = CacheReader(built).manifest["summary"]
    raw = summary["raw_bytes"]
    assert raw["feat_sr"] * 3 == raw["sr"] * 16 and set(raw) == {"lq", "feat_sr", "sr"}


def test_cache_refusals(trained, data_root, tmp_path, monkeypatch):
    def build(**kw):
        base = dict(teacher="rbpn", weights=trained["teacher"], data=f"folder:{data_root}", out=str(tmp_path / "c"))
        return cache.run(CacheConfig(**{**base, **kw}), show_progress=False)

    with pytest.raises(StdvsrError, match=r"--store trunk: an RBPN teacher has no LR trunk .* store feat_sr, "
                                          r"attention and/or sr \(default: feat_sr,sr\)"):
        build(store="trunk,sr")
    with pytest.raises(StdvsrError, match="a footage cache of an RBPN teacher needs sr"):
        build(store="feat_sr", degradation="none")
    monkeypatch.setitem(models.DEMO_TEACHERS, "rbpn", tmp_path / "rbpn_s_demo.pth")  # a clone without it
    with pytest.raises(StdvsrError, match="--teacher rbpn needs --weights: no shipped demo teacher at .*; train one "
                                          "with bash pipelines/train_demo_teacher.sh rbpn"):
        build(weights=None)
    with pytest.raises(StdvsrError, match="holds a rbpn network, not a edvr teacher; pass --teacher rbpn"):
        build(teacher="edvr")
    result = CliRunner().invoke(cli, ["cache-teacher", "--teacher", "rbpn", "--weights", trained["teacher"],
                                      "--data", f"folder:{data_root}", "--out", str(tmp_path / "d"), "--store",
                                      "trunk"])
    assert_one_error_line(result, "--store trunk: an RBPN teacher has no LR trunk")
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------------------------------- distill
def distill_config(cache_path: Path, out: Path, **kw) -> distill.DistillConfig:
    base = dict(student="fastdvdnet-quarter", cache=str(cache_path), out=str(out), clip_frames=3, patch_size=32,
                batch_size=2, steps=2, warmup_steps=0, workers=0, val_data=None, log_every=1, ckpt_every=1000,
                device="cpu", td_hidden=4)
    return distill.DistillConfig(**{**base, **kw})


def test_a_cache_of_another_teacher_is_refused(built, data_root, tmp_path):
    """The fingerprint holds the teacher's name and configuration: neither a build into the RBPN cache with an EDVR
    teacher nor a distillation resumed against an EDVR cache goes through."""
    edvr = make_teacher(tmp_path / "edvr.pth", seed=0)
    with pytest.raises(StdvsrError, match=r"teacher.name is 'rbpn' there, 'edvr' now"):
        cache.run(CacheConfig(weights=str(edvr.path), data=f"folder:{data_root}", out=str(built)),
                  show_progress=False)
    other = tmp_path / "edvr.zarr"
    cache.run(CacheConfig(weights=str(edvr.path), data=f"folder:{data_root}", out=str(other), max_clips=1),
              show_progress=False)
    distill.run(distill_config(built, tmp_path / "run", steps=1, ckpt_every=1), show_progress=False)
    with pytest.raises(StdvsrError, match=r"--resume: cache .* differs from the one this run started with: "
                                          r"teacher.name is 'edvr', was 'rbpn'"):
        distill.run(distill_config(other, tmp_path / "run", steps=2, ckpt_every=1), resume="auto",
                    show_progress=False)


def test_cached_and_online_targets_agree(built, teacher):
    """Same crop: F^SR and SR read from the cache equal the RBPN teacher run now, within fp16; so do the losses."""
    reader = CacheReader(built)
    keys = [(0, 1), (0, 7)]  # a sample of each clip
    cached_ds = DistillDataset(reader, 3, 7, 32, ["feat_sr", "sr"], seed=0)
    online_ds = DistillDataset(reader, 3, 7, 32, [], seed=0, teacher_frames=3)
    b_cached, b_online = collate([cached_ds[k] for k in keys]), collate([online_ds[k] for k in keys])
    needs = {"feat", "sr"}
    cached = cached_targets(b_cached, None, needs, "sr", torch.device("cpu"))
    online = online_targets(b_online, teacher, needs, "sr", 4, 32, torch.device("cpu"))
    for key in ("feat", "sr"):
        peak = online[key].abs().max()
        assert float(peak) > 0.05 and (cached[key] - online[key]).abs().max() <= FP16_TOL * peak, key
    cfg = distill_config(built, Path("unused"), kd="std")
    student = build_model("fastdvdnet-quarter")
    distiller = Distiller(student, cfg, 16, student_channels(student, "sr")[0])
    with torch.no_grad():
        a = distiller(b_cached["windows"], b_cached["gt"], cached, True)
        b = distiller(b_online["windows"], b_online["gt"], online, True)
    for term in ("sd", "td"):
        assert float(b[term]) > 0 and abs(float(a[term]) - float(b[term])) <= 2e-2 * float(b[term]), term


@pytest.mark.parametrize("online", [False, True])
def test_distill_std_from_an_rbpn_teacher(built, tmp_path, online):
    result = distill.run(distill_config(built, tmp_path / "run", kd="std", online_teacher=online, lambda_out=0.5),
                         show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "loss_td" in r]
    assert len(losses) == 2 and all(r["loss_sd"] > 0 and r["loss_td"] > 0 and r["loss_output"] > 0 for r in losses)
    model, ckpt = load_model(result["student"])
    assert ckpt["kd"] == "std" and model(torch.rand(1, 7, 3, 16, 16)).shape == (1, 3, 64, 64)


def test_distill_refuses_what_an_rbpn_cache_cannot_serve(built, trained, data_root, tmp_path):
    with pytest.raises(StdvsrError, match=r"holds an RBPN teacher, which has no trunk to cache, so it cannot provide "
                                          r"F\^LR \(--feature lr, the default of --kd mean2\); use --feature sr"):
        distill.run(distill_config(built, tmp_path / "a", kd="mean2"), show_progress=False)
    only_fsr = tmp_path / "fsr.zarr"
    cache.run(CacheConfig(teacher="rbpn", weights=trained["teacher"], data=f"folder:{data_root}", out=str(only_fsr),
                          store="feat_sr", max_clips=1), show_progress=False)
    with pytest.raises(StdvsrError, match=r"stores lq, feat_sr, not sr, which --kd here needs; rebuild it with "
                                          r"--store including sr, or use --online-teacher"):
        distill.run(distill_config(only_fsr, tmp_path / "b", kd="output"), show_progress=False)
    # the online teacher computes F^LR (the LR state after the last projection, base_filter channels)
    result = distill.run(distill_config(only_fsr, tmp_path / "c", kd="mean2", online_teacher=True, steps=1),
                         show_progress=False)
    assert Path(result["student"]).is_file()


# -------------------------------------------------------------------------------------------- evaluate, profile
def test_evaluate_scores_the_rbpn_checkpoint_and_states_its_flow(trained, data_root, tmp_path):
    cfg = EvalConfig(set=f"folder:{data_root}", models=(f"rbpn={trained['teacher']}",), bicubic=True,
                     max_figures=0, device="cpu", json=str(tmp_path / "e.json"))
    result = evaluate(cfg, show_progress=False)
    rbpn = next(m for m in result["models"] if m["name"] == "rbpn")
    assert rbpn["opencv_flow"] and rbpn["gmacs"] > 0 and 10 < rbpn["average"]["psnr"] < 60
    out = CliRunner().invoke(cli, ["evaluate", "--set", f"folder:{data_root}", "--model", f"rbpn={trained['teacher']}",
                                   "--max-figures", "0", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "rbpn: the OpenCV optical flow is inside ms / frame and outside GMACs" in " ".join(out.stdout.split())


def test_profile_times_the_flow_apart(trained):
    row = profile_model(trained["teacher"], (16, 16), repeats=1, warmup=0)
    assert row["frames"] == 3 and 0 < row["flow_ms"] < row["ms"] and row["macs"] > 0
    assert profile_model("rbpn-s", (16, 16), frames=5, timing=False)["frames"] == 5
    with pytest.raises(StdvsrError, match="was trained with a window of 3"):
        profile_model(trained["teacher"], (16, 16), frames=5)
    out = CliRunner().invoke(cli, ["profile", "--model", trained["teacher"], "--model", "vdsr", "--lq-size", "16x16",
                                   "--repeats", "1", "--warmup", "0"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.stdout.split())
    assert "of which flow ms" in text and "optical flow (OpenCV, on the CPU) is inside ms / frame and outside" in text


# ----------------------------------------------------------------------------------------------------- footage
@pytest.fixture(scope="module")
def footage(tmp_path_factory, carphone_frames, bikes_frames):
    return write_clips(tmp_path_factory.mktemp("footage"), FOOTAGE, {"carphone": carphone_frames + carphone_frames,
                                                                     "bikes": bikes_frames})


def test_footage_cache_and_adapt_with_an_rbpn_teacher(trained, teacher, footage, tmp_path):
    out = tmp_path / "f.zarr"
    cache.run(CacheConfig(teacher="rbpn", weights=trained["teacher"], data=f"folder:{footage}", out=str(out),
                          degradation="none"), show_progress=False)
    reader = CacheReader(out)
    assert reader.tiers == ["lq", "sr"] and not reader.has_gt
    lq = reader.read_lq(1, range(4))
    windows = torch.tensor([window_indices(t, 4, 3, "replicate") for t in range(4)])
    with torch.no_grad():
        want = teacher.forward_windows(pad_to_multiple(lq)[None], windows).sr[0, ..., :80, :112]
    assert (reader.read(1, tiers=["sr"])["sr"] - want).abs().max() <= FP16_TOL * want.abs().max()

    cfg = AdaptConfig(student=str(save_student(tmp_path / "student.pth")), data=f"folder:{footage}",
                      out=str(tmp_path / "adapt"), teacher_weights=trained["teacher"], kd="std", steps=2, lr=1e-3,
                      batch_size=2, patch_size=32, clip_frames=3, holdout=0.2, workers=0, device="cpu")
    assert adapt.cache_config(cfg, tmp_path / "adapt").store == "feat_sr,sr"
    assert adapt.cache_config(cfg, tmp_path / "adapt").teacher == "rbpn"
    with one_thread():
        report = adapt.run(cfg, show_progress=False)
    assert CacheReader(tmp_path / "adapt" / "cache").tiers == ["lq", "feat_sr", "sr"]
    assert report["teacher"]["name"] == "rbpn" and report["agreement"]["after"] is not None
    assert load_model(tmp_path / "adapt" / "student.pth")[0](torch.rand(1, 7, 3, 8, 8)).shape == (1, 3, 32, 32)
