"""``stdvsr profile``: MAC counting checked by hand on small layers and on VDSR, parse_size, profile_model and the
command itself."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from stdvsr.cli import cli
from stdvsr.errors import StdvsrError
from stdvsr.models import build_model
from stdvsr.models.dcn import DCNv2Pack
from stdvsr.profile import count_macs, parse_size, profile_model


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def vdsr_macs(h: int, w: int) -> int:
    """VDSR ×4 by hand: every conv runs at HR; 3 → 64, 18 × (64 → 64), 64 → 3, all 3×3."""
    return (4 * h) * (4 * w) * (3 * 64 * 9 + 18 * 64 * 64 * 9 + 64 * 3 * 9)


# ----------------------------------------------------------------------------------------------------------
# count_macs
# ----------------------------------------------------------------------------------------------------------


def test_count_macs_by_hand_on_a_small_sequential():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),                     # 16×16 out, 8 ch, 3·9 per output
        nn.ReLU(),                                         # not counted
        nn.Conv2d(8, 4, 1),                                # 16×16 out, 4 ch, 8·1 per output
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2),  # 8×8 out, 4 ch, (4/2)·9 per output
        nn.Flatten(),                                      # 4·8·8 = 256 features
        nn.Linear(256, 10),                                # 10 out, 256 per output
    )
    macs = count_macs(model, torch.rand(1, 3, 16, 16))
    assert macs == 16 * 16 * 8 * 3 * 9 + 16 * 16 * 4 * 8 + 8 * 8 * 4 * 2 * 9 + 10 * 256
    # every element of the batch is counted
    assert count_macs(model, torch.rand(2, 3, 16, 16)) == 2 * macs
    # hooks are removed afterwards
    assert all(not m._forward_hooks for m in model.modules())


class _DCNWrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.dcn = DCNv2Pack(8, 6, 3, padding=1, deformable_groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dcn(x, x)


def test_count_macs_deformable_conv():
    macs = count_macs(_DCNWrapper().eval(), torch.rand(1, 8, 5, 7))
    offset_branch = 5 * 7 * (2 * 3 * 9) * 8 * 9   # conv_offset: 8 → G·3·9 = 54 channels, 3×3
    deformable = 5 * 7 * 6 * 8 * 9                 # the modulated deformable conv: 8 → 6 channels, 3×3
    assert macs == offset_branch + deformable


def test_vdsr_macs_match_the_formula():
    torch.manual_seed(0)
    # a real pass at a small size ...
    assert count_macs(build_model("vdsr").eval(), torch.rand(1, 1, 3, 16, 20)) == vdsr_macs(16, 20)
    # ... and the paper's 120×180 on the meta device (shapes only: no arithmetic, instant)
    model = build_model("vdsr").to("meta").eval()
    macs = count_macs(model, torch.empty(1, 1, 3, 120, 180, device="meta"))
    assert macs == 480 * 720 * (3 * 64 * 9 + 18 * 64 * 64 * 9 + 64 * 3 * 9) == 230_517_964_800
    print(f"VDSR at 120x180: {macs / 1e12:.3f} T MACs (the paper reports 0.22T)")


# ----------------------------------------------------------------------------------------------------------
# parse_size, profile_model
# ----------------------------------------------------------------------------------------------------------


def test_parse_size():
    assert parse_size("120x180") == (120, 180)
    assert parse_size("16X20") == (16, 20)
    for bad in ("120", "120x", "x180", "axb", "120x180x3", "0x180", "120x-4", "", "120*180"):
        with pytest.raises(StdvsrError, match="lq-size"):
            parse_size(bad)


def test_profile_model_vdsr_with_timing():
    row = profile_model("vdsr", (16, 20), timing=True, repeats=1, warmup=0)
    assert {"model", "frames", "params", "macs", "ms", "threads"} <= set(row)
    assert row["model"] == "vdsr"
    assert row["frames"] == 1
    assert row["params"] == sum(p.numel() for p in build_model("vdsr").parameters())
    assert row["params"] == (3 * 64 * 9 + 64) + 18 * (64 * 64 * 9 + 64) + (64 * 3 * 9 + 3)
    assert row["macs"] == vdsr_macs(16, 20)
    assert row["ms"] > 0
    assert row["threads"] == torch.get_num_threads() >= 1
    json.dumps(row)  # JSON-serialisable as the CLI prints it


def test_profile_model_frames():
    row = profile_model("edvr", (16, 16), frames=3, timing=False)
    assert row["frames"] == 3 and "ms" not in row
    # VDSR's window is fixed at 1 frame: --frames 7 is refused, not silently ignored
    with pytest.raises(StdvsrError, match=r"--frames 7: vdsr's window is fixed at 1 frame"):
        profile_model("vdsr", (16, 16), frames=7, timing=False)
    row = profile_model("vdsr", (16, 16), frames=1, timing=False)
    assert row["frames"] == 1 and row["macs"] == vdsr_macs(16, 16)
    with pytest.raises(StdvsrError, match=r"--frames 4 must be odd"):
        profile_model("edvr", (16, 16), frames=4, timing=False)


def test_profile_model_errors():
    with pytest.raises(StdvsrError, match="unknown model"):
        profile_model("nosuch", (16, 16), timing=False)
    with pytest.raises(StdvsrError, match="fastdvdnet"):
        profile_model("fastdvdnet", (15, 20), timing=False)


# ----------------------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------------------


def _assert_user_error(result, *fragments: str):
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert "Traceback" not in result.output


def test_cli_profile_json_and_table():
    args = ["profile", "--model", "vdsr", "--model", "fastdvdnet-quarter", "--lq-size", "16x20",
            "--repeats", "1", "--warmup", "0"]
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["model"] for r in rows] == ["vdsr", "fastdvdnet-quarter"]
    for r in rows:
        assert r["macs"] == profile_model(r["model"], (16, 20), timing=False)["macs"]
        assert r["ms"] > 0 and r["lq_size"] == [16, 20]
    assert rows[0]["macs"] == vdsr_macs(16, 20)

    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "MACs (G)" in result.stdout
    assert "vdsr" in result.stdout and "fastdvdnet-quarter" in result.stdout


def test_cli_profile_errors():
    _assert_user_error(run("profile", "--model", "nosuch"), "Error: unknown --model", "'nosuch'")
    _assert_user_error(run("profile", "--lq-size", "15x20", "--model", "fastdvdnet"), "fastdvdnet", "15x20")
    _assert_user_error(run("profile", "--lq-size", "15", "--model", "vdsr"), "--lq-size")


def test_cli_profile_help():
    result = run("profile", "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and "stdvsr profile" in result.output
