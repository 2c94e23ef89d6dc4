"""Issue #26: a cache's integrity is checked, not trusted. A hand-edited manifest is refused wherever a cache is
opened; one edited with its hash recomputed is caught by `cache verify --sources` re-deriving the LR frames; `cache
info` counts progress records and arrays on disk; `cache verify` names the clip and the smallest fix, and that fix
(the same cache-teacher command) does repair it; an interrupted cache-teacher says the finished clips are kept;
caches written before manifests were hashed still open, reported as unprotected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from stdvsr.cache import CacheReader
from stdvsr.cache import build as cache_build
from stdvsr.cache.check import info, verify
from stdvsr.cache.layout import MANIFEST_HASH, write_manifest
from stdvsr.cli import cli
from stdvsr.errors import StdvsrError
from tests.test_cache import (assert_one_error_line, build, data_root, make_teacher, one_thread,  # noqa: F401
                              records, xor_bytes)
from tests.test_legacy_files import LEGACY

EDITED = "was edited after the cache was written"
# --max-clips 2 --views 2: clips a, a@t1 (a flipped), b, b@t1 — the re-derivation also covers a transformed view
NAMES = ["a", "a@t1", "b", "b@t1"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pth", seed=0)


@pytest.fixture(scope="module")
def caches(tmp_path_factory, teacher, data_root):  # noqa: F811
    """Intact two-clip, two-view trunk caches in both formats (HDF5: one part file per clip)."""
    root = tmp_path_factory.mktemp("integrity")
    out = {}
    with one_thread():
        for fmt in ("zarr", "hdf5"):
            result = build(root / f"c.{fmt}", teacher, data_root, format=fmt, max_clips=2, views=2, part_mb=0)
            assert result["complete"] and [c["name"] for c in CacheReader(root / f"c.{fmt}").clips] == NAMES
            out[fmt] = root / f"c.{fmt}"
    return out


def copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def edit_manifest(root: Path, rehash: bool = False, **fingerprint) -> None:
    """Change fingerprint fields by hand, as a text editor would (``rehash``: and recompute the hash too)."""
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["fingerprint"].update(fingerprint)
    if rehash:
        write_manifest(root, manifest)
    else:
        (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def hashes(root: Path) -> list[dict]:
    return [c["hashes"] for c in json.loads((root / "manifest.json").read_text())["clips"]]


def cli_run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# ---------------------------------------------------------------------------------------------- the manifest
def test_an_edited_manifest_is_refused_by_every_command(tmp_path, caches, teacher, data_root):  # noqa: F811
    root = copy(caches["zarr"], tmp_path / "edited.zarr")
    assert MANIFEST_HASH in json.loads((root / "manifest.json").read_text())
    # re-indenting or reordering the file is not an edit: the hash is over canonical JSON
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps(dict(reversed(list(manifest.items()))), indent=3))
    assert info(root)["degradation"] == "bd"
    edit_manifest(root, degradation="bi")
    for args in (["cache", "info", root], ["cache", "info", "--json", root], ["cache", "verify", root],
                 ["cache", "verify", "--sources", root],
                 ["distill", "--cache", root, "--degradation", "bi", "--out", tmp_path / "run", "--device", "cpu",
                  "--steps", "2", "--warmup-steps", "1"],
                 ["cache-teacher", "--weights", teacher.path, "--data", f"folder:{data_root}", "--out", root,
                  "--max-clips", "2", "--views", "2", "--degradation", "bi"]):
        result = cli_run(*args)
        assert_one_error_line(result, EDITED, "restore the original manifest.json", f"delete {root}")
        assert result.stdout == "", args
    assert not (tmp_path / "run").exists()
    with pytest.raises(StdvsrError, match=EDITED):
        CacheReader(root)


def test_an_edit_with_the_hash_recomputed_is_caught_by_rederiving_the_lr_frames(tmp_path, caches):
    for fmt in ("zarr", "hdf5"):
        assert verify(caches[fmt], sources=True) == [], fmt  # the views' LR frames re-derive exactly, too
        root = copy(caches[fmt], tmp_path / f"rehashed.{fmt}")
        edit_manifest(root, rehash=True, degradation="bi")
        assert info(root)["degradation"] == "bi"  # the hash matches: it opens
        assert verify(root) == []  # the stored data is intact; only the sources can tell
        problems = verify(root, sources=True)
        assert [p["clip"] for p in problems] == NAMES, problems
        assert all("degraded as manifest.json records (bi ×4) are not the LR frames the teacher read" in p["problem"]
                   for p in problems), problems
        result = cli_run("cache", "verify", "--sources", root)
        assert_one_error_line(result, "4 problem(s) found in clip(s) a, a@t1, b, b@t1",
                              "does not describe the stored data", "restore the original manifest.json")


# ------------------------------------------------------------------------------------- missing records/arrays
def test_deleted_record_and_shard_zarr_are_counted_named_and_repaired(tmp_path, caches, teacher,
                                                                      data_root):  # noqa: F811
    root = copy(caches["zarr"], tmp_path / "holes.zarr")
    (root / "progress" / "0000001.json").unlink()  # a@t1's record
    manifest = json.loads((root / "manifest.json").read_text())
    b = manifest["clips"][2]
    shutil.rmtree(root / b["group"] / "trunk" / "c" / str(b["offset"] + 1))  # one frame of b's trunk
    r = info(root)
    assert not r["complete"] and r["clips_done"] == 2
    assert r["missing"] == [
        {"clip": "a@t1", "problem": "progress record progress/0000001.json missing"},
        {"clip": "b", "problem": f"missing on disk: {b['group']}/trunk/c/{b['offset'] + 1}"}]
    text = " ".join(cli_run("cache", "info", root).stdout.split())
    assert "not whole: 2 of 4 clips on disk" in text and "a@t1: progress record" in text and " complete " not in text
    problems = verify(root)
    assert {p["clip"] for p in problems} == {"a@t1", "b"} and {p["fix"] for p in problems} == {"rerun"}
    assert "progress record progress/0000001.json missing" in [p["problem"] for p in problems]
    result = cli_run("cache", "verify", root)
    assert_one_error_line(result, "in clip(s) a@t1, b", "run the same stdvsr cache-teacher command again to "
                                  "write those clips again")
    assert f"delete {root}" not in result.stderr and "│ a@t1" in result.stdout
    # the advice works: the same command writes exactly those two clips again, bit for bit
    with one_thread():
        result = build(root, teacher, data_root, max_clips=2, views=2, part_mb=0)
    assert result["complete"] and result["processed"] == 2
    assert verify(root) == [] and info(root)["complete"] and sorted(records(root)) == [0, 1, 2, 3]
    assert hashes(root) == hashes(caches["zarr"])


def test_deleted_part_join_and_record_hdf5_are_repaired(tmp_path, caches, teacher, data_root):  # noqa: F811
    root = copy(caches["hdf5"], tmp_path / "holes.hdf5")
    part = json.loads((root / "manifest.json").read_text())["clips"][3]["part"]
    (root / part).unlink()
    (root / "cache.h5").unlink()
    (root / "progress" / "0000000.json").unlink()
    r = info(root)
    assert not r["complete"] and r["clips_done"] == 2
    assert [m["clip"] for m in r["missing"]] == ["a", "b@t1", "-"]
    assert f"missing on disk: {part}" in r["missing"][1]["problem"]
    result = cli_run("cache", "verify", root)
    assert_one_error_line(result, "in clip(s) a, b@t1", "run the same stdvsr cache-teacher command again")
    with pytest.raises(StdvsrError, match="damaged|incomplete"):
        CacheReader(root).read(3, range(2))
    with one_thread():
        assert build(root, teacher, data_root, format="hdf5", max_clips=2, views=2, part_mb=0)["processed"] == 2
    assert verify(root) == [] and info(root)["complete"]
    assert hashes(root) == hashes(caches["hdf5"])
    assert CacheReader(root).read(3, range(2))["trunk"].abs().max() > 0


def test_a_corrupted_clip_is_mended_by_the_advice(tmp_path, caches, teacher, data_root):  # noqa: F811
    root = copy(caches["zarr"], tmp_path / "corrupt.zarr")
    c = json.loads((root / "manifest.json").read_text())["clips"][2]
    shard = root / c["group"] / "trunk" / "c" / str(c["offset"]) / "0" / "0" / "0"
    xor_bytes(shard, shard.stat().st_size // 2)
    assert info(root)["complete"]  # every piece is on disk: only reading it back can tell
    problems = verify(root)
    assert {p["clip"] for p in problems} == {"b"} and {p["fix"] for p in problems} == {"redo"}
    result = cli_run("cache", "verify", root)
    assert_one_error_line(result, f"delete progress/0000002.json inside {root}, then run the same stdvsr "
                                  "cache-teacher command again to write that clip again")
    (root / "progress" / "0000002.json").unlink()
    with one_thread():
        assert build(root, teacher, data_root, max_clips=2, views=2, part_mb=0)["processed"] == 1
    assert verify(root) == [] and hashes(root) == hashes(caches["zarr"])


# ------------------------------------------------------------------------------------------------- the rest
def test_info_shows_views_and_protection(caches):
    text = " ".join(cli_run("cache", "info", caches["zarr"]).stdout.split())
    assert "views │ 2 (each clip also cached through 1 flip, as clips CLIP@t1..t1)" in text
    assert "manifest │ protected by its sha256" in text
    r = info(caches["zarr"])
    assert r["views"] == 2 and r["manifest_protected"] and r["missing"] == [] and r["complete"]


def test_legacy_caches_open_and_are_reported_unprotected(tmp_path):
    for name in ("cache.zarr", "cache.h5"):
        root = copy(LEGACY / name, tmp_path / name)
        assert MANIFEST_HASH not in json.loads((root / "manifest.json").read_text())
        r = info(root)
        assert r["complete"] and not r["manifest_protected"] and r["views"] == 1
        text = " ".join(cli_run("cache", "info", root).stdout.split())
        assert "unprotected: no manifest_sha256 (written before stdvsr hashed its manifests" in text
        result = cli_run("cache", "verify", "--sources", "--data", f"folder:{LEGACY / 'data'}", root)
        assert result.exit_code == 0, result.output
        assert "all 1 clips intact (manifest unprotected" in " ".join(result.stdout.split())


def test_ctrl_c_in_cache_teacher_says_the_finished_clips_are_kept(tmp_path, caches, teacher, data_root,  # noqa: F811
                                                                   monkeypatch):
    real = cache_build.process_clip
    calls = []

    def interrupted_on_the_third_clip(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_build, "process_clip", interrupted_on_the_third_clip)
    out = tmp_path / "c.zarr"
    base = ["cache-teacher", "--weights", teacher.path, "--data", f"folder:{data_root}", "--max-clips", "2",
            "--views", "2", "--out", out, "--hdf5-part-mb", "0"]
    with one_thread():
        result = cli_run(*base)
    assert result.exit_code == 130  # as a shell reports Ctrl-C; one line, the cache's own
    assert (f"Interrupted (Ctrl-C): 2 of 4 clips of {out} are written and kept; run the same stdvsr cache-teacher "
            "command again to write the rest") in " ".join(result.stderr.split())
    assert "rerun the same command" not in result.stderr and "Aborted" not in result.stderr
    monkeypatch.setattr(cache_build, "process_clip", real)
    with one_thread():
        result = cli_run(*base)
    assert result.exit_code == 0, result.output
    assert "resuming" in result.stderr and hashes(out) == hashes(caches["zarr"])
