"""The stdvsr command: help with examples everywhere, one-line errors without tracebacks, the data commands."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from stdvsr import __version__
from stdvsr.cli import cli
from stdvsr.errors import StdvsrError
from stdvsr.io import write_image
from tests.helpers import make_vid4, make_vimeo


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def all_commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, (*prefix, name))


def assert_user_error(result, *fragments: str):
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and len([l for l in lines if l.startswith("Error")]) == 1
    for fragment in fragments:
        assert fragment in result.stderr
    assert "Traceback" not in result.output


def test_version_and_help():
    assert run("--version").output.strip() == f"stdvsr, version {__version__}"
    for flag in ("-h", "--help"):
        result = run(flag)
        assert result.exit_code == 0 and "Examples:" in result.output and "--debug" in result.output


@pytest.mark.parametrize("command", list(all_commands(cli)))
def test_every_subcommand_help_shows_an_example(command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and "stdvsr " in result.output.split("Example", 1)[1]


def test_unknown_spec_is_one_line_error():
    assert_user_error(run("data", "info", "reds:/x"), "Error: unknown dataset spec 'reds:/x'", "vimeo90k:ROOT")


def test_debug_shows_the_exception():
    result = run("--debug", "data", "info", "reds:/x")
    assert isinstance(result.exception, StdvsrError)
    result = CliRunner(env={"STDVSR_DEBUG": "1"}).invoke(cli, ["data", "info", "reds:/x"])
    assert isinstance(result.exception, StdvsrError)


def test_bad_inputs_through_the_cli(tmp_path, carphone_frames):
    root = tmp_path / "frames"
    for i in (0, 1, 3):
        write_image(root / "clip" / f"{i:08d}.png", carphone_frames[i])
    assert_user_error(run("data", "info", f"folder:{root}"), "missing frame number 2", "00000003.png")

    empty = tmp_path / "empty_set" / "clip"
    empty.mkdir(parents=True)
    assert_user_error(run("data", "info", f"folder:{empty.parent}"), "has no frames")

    sizes = tmp_path / "sizes" / "clip"
    write_image(sizes / "0.png", carphone_frames[0])
    write_image(sizes / "1.png", carphone_frames[1][:140])
    assert_user_error(run("data", "info", f"folder:{sizes}"), "1.png is 176×140 but 0.png")

    odd = tmp_path / "odd" / "clip"
    write_image(odd / "0.png", carphone_frames[0][:, :170])
    assert_user_error(run("data", "info", f"folder:{odd}"), "170×144, not divisible by scale 4", "--mod-crop")
    result = run("data", "info", f"folder:{odd}", "--mod-crop")
    assert result.exit_code == 0 and "clip" in result.stdout

    corrupt = tmp_path / "corrupt" / "clip"
    write_image(corrupt / "0.png", carphone_frames[0])
    (corrupt / "1.png").write_bytes((corrupt / "0.png").read_bytes()[:500])
    assert run("data", "info", f"folder:{corrupt}").exit_code == 0  # headers only
    assert_user_error(run("data", "info", f"folder:{corrupt}", "--decode"), "cannot decode frame", "1.png")

    assert_user_error(run("data", "info", f"vid4:{tmp_path / 'nope'}"), "is not a folder")
    assert_user_error(run("data", "prepare", f"folder:{root}"), "read in place", "stdvsr data info")


def test_bad_flag_is_a_usage_error():
    result = run("data", "info", "demo", "--split", "sideways")
    assert result.exit_code == 2 and "Invalid value for '--split'" in result.output


def test_info_on_fake_trees(tmp_path, carphone_frames):
    vid4 = make_vid4(tmp_path / "Vid4", carphone_frames[:4])
    result = run("data", "info", f"vid4:{vid4}")
    assert result.exit_code == 0, result.output
    assert "calendar" in result.stdout and "176×144" in result.stdout and "44×36" in result.stdout
    assert "2 clips, 8 frames" in result.stdout

    vimeo = make_vimeo(tmp_path / "vimeo", carphone_frames)
    result = run("data", "info", f"vimeo90k:{vimeo}", "--split", "slow", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert [c["clip"] for c in info["clips"]] == ["00002/0001"]
    assert info["clips"][0]["frames"] == 7 and (info["clips"][0]["height"], info["clips"][0]["width"]) == (144, 176)


def test_prepare_demo_prints_the_split(demo_home):
    result = run("data", "prepare", "demo")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for name in ("bikes_01", "bikes_06", "bigbuckbunny", "carphone", "640×360", "176×144"):
        assert name in out
    assert "8 clips, 502 frames" in out and "reused" in out
    listed = run("data", "list")
    assert listed.exit_code == 0 and "prepared" in listed.stdout
    test_split = run("data", "info", "demo", "--split", "test", "--json")
    assert [c["clip"] for c in json.loads(test_split.stdout)["clips"]] == ["carphone"]
