"""A teacher cache of LR footage (``cache-teacher --degradation none``, issue #22): the dataset's frames are the
teacher's input as given, no ground truth anywhere in the cache; the stored SR frames equal the teacher run directly
on them (also through views, where the teacher runs on the flipped LR); ``verify --sources`` re-reads the frames;
consumers that need GT are refused in one line; the footage a teacher cannot run over is refused before anything is
written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

from stdvsr import cache
from stdvsr.cache import CacheConfig, CacheDataset, CacheReader
from stdvsr.cache.check import REBUILD, SOURCES, info, verify
from stdvsr.cache.layout import MANIFEST, manifest_sha256
from stdvsr.cli import cli
from stdvsr.data import dihedral, window_indices
from stdvsr.errors import StdvsrError
from stdvsr.io import write_image
from tests.helpers import write_clips, write_video
from tests.test_cache import FP16_TOL, assert_one_error_line, make_teacher, one_thread, rel_err

# LR footage: clip name → (source video, first frame, frame count, top, left, height, width). "a" is 20×28 (not a
# multiple of 4: the teacher runs on it replicate-padded, as on any cache's LR frames), "b" 16×24.
FOOTAGE = {"a": ("carphone", 0, 4, 40, 60, 20, 28), "b": ("bikes", 0, 3, 100, 200, 16, 24)}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pth", seed=0)


@pytest.fixture(scope="module")
def lr_root(tmp_path_factory, carphone_frames, bikes_frames):
    videos = {"carphone": carphone_frames, "bikes": bikes_frames}
    return write_clips(tmp_path_factory.mktemp("footage"), FOOTAGE, videos)


def build(out: Path, teacher, root: Path, **kw) -> dict:
    cfg = CacheConfig(weights=str(teacher.path), data=f"folder:{root}", out=str(out), degradation="none", **kw)
    return cache.run(cfg, show_progress=False)


def read_pngs(folder: Path) -> torch.Tensor:
    """The frames as written, float32 (T, 3, h, w) in [0, 1], decoded by OpenCV (not by stdvsr)."""
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(folder.iterdir())]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255


def teacher_sr(model, lq: torch.Tensor) -> torch.Tensor:
    """The teacher run directly on LR frames, window by window (replicate padding at the clip's ends and to the
    multiple of 4 EDVR needs), its output cropped back to 4× the frames."""
    n, (h, w) = len(lq), lq.shape[-2:]
    padded = F.pad(lq, (0, -w % 4, 0, -h % 4), mode="replicate")
    with torch.no_grad():
        sr = torch.cat([model(padded[window_indices(t, n, model.num_frame, "replicate")][None]) for t in range(n)])
    return sr[..., :4 * h, :4 * w]


@pytest.fixture(scope="module")
def built(tmp_path_factory, teacher, lr_root):
    """A footage cache with the default tiers and 2 views, in both formats."""
    root = tmp_path_factory.mktemp("built")
    out = {}
    with one_thread():
        for fmt in ("zarr", "hdf5"):
            result = build(root / f"f.{fmt}", teacher, lr_root, format=fmt, views=2)
            assert result["complete"] and result["clips"] == 4 and result["tiers"] == ["lq", "sr"]
            out[fmt] = root / f"f.{fmt}"
    return out


# ------------------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_round_trip_no_ground_truth(built, teacher, lr_root, fmt):
    root = built[fmt]
    manifest = json.loads((root / MANIFEST).read_text())
    fp = manifest["fingerprint"]
    assert fp["degradation"] == "none" and fp["tiers"] == ["sr"] and not fp["lq_from_disk"] and not fp["mod_crop"]
    # no GT anywhere: no array, no tier, no file name, no group sized other than 4× the footage
    assert {a["tier"] for a in manifest["layout"]["arrays"].values()} == {"lq", "sr"}
    assert not [p for p in root.rglob("*") if "gt" in p.name.lower()]
    assert sorted((*g["lr_size"], *g["hr_size"]) for g in manifest["groups"].values()) == [
        (16, 24, 64, 96), (20, 28, 80, 112)]  # the HR size is the teacher's output: 4× the footage
    summary = info(root)
    assert summary["ground_truth"] is False and summary["complete"] and summary["tiers"] == ["lq", "sr"]

    reader = CacheReader(root)
    assert not reader.has_gt and [c["name"] for c in reader.clips] == ["a", "a@t1", "b", "b@t1"]
    for index, name in ((0, "a"), (2, "b")):
        lq = read_pngs(lr_root / name)
        item = reader.read(index)
        assert "gt" not in item
        assert torch.equal(item["lq"], lq)  # the frames as given, bit-exact: nothing degraded
        expected = teacher_sr(teacher.model, lq)
        assert rel_err(item["sr"], expected, expected.abs().max()) <= FP16_TOL  # fp16 storage of the teacher's SR
    sample = CacheDataset(root, num_frames=3, patch_size=16, tiers=("sr",))[0]
    assert "gt" not in sample and sample["sr"].shape == (3, 3, 16, 16) and sample["lq"].shape == (3, 3, 4, 4)


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_views_are_exact(built, teacher, lr_root, fmt):
    """A view's target is the teacher's output on the flipped LR frames, not the flipped target."""
    reader = CacheReader(built[fmt])
    for index, name in ((1, "a"), (3, "b")):
        flipped = dihedral(read_pngs(lr_root / name), 1)
        item = reader.read(index)
        assert reader.clips[index]["name"] == f"{name}@t1" and torch.equal(item["lq"], flipped)
        expected = teacher_sr(teacher.model, flipped)
        assert rel_err(item["sr"], expected, expected.abs().max()) <= FP16_TOL
        # the flipped target of the unflipped clip is another image: the exactness above is not vacuous
        assert rel_err(dihedral(reader.read(index - 1)["sr"], 1), expected, expected.abs().max()) > 10 * FP16_TOL


def test_other_tiers_and_cli(tmp_path, teacher, lr_root):
    runner = CliRunner()
    out = tmp_path / "t.zarr"
    result = runner.invoke(cli, ["cache-teacher", "--weights", str(teacher.path), "--data", f"folder:{lr_root}",
                                 "--degradation", "none", "--store", "trunk,sr", "--max-clips", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    reader = CacheReader(out)
    assert reader.tiers == ["lq", "trunk", "sr"] and not reader.has_gt
    item = reader.read(0, range(2), (8, 8, 16, 16))
    fsr, sr = reader.head().targets(item["trunk"], item["valid"], item["lq_margin"])
    assert "gt" not in item and rel_err(sr, item["sr"], item["sr"].abs().max()) < 2e-3  # the head rebuilds the SR
    text = " ".join(runner.invoke(cli, ["cache", "info", str(out)]).stdout.split())
    assert "ground truth │ none (LR footage)" in text and "none: the frames are LR footage" in text
    assert json.loads(runner.invoke(cli, ["cache", "info", "--json", str(out)]).stdout)["ground_truth"] is False
    result = runner.invoke(cli, ["cache", "verify", "--sources", str(out)])
    assert result.exit_code == 0, result.output
    assert "all 1 clips intact (LR footage: no ground truth" in " ".join(result.stdout.split())
    help_text = " ".join(runner.invoke(cli, ["cache-teacher", "--help"]).stdout.split())
    assert "[bd|bi|none]" in help_text and "--degradation none caches your own LR footage" in help_text


def test_video_footage(tmp_path, stdvsr_home, teacher, carphone_frames):
    """video:FILE as footage: the decoded frames (as every later use reads them) are the teacher's input."""
    video = write_video(tmp_path / "lr.mp4", [f[40:60, 60:84] for f in carphone_frames[:4]])
    out = tmp_path / "v.zarr"
    result = cache.run(CacheConfig(weights=str(teacher.path), data=f"video:{video}", out=str(out),
                                   degradation="none"), show_progress=False)
    assert result["complete"] and result["frames"] == 4 and result["tiers"] == ["lq", "sr"]
    decoded = next((stdvsr_home / "videos").glob("lr-*/lr"))
    item = CacheReader(out).read(0)
    assert "gt" not in item and torch.equal(item["lq"], read_pngs(decoded)) and item["sr"].shape == (4, 3, 80, 96)
    assert verify(out, sources=True) == []


# ---------------------------------------------------------------------------------------------- verify, GT
def test_verify_sources_catches_an_edited_frame(tmp_path, teacher, carphone_frames):
    root = write_clips(tmp_path / "lr", {"a": FOOTAGE["a"]}, {"carphone": carphone_frames})
    out = tmp_path / "f.zarr"
    build(out, teacher, root)
    assert verify(out, sources=True) == []
    frame = root / "a" / "00000002.png"
    pixels = cv2.cvtColor(cv2.imread(str(frame)), cv2.COLOR_BGR2RGB)
    pixels[5, 7, 0] ^= 1  # one bit of one pixel
    write_image(frame, pixels)
    assert verify(out) == []  # the cache itself is intact
    problems = verify(out, sources=True)
    assert [(p["clip"], p["fix"]) for p in problems] == [("a", SOURCES)], problems
    assert "source frames changed" in problems[0]["problem"]
    result = CliRunner().invoke(cli, ["cache", "verify", "--sources", str(out)])
    assert_one_error_line(result, "the dataset's frames changed since the cache was built")


def test_verify_sources_catches_a_manifest_claiming_ground_truth(tmp_path, teacher, carphone_frames):
    """A manifest edited to say the footage is HR to degrade (hash recomputed) no longer derives the stored LR."""
    root = write_clips(tmp_path / "lr", {"a": FOOTAGE["a"]}, {"carphone": carphone_frames})
    out = tmp_path / "f.zarr"
    build(out, teacher, root)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["fingerprint"]["degradation"] = "bd"
    manifest["manifest_sha256"] = manifest_sha256(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest))
    problems = verify(out, sources=True)
    assert [p["fix"] for p in problems] == [REBUILD]
    assert "degraded as manifest.json records (bd" in problems[0]["problem"]


def test_ground_truth_consumers_are_refused(built):
    reader = CacheReader(built["zarr"])
    message = re.escape("is LR footage without ground truth (built with --degradation none)")
    with pytest.raises(StdvsrError, match=r"cannot serve the reconstruction loss L_rec"):
        reader.require_ground_truth("the reconstruction loss L_rec")
    with pytest.raises(StdvsrError, match=message):
        reader.read(0, range(2), gt=True)
    with pytest.raises(StdvsrError, match=message):
        CacheDataset(built["zarr"], num_frames=3, patch_size=16, tiers=("sr",), gt=True)


# --------------------------------------------------------------------------------------------------- errors
@pytest.fixture()
def run_cli(teacher):
    def invoke(root: Path, out: Path, *extra: str):
        return CliRunner().invoke(cli, ["cache-teacher", "--weights", str(teacher.path), "--data", f"folder:{root}",
                                        "--degradation", "none", "--out", str(out), *extra])
    return invoke


def test_footage_errors(tmp_path, run_cli, lr_root, carphone_frames):
    out = tmp_path / "c.zarr"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_error_line(run_cli(empty, out), f"clip folder {empty} has no frames")
    (empty / "clip1").mkdir()
    assert_one_error_line(run_cli(empty, out), f"clip folder {empty / 'clip1'} has no frames")
    small = write_clips(tmp_path / "small", {"s": ("carphone", 0, 3, 0, 0, 6, 20)}, {"carphone": carphone_frames})
    assert_one_error_line(run_cli(small, out), "are 20×6: LR footage needs at least 8×8 pixels")
    mixed = write_clips(tmp_path / "mixed", {"m": ("carphone", 0, 3, 0, 0, 16, 20)}, {"carphone": carphone_frames})
    write_image(mixed / "m" / "00000001.png", carphone_frames[1][:16, :24])
    assert_one_error_line(run_cli(mixed, out), "is 24×16 but 00000000.png of clip m is 20×16",
                          "all frames of a clip must share one size")
    short = write_clips(tmp_path / "short", {"s": ("carphone", 0, 1, 0, 0, 16, 16)}, {"carphone": carphone_frames})
    assert_one_error_line(run_cli(short, out, "--padding", "reflection"),
                          "a clip of 1 frames is too short for a 3-frame window")
    for flag in ("--lq-from-disk", "--mod-crop"):
        assert_one_error_line(run_cli(lr_root, out, flag), f"{flag} applies to HR frames",
                              f"with --degradation none the --data frames are the LR input as given: drop {flag}")
    assert_one_error_line(run_cli(lr_root, out, "--store", "gt"), "--store gt: unknown tier gt")
    assert not out.exists()  # refused before anything is written


def test_footage_and_gt_caches_do_not_mix(tmp_path, teacher, lr_root):
    """The same folder as HR frames and as footage are two caches: the fingerprint names the field."""
    out = tmp_path / "c.zarr"
    build(out, teacher, lr_root, max_clips=1)
    with pytest.raises(StdvsrError, match=r"degradation is 'none' there, 'bd' now"):
        cache.run(CacheConfig(weights=str(teacher.path), data=f"folder:{lr_root}", out=str(out), max_clips=1),
                  show_progress=False)
    assert cache.build.default_out(CacheConfig(data="folder:x", degradation="none")).name == "folder-x-lr-edvr.zarr"
