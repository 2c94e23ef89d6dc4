"""Checkpoint loading in every supported format, and `train-teacher` end to end on tiny real frames."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner

from stdvsr import train_teacher
from stdvsr.cli import cli
from stdvsr.errors import StdvsrError
from stdvsr.evaluate import validation_clips
from stdvsr.io import write_image
from stdvsr.models import build_model, load_model, load_weights, read_checkpoint

TINY = dict(num_feat=8, num_frame=3, deformable_groups=2, num_extract_block=1, num_reconstruct_block=1)
#: The same loop with each teacher at a tiny size (RBPN's flows made by the loader).
TINY_TEACHERS = {"edvr": dict(preset="edvr-s", model_args=TINY),
                 "rbpn": dict(teacher="rbpn", preset="rbpn-s",
                              model_args=dict(base_filter=8, feat=8, n_resblock=1, nFrames=3, sr_feat=16))}


def tiny(seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model("edvr", **{**TINY, **kw})


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------- load_weights
def test_every_checkpoint_format_loads(tmp_path):
    src, other = tiny(1), tiny(2)
    formats = {
        "raw.pth": src.state_dict(),
        "params.pth": {"params": src.state_dict()},
        "ema_first.pth": {"params": other.state_dict(), "params_ema": src.state_dict()},
        "module.pth": {"params": {f"module.{k}": v for k, v in src.state_dict().items()}},
    }
    for name, obj in formats.items():
        torch.save(obj, tmp_path / name)
        model = tiny(3)
        info = load_weights(model, tmp_path / name)
        assert same_weights(model, src), name
        assert not info["renamed_legacy"]
    assert load_weights(tiny(3), tmp_path / "ema_first.pth")["key"] == "params_ema"
    model = tiny(3)
    assert load_weights(model, tmp_path / "ema_first.pth", key="params")["key"] == "params"
    assert same_weights(model, other)
    with pytest.raises(StdvsrError, match="has no 'params_ema' entry"):
        load_weights(tiny(3), tmp_path / "params.pth", key="params_ema")


def _legacy_name(key: str) -> str:
    """BasicSR key → pre-2020 xinntao/EDVR key, written out from the two code bases' module names."""
    rules = [
        (r"^conv_l([23])_([12])\.", r"fea_L\1_conv\2."),
        (r"^pcd_align\.offset_conv(\d)\.l(\d)\.", r"pcd_align.L\2_offset_conv\1."),
        (r"^pcd_align\.dcn_pack\.l(\d)\.conv_offset\.", r"pcd_align.L\1_dcnpack.conv_offset_mask."),
        (r"^pcd_align\.dcn_pack\.l(\d)\.", r"pcd_align.L\1_dcnpack."),
        (r"^pcd_align\.feat_conv\.l(\d)\.", r"pcd_align.L\1_fea_conv."),
        (r"^pcd_align\.cas_dcnpack\.conv_offset\.", "pcd_align.cas_dcnpack.conv_offset_mask."),
        (r"^fusion\.temporal_attn1\.", "tsa_fusion.tAtt_2."),
        (r"^fusion\.temporal_attn2\.", "tsa_fusion.tAtt_1."),
        (r"^fusion\.feat_fusion\.", "tsa_fusion.fea_fusion."),
        (r"^fusion\.spatial_attn_add(\d)\.", r"tsa_fusion.sAtt_add_\1."),
        (r"^fusion\.spatial_attn_l(\d)\.", r"tsa_fusion.sAtt_L\1."),
        (r"^fusion\.spatial_attn(\d)\.", r"tsa_fusion.sAtt_\1."),
        (r"^reconstruction\.", "recon_trunk."),
        (r"^conv_hr\.", "HRconv."),
    ]
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def test_legacy_xinntao_edvr_names_are_mapped(tmp_path):
    src = tiny(4)
    legacy = {_legacy_name(k): v for k, v in src.state_dict().items()}
    assert "tsa_fusion.tAtt_1.weight" in legacy and "pcd_align.L1_dcnpack.conv_offset_mask.weight" in legacy
    torch.save(legacy, tmp_path / "old.pth")
    model = tiny(5)
    assert load_weights(model, tmp_path / "old.pth")["renamed_legacy"]
    assert same_weights(model, src)


def test_legacy_predeblur_names_are_mapped(tmp_path):
    src = tiny(6, with_predeblur=True)
    legacy = {}
    for k, v in src.state_dict().items():
        k = re.sub(r"^predeblur\.conv_first\.", "pre_deblur.conv_first.", k)
        k = re.sub(r"^predeblur\.stride_conv_l([23])\.", r"pre_deblur.deblur_L\1_conv.", k)
        k = re.sub(r"^predeblur\.resblock_l3\.", "pre_deblur.RB_L3_1.", k)
        k = re.sub(r"^predeblur\.resblock_l2_([12])\.", r"pre_deblur.RB_L2_\1.", k)
        k = re.sub(r"^predeblur\.resblock_l1\.(\d)\.", lambda m: f"pre_deblur.RB_L1_{int(m.group(1)) + 1}.", k)
        legacy[_legacy_name(k)] = v
    torch.save({"params": legacy}, tmp_path / "old.pth")
    model = tiny(7, with_predeblur=True)
    load_weights(model, tmp_path / "old.pth")
    assert same_weights(model, src)


def test_mismatches_and_bad_files_are_clear_errors(tmp_path):
    src = tiny(1)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    with pytest.raises(StdvsrError, match=r"with other shapes \(e.g. conv_first.weight \(8, 3, 3, 3\) vs model "
                                          r"\(16, 3, 3, 3\)"):
        load_weights(tiny(num_feat=16, deformable_groups=2), tmp_path / "w.pth")
    with pytest.raises(StdvsrError, match=r"missing \(e.g. reconstruction.1.conv1.weight"):
        load_weights(tiny(num_reconstruct_block=2), tmp_path / "w.pth")
    with pytest.raises(StdvsrError, match=r"unexpected \(e.g. reconstruction.1.conv1.weight"):
        torch.save(tiny(num_reconstruct_block=2).state_dict(), tmp_path / "big.pth")
        load_weights(tiny(), tmp_path / "big.pth")
    with pytest.raises(StdvsrError, match="does not exist"):
        load_weights(tiny(), tmp_path / "nope.pth")
    blob = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(StdvsrError, match="truncated or not a PyTorch file"):
        load_weights(tiny(), tmp_path / "cut.pth")
    (tmp_path / "empty.pth").write_bytes(b"")  # its error has no message: still one clean line
    with pytest.raises(StdvsrError, match="truncated or not a PyTorch file"):
        read_checkpoint(tmp_path / "empty.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(StdvsrError, match="truncated or not a PyTorch file"):
        read_checkpoint(tmp_path / "text.pth")
    # a file that needs code execution to unpickle is refused, never run
    torch.save({"params": src.state_dict(), "evil": Exploit(tmp_path / "pwned")}, tmp_path / "pickle.pth")
    with pytest.raises(StdvsrError, match="needs pickled code to run") as refused:
        load_weights(tiny(), tmp_path / "pickle.pth")
    assert not (tmp_path / "pwned").exists()
    # the message says what was refused (before: cut off inside torch's first sentence, with colour codes)
    message = str(refused.value)
    assert "(Unsupported global: GLOBAL getattr); re-save" in message and "\x1b" not in message
    assert message.endswith("from a trusted environment")


class Exploit:
    """Unpickling this would create a file: what a malicious checkpoint could do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (type(self.path).touch, (self.path,))


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture()
def tiny_frames(tmp_path, carphone_frames):
    """Two 64×64 HR clips of real frames (LR 16×16), as a folder dataset."""
    root = tmp_path / "frames"
    for clip, (top, left) in {"a": (0, 0), "b": (64, 96)}.items():
        for i, frame in enumerate(carphone_frames[:6]):
            write_image(root / clip / f"{i:08d}.png", frame[top:top + 64, left:left + 64])
    return root


def tiny_config(tiny_frames, out, **kw) -> train_teacher.TeacherConfig:
    base = dict(preset="edvr-s", model_args=dict(TINY), data=f"folder:{tiny_frames}",
                val_data=f"folder:{tiny_frames}", steps=10, batch_size=2, patch_size=32, lr=2e-3, ema=0.9,
                workers=0, device="cpu", out=str(out), log_every=1, val_every=5, val_stride=3, ckpt_every=5)
    return train_teacher.TeacherConfig(**{**base, **kw})


def losses(out) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_training_lowers_the_loss_and_writes_a_loadable_teacher(tiny_frames, tmp_path):
    from stdvsr.data import ClipDataset, load_clips
    from stdvsr.losses import charbonnier

    cfg = tiny_config(tiny_frames, tmp_path / "run", steps=40, val_every=40, ckpt_every=20, augment=False)
    batch = [ClipDataset(load_clips(cfg.data), 3, patch_size=None)[i] for i in (0, 4)]
    lq = torch.stack([b["lq"] for b in batch])
    gt = torch.stack([b["gt"][1] for b in batch])
    before = charbonnier(tiny(cfg.seed)(lq), gt).item()  # same seed → same initial weights as the run
    result = train_teacher.run(cfg, show_progress=False)
    model, ckpt = load_model(result["teacher"], key="params")
    after = charbonnier(model(lq), gt).item()
    assert after < 0.9 * before
    assert ckpt["model"]["name"] == "edvr-s" and ckpt["model"]["kwargs"]["num_feat"] == 8
    assert result["val_psnr"] is not None and result["bicubic_psnr"] is not None
    # validation samples at most val_clips held-out clips, evenly spaced
    assert [c.name for c in validation_clips(cfg.val_data, cfg.data, cfg.val_clips)] == ["a", "b"]
    assert [c.name for c in validation_clips(cfg.val_data, cfg.data, 1)] == ["a"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["steps"] == 40 and config["model"]["kwargs"]["num_frame"] == 3
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "step_0000020.pth", "step_0000040.pth"]


@pytest.mark.parametrize("teacher", sorted(TINY_TEACHERS))
def test_resume_continues_exactly(tiny_frames, tmp_path, monkeypatch, teacher):
    kw = TINY_TEACHERS[teacher]
    train_teacher.run(tiny_config(tiny_frames, tmp_path / "full", **kw), show_progress=False)
    calls = {"n": 0}
    real = train_teacher.charbonnier

    def interrupted(pred, target):  # Ctrl-C during step 8 (checkpoints every 5 steps)
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(pred, target)

    monkeypatch.setattr(train_teacher, "charbonnier", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_teacher.run(tiny_config(tiny_frames, tmp_path / "part", **kw), show_progress=False)
    # the interrupt saved the 7 finished steps
    assert (tmp_path / "part" / "checkpoints" / "step_0000007.pth").is_file()
    monkeypatch.setattr(train_teacher, "charbonnier", real)
    resumed = train_teacher.run(tiny_config(tiny_frames, tmp_path / "part", **kw), resume="auto", show_progress=False)
    assert resumed["resumed_from"] == 7
    a, b = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert [a[s] for s in range(1, 11)] == [b[s] for s in range(1, 11)]
    ta = read_checkpoint(tmp_path / "full" / "teacher.pth")
    tb = read_checkpoint(tmp_path / "part" / "teacher.pth")
    assert all(torch.equal(ta["params"][k], tb["params"][k]) for k in ta["params"])
    assert all(torch.equal(ta["params_ema"][k], tb["params_ema"][k]) for k in ta["params_ema"])


def test_resume_refuses_changed_settings(tiny_frames, tmp_path):
    train_teacher.run(tiny_config(tiny_frames, tmp_path / "run", steps=5), show_progress=False)
    with pytest.raises(StdvsrError, match="already holds checkpoints of a run; pass --resume auto"):
        train_teacher.run(tiny_config(tiny_frames, tmp_path / "run", steps=5), show_progress=False)
    with pytest.raises(StdvsrError, match=r"--batch-size is 4 but .*step_0000005.pth was trained with 2"):
        train_teacher.run(tiny_config(tiny_frames, tmp_path / "run", batch_size=4), resume="auto",
                          explicit={"batch_size"}, show_progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tiny_frames, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = train_teacher.charbonnier

    def flaky(pred, target):
        calls["n"] += 1
        return real(pred, target) * (float("nan") if calls["n"] == 7 else 1.0)

    monkeypatch.setattr(train_teacher, "charbonnier", flaky)
    with pytest.raises(StdvsrError, match=r"loss became nan at step 7; the last good checkpoint is .*step_0000005"):
        train_teacher.run(tiny_config(tiny_frames, tmp_path / "run"), show_progress=False)
    assert (tmp_path / "run" / "checkpoints" / "step_0000005.pth").is_file()
    assert not (tmp_path / "run" / "teacher.pth").exists()


def test_cli_runs_and_reports(tiny_frames, tmp_path):
    out = tmp_path / "cli"
    args = ["train-teacher", "--num-feat", "8", "--num-frame", "3", "--deformable-groups", "2",
            "--num-extract-block", "1", "--num-reconstruct-block", "1", "--data", f"folder:{tiny_frames}",
            "--val-data", f"folder:{tiny_frames}", "--steps", "4", "--batch-size", "2", "--patch-size", "32",
            "--workers", "0", "--device", "cpu", "--out", str(out), "--val-every", "4", "--val-stride", "3"]
    result = CliRunner().invoke(cli, [*args, "--resume", "auto"])
    assert result.exit_code == 0, result.output
    assert f"--resume auto: no checkpoint in {out / 'checkpoints'}; starting fresh at step 1 of 4" in result.stderr
    assert "held-out Y-PSNR" in result.stdout and "bicubic" in result.stdout and (out / "teacher.pth").is_file()
    again = CliRunner().invoke(cli, [*args, "--resume", "auto", "--patch-size", "48"])
    assert again.exit_code == 1 and "Error: --resume: --patch-size is 48" in again.stderr
    bad = CliRunner().invoke(cli, ["train-teacher", "--weights", str(tmp_path / "none.pth"),
                                   "--data", f"folder:{tiny_frames}", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "does not exist" in bad.stderr and "Traceback" not in bad.output


def test_ctrl_c_saves_the_finished_steps_says_so_and_exits_130(tiny_frames, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = train_teacher.charbonnier

    def interrupted(pred, target):  # Ctrl-C during step 3
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(pred, target)

    monkeypatch.setattr(train_teacher, "charbonnier", interrupted)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train-teacher", "--num-feat", "8", "--num-frame", "3", "--deformable-groups",
                                      "2", "--num-extract-block", "1", "--num-reconstruct-block", "1", "--data",
                                      f"folder:{tiny_frames}", "--val-data", "none", "--steps", "10", "--batch-size",
                                      "2", "--patch-size", "32", "--workers", "0", "--device", "cpu", "--out",
                                      str(out)])
    saved = out / "checkpoints" / "step_0000002.pth"
    assert result.exit_code == 130, result.output
    assert f"Interrupted (Ctrl-C): saved step 2 to {saved}; rerun with --resume auto to continue" in result.stderr
    assert "Aborted!" not in result.output and read_checkpoint(saved)["step"] == 2
    bad_seed = CliRunner().invoke(cli, ["train-teacher", "--seed", "-1", "--out", str(tmp_path / "x")])
    assert bad_seed.exit_code == 2 and "Invalid value for '--seed'" in bad_seed.stderr


def test_cli_preset_choices_follow_the_registry():
    from stdvsr.models import PRESETS

    for command in ("train-teacher", "cache-teacher"):
        option = next(p for p in cli.commands[command].params if p.name == "preset")
        assert sorted(option.type.choices) == sorted(n for n, (arch, _, _) in PRESETS.items() if arch in
                                                     ("edvr", "rbpn"))


def test_ema_decay_warms_up():
    from stdvsr.training import EMA

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, 0.999)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model, step=0)  # decay min(0.999, 1/10): the first average is mostly the trained weights
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.1 * 1 + 0.9 * 3))
    ema.update(model, step=100_000)  # late in training the configured decay rules
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.999 * 2.8 + 0.001 * 3))


def test_plain_training_lines_come_after_the_first_step_and_every_few_seconds(monkeypatch, capsys):
    """Issue #16 item 14: in a log (stderr not a terminal) a slow teacher showed nothing until step log_every."""
    from types import SimpleNamespace

    import stdvsr.progress as progress

    monkeypatch.delenv("FORCE_COLOR", raising=False)
    clock = iter([0.0, 4.0, 8.0, 15.0, 17.0, 30.0, 31.0])  # start, then one reading per step
    monkeypatch.setattr(progress, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    with progress.training_progress(6, 0, log_every=20) as bar:  # pytest's stderr: not a terminal
        for step in range(1, 7):
            bar.update(step, loss=0.5, lr=1e-4)
    steps = [line.split("  ")[0] for line in capsys.readouterr().err.splitlines()]
    # step 1 (first), 3 (15 s ≥ 10 s after step 1's line), 5 (30 s), 6 (last); before: only step 6
    assert steps == ["step 1/6", "step 3/6", "step 5/6", "step 6/6"]


def test_resume_takes_the_same_dataset_spelled_another_way(tmp_path, monkeypatch):
    """Issue #16 item 9: a run started with ``folder:frames`` from its parent resumes with the absolute spelling
    (before: "--data is 'folder:/…/frames' but … was trained with 'folder:frames'"), and its config names the
    frames absolutely, so it resumes from any directory."""
    import dataclasses

    from stdvsr.train_teacher import RESUMABLE_CHANGES, TeacherConfig
    from stdvsr.training import resume_run, save_checkpoint

    (tmp_path / "frames").mkdir()
    monkeypatch.chdir(tmp_path)
    typed = TeacherConfig(data="folder:frames", val_data="folder:frames", out=str(tmp_path / "run"), steps=10)
    fresh, ckpt = resume_run(typed, None, None, RESUMABLE_CHANGES)
    assert ckpt is None and fresh.data == fresh.val_data == f"folder:{tmp_path / 'frames'}"
    stored = dataclasses.replace(typed)  # a checkpoint written before paths were resolved keeps the typed spelling
    save_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000005.pth", {"config": dataclasses.asdict(stored),
                                                                            "step": 5})
    again = dataclasses.replace(typed, data=f"folder:{tmp_path / 'frames'}")
    cfg, ckpt = resume_run(again, "auto", {"data"}, RESUMABLE_CHANGES)
    assert ckpt.step == 5 and cfg.data == f"folder:{tmp_path / 'frames'}"
    with pytest.raises(StdvsrError, match=r"--data is 'folder:.*other' but .* was trained with 'folder:.*frames'"):
        (tmp_path / "other").mkdir()
        resume_run(dataclasses.replace(typed, data="folder:other"), "auto", {"data"}, RESUMABLE_CHANGES)
