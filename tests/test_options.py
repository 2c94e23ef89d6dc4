"""The stage dataclasses as the one declaration of every option (stdvsr.options, stdvsr.configs)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from stdvsr.configs import CacheConfig, DistillConfig, ExportConfig, TeacherConfig, TrainingConfig, UpscaleConfig
from stdvsr.errors import StdvsrError
from stdvsr.options import check_fields, click_options, from_cli, option, resumable


def test_the_resumable_sets_are_the_ones_the_stages_always_had():
    shared = {"steps", "workers", "device", "out", "log_every", "val_every", "val_stride", "val_clips", "ckpt_every",
              "keep_checkpoints"}
    assert resumable(TeacherConfig) == shared | {"init_weights"}
    assert resumable(DistillConfig) == shared | {"log_first", "val_data", "data", "cache", "teacher_weights",
                                                 "probe_every", "cache_ram_mb"}  # both since #23


def test_shared_training_fields_are_declared_once_and_redeclared_only_for_another_default():
    base = {f.name: f for f in dataclasses.fields(TrainingConfig)}
    for cls, own in ((TeacherConfig, {"steps": 3000, "batch_size": 4, "patch_size": 128, "lr": 4e-4}),
                     (DistillConfig, {"steps": 2000, "batch_size": 2, "patch_size": 64, "lr": 2e-4})):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(base) <= set(fields)
        assert {k: fields[k].default for k in own} == own
        for name in ("min_lr", "lr_gamma", "seed", "workers", "device", "log_every", "ckpt_every"):
            assert fields[name] is base[name], name  # inherited as is, not copied


@pytest.mark.parametrize("cfg, message", [
    (DistillConfig(kd="fancy"), "--kd 'fancy' is not one of std, sd, td, none, mse, mean2, output"),
    (DistillConfig(steps=2.5), "--steps 2.5 must be an integer"),
    (DistillConfig(steps=True), "--steps True must be an integer"),
    (DistillConfig(steps=0), "--steps 0 must be ≥ 1"),
    (DistillConfig(patch_size=8), "--patch-size 8 must be ≥ 16"),
    (DistillConfig(lambda_td="9"), "--lambda-td '9' must be a number"),
    (DistillConfig(online_teacher=1), "--online-teacher 1 must be true or false"),
    (TeacherConfig(ema=1.0), "--ema 1.0 must be ≥ 0 and < 1"),
    (TeacherConfig(val_every=0), "--val-every 0 must be ≥ 1"),
    (CacheConfig(part_mb=-1), "--hdf5-part-mb -1 must be ≥ 0"),
    (CacheConfig(format="tar"), "--format 'tar' is not one of zarr, hdf5"),
    (CacheConfig(preset="edvr-xl"), "--preset 'edvr-xl' is not one of edvr-s, edvr-m, edvr-l, rbpn-s, rbpn"),
    (UpscaleConfig(input="a.mp4", output="b.mp4", model="s.pth", fps=float("nan")), "--fps nan must be > 0"),
    (UpscaleConfig(input="a.mp4", output="b.mp4", model="s.pth", fps=float("inf")), "--fps inf must be a finite number"),
    (DistillConfig(lr=float("inf")), "--lr inf must be a finite number"),
    (ExportConfig(model="s.pth", opset=9), "--opset 9 must be ≥ 11 and ≤ 20"),
])
def test_settings_made_in_python_are_checked_like_the_command_line(cfg, message):
    with pytest.raises(StdvsrError) as e:
        check_fields(cfg)
    assert str(e.value) == message


def test_defaults_and_none_values_pass():
    for cfg in (TeacherConfig(), DistillConfig(), CacheConfig(), DistillConfig(val_data=None, feature="lr",
                                                                                td_forget_bias=1.0)):
        check_fields(cfg)


def test_a_small_dataclass_becomes_a_command():
    @dataclasses.dataclass
    class Settings:
        size: int = option(3, "How big.", type=click.IntRange(1))
        mode: str = option("a", "Which mode.", type=click.Choice(["a", "b"]))
        fast: bool = option(False, "Go fast.")
        tidy: bool = option(True, "Tidy up.", negatable=True)
        check: bool = option(True, "Skip the check.", flag="--no-check")
        source: str | None = option("auto", "Where from; 'none' for nowhere.", none="none")
        hidden: int = option(7, "Python only.", cli=False)

    seen = {}

    @click.command()
    @click_options(Settings)
    def command(**opts):
        seen["cfg"] = from_cli(Settings, opts)
        seen["left"] = opts

    result = CliRunner().invoke(command, ["--size", "5", "--mode", "b", "--fast", "--no-tidy", "--no-check",
                                          "--source", "none"])
    assert result.exit_code == 0, result.output
    assert seen["cfg"] == Settings(size=5, mode="b", fast=True, tidy=False, check=False, source=None)
    assert seen["left"] == {}
    CliRunner().invoke(command, [])
    assert seen["cfg"] == Settings()
    page = CliRunner().invoke(command, ["--help"]).output
    assert "--size INTEGER RANGE" in page and "--tidy / --no-tidy" in page and "--hidden" not in page
    assert CliRunner().invoke(command, ["--size", "0"]).exit_code == 2


def test_the_command_line_starts_without_importing_torch():
    """Options are built from torch-free declarations: `stdvsr --help` does not pay PyTorch's import."""
    code = "import sys, stdvsr.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
