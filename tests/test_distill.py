"""Stage two on real frames, a tiny EDVR teacher and tiny students: the samples describe the same pixels as the
cached targets, cached and online-teacher targets and losses agree within the cache's fp16 tolerance, gradients
reach the student / adapter / ConvLSTM and never the targets, the collapse guard, every --kd mode and student,
exact resume, two gloo ranks stay identical, and bad caches / flags are refused with one clear line."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
from click.testing import CliRunner

from stdvsr import cache, distill, training
from stdvsr.distill import distiller as distiller_module, loop
from stdvsr.cache import CacheConfig, CacheReader
from stdvsr.cli import cli
from stdvsr.data import load_clips, read_hr, window_indices
from stdvsr.distill import (DistillConfig, DistillDataset, Distiller, Targets, augment_batch, cached_targets, collate,
                            online_targets, run, student_channels)
from stdvsr.errors import StdvsrError
from stdvsr.losses import ConvLSTM
from stdvsr.models import build_model, load_model
from tests.helpers import write_clips
from tests.test_cache import REBUILD_TOL, FP16_TOL, assert_one_error_line, free_port, make_teacher, sub_env

REPO = Path(__file__).resolve().parents[1]
# clip name → (video, first frame, frames, top, left, HR height, HR width)
CLIPS = {"a": ("carphone", 0, 8, 0, 0, 64, 96), "b": ("bikes", 0, 4, 120, 300, 64, 64)}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, carphone_frames, bikes_frames):
    return write_clips(tmp_path_factory.mktemp("frames"), CLIPS, {"carphone": carphone_frames, "bikes": bikes_frames})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pth", seed=0)


def _build(out: Path, teacher, data_root: Path, **kw) -> Path:
    cache.run(CacheConfig(weights=str(teacher.path), data=f"folder:{data_root}", out=str(out), **kw),
              show_progress=False)
    return out


@pytest.fixture(scope="module")
def caches(tmp_path_factory, teacher, data_root):
    """A trunk-only cache (the default) and one with every tier."""
    root = tmp_path_factory.mktemp("caches")
    return {"trunk": _build(root / "trunk.zarr", teacher, data_root),
            "all": _build(root / "all.zarr", teacher, data_root, store=("trunk", "attention", "feat_sr", "sr"))}


def config(cache_path: Path, out: Path, **kw) -> DistillConfig:
    base = dict(student="fastdvdnet-quarter", cache=str(cache_path), out=str(out), clip_frames=3, patch_size=32,
                batch_size=2, steps=2, warmup_steps=0, workers=0, val_data=None, log_every=1, ckpt_every=1000,
                device="cpu", td_hidden=4)
    return DistillConfig(**{**base, **kw})


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def losses_of(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k.startswith("loss_")} for row in metrics(out)
            if "loss_total" in row and "event" not in row]


def batch_of(dataset: DistillDataset, keys) -> dict:
    return collate([dataset[k] for k in keys])


# ------------------------------------------------------------------------------------------------- samples
def test_samples_hold_every_frames_window_with_the_cache_padding(caches, data_root):
    """Frame t's student window is frames window_indices(t) of the clip (replicate at the ends), cropped like gt."""
    reader = CacheReader(caches["trunk"])
    ds = DistillDataset(reader, clip_frames=3, student_frames=7, patch_size=32, tiers=["trunk"], seed=3)
    clip = load_clips(f"folder:{data_root}")[0]
    lq_all = reader.read_lq(0, range(8))
    for i in (0, 2, 5):  # samples starting at frames 0, 2 and 5 of clip "a" (8 frames): both ends are padded
        item = ds[(1, i)]
        top, left = item["box"]
        start = item["frames"][0]
        assert item["windows"].shape == (3, 7, 3, 8, 8)
        for n, t in enumerate(range(start, start + 3)):
            expected = lq_all[window_indices(t, 8, 7, "replicate")][..., top // 4:top // 4 + 8, left // 4:left // 4 + 8]
            torch.testing.assert_close(item["windows"][n], expected, rtol=0, atol=0)
        gt = read_hr(clip, range(start, start + 3), 4)[..., top:top + 32, left:left + 32]
        torch.testing.assert_close(item["gt"], gt, rtol=0, atol=0)
        assert item["trunk"].shape[-2:] == (8 + 4, 8 + 4)  # the head's 2-pixel margin
    assert ds[(1, 5)]["box"] == ds[(1, 5)]["box"] and len(ds) == (8 - 2) + (4 - 2)


def test_a_batch_stacks_the_tensors_and_keeps_the_rest_as_plain_lists(caches):
    """collate: tensors stacked (what a DataLoader worker sends through shared memory), metadata as lists of
    plain values with tuples transposed (box = [tops, lefts]); through a worker the batch is the same."""
    reader = CacheReader(caches["trunk"])
    ds = DistillDataset(reader, clip_frames=3, student_frames=7, patch_size=32, tiers=["trunk"], seed=3)
    items = [ds[(1, i)] for i in (0, 4)]
    batch = collate(items)
    for key in ("windows", "gt", "trunk"):
        assert torch.equal(batch[key], torch.stack([it[key] for it in items]))
    assert batch["box"] == [[items[0]["box"][0], items[1]["box"][0]], [items[0]["box"][1], items[1]["box"][1]]]
    assert batch["clip"] == [it["clip"] for it in items] and batch["transform"] == [0, 0]
    assert all(type(v) is int for v in (*batch["index"], *batch["box"][0], *batch["frames"][1]))
    loader = torch.utils.data.DataLoader(ds, batch_sampler=[[(1, 0), (1, 4)]], num_workers=1, collate_fn=collate)
    (through_worker,) = list(loader)
    assert through_worker.keys() == batch.keys()
    for key, value in batch.items():
        assert torch.equal(through_worker[key], value) if torch.is_tensor(value) else through_worker[key] == value


# ------------------------------------------------------------------------------------------- cached = online
@pytest.mark.parametrize("feature", ["sr", "lr"])
def test_cached_and_online_targets_and_losses_agree(caches, teacher, feature):
    """Same batch and crop: the cache's targets (trunk through the head, or stored tiers) equal the teacher run
    online within fp16 tolerance, and so do the resulting losses."""
    reader = CacheReader(caches["trunk"])
    cfg = config(caches["trunk"], "unused", kd="std", feature=feature)
    keys = [(0, 1), (0, 7)]  # one sample of each clip (the two clips differ in size)
    needs = {"feat", "sr"} if feature == "sr" else {"feat"}
    ds_cached = DistillDataset(reader, 3, 7, 32, ["trunk"], seed=0)
    ds_online = DistillDataset(reader, 3, 7, 32, [], seed=0, teacher_frames=3)
    b_cached, b_online = batch_of(ds_cached, keys), batch_of(ds_online, keys)
    torch.testing.assert_close(b_cached["windows"], b_online["windows"], rtol=0, atol=0)
    cached = cached_targets(b_cached, reader.head(), needs, feature, torch.device("cpu"))
    online = online_targets(b_online, teacher.model, needs, feature, 4, 32, torch.device("cpu"))
    peak = online["feat"].abs().max()
    assert float(peak) > 0.1  # a real signal, not zeros
    assert (cached["feat"] - online["feat"]).abs().max() <= (REBUILD_TOL if feature == "sr" else FP16_TOL) * peak
    if feature == "sr":
        assert (cached["sr"] - online["sr"]).abs().max() <= REBUILD_TOL * online["sr"].abs().max()
        # the tiers stored directly serve the same targets
        everything = CacheReader(caches["all"])
        ds_all = DistillDataset(everything, 3, 7, 32, ["feat_sr", "sr"], seed=0)
        direct = cached_targets(batch_of(ds_all, keys), None, needs, feature, torch.device("cpu"))
        assert (direct["feat"] - online["feat"]).abs().max() <= FP16_TOL * peak

    student = build_model("fastdvdnet-quarter")
    sr_ch, lr_ch = student_channels(student, feature)
    distiller = Distiller(student, cfg, online["feat"].shape[2], sr_ch if feature == "sr" else lr_ch)
    with torch.no_grad():
        a = distiller(b_cached["windows"], b_cached["gt"], cached, True)
        b = distiller(b_online["windows"], b_online["gt"], online, True)
    assert a["rec"] == b["rec"]
    for term in ("sd", "td", "total"):
        assert float(b[term]) > 0
        assert abs(float(a[term]) - float(b[term])) <= 2e-2 * float(b[term]), (term, a[term], b[term])


def test_stored_attention_serves_sd_alone(caches):
    """--kd sd with the default mapping reads the stored attention maps when the cache has them (no F^SR)."""
    everything = CacheReader(caches["all"])
    cfg = config(caches["all"], "unused", kd="sd")
    assert distill.teacher_needs(cfg) == {"attention"}
    assert distill.cache_tiers({"attention"}, "sr", ["lq", "attention"], "c") == ["attention"]
    assert distill.cache_tiers({"attention"}, "sr", ["lq", "trunk"], "c") == ["trunk"]
    # the 1-channel maps, not the 64-channel F^SR, when both are stored
    assert distill.cache_tiers({"attention"}, "sr", ["lq", "trunk", "attention", "feat_sr"], "c") == ["attention"]
    assert distill.cache_tiers({"feat", "sr"}, "sr", ["lq", "trunk", "sr"], "c") == ["sr", "trunk"]
    ds = DistillDataset(everything, 3, 7, 32, ["attention", "feat_sr"], seed=0)
    batch = batch_of(ds, [(0, 0), (0, 3)])
    via_maps = cached_targets(batch, None, {"attention"}, "sr", "cpu")
    via_feat = cached_targets(batch, None, {"feat"}, "sr", "cpu")
    student = build_model("fastdvdnet-quarter")
    d = Distiller(student, cfg, 64, 16)
    with torch.no_grad():
        x = d(batch["windows"], batch["gt"], Targets(attention=batch["attention"][:, :, 0]), True)["sd"]
        y = d(batch["windows"], batch["gt"], via_feat, True)["sd"]
    assert "attention" in via_maps
    assert abs(float(x) - float(y)) <= 1e-2 * float(y)


# ------------------------------------------------------------------------------------------------ gradients
def test_gradients_reach_student_adapter_convlstm_and_never_the_targets(caches):
    reader = CacheReader(caches["trunk"])
    cfg = config(caches["trunk"], "unused", kd="std")
    ds = DistillDataset(reader, 3, 7, 32, ["trunk"], seed=0)
    batch = batch_of(ds, [(0, 0), (0, 6)])
    head = reader.head()
    targets = cached_targets(batch, head, {"feat"}, "sr", torch.device("cpu"))
    student = build_model("fastdvdnet-quarter")
    distiller = Distiller(student, cfg, 64, 16)
    assert distiller.adapter is not None and distiller.adapter.in_channels == 16
    losses = distiller(batch["windows"], batch["gt"], targets, True)
    losses["total"].backward()
    for name, p in distiller.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not targets["feat"].requires_grad and targets["feat"].grad is None
    assert all(p.grad is None for p in head.parameters())


def test_no_adapter_when_channels_match_and_none_for_attention_only():
    student = build_model("fastdvdnet")  # F^SR 64 channels, as EDVR's
    assert Distiller(student, DistillConfig(kd="std"), 64, 64).adapter is None
    assert Distiller(student, DistillConfig(kd="sd"), 64, 16).adapter is None  # maps need no adapter
    assert Distiller(student, DistillConfig(kd="none"), 64, 16).convlstm is None


def test_augment_transforms_inputs_and_targets_alike():
    windows, gt = torch.rand(2, 3, 7, 3, 8, 8), torch.rand(2, 3, 3, 32, 32)
    feat = torch.rand(2, 3, 4, 32, 32)
    w2, g2, t2 = augment_batch({"windows": windows, "gt": gt, "transform": torch.tensor([0, 5])},
                               Targets(feat=feat))
    assert torch.equal(w2[0], windows[0]) and torch.equal(t2["feat"][0], feat[0])
    assert torch.equal(g2[1], gt[1].flip(-1).transpose(-1, -2))
    assert torch.equal(w2[1], windows[1].flip(-1).transpose(-1, -2))
    assert torch.equal(t2["feat"][1], feat[1].flip(-1).transpose(-1, -2))


# ------------------------------------------------------------------------------------------ collapse guard
def test_all_zero_convlstm_is_the_collapse_point(caches):
    reader = CacheReader(caches["trunk"])
    batch = batch_of(DistillDataset(reader, 3, 7, 32, ["trunk"], seed=0), [(0, 0), (0, 1)])
    targets = cached_targets(batch, reader.head(), {"feat"}, "sr", "cpu")
    distiller = Distiller(build_model("fastdvdnet-quarter"), DistillConfig(kd="td", td_hidden=4), 64, 16)
    with torch.no_grad():
        for p in distiller.convlstm.parameters():
            p.zero_()
        assert float(distiller(batch["windows"], batch["gt"], targets, True)["td"]) == 0.0


def test_collapse_guard_freezes_the_convlstm(caches, tmp_path):
    """Once L_TD < --td-freeze the ConvLSTM stops changing (logged); the student keeps training."""
    out = tmp_path / "run"
    result = run(config(caches["trunk"], out, kd="std", steps=4, warmup_steps=1, td_freeze=1e9, ckpt_every=1,
                        keep_checkpoints=10), show_progress=False)
    assert result["td_frozen_at"] == 2  # the first step with distillation (after one warm-up step)
    events = [r for r in metrics(out) if r.get("event") == "td_frozen"]
    assert len(events) == 1 and events[0]["step"] == 2
    ckpts = [torch.load(out / "checkpoints" / f"step_{s:07d}.pth", weights_only=True) for s in (1, 2, 4)]
    lstm = [{k: v for k, v in c["distill"].items() if k.startswith("convlstm.")} for c in ckpts]
    assert lstm[0] and all(torch.equal(lstm[0][k], lstm[2][k]) for k in lstm[0])
    assert not torch.equal(ckpts[0]["params"]["conv_last.weight"], ckpts[2]["params"]["conv_last.weight"])
    assert ckpts[2]["td_frozen_at"] == 2

    # without the guard firing, the ConvLSTM trains with the student
    out2 = tmp_path / "run2"
    run(config(caches["trunk"], out2, kd="std", steps=2, ckpt_every=1, keep_checkpoints=10), show_progress=False)
    c1, c2 = (torch.load(out2 / "checkpoints" / f"step_{s:07d}.pth", weights_only=True)["distill"] for s in (1, 2))
    assert not torch.equal(c1["convlstm.gates.weight"], c2["convlstm.gates.weight"])


# ------------------------------------------------------------------------------------------- modes, students
@pytest.mark.parametrize("kd,feature,terms", [
    ("std", None, {"rec", "sd", "td"}), ("sd", None, {"rec", "sd"}), ("td", None, {"rec", "td"}),
    ("none", None, {"rec"}), ("mse", None, {"rec", "mse"}), ("mean2", None, {"rec", "mean2"}),
    ("output", None, {"rec", "output"}), ("std", "lr", {"rec", "sd", "td"}), ("mse", "lr", {"rec", "mse"}),
])
def test_every_kd_mode_trains_and_saves_a_deployable_student(caches, tmp_path, kd, feature, terms):
    out = tmp_path / "run"
    result = run(config(caches["trunk"], out, kd=kd, feature=feature, steps=2, warmup_steps=1), show_progress=False)
    rows = losses_of(out)
    assert [set(k[5:] for k in r) - {"total"} for r in rows] == [{"rec"}, terms]  # warm-up step: L_rec only
    for r in rows:
        assert all(torch.isfinite(torch.tensor(v)) for v in r.values())
    expected_total = rows[1]["loss_rec"] + sum(
        {"sd": 1.0, "td": 100.0, "mse": 1.0, "mean2": 1.0, "output": 1.0}[t] * rows[1][f"loss_{t}"] for t in terms - {"rec"})
    assert rows[1]["loss_total"] == pytest.approx(expected_total, rel=1e-5)
    model, ckpt = load_model(result["student"])
    assert ckpt["kd"] == kd and model.forward(torch.rand(1, 7, 3, 16, 16)).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("student", ["vsrnet", "vespcn", "vdsr", "fastdvdnet"])
def test_every_student_distils(caches, tmp_path, student):
    out = tmp_path / student
    run(config(caches["trunk"], out, student=student, kd="std", steps=1, td_hidden=2), show_progress=False)
    row = losses_of(out)[0]
    assert {"loss_rec", "loss_sd", "loss_td"} <= set(row) and row["loss_td"] > 0


def test_online_teacher_and_augment_and_validation_runs(caches, tmp_path, data_root):
    out = tmp_path / "online"
    result = run(config(caches["trunk"], out, online_teacher=True, augment="approx", steps=2, val_every=2,
                        val_data=f"folder:{data_root}", val_stride=4), show_progress=False)
    assert result["val_psnr"] > 10 and result["bicubic_psnr"] > 10
    assert any("val_psnr" in r for r in metrics(out))
    rows = [r for r in metrics(out) if "step_s" in r]
    assert all(0 <= r["data_wait_frac"] <= 1 and r["teacher_s"] > 0 for r in rows)


# ----------------------------------------------------------------------------------------------------- resume
def test_resume_gives_the_uninterrupted_loss_sequence_and_weights(caches, tmp_path, monkeypatch):
    """Ctrl-C after step 3 saves that step; --resume auto then ends with the uninterrupted run's losses and weights."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    kw = dict(kd="std", steps=5, warmup_steps=1, workers=1, ckpt_every=2)
    run(config(caches["trunk"], straight, **kw), show_progress=False)
    real = training.learning_rate

    def interrupt_at_step_4(step, *args):
        if step == 3:
            raise KeyboardInterrupt
        return real(step, *args)

    with monkeypatch.context() as mp:
        mp.setattr(training, "learning_rate", interrupt_at_step_4)
        with pytest.raises(KeyboardInterrupt):
            run(config(caches["trunk"], split, **kw), show_progress=False)
    assert sorted(p.name for p in (split / "checkpoints").glob("*.pth")) == ["step_0000002.pth", "step_0000003.pth"]
    resumed = run(config(caches["trunk"], split, **kw), resume="auto", show_progress=False)
    assert resumed["resumed_from"] == 3
    assert losses_of(split) == losses_of(straight)
    a = torch.load(straight / "student.pth", weights_only=True)["params"]
    b = torch.load(split / "student.pth", weights_only=True)["params"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _start_distill(cache_path: Path, out: Path, home: Path, steps: int) -> subprocess.Popen:
    """``python -m stdvsr distill`` with tiny settings in a session of its own (a job, or a terminal's foreground
    group), once it has logged 3 steps."""
    import time

    cmd = [sys.executable, "-m", "stdvsr", "distill", "--student", "fastdvdnet-quarter", "--cache", str(cache_path),
           "--out", str(out), "--clip-frames", "3", "--patch-size", "32", "--steps", str(steps), "--warmup-steps",
           "1", "--workers", "1", "--val-data", "none", "--device", "cpu", "--td-hidden", "4", "--log-every", "1",
           "--ckpt-every", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**sub_env(home), "COLUMNS": "200"})
    log = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    return proc


def test_sigterm_saves_the_finished_steps_and_resumes_exactly(caches, tmp_path):
    """A scheduler's SIGTERM (to the whole process group, DataLoader worker included) is handled like Ctrl-C: the
    finished steps are saved, exit status 143, and --resume auto ends with the uninterrupted run's weights."""
    import os
    import signal

    kw = dict(kd="std", steps=60, warmup_steps=1, workers=1, ckpt_every=1000)
    straight, split = tmp_path / "straight", tmp_path / "split"
    proc = _start_distill(caches["trunk"], split, tmp_path, steps=60)
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler does: every process of the job
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Terminated (SIGTERM): saved step" in err and "--resume auto" in err and "Traceback" not in err, err
    saved = sorted((split / "checkpoints").glob("step_*.pth"))
    assert len(saved) == 1 and 3 <= int(saved[0].stem.split("_")[1]) < 60
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocess (OMP_NUM_THREADS=1): CPU kernels may sum in another order
    try:
        run(config(caches["trunk"], straight, **kw), show_progress=False)
        run(config(caches["trunk"], split, **kw), resume="auto", show_progress=False)
    finally:
        torch.set_num_threads(threads)
    a = torch.load(straight / "student.pth", weights_only=True)["params"]
    b = torch.load(split / "student.pth", weights_only=True)["params"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_ctrl_c_50_ms_apart_save_the_finished_steps_and_exit_130(caches, tmp_path):
    """Ctrl-C signals the terminal's whole foreground group (DataLoader worker included); a second one 50 ms later
    lands while the first is being handled. Both together: the finished steps are saved in a checkpoint that loads,
    the line says which, exit 130 (not click's "Aborted!" and 1), no traceback."""
    import os
    import re
    import signal
    import time

    from stdvsr.models import read_checkpoint

    out = tmp_path / "run"
    proc = _start_distill(caches["trunk"], out, tmp_path, steps=400)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "Aborted!" not in err and "Exception ignored" not in err, err
    said = re.search(r"Interrupted \(Ctrl-C\): saved step (\d+) to (\S+step_\d+\.pth); rerun with --resume auto", err)
    assert said, err
    saved = sorted((out / "checkpoints").glob("step_*.pth"))
    assert [str(p) for p in saved] == [said.group(2)]
    assert read_checkpoint(saved[0])["step"] == int(said.group(1)) >= 3


def test_resume_refuses_changed_settings_and_a_different_cache(caches, tmp_path):
    out = tmp_path / "run"
    run(config(caches["trunk"], out, steps=1, ckpt_every=1), show_progress=False)
    with pytest.raises(StdvsrError, match="--lambda-td is 5.0 but"):
        run(config(caches["trunk"], out, steps=2, lambda_td=5.0), resume="auto", explicit={"lambda_td"},
            show_progress=False)
    # a setting the run was started without reads as such, not as "was trained with None" / "with False"
    with pytest.raises(StdvsrError, match=r"--td-forget-bias is 1.0 but .*step_0000001.pth was trained without "
                                          r"--td-forget-bias \(its default\);"):
        run(config(caches["trunk"], out, steps=2, td_forget_bias=1.0), resume="auto", explicit={"td_forget_bias"},
            show_progress=False)
    with pytest.raises(StdvsrError, match=r"--online-teacher is True but .* was trained without --online-teacher;"):
        run(config(caches["trunk"], out, steps=2, online_teacher=True), resume="auto", explicit={"online_teacher"},
            show_progress=False)
    with pytest.raises(StdvsrError, match="differs from the one this run started with: tiers"):
        run(config(caches["all"], out, steps=2), resume="auto", explicit={"cache", "steps"}, show_progress=False)
    with pytest.raises(StdvsrError, match="already holds checkpoints"):
        run(config(caches["trunk"], out, steps=2), show_progress=False)


def test_resume_auto_says_when_it_starts_fresh_and_passes_over_a_truncated_newest_checkpoint(caches, tmp_path):
    out = tmp_path / "run"
    fresh = _cli_distill(caches["trunk"], out, "--steps", "3", "--ckpt-every", "1", "--workers", "0", "--resume", "auto")
    assert fresh.exit_code == 0, fresh.output
    assert f"--resume auto: no checkpoint in {out / 'checkpoints'}; starting fresh at step 1 of 3" in fresh.stderr
    newest = out / "checkpoints" / "step_0000003.pth"
    blob = newest.read_bytes()
    newest.write_bytes(blob[:len(blob) // 2])  # a disk that filled up, a copy cut short
    bad = tmp_path / "bad.pth"
    shutil.copy(newest, bad)
    resumed = _cli_distill(caches["trunk"], out, "--steps", "3", "--workers", "0", "--resume", "auto")
    assert resumed.exit_code == 0, resumed.output
    assert "step_0000003.pth" in resumed.stderr and "cannot be loaded" in resumed.stderr
    assert "resuming from step_0000002.pth (step 2), the newest intact checkpoint" in resumed.stderr
    assert f"resuming {out} from step 2 of 3" in resumed.stderr
    assert torch.load(newest, weights_only=True)["step"] == 3  # step 3 done again, and saved whole
    # a truncated file named explicitly stays an error
    explicit = _cli_distill(caches["trunk"], tmp_path / "other", "--steps", "3", "--workers", "0", "--resume",
                            str(bad))
    assert_one_error_line(explicit, f"checkpoint {bad} is truncated")
    # and so does a folder where no checkpoint loads
    for path in (out / "checkpoints").glob("step_*.pth"):
        path.write_bytes(b"")
    broken = _cli_distill(caches["trunk"], out, "--steps", "3", "--workers", "0", "--resume", "auto")
    assert_one_error_line(broken, "--resume auto: no checkpoint in", "can be loaded")


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(caches, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = distiller_module.charbonnier

    def poisoned(pred, target, eps=1e-6):
        calls["n"] += 1
        return real(pred, target, eps) * (float("nan") if calls["n"] >= 3 else 1.0)

    monkeypatch.setattr(distiller_module, "charbonnier", poisoned)
    out = tmp_path / "run"
    with pytest.raises(StdvsrError, match=r"non-finite at step 3 .*step_0000002\.pth"):
        run(config(caches["trunk"], out, kd="none", steps=5, ckpt_every=1), show_progress=False)
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pth")) == ["step_0000001.pth", "step_0000002.pth"]
    assert not (out / "student.pth").exists()


# -------------------------------------------------------------------------------------------------------- DDP
def test_two_gloo_ranks_hold_identical_weights(caches, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "stdvsr", "distill", "--student", "fastdvdnet-quarter", "--cache", str(caches["trunk"]),
           "--out", str(out), "--clip-frames", "3", "--patch-size", "32", "--batch-size", "1", "--steps", "2",
           "--warmup-steps", "0", "--workers", "0", "--val-data", "none", "--log-every", "1", "--td-hidden", "4",
           "--device", "cpu"]
    proc = subprocess.run(cmd, env=sub_env(tmp_path / "home"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sync = [r for r in metrics(out) if r.get("event") == "ranks_in_sync"]
    assert len(sync) == 1 and len(sync[0]["digests"]) == 2 and len(set(sync[0]["digests"])) == 1
    assert len(losses_of(out)) == 2
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2
    # the student moved: the digest of the trained student differs from a fresh one
    assert (out / "student.pth").is_file()


# ------------------------------------------------------------------------------------------ refused inputs
def test_bad_caches_and_flags_are_refused(caches, tmp_path, teacher, data_root):
    def refused(match, **kw):
        with pytest.raises(StdvsrError, match=match):
            run(config(kw.pop("cache", caches["trunk"]), tmp_path / "x", **kw), show_progress=False)

    refused("is not a teacher cache", cache=tmp_path / "nowhere")
    from stdvsr.cache.layout import write_manifest

    incomplete = tmp_path / "incomplete.zarr"
    shutil.copytree(caches["trunk"], incomplete)
    manifest = json.loads((incomplete / "manifest.json").read_text())
    (incomplete / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    refused("was edited after the cache was written", cache=incomplete)  # a hand edit (#26)
    write_manifest(incomplete, {**manifest, "complete": False})  # as stdvsr writes it: consistent, hashed
    refused("is incomplete", cache=incomplete)
    scaled = tmp_path / "x2.zarr"
    shutil.copytree(caches["trunk"], scaled)
    manifest["fingerprint"]["scale"] = 2
    write_manifest(scaled, manifest)
    refused("scale is ×2 there", cache=scaled)
    refused("degradation is 'bd' there, --degradation 'bi' here", degradation="bi")
    refused("padding is 'replicate' there", padding="reflection")
    attention_only = _build(tmp_path / "att.zarr", teacher, data_root, store=("attention",))
    refused("cannot provide the teacher's F\\^SR", cache=attention_only, kd="std")
    refused("has no LR feature map", student="vdsr", feature="lr")
    refused("--clip-frames 9 is longer than every clip", clip_frames=9)
    refused("multiple of 16", patch_size=40)
    refused("--student 'edvr' is not one of fastdvdnet, fastdvdnet-half", student="edvr")
    other = make_teacher(tmp_path / "other.pth", seed=1)
    refused("sha256 differs", online_teacher=True, teacher_weights=str(other.path))


def test_settings_that_cannot_train_as_labelled_are_refused(caches, tmp_path):
    def refused(match, **kw):
        with pytest.raises(StdvsrError, match=match):
            run(config(caches["trunk"], tmp_path / "x", **kw), show_progress=False)

    # every step in warm-up: a plain student that would be saved and summarised as distilled
    refused(r"--warmup-steps 5 ≥ --steps 5: no step would distil with --kd std", steps=5, warmup_steps=5)
    refused(r"--warmup-steps 9 ≥ --steps 5", kd="output", steps=5, warmup_steps=9)
    refused(r"--clip-frames 4 must be odd", clip_frames=4)
    refused(r"--kd std/td needs --clip-frames ≥ 3", clip_frames=1)
    refused(r"--lambda-sd -5.0 must be a finite number ≥ 0", lambda_sd=-5.0)
    refused(r"--lambda-td nan must be a finite number ≥ 0", lambda_td=float("nan"))
    refused(r"--lr -0.001 must be a finite number > 0", lr=-1e-3)
    refused(r"--lr nan must be a finite number > 0", lr=float("nan"))
    refused(r"--lr 0.0 must be", lr=0.0)
    refused(r"--min-lr 0.1 is above --lr", min_lr=0.1)
    assert not (tmp_path / "x").exists()  # refused before anything is written
    # the plain student needs no distillation step, and says what it is
    result = _cli_distill(caches["trunk"], tmp_path / "plain", "--kd", "none", "--warmup-steps", "2", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "trained without distillation (--kd none), 2 steps" in result.stdout


def test_a_resumed_run_logs_every_step_once_and_continues_the_smoothed_loss(caches, tmp_path):
    """Killed after step 5 was logged but before it was checkpointed: resuming from step 4 drops the orphan row,
    logs step 5 again, and ends with the uninterrupted run's log, smoothed loss and weights."""
    kw = dict(kd="std", steps=6, warmup_steps=1, ckpt_every=2, keep_checkpoints=5, log_every=1)
    straight, split = tmp_path / "straight", tmp_path / "split"
    run(config(caches["trunk"], straight, **kw), show_progress=False)
    shutil.copytree(straight, split)
    (split / "checkpoints" / "step_0000006.pth").unlink()
    (split / "student.pth").unlink()
    rows = [line for line in (split / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= 5]
    (split / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 6, "loss_to')  # killed while writing 6
    result = _cli_distill(caches["trunk"], split, "--steps", "6", "--warmup-steps", "1", "--resume", "auto",
                          "--workers", "0")
    assert result.exit_code == 0, result.output
    assert f"resuming {split} from step 4 of 6" in result.stderr
    steps = [row["step"] for row in metrics(split) if "loss_total" in row]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert losses_of(split) == losses_of(straight)
    a, b = (torch.load(p / "checkpoints" / "step_0000006.pth", weights_only=True) for p in (straight, split))
    assert a["smoothed_loss"] == b["smoothed_loss"] is not None
    # asking for fewer steps than the run has done is not a resume
    result = _cli_distill(caches["trunk"], split, "--steps", "3", "--warmup-steps", "1", "--resume", "auto",
                          "--workers", "0")
    assert_one_error_line(result, "--steps 3 is below step 6 of")


def test_machine_errors_are_named_not_reported_as_bugs(caches, tmp_path, monkeypatch):
    import errno

    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = _cli_distill(caches["trunk"], blocker / "run", "--workers", "0")
    assert_one_error_line(result, str(blocker / "run"))
    assert "internal error" not in result.stderr

    def full(path, payload):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(training, "save_checkpoint", full)  # RunFolder writes the checkpoints
    result = _cli_distill(caches["trunk"], tmp_path / "full", "--workers", "0")
    assert_one_error_line(result, "cannot use", "step_0000002.pth", "the disk is full")
    assert "internal error" not in result.stderr
    # --debug after the subcommand shows the traceback (errors tell the user to rerun with it)
    result = _cli_distill(caches["trunk"], tmp_path / "full2", "--workers", "0", "--debug")
    assert isinstance(result.exception, OSError)


def test_cli_reports_a_missing_cache_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["distill", "--cache", str(tmp_path / "missing.zarr"), "--out", str(tmp_path)])
    assert_one_error_line(result, "is not a teacher cache", "stdvsr cache-teacher")


def _cli_distill(cache_path: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["distill", "--student", "fastdvdnet-quarter", "--cache", str(cache_path),
                                    "--out", str(out), "--clip-frames", "3", "--patch-size", "32", "--steps", "2",
                                    "--warmup-steps", "0", "--val-data", "none", "--device", "cpu", "--td-hidden",
                                    "4", *extra])


def test_a_deleted_shard_is_refused_not_read_as_zeros(caches, tmp_path):
    damaged = Path(shutil.copytree(caches["trunk"], tmp_path / "deleted.zarr"))
    shutil.rmtree(damaged / "64x96" / "lq" / "c" / "3")  # LR frame 3 of clip a (8 frames, rows 0..7)
    with pytest.raises(StdvsrError, match=r"clip a is damaged \(1 piece\(s\) missing on disk, e.g. 64x96/lq/c/3\)"):
        run(config(damaged, tmp_path / "x", steps=4), show_progress=False)
    # raised inside a DataLoader worker, it still reaches the user as one line (not the worker's traceback)
    before = set(multiprocessing.active_children())
    result = _cli_distill(damaged, tmp_path / "y", "--workers", "1")
    assert_one_error_line(result, "clip a is damaged", f"stdvsr cache verify {damaged}")
    # and the worker is gone although the error's traceback (kept in `result`) still holds its iterator: it ignores
    # SIGTERM, so one left alive would block multiprocessing's exit-time join and the process would never exit
    assert set(multiprocessing.active_children()) <= before


def test_a_corrupted_shard_names_the_clip_and_cache_verify(caches, teacher, data_root, tmp_path):
    from tests.test_cache import xor_bytes

    damaged = Path(shutil.copytree(caches["trunk"], tmp_path / "flipped.zarr"))
    for row in range(8):  # every trunk shard of clip a: whichever crop is drawn reads a corrupted one
        shard = damaged / "64x96" / "trunk" / "c" / str(row) / "0" / "0" / "0"
        xor_bytes(shard, shard.stat().st_size // 2, count=2)
    result = _cli_distill(damaged, tmp_path / "x", "--workers", "0")
    assert_one_error_line(result, "clip a is damaged (trunk does not decode", "stdvsr cache verify")
    assert "--lr" not in result.stderr
    # uncompressed, a flipped chunk still decodes: NaN/inf is what can be told from the numbers
    raw = _build(tmp_path / "raw.zarr", teacher, data_root, compress=False)
    for row in range(8):
        shard = raw / "64x96" / "trunk" / "c" / str(row) / "0" / "0" / "0"
        with open(shard, "r+b") as f:
            f.write(b"\xff" * 64)  # float16 0xFFFF is NaN
    with pytest.raises(StdvsrError, match=r"clip a is damaged \(trunk holds NaN/inf\)"):
        run(config(raw, tmp_path / "z", steps=4), show_progress=False)


def test_cli_trains_and_prints_the_summary(caches, tmp_path):
    result = CliRunner().invoke(cli, ["distill", "--student", "fastdvdnet-quarter", "--cache", str(caches["trunk"]),
                                      "--out", str(tmp_path / "run"), "--clip-frames", "3", "--patch-size", "32",
                                      "--steps", "1", "--warmup-steps", "0", "--workers", "0", "--val-data", "none",
                                      "--device", "cpu", "--td-hidden", "4"])
    assert result.exit_code == 0, result.output
    assert "distilled with --kd std from step 1, 1 steps" in result.stdout and "step time" in result.stdout
    assert (tmp_path / "run" / "student.pth").is_file()
    curves = tmp_path / "run" / "curves.png"  # the run's curves are drawn at its end
    assert "curves.png" in result.stdout and cv2.imread(str(curves)) is not None


def test_paper_preset_loads_through_the_cli(tmp_path):
    """pipelines/paper.toml sets only real options (a bad key would be refused before the cache is opened)."""
    result = CliRunner().invoke(cli, ["distill", "--config", str(REPO / "pipelines" / "paper.toml"),
                                      "--cache", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "o")])
    assert_one_error_line(result, "is not a teacher cache")
    bad = tmp_path / "bad.toml"
    bad.write_text("lamda_td = 10\n")
    result = CliRunner().invoke(cli, ["distill", "--config", str(bad)])
    assert result.exit_code == 2 and "lamda_td" in result.output


def test_online_and_cached_runs_start_from_the_same_weights(caches, tmp_path):
    """Loading the online teacher does not shift the seeded initialisation of the student, adapter or ConvLSTM."""
    a, b = tmp_path / "cached", tmp_path / "online"
    for out, online in ((a, False), (b, True)):
        run(config(caches["trunk"], out, steps=2, warmup_steps=1, online_teacher=online, ckpt_every=1),
            show_progress=False)
    # after the warm-up step (L_rec only): the same weights and loss; the distillation step differs within fp16
    ca, cb = (torch.load(p / "checkpoints" / "step_0000001.pth", weights_only=True)["distill"] for p in (a, b))
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    assert losses_of(a)[0] == losses_of(b)[0]


def test_run_or_reuse_trains_resumes_and_reuses(caches, tmp_path):
    cfg = config(caches["trunk"], tmp_path / "run", steps=2, ckpt_every=1)
    assert distill.run_or_reuse(cfg, show_progress=False)[1] == "trained"
    assert distill.run_or_reuse(cfg, show_progress=False) == (None, "reused")
    (tmp_path / "run" / "student.pth").unlink()
    result, what = distill.run_or_reuse(cfg, show_progress=False)
    assert what == "resumed" and result["resumed_from"] == 2
    with pytest.raises(StdvsrError, match=r"holds a finished run with other settings \(--steps was 2, now 3, and 1 more\); "
                                          "delete it or use another --out"):
        distill.run_or_reuse(config(caches["trunk"], tmp_path / "run", steps=3), show_progress=False)
    with pytest.raises(StdvsrError, match=r"\(--precision was 'auto', now 'fp32', and 2 more\)"):
        distill.run_or_reuse(config(caches["trunk"], tmp_path / "run", precision="fp32", channels_last=False),
                             show_progress=False)


# ----------------------------------------------------------------------------------- distillation levers
def test_kd_weight_is_zero_in_warmup_then_ramps_linearly():
    cfg = DistillConfig(warmup_steps=10, kd_ramp=4)
    assert [distill.kd_weight(cfg, s) for s in (0, 9, 10, 11, 12, 13, 14, 500)] == [0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    assert distill.kd_weight(DistillConfig(warmup_steps=10), 10) == 1.0  # no ramp: on at once


def test_fitted_adapter_is_the_least_squares_map_without_bias():
    """At the first distillation step the bias-free adapter becomes argmin ‖W·f_s − f_t‖² (here exact: the teacher's
    features are a linear map of the student's), so L_TD / KD-MSE start at the residual, not at a random offset."""
    torch.manual_seed(0)
    distiller = Distiller(build_model("fastdvdnet-quarter"), DistillConfig(kd="mse", adapter="fit"), 64, 16)
    assert distiller.adapter.bias is None and not bool(distiller.adapter_fitted)
    feat = torch.randn(2, 3, 16, 8, 8)
    a = torch.randn(64, 16)
    target = torch.einsum("ts,bnshw->bnthw", a, feat)
    distiller.fit_adapter(feat, target, ridge=0.0)
    assert bool(distiller.adapter_fitted)
    assert torch.allclose(distiller.adapter.weight[:, :, 0, 0], a, atol=1e-4)
    # against numpy's least squares on noisy targets (the ridge term is negligible at 1e-8)
    import numpy as np
    noisy = target + 0.5 * torch.randn_like(target)
    distiller.fit_adapter(feat, noisy, ridge=1e-8)
    x = feat.transpose(2, -1).reshape(-1, 16).double().numpy()
    y = noisy.transpose(2, -1).reshape(-1, 64).double().numpy()
    w = np.linalg.lstsq(x, y, rcond=None)[0].T
    assert np.allclose(distiller.adapter.weight[:, :, 0, 0].detach().double().numpy(), w, atol=1e-4)


def test_fitted_adapter_starts_distillation_near_the_student(caches, tmp_path):
    """The measured switch-on shock: with PyTorch's default adapter λ2·L_TD is far above what the fitted one gives on
    the same first distillation batch; the fit happens once and is stored in checkpoints (resume keeps it)."""
    first = {}
    for adapter in ("default", "fit"):
        out = tmp_path / adapter
        run(config(caches["trunk"], out, kd="td", adapter=adapter, steps=2, warmup_steps=1, ckpt_every=1,
                   keep_checkpoints=5), show_progress=False)
        first[adapter] = losses_of(out)[1]["loss_td"]
        ckpt = torch.load(out / "checkpoints" / "step_0000002.pth", weights_only=True)
        assert ("distill.adapter_fitted" in ckpt["distill"] or "adapter_fitted" in ckpt["distill"]) == (adapter == "fit")
        assert ("adapter.bias" in ckpt["distill"]) == (adapter == "default")
    assert first["fit"] < 0.5 * first["default"]


def test_forget_bias_sets_only_the_forget_gate():
    torch.manual_seed(0)
    default = ConvLSTM(8, 4)
    torch.manual_seed(0)
    biased = ConvLSTM(8, 4, forget_bias=1.0)
    assert torch.equal(biased.gates.bias[4:8], torch.ones(4))
    assert torch.equal(biased.gates.bias[:4], default.gates.bias[:4])
    assert torch.equal(biased.gates.bias[8:], default.gates.bias[8:])
    assert torch.equal(biased.gates.weight, default.gates.weight)


def test_output_kd_combines_with_std_and_the_ramp_scales_every_term(caches, tmp_path):
    out = tmp_path / "run"
    run(config(caches["trunk"], out, kd="std", lambda_out=0.5, steps=3, warmup_steps=1, kd_ramp=2),
        show_progress=False)
    rows = losses_of(out)
    assert set(rows[1]) == {"loss_rec", "loss_sd", "loss_td", "loss_output", "loss_total"}
    for row, scale in ((rows[1], 0.5), (rows[2], 1.0)):
        expected = row["loss_rec"] + scale * (row["loss_sd"] + 100 * row["loss_td"] + 0.5 * row["loss_output"])
        assert row["loss_total"] == pytest.approx(expected, rel=1e-5)
    assert [r["kd_scale"] for r in metrics(out) if "loss_total" in r and "event" not in r] == [0.0, 0.5, 1.0]
    assert distill.teacher_needs(DistillConfig(kd="std", lambda_out=1.0)) == {"attention", "feat", "sr"}


def test_log_first_probes_every_terms_gradient(caches, tmp_path):
    out = tmp_path / "run"
    run(config(caches["trunk"], out, kd="std", steps=4, warmup_steps=1, log_first=2, log_every=100),
        show_progress=False)
    rows = metrics(out)
    probes = [r for r in rows if r.get("event") == "probe"]
    assert [p["step"] for p in probes] == [2, 3]  # the first two distillation steps, logged every step
    assert [r["step"] for r in rows if "loss_total" in r and "event" not in r] == [2, 3, 4]  # probed + the last
    for p in probes:
        terms = p["terms"]
        assert set(terms) == {"rec", "sd", "td"}
        assert terms["rec"]["ratio_to_rec"] == pytest.approx(1.0) and terms["rec"]["cos_rec"] == pytest.approx(1.0)
        for t in terms.values():
            assert 0 <= t["head_share"] <= 1 + 1e-6 and -1 - 1e-6 <= t["cos_rec"] <= 1 + 1e-6
            assert len(t["frame_share"]) == 3 and sum(t["frame_share"]) == pytest.approx(1, abs=1e-3)
    # probing does not change training: the same losses as without it
    ref = tmp_path / "ref"
    run(config(caches["trunk"], ref, kd="std", steps=4, warmup_steps=1, log_every=1), show_progress=False)
    assert losses_of(ref)[3] == losses_of(out)[2]


def test_probe_every_logs_the_probe_late_in_distillation_only(caches, tmp_path):
    out = tmp_path / "run"
    run(config(caches["trunk"], out, kd="std", steps=7, warmup_steps=4, probe_every=3, log_every=100),
        show_progress=False)
    probes = [r for r in metrics(out) if r.get("event") == "probe"]
    assert [p["step"] for p in probes] == [6]  # step 3 is a multiple of 3 but still L_rec only
    assert set(probes[0]["terms"]) == {"rec", "sd", "td"}


def test_lever_flags_are_validated(caches, tmp_path):
    for kw, match in ((dict(kd="none", lambda_out=1.0), "with --kd none use --kd output instead"),
                      (dict(kd="output", lambda_out=1.0), "--kd output is output KD already .*: drop --lambda-out"),
                      (dict(td_forget_bias=float("nan")), "--td-forget-bias nan must be a finite number"),
                      (dict(td_forget_bias=float("inf")), "--td-forget-bias inf must be a finite number"),
                      (dict(kd_ramp=10, steps=5, warmup_steps=1), "--kd-ramp 10 after --warmup-steps 1 would reach "
                                                                  "full weight at step 11, past --steps 5"),
                      (dict(kd="none", adapter="fit"), "--adapter fit has no effect with --kd none"),
                      (dict(kd="none", td_forget_bias=1.0), "--td-forget-bias 1.0 has no effect with --kd none"),
                      (dict(kd="none", kd_ramp=1), "--kd-ramp 1 has no effect with --kd none"),
                      (dict(kd="sd", td_forget_bias=1.0), "--td-forget-bias 1.0 has no effect with --kd sd"),
                      (dict(kd="output", adapter="fit"), "--adapter fit has no effect with --kd output"),
                      (dict(seed=-1), "--seed -1 must be ≥ 0 and ≤ 4294967295"),
                      (dict(seed=2**32), "--seed 4294967296 must be"),
                      (dict(lambda_out=-1.0), "--lambda-out -1.0 must be"),
                      (dict(adapter="zero"), "--adapter 'zero' is not one of default, fit"),
                      (dict(kd_ramp=-1), "--kd-ramp -1 must be ≥ 0"),
                      (dict(log_first=-2), "--log-first -2 must be ≥ 0")):
        with pytest.raises(StdvsrError, match=match):
            run(config(caches["trunk"], tmp_path / "bad", **kw), show_progress=False)


def test_levers_at_their_defaults_pass_under_kd_none_from_flags_and_config_files(caches, tmp_path, monkeypatch):
    """Only a value other than the default is refused, and a --config file counts like a flag; the settings are
    checked once per run."""
    calls = []
    real = loop.validate_config
    monkeypatch.setattr(loop, "validate_config", lambda cfg: (calls.append(cfg), real(cfg))[1])
    ramp = tmp_path / "ramp.toml"
    ramp.write_text("kd_ramp = 5\n")
    refused = _cli_distill(caches["trunk"], tmp_path / "a", "--kd", "none", "--config", str(ramp), "--workers", "0")
    assert_one_error_line(refused, "--kd-ramp 5 has no effect with --kd none")
    defaults = tmp_path / "defaults.toml"
    defaults.write_text('adapter = "default"\nkd_ramp = 0\nlog_first = 3\n')
    calls.clear()
    result = _cli_distill(caches["trunk"], tmp_path / "b", "--kd", "none", "--config", str(defaults), "--steps", "1",
                          "--workers", "0")
    assert result.exit_code == 0, result.output
    assert len(calls) == 1
    bad_seed = _cli_distill(caches["trunk"], tmp_path / "c", "--seed", "-1")
    assert bad_seed.exit_code == 2 and "Invalid value for '--seed'" in bad_seed.stderr
    assert "internal error" not in bad_seed.stderr


def test_students_without_lr_downsampling_take_any_patch_size_the_scale_divides(caches, tmp_path):
    """VDSR and VSRNet work at HR (or on upsampled LR) throughout: a 40-pixel patch (LR 10) trains; FastDVDnet
    halves its LR twice, so it needs multiples of 16, and says so."""
    result = run(config(caches["trunk"], tmp_path / "vdsr", student="vdsr", patch_size=40, steps=1),
                 show_progress=False)
    assert Path(result["student"]).is_file()
    with pytest.raises(StdvsrError, match=r"--patch-size 40 must be a multiple of 16 for fastdvdnet-quarter \(4 for "
                                          r"the scale × 4 for its LR downsampling\)"):
        run(config(caches["trunk"], tmp_path / "fdv", patch_size=40), show_progress=False)
    with pytest.raises(StdvsrError, match=r"--patch-size 42 must be a multiple of 4 for vdsr \(4 for the scale\)"):
        run(config(caches["trunk"], tmp_path / "v42", student="vdsr", patch_size=42), show_progress=False)


def test_step_times_report_windows_and_run_means():
    from stdvsr.training import StepTimes

    times = StepTimes()
    times.add(data=0.1, teacher=0.2, student=0.3, terms=0.1, backward=0.2, optimizer=0.1, step=1.0)
    times.add(data=0.3, student=0.5, step=1.0)
    assert times.wait_frac() == pytest.approx(0.2)
    assert times.row() == pytest.approx({"data_wait_s": 0.2, "teacher_s": 0.1, "student_s": 0.4, "terms_s": 0.05,
                                         "backward_s": 0.1, "optimizer_s": 0.05, "step_s": 1.0,
                                         "data_wait_frac": 0.2})
    times.add(step=2.0)  # a new window after each row
    assert times.row()["step_s"] == 2.0 and times.wait_frac() == 0.0
    summary = times.summary()
    assert summary["step_s"] == pytest.approx(4 / 3) and summary["student_s"] == pytest.approx(0.8 / 3)
    assert summary["data_wait_frac"] == pytest.approx(0.1)


def test_every_logged_step_splits_its_time_into_phases_that_add_up(caches, tmp_path):
    """Each phase is a disjoint slice of the step (measured between the loop's own timestamps), so they sum to at
    most the step; the student's forward and backward are never free, STD's terms neither."""
    out = tmp_path / "phases"
    run(config(caches["trunk"], out, kd="std", steps=3, warmup_steps=1), show_progress=False)
    rows = [r for r in metrics(out) if "step_s" in r]
    phases = ("data_wait_s", "teacher_s", "student_s", "terms_s", "backward_s", "optimizer_s")
    for r in rows:
        assert all(r[k] >= 0 for k in phases) and sum(r[k] for k in phases) <= r["step_s"] + 1e-4  # rounded to 5 digits
        assert r["student_s"] > 0 and r["backward_s"] > 0 and r["optimizer_s"] > 0
    assert rows[-1]["terms_s"] > 0 and rows[-1]["teacher_s"] > 0  # a distillation step: the head and the terms


# ------------------------------------------------------------------------------------------------- --ema
def test_ema_follows_its_recurrence_and_is_what_student_pth_deploys(caches, tmp_path):
    """Every checkpoint's params_ema is d·(the previous one) + (1 − d)·(its raw weights), d = min(decay,
    (1 + s) / (10 + s)) at 0-based step s; student.pth keeps both and loads as the EMA."""
    out = tmp_path / "ema"
    run(config(caches["trunk"], out, kd="none", steps=4, ema=0.5, ckpt_every=1, keep_checkpoints=8),
        show_progress=False)
    ckpts = [torch.load(out / "checkpoints" / f"step_{k:07d}.pth", weights_only=True) for k in range(1, 5)]
    for k in range(1, 4):  # checkpoint k+1 is after 0-based step k
        d = min(0.5, (1 + k) / (10 + k))
        prev, now = ckpts[k - 1]["params_ema"], ckpts[k]
        for name, value in now["params_ema"].items():
            expected = d * prev[name] + (1 - d) * now["params"][name]
            assert torch.allclose(value, expected, atol=1e-6), name
    final = torch.load(out / "student.pth", weights_only=True)
    assert all(torch.equal(final["params_ema"][k], ckpts[-1]["params_ema"][k]) for k in final["params"])
    assert not all(torch.equal(final["params_ema"][k], final["params"][k]) for k in final["params"])
    loaded = load_model(out / "student.pth")[0].state_dict()
    assert all(torch.equal(loaded[k], final["params_ema"][k]) for k in loaded)
    plain = tmp_path / "plain"
    run(config(caches["trunk"], plain, kd="none", steps=1), show_progress=False)
    assert "params_ema" not in torch.load(plain / "student.pth", weights_only=True)  # no --ema: the file as before


def test_an_ema_run_resumes_exactly(caches, tmp_path):
    cfg = config(caches["trunk"], tmp_path / "a", kd="std", steps=4, warmup_steps=1, ema=0.9, ckpt_every=1,
                 keep_checkpoints=8)
    run(cfg, show_progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "student.pth").unlink()
    for ckpt in (tmp_path / "b" / "checkpoints").glob("step_*.pth"):
        if int(ckpt.stem.split("_")[1]) > 2:
            ckpt.unlink()
    assert run(dataclasses.replace(cfg, out=str(tmp_path / "b")), resume="auto", show_progress=False)[
        "resumed_from"] == 2
    a, b = (torch.load(tmp_path / x / "student.pth", weights_only=True) for x in ("a", "b"))
    for key in ("params", "params_ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])


@pytest.mark.parametrize("value", ["1", "-0.1", "nan"])
def test_ema_outside_0_to_1_is_refused_naming_the_flag(caches, tmp_path, value):
    result = CliRunner().invoke(cli, ["distill", "--cache", str(caches["trunk"]), "--out", str(tmp_path / "run"),
                                      "--ema", value, "--steps", "2"])
    assert result.exit_code != 0 and "Error:" in result.output and "--ema" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()
