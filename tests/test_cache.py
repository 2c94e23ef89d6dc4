"""The teacher cache end to end on real frames and a tiny EDVR: every stored tier and the F^SR / SR rebuilt from the
trunk equal the online teacher (fp16, int8), the head's margin, SIGKILL + resume, two ranks (torchrun / explicit),
fingerprints, ``verify`` on damaged caches, user errors, CacheDataset under DataLoader workers, and the cache CLI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

from stdvsr import cache
from stdvsr.cache import CacheConfig, CacheDataset, CacheReader, TeacherHead
from stdvsr.cache import build as cache_build
from stdvsr.cache.check import info, verify
from stdvsr.cli import cli
from stdvsr.data import degrade, dihedral, load_clips, read_hr, window_indices
from stdvsr.errors import StdvsrError
from stdvsr.models import build_model
from tests.helpers import write_clips

REPO = Path(__file__).resolve().parents[1]
TINY = dict(num_feat=8, num_frame=3, deformable_groups=1, num_extract_block=1, num_reconstruct_block=1)
ALL_TIERS = ("trunk", "attention", "feat_sr", "sr")
M = 2  # HEAD_MARGIN, in LR pixels
# clip name → (source video, first frame, frame count, top, left, HR height, HR width). Sorted by name = clip index.
# Groups: 64x96 (a, b), 48x80 (c), 72x88 (d: LR 18×22, not a multiple of 4 → the trunk is stored padded to 20×24).
CLIPS = {"a": ("carphone", 0, 5, 0, 0, 64, 96), "b": ("carphone", 3, 4, 64, 64, 64, 96),
         "c": ("bikes", 0, 4, 100, 200, 48, 80), "d": ("bikes", 1, 3, 150, 400, 72, 88)}
N_FRAMES = sum(c[2] for c in CLIPS.values())
# fp16 storage rounds each value to 11 significant bits: error ≤ 2^-11 ≈ 4.9e-4 of the value, so every stored tier
# must be within 1e-3 · max|reference| of the online teacher (the reference's max over the clip and tier).
FP16_TOL = 1e-3
# F^SR / SR rebuilt by the head from an fp16 trunk: the trunk's rounding passes through three 3×3 convs;
# measured ≈ 5e-4 · max|ref|, asserted ≤ 2e-3 · max|ref| (a wrong pixel, mask or margin gives errors ≈ 0.5).
REBUILD_TOL = 2e-3
# ... and from an int8 trunk (half a step = max_c|x| / 254 per value): measured ≈ 4e-3, asserted ≤ 1e-2 · max|ref|.
INT8_REBUILD_TOL = 1e-2


# ------------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def one_thread():
    """In-process runs with one intra-op thread compute exactly what `OMP_NUM_THREADS=1` subprocesses compute."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def build(out: Path, teacher, data_root: Path, **kw) -> dict:
    cfg = CacheConfig(weights=str(teacher.path), data=f"folder:{data_root}", out=str(out), **kw)
    return cache.run(cfg, show_progress=False)


def rel_err(actual: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor | float) -> float:
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    return float((actual - expected).abs().max()) / float(scale)


def margin_crop(x: torch.Tensor, y: int, x0: int, h: int, w: int, m: int, mode: str = "constant") -> torch.Tensor:
    """The LR box ``(y, x0, h, w)`` of ``x`` (…, H, W) with ``m`` pixels around it, padded beyond the edges."""
    return F.pad(x, (m, m, m, m), mode=mode)[..., y:y + h + 2 * m, x0:x0 + w + 2 * m]


def array_names(root: Path) -> list[str]:
    manifest = json.loads((root / "manifest.json").read_text())
    names = []
    for key, a in manifest["layout"]["arrays"].items():
        names += [key, f"{key}_scale"] if a["quantised"] else [key]
    return sorted(names)


def read_arrays(root: Path) -> dict[str, np.ndarray]:
    """Every array of a cache (int8 scales included), read straight through zarr / h5py."""
    root = Path(root)
    fmt = json.loads((root / "manifest.json").read_text())["fingerprint"]["format"]
    if fmt == "zarr":
        import zarr

        return {n: zarr.open_array(root / n, mode="r")[...] for n in array_names(root)}
    import h5py

    with h5py.File(root / "cache.h5", "r") as f:
        return {n: f[n][...] for n in array_names(root)}


def assert_same_arrays(a: Path, b: Path) -> None:
    arrays_a, arrays_b = read_arrays(a), read_arrays(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    assert any(k.endswith("_scale") for k in arrays_a)
    for name in arrays_a:
        x, y = arrays_a[name], arrays_b[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), f"{name} differs ({int((x != y).sum())} values)"
        # no frame is all zeros (what a missing Zarr shard or HDF5 source reads back as)
        assert (np.abs(x.reshape(len(x), -1).astype(np.float64)).max(axis=1) > 0).all(), name
    ha, hb = (json.loads((p / "manifest.json").read_text())["clips"] for p in (a, b))
    assert [c["hashes"] for c in ha] == [c["hashes"] for c in hb]


def records(root: Path) -> dict[int, dict]:
    out = {}
    for p in (Path(root) / "progress").glob("[0-9]*.json"):
        with contextlib.suppress(json.JSONDecodeError, OSError):
            r = json.loads(p.read_text())
            out[r["index"]] = r
    return out


def sub_env(home: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "STDVSR_HOME": str(home), "PYTHONPATH": str(REPO)}


def errors_of(proc) -> str:
    """The ``Error:`` lines of every rank (torchrun's own traceback says only that a child failed)."""
    return "\n".join(line for line in proc.stderr.splitlines() if "Error" in line)[-3000:] or proc.stderr[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_error_line(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len([line for line in lines if line.startswith("Error:")]) == 1 and lines[-1].startswith("Error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def data_root(tmp_path_factory, carphone_frames, bikes_frames):
    """A folder dataset of real frames: 4 clips, 3 frame sizes (one LR size not a multiple of 4)."""
    return write_clips(tmp_path_factory.mktemp("frames"), CLIPS, {"carphone": carphone_frames, "bikes": bikes_frames})


def make_teacher(path: Path, seed: int):
    """A tiny random EDVR saved as a stdvsr checkpoint; its head is scaled up so F^SR is of order 1, not 0.1."""
    torch.manual_seed(seed)
    model = build_model("edvr", **TINY).eval()
    with torch.no_grad():
        for layer in (model.upconv1, model.upconv2, model.conv_hr):
            layer.weight.mul_(2.0)
    torch.save({"model": {"name": "edvr", "kwargs": dict(TINY)}, "params": model.state_dict()}, path)
    return SimpleNamespace(path=path, model=model)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pth", seed=0)


def run_online(model, name: str, hr: torch.Tensor) -> SimpleNamespace:
    """The teacher run online, window by window (forward_features), on the replicate-padded BD frames of ``hr``."""
    n = len(hr)
    lq = degrade(hr, "bd", 4)
    h, w = lq.shape[-2:]
    lq_pad = F.pad(lq, (0, -w % 4, 0, -h % 4), mode="replicate")
    with torch.no_grad():
        feats = [model.forward_features(lq_pad[window_indices(t, n, 3, "replicate")][None]) for t in range(n)]
    sr, feat_sr, feat_lr = (torch.cat(parts) for parts in zip(*feats))
    return SimpleNamespace(name=name, lq=lq, lr_size=(h, w), hr_size=(4 * h, 4 * w),
                           feat_lr=feat_lr, feat_sr_padded=feat_sr, feat_sr=feat_sr[..., :4 * h, :4 * w],
                           sr=sr[..., :4 * h, :4 * w],
                           attention=feat_sr[..., :4 * h, :4 * w].pow(2).sum(1, keepdim=True))


@pytest.fixture(scope="module")
def online(teacher, data_root):
    """The teacher run online on every clip of the folder dataset."""
    return [run_online(teacher.model, clip.name, read_hr(clip, range(len(clip)), 4))
            for clip in load_clips(f"folder:{data_root}")]


@pytest.fixture(scope="module")
def pngs(data_root):
    """The HR frames as written, float32 (T, 3, H, W) in [0, 1], decoded independently of stdvsr (OpenCV)."""
    import cv2

    out = []
    for name in CLIPS:
        frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted((data_root / name).iterdir())]
        out.append(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory, teacher, data_root):
    """fp16 caches with every tier, both formats (HDF5: one part file per clip)."""
    root = tmp_path_factory.mktemp("built")
    out = {}
    for fmt in ("zarr", "hdf5"):
        result = build(root / f"c.{fmt}", teacher, data_root, format=fmt, store=ALL_TIERS, part_mb=0)
        assert result["complete"] and result["processed"] == 4 and result["frames"] == N_FRAMES
        out[fmt] = root / f"c.{fmt}"
    return out


@pytest.fixture(scope="module")
def reference_int8(tmp_path_factory, teacher, data_root):
    """Uninterrupted single-process int8 caches with every tier (the arrays resumed / multi-rank runs must equal)."""
    root = tmp_path_factory.mktemp("reference")
    out = {}
    with one_thread():
        for fmt in ("zarr", "hdf5"):
            build(root / f"ref.{fmt}", teacher, data_root, format=fmt, store=ALL_TIERS, dtype="int8", part_mb=0)
            out[fmt] = root / f"ref.{fmt}"
    return out


def boxes(h: int, w: int) -> list:
    """Whole frame, the four corners, the four edges and the interior, as HR boxes (multiples of 4)."""
    return [None, (0, 0, 16, 16), (0, w - 16, 16, 16), (h - 16, 0, 16, 16), (h - 20, w - 24, 20, 24),
            (0, 32, 16, 24), (16, 0, 24, 16), (h - 16, 24, 16, 32), (20, w - 16, 16, 16), (16, 24, 24, 32)]


# ---------------------------------------------------------------------------------------------- 1. fidelity
@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_fp16_cache_equals_the_online_teacher(fmt, built, online, pngs):
    reader = CacheReader(built[fmt])
    head = reader.head()
    assert [(c["name"], c["group"], c["offset"]) for c in reader.clips] == [
        ("a", "64x96", 0), ("b", "64x96", 5), ("c", "48x80", 0), ("d", "72x88", 0)]
    assert reader.groups["72x88"]["trunk_size"] == [20, 24] and reader.groups["72x88"]["lr_size"] == [18, 22]
    assert reader.tiers == ["lq", *ALL_TIERS]
    for i, ref in enumerate(online):
        H, W = ref.hr_size
        n = len(ref.lq)
        scale = {t: getattr(ref, t).abs().max() for t in ("feat_lr", "feat_sr", "sr", "attention")}
        assert float(scale["feat_sr"]) > 0.3 and float(scale["feat_lr"]) > 0.1  # features of order 1, not tiny
        for box in boxes(H, W):
            for frames in (range(n), range(1, 3)):
                out = reader.read(i, frames, box)
                top, left, height, width = box or (0, 0, H, W)
                y, x, h, w = top // 4, left // 4, height // 4, width // 4
                f = slice(frames.start, frames.stop)
                hr_crop = (f, slice(None), slice(top, top + height), slice(left, left + width))
                # lq is exactly the degraded PNG frames; gt is exactly the PNG frames
                assert torch.equal(out["lq"], ref.lq[f, :, y:y + h, x:x + w])
                assert torch.equal(out["gt"], pngs[i][hr_crop])
                for tier in ("feat_sr", "sr", "attention"):
                    err = rel_err(out[tier], getattr(ref, tier)[hr_crop], scale[tier])
                    assert err <= FP16_TOL, (ref.name, box, tier, err)
                # the trunk comes with a 2-LR-pixel margin: the stored (padded) trunk inside, zeros beyond it
                expect_trunk = margin_crop(ref.feat_lr[f], y, x, h, w, M)
                err = rel_err(out["trunk"], expect_trunk, scale["feat_lr"])
                assert err <= FP16_TOL, (ref.name, box, "trunk", err)
                th, tw = ref.feat_lr.shape[-2:]
                assert torch.equal(out["valid"], margin_crop(torch.ones(1, th, tw), y, x, h, w, M))
                assert torch.equal(out["lq_margin"], margin_crop(ref.lq[f], y, x, h, w, M, mode="replicate"))
                # F^SR and SR rebuilt from the cached trunk by the cached head
                fsr, sr = head.targets(out["trunk"], out["valid"], out["lq_margin"])
                for name, got in (("feat_sr", fsr), ("sr", sr)):
                    err = rel_err(got, getattr(ref, name)[hr_crop], scale[name])
                    assert err <= REBUILD_TOL, (ref.name, box, f"rebuilt {name}", err)
    # (B, T) leading dims: two crops at once give the same targets as one by one
    a, b = reader.read(0, range(3), (0, 0, 32, 32)), reader.read(0, range(1, 4), (32, 64, 32, 32))
    fsr, sr = head.targets(torch.stack([a["trunk"], b["trunk"]]), torch.stack([a["valid"], b["valid"]]),
                           torch.stack([a["lq_margin"], b["lq_margin"]]))
    assert fsr.shape == (2, 3, 64, 32, 32) and sr.shape == (2, 3, 3, 32, 32)
    assert torch.allclose(fsr[1], head.targets(b["trunk"], b["valid"], b["lq_margin"])[0], atol=1e-6)
    # on disk: lq float32, every other tier float16, no int8 scales
    assert {k: a.dtype for k, a in read_arrays(built[fmt]).items() if k.startswith("64x96/")} == {
        "64x96/lq": np.float32, "64x96/trunk": np.float16, "64x96/attention": np.float16,
        "64x96/feat_sr": np.float16, "64x96/sr": np.float16}


# ------------------------------------------------------------------------------------------------- 2. int8
def test_int8_trunk_is_within_half_a_step(tmp_path, teacher, data_root, online):
    build(tmp_path / "q.zarr", teacher, data_root, store=("trunk", "feat_sr"), dtype="int8")
    import zarr

    assert zarr.open_array(tmp_path / "q.zarr" / "64x96" / "trunk", mode="r").dtype == np.int8
    assert zarr.open_array(tmp_path / "q.zarr" / "64x96" / "trunk_scale", mode="r").shape == (9, 8)
    reader = CacheReader(tmp_path / "q.zarr")
    head = reader.head()
    for i, ref in enumerate(online):
        H, W = ref.hr_size
        out = reader.read(i)
        # the whole stored (padded) trunk, per frame and channel: |q·s − x| ≤ s/2 = max_c|x| / 254
        trunk = out["trunk"][..., M:, M:]
        th, tw = ref.feat_lr.shape[-2:]
        trunk = trunk[..., :th, :tw]
        assert trunk.shape == ref.feat_lr.shape
        bound = ref.feat_lr.abs().amax(dim=(2, 3)) / 254 + 1e-6
        err = (trunk - ref.feat_lr).abs().amax(dim=(2, 3))
        assert (err <= bound).all(), float((err / bound).max())
        assert float((err / bound).max()) > 0.5  # it is quantised: the error reaches near half a step somewhere
        bound = ref.feat_sr.abs().amax(dim=(2, 3)) / 254 + 1e-6
        assert ((out["feat_sr"] - ref.feat_sr).abs().amax(dim=(2, 3)) <= bound).all()
        fsr, sr = head.targets(out["trunk"], out["valid"], out["lq_margin"])
        assert rel_err(fsr, ref.feat_sr, ref.feat_sr.abs().max()) <= INT8_REBUILD_TOL
        assert rel_err(sr, ref.sr, ref.sr.abs().max()) <= INT8_REBUILD_TOL
        for box in ((0, 0, 16, 16), (H - 16, W - 16, 16, 16)):
            crop = reader.read(i, box=box, tiers=["trunk"], gt=False)
            fsr_crop, _ = head.targets(crop["trunk"], crop["valid"])
            t, l, hh, ww = box
            want = ref.feat_sr[..., t:t + hh, l:l + ww]
            assert rel_err(fsr_crop, want, ref.feat_sr.abs().max()) <= INT8_REBUILD_TOL


# ------------------------------------------------------------------------------------------------ 3. margin
def test_head_margin_makes_crops_exact(built, teacher, online):
    head = TeacherHead.load(built["zarr"] / "head.pth")
    model = teacher.model
    for ref in (online[0], online[3]):  # 64×96 and the padded 72×88 clip
        trunk = ref.feat_lr  # float32, straight from the online teacher
        with torch.no_grad():
            full = head.feat_sr(trunk)
            assert torch.allclose(full, model.upsample_head(trunk.clone()), atol=1e-6, rtol=0)
            assert torch.allclose(full, ref.feat_sr_padded, atol=1e-5, rtol=0)
            th, tw = trunk.shape[-2:]
            H, W = ref.hr_size
            peak = float(full.abs().max())
            for box in ((16, 24, 24, 32), (0, 0, 16, 16), (H - 16, W - 24, 16, 24), (H - 16, 32, 16, 16)):
                top, left, height, width = box
                y, x, h, w = top // 4, left // 4, height // 4, width // 4
                want = full[..., top:top + height, left:left + width]
                lq_margin = margin_crop(ref.lq, y, x, h, w, M, mode="replicate")
                valid = margin_crop(torch.ones(1, th, tw), y, x, h, w, M)
                fsr, sr = head.targets(margin_crop(trunk, y, x, h, w, M), valid, lq_margin, margin=M)
                assert float((fsr - want).abs().max()) <= 1e-5 * max(1.0, peak), box
                assert float((sr - ref.sr[..., top:top + height, left:left + width]).abs().max()) <= 1e-5, box
            # margin 1 is not enough: the crop's border pixels see the crop's zero padding instead of the trunk
            top, left, height, width = 16, 24, 24, 32
            y, x, h, w = top // 4, left // 4, height // 4, width // 4
            valid = margin_crop(torch.ones(1, th, tw), y, x, h, w, 1)
            fsr1, _ = head.targets(margin_crop(trunk, y, x, h, w, 1), valid, margin=1)
            assert fsr1.shape == (len(trunk), 64, height, width)
            assert float((fsr1 - full[..., top:top + height, left:left + width]).abs().max()) > 1e-2 * peak
            # and at a corner the `valid` mask matters: without it the head's biases leak in from outside the frame
            fsr_nomask, _ = head.targets(margin_crop(trunk, 0, 0, 4, 4, M), torch.ones(1, 4 + 2 * M, 4 + 2 * M))
            assert float((fsr_nomask - full[..., :16, :16]).abs().max()) > 1e-2 * peak


def test_reader_margin_argument(built, online):
    """reader.read(margin=m) hands out an m-pixel margin: F^SR rebuilt with margin 0 or 1 misses, with 2 hits."""
    reader = CacheReader(built["zarr"])
    head = reader.head()
    ref = online[0]
    box = (16, 24, 24, 32)
    want = ref.feat_sr[..., 16:40, 24:56]
    errs = {}
    for m in (0, 1, 2):
        out = reader.read(0, box=box, tiers=["trunk"], gt=False, margin=m)
        assert out["trunk"].shape == (5, 8, 6 + 2 * m, 8 + 2 * m)
        fsr, sr = head.targets(out["trunk"], out["valid"], out["lq_margin"], margin=m)
        assert fsr.shape == (5, 64, 24, 32) and sr.shape == (5, 3, 24, 32)
        errs[m] = rel_err(fsr, want, want.abs().max())
    assert errs[2] <= REBUILD_TOL < min(errs[0], errs[1])


@pytest.mark.parametrize("cache", ["zarr", "hdf5", "int8"])
def test_frames_kept_in_ram_read_the_same_values_within_the_budget(built, reference_int8, cache):
    """keep_in_memory(): every tier, the ground truth and the LR windows read exactly as from disk, at any crop and
    on a second read (sliced from RAM); nothing is kept past the budget, and with a budget of 0 nothing at all."""
    path = reference_int8["zarr"] if cache == "int8" else built[cache]
    disk, ram, tight = CacheReader(path), CacheReader(path), CacheReader(path)
    ram.keep_in_memory(2**30)
    tight.keep_in_memory(3 * 2**20)
    boxes = [(0, 0, 16, 16), (16, 24, 24, 32), (8, 4, 32, 16)]
    for _ in range(2):  # the second pass reads what the first kept
        for index in range(len(disk)):
            clip = disk.clips[index]
            for box in boxes:
                frames = range(1, min(4, clip["frames"]))
                want = disk.read(index, frames, box, margin=2)
                for reader in (ram, tight):
                    got = reader.read(index, frames, box, margin=2)
                    assert got.keys() == want.keys()
                    for k, v in want.items():
                        assert torch.equal(got[k], v) if isinstance(v, torch.Tensor) else got[k] == v, k
                y, x = box[0] // 4, box[1] // 4
                lr_box = (y, x, box[2] // 4, box[3] // 4)
                assert torch.equal(ram.read_lq(index, frames, lr_box), disk.read_lq(index, frames, lr_box))
    assert 0 < ram._ram.used <= 2**30 and len(ram._ram.items) > 0
    assert any(key[0] == "image" for key in ram._ram.items)  # decoded ground truth is kept too
    assert tight._ram.used <= 3 * 2**20 < ram._ram.used
    assert disk._ram.used == 0 and not disk._ram.items


# ----------------------------------------------------------------------------------------- 4. kill + resume
def cli_args(teacher, data_root, out: Path, fmt: str) -> list[str]:
    return ["--weights", str(teacher.path), "--data", f"folder:{data_root}", "--out", str(out), "--format", fmt,
            "--store", ",".join(ALL_TIERS), "--dtype", "int8", "--hdf5-part-mb", "0"]


def kill_when(cmd: list[str], env: dict, cwd: Path, condition, timeout: float = 60) -> bool:
    """Start ``cmd``; SIGKILL it as soon as ``condition()`` holds. Returns False if it exited before that."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            if condition():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            if proc.poll() is not None:
                return False
            time.sleep(0.002)
        raise AssertionError(f"condition not reached in {timeout} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def in_progress(root: Path, fmt: str, before: int) -> bool:
    """More than ``before`` clips are done and the next clip is being written (a shard or a .partial part)."""
    done = records(root)
    if len(done) <= before or len(done) == len(CLIPS):
        return False
    if fmt == "hdf5":
        return any(root.glob(".part-r0-*.partial"))
    manifest = json.loads((root / "manifest.json").read_text())
    return any((root / c["group"] / "lq" / "c" / str(c["offset"])).is_dir()
               for c in manifest["clips"] if c["index"] not in done)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_sigkill_then_resume_gives_identical_arrays(fmt, tmp_path, teacher, data_root, reference_int8):
    out = tmp_path / f"killed.{fmt}"
    cmd = [sys.executable, "-m", "stdvsr", "cache-teacher", *cli_args(teacher, data_root, out, fmt)]
    env = sub_env(tmp_path / "home")
    # 1. while the empty cache is being laid out (in a hidden sibling folder): no cache folder appears
    assert kill_when(cmd, env, tmp_path, lambda: any(tmp_path.glob(f".{out.name}.creating-*")))
    assert not out.exists()
    # 2. right after the empty cache is laid out, before any clip is done
    assert kill_when(cmd, env, tmp_path, lambda: (out / "manifest.json").is_file())
    assert not records(out)
    with pytest.raises(StdvsrError, match=r"incomplete \(0 of 4 clips written\); run the same stdvsr "
                                          r"cache-teacher command again"):
        CacheReader(out)
    assert [p["clip"] for p in verify(out)] == list(CLIPS)
    assert all("not written yet" in p["problem"] for p in verify(out))
    # 3. as soon as the first progress record appears
    assert kill_when(cmd, env, tmp_path, lambda: len(records(out)) >= 1)
    done = len(records(out))
    assert 1 <= done < 4 and not json.loads((out / "manifest.json").read_text())["complete"]
    # 4. mid-clip, after at least one more record: the next clip's shards / part are half written
    assert kill_when(cmd, env, tmp_path, lambda: in_progress(out, fmt, done))
    done = records(out)
    assert 2 <= len(done) < 4
    # 5. a kill after a clip's data was durable but before its record was written: its record is missing
    #    (HDF5: its part file stays behind, unreferenced)
    (out / "progress" / f"{max(done):07d}.json").unlink()
    # 6. the same command finishes the cache
    finish = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert finish.returncode == 0, finish.stderr
    assert "resuming" in finish.stderr
    assert not list(out.rglob("*.partial")) and not list(tmp_path.glob(".*.creating-*"))
    assert_same_arrays(out, reference_int8[fmt])
    if fmt == "hdf5":  # parts of clips redone after the kill are gone; one part per clip is left
        assert len(list(out.glob("part-r0-*.h5"))) == 4
    assert verify(out) == []
    result = CliRunner().invoke(cli, ["cache", "verify", str(out)])
    assert result.exit_code == 0 and "all 4 clips intact" in result.stdout, result.output
    with one_thread():
        again = cache.run(CacheConfig(weights=str(teacher.path), data=f"folder:{data_root}", out=str(out), format=fmt,
                                      store=ALL_TIERS, dtype="int8", part_mb=0), show_progress=False)
    assert again["complete"] and again["processed"] == 0
    assert_same_arrays(out, reference_int8[fmt])


# ------------------------------------------------------------------------------------------------ 5. ranks
@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(tmp_path, teacher, data_root, reference_int8):
    out = tmp_path / "ranks.zarr"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "stdvsr", "cache-teacher", *cli_args(teacher, data_root, out, "zarr")]
    proc = subprocess.run(cmd, env=sub_env(tmp_path / "home"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, errors_of(proc)
    assert "Teacher cache" in proc.stdout  # rank 0 prints the summary
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"]
    assert {i: r["rank"] for i, r in records(out).items()} == {0: 0, 1: 1, 2: 0, 3: 1}
    assert_same_arrays(out, reference_int8["zarr"])


SLOW_RANK = """
import os, sys, time
from pathlib import Path
import stdvsr.cache.build as build

real = build.read_manifest
seen = []

def late(root):  # rank 1 looks for the cache only once rank 0 has created it (a slow dataset listing, a late start)
    if not seen:
        seen.append(root)
        t0 = time.time()
        while not (Path(root) / "manifest.json").is_file() and time.time() - t0 < 60:
            time.sleep(0.01)
    return real(root)

if os.environ["RANK"] == "1":
    build.read_manifest = late
from stdvsr.cli import main
sys.argv = ["stdvsr", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_torchrun_with_a_late_rank(tmp_path, teacher, data_root, reference_int8):
    """Rank 1 finds the cache rank 0 has just created: both ranks must still meet at the same barriers."""
    out = tmp_path / "late.zarr"
    (tmp_path / "late_rank.py").write_text(SLOW_RANK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(tmp_path / "late_rank.py"), "cache-teacher", *cli_args(teacher, data_root, out, "zarr")]
    proc = subprocess.run(cmd, env=sub_env(tmp_path / "home"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, errors_of(proc)
    assert json.loads((out / "manifest.json").read_text())["complete"]
    assert {i: r["rank"] for i, r in records(out).items()} == {0: 0, 1: 1, 2: 0, 3: 1}
    assert_same_arrays(out, reference_int8["zarr"])


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_explicit_ranks_equal_one_process(fmt, tmp_path, teacher, data_root, reference_int8):
    out = tmp_path / f"ranks.{fmt}"
    kw = dict(format=fmt, store=ALL_TIERS, dtype="int8", part_mb=0, world_size=2)
    with one_thread():
        first = build(out, teacher, data_root, rank=0, **kw)
        assert (first["complete"], first["processed"], first["done"]) == (False, 2, 2)
        with pytest.raises(StdvsrError, match=r"incomplete \(2 of 4 clips written\); run the same"):
            CacheReader(out)
        second = build(out, teacher, data_root, rank=1, **kw)
    assert (second["complete"], second["processed"]) == (True, 2)
    assert {i: r["rank"] for i, r in records(out).items()} == {0: 0, 1: 1, 2: 0, 3: 1}
    assert_same_arrays(out, reference_int8[fmt])
    with pytest.raises(StdvsrError, match=r"--rank 2 must be in \[0, --world-size 2\)"):
        build(tmp_path / "x", teacher, data_root, rank=2, world_size=2)


# ------------------------------------------------------------------------------------------ 6. fingerprint
def test_other_settings_are_refused_naming_the_field(tmp_path, built, teacher, data_root):
    other = make_teacher(tmp_path / "other.pth", seed=1)
    root = built["zarr"]
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    manifest = (root / "manifest.json").read_bytes()
    base = dict(format="zarr", store=ALL_TIERS, part_mb=0)
    cases = [({"dtype": "int8"}, r"dtype is 'fp16' there, 'int8' now"),
             ({"padding": "reflection"}, r"padding is 'replicate' there, 'reflection' now"),
             ({"max_clips": 2}, r"data\.max_clips is None there, 2 now"),
             ({"store": ("trunk",)}, r"tiers"),
             ({"compress": False}, r"compress is True there, False now")]
    for change, message in cases:
        with pytest.raises(StdvsrError, match=f"was built with other settings: {message}"):
            build(root, teacher, data_root, **{**base, **change})
    with pytest.raises(StdvsrError, match=r"other settings: teacher\.weights_sha256 is '[0-9a-f]{64}' there"):
        build(root, other, data_root, **base)
    assert (root / "manifest.json").read_bytes() == manifest
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    # and against an incomplete cache (a resume), too
    with one_thread():
        build(tmp_path / "half.zarr", teacher, data_root, rank=0, world_size=2)
    with pytest.raises(StdvsrError, match="other settings: dtype"):
        build(tmp_path / "half.zarr", teacher, data_root, rank=1, world_size=2, dtype="int8")


def test_dataset_paths_are_stored_resolved_and_compared_by_content(tmp_path, teacher, data_root, monkeypatch):
    """Issue #16 item 9: ``folder:frames`` typed in one directory and ``folder:/abs/frames`` are one dataset, and a
    cache built from a relative spec still finds its frames from another directory."""
    link = tmp_path / "moved"
    link.symlink_to(data_root, target_is_directory=True)  # the same frames under another name: a moved dataset
    out = tmp_path / "rel.zarr"

    def half(data: str, rank: int) -> dict:
        cfg = CacheConfig(weights=str(teacher.path), data=data, out=str(out), format="zarr", rank=rank, world_size=2)
        with one_thread():
            return cache.run(cfg, show_progress=False)

    monkeypatch.chdir(data_root.parent)
    assert not half(f"folder:{data_root.name}", 0)["complete"]  # before: stored as typed, "folder:frames0"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["fingerprint"]["data"]["spec"] == f"folder:{data_root.resolve()}"
    monkeypatch.chdir(tmp_path)
    assert half(f"folder:{link}", 1)["complete"]  # before: "built with other settings: data.spec"
    fp = manifest["fingerprint"]  # the kind of dataset still counts
    with pytest.raises(StdvsrError, match=r"other settings: data\.spec is 'folder' there, 'vid4' now"):
        cache_build.check_fingerprint(fp, {**fp, "data": {**fp["data"], "spec": f"vid4:{data_root}"}}, out)
    reader = CacheReader(out)  # from another directory: before, "dataset root frames0 ... is not a folder"
    assert [c.name for c in reader.dataset_clips()] == [c[0] for c in manifest["fingerprint"]["clips"]]
    assert CacheReader(out, data=f"folder:{link.name}").data == f"folder:{data_root.resolve()}"


# ----------------------------------------------------------------------------------------------- 7. verify
def uncompressed(tmp_path, teacher, data_root, fmt) -> Path:
    out = tmp_path / f"raw.{fmt}"
    build(out, teacher, data_root, format=fmt, compress=False, part_mb=0)
    return out


def xor_bytes(path: Path, offset: int, count: int = 16) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def assert_problems(root: Path, clip: str, *fragments: str, redo: bool = False) -> None:
    problems = verify(root)
    assert problems and {p["clip"] for p in problems} == {clip}, problems
    text = " | ".join(p["problem"] for p in problems)
    for fragment in fragments:
        assert fragment in text, text
    result = CliRunner().invoke(cli, ["cache", "verify", str(root)])
    # the smallest fix, naming the clip: a rerun writes a clip whose pieces are gone; a corrupted one, once its
    # progress record is deleted (tests/test_cache_integrity.py follows both pieces of advice)
    index = {"a": 0, "b": 1, "c": 2, "d": 3}[clip]
    first = f"delete progress/{index:07d}.json inside {root}, then " if redo else ""
    assert_one_error_line(result, f"{len(problems)} problem(s) found in clip(s) {clip}; {first}run the same stdvsr "
                                  "cache-teacher command again to write that clip again")
    assert re.search(rf"│ {clip} +│ ", result.stdout), result.stdout  # the table lists the clip
    json_result = CliRunner().invoke(cli, ["cache", "verify", "--json", str(root)])
    assert json_result.exit_code == 1
    assert json.loads(json_result.stdout) == problems


def test_verify_zarr(tmp_path, built, teacher, data_root):
    assert verify(built["zarr"]) == []
    result = CliRunner().invoke(cli, ["cache", "verify", str(built["zarr"])])
    assert result.exit_code == 0 and "all 4 clips intact" in result.stdout
    # a deleted shard (clip b = rows 5..8 of group 64x96)
    damaged = Path(shutil.copytree(built["zarr"], tmp_path / "deleted.zarr"))
    shutil.rmtree(damaged / "64x96" / "trunk" / "c" / "6")
    assert_problems(damaged, "b", "missing on disk: 64x96/trunk/c/6", "trunk: content differs")
    # a corrupted (compressed) chunk of clip c
    damaged = Path(shutil.copytree(built["zarr"], tmp_path / "corrupt.zarr"))
    shard = damaged / "48x80" / "feat_sr" / "c" / "2" / "0" / "0" / "0"
    xor_bytes(shard, shard.stat().st_size // 2)
    assert_problems(damaged, "c", "feat_sr", redo=True)
    # uncompressed: the chunk still decodes, only the content hash can tell
    raw = uncompressed(tmp_path, teacher, data_root, "zarr")
    assert verify(raw) == []
    shard = raw / "72x88" / "trunk" / "c" / "1" / "0" / "0" / "0"
    xor_bytes(shard, shard.stat().st_size // 2, count=2)
    assert_problems(raw, "d", "trunk: content differs", redo=True)
    assert "unreadable" not in str(verify(raw))


def test_verify_of_an_unfinished_cache_says_to_finish_it(tmp_path, teacher, data_root):
    out = tmp_path / "half.zarr"
    with one_thread():
        build(out, teacher, data_root, rank=0, world_size=2)
    assert {p["problem"] for p in verify(out)} == {"not written yet (run the same cache-teacher command again)"}
    result = CliRunner().invoke(cli, ["cache", "verify", str(out)])
    assert_one_error_line(result, "is incomplete: 2 clip(s) not written yet; run the same stdvsr cache-teacher")


def test_disk_space_is_printed_in_units_that_show_it():
    from stdvsr.io import size_text

    assert [size_text(n) for n in (0, 512, 3 * 2**20 + 2**19, 12.25 * 2**30, 150 * 2**30, 2**40)] == \
        ["0 B", "512 B", "3.50 MiB", "12.2 GiB", "150 GiB", "1.00 TiB"]  # before: "needs 0.0 GiB, 0.0 GiB free"


def test_verify_hdf5(tmp_path, built, teacher, data_root):
    import h5py

    assert verify(built["hdf5"]) == []
    manifest = json.loads((built["hdf5"] / "manifest.json").read_text())
    parts = {c["name"]: c["part"] for c in manifest["clips"]}
    assert len(set(parts.values())) == 4  # --hdf5-part-mb 0: one part file per clip
    # a deleted part file
    damaged = Path(shutil.copytree(built["hdf5"], tmp_path / "deleted.hdf5"))
    (damaged / parts["b"]).unlink()
    assert_problems(damaged, "b", f"missing on disk: {parts['b']}")
    # a corrupted (lzf) chunk in the middle of clip c's part
    damaged = Path(shutil.copytree(built["hdf5"], tmp_path / "corrupt.hdf5"))
    with h5py.File(damaged / parts["c"], "r") as f:
        chunk = f["clips/2/feat_sr"].id.get_chunk_info(1)
    xor_bytes(damaged / parts["c"], chunk.byte_offset + chunk.size // 2)
    assert_problems(damaged, "c", "feat_sr", redo=True)
    # uncompressed: the chunk's checksum catches it (the content hash would, too)
    raw = uncompressed(tmp_path, teacher, data_root, "hdf5")
    assert verify(raw) == []
    part = json.loads((raw / "manifest.json").read_text())["clips"][3]["part"]
    with h5py.File(raw / part, "r") as f:
        chunk = f["clips/3/trunk"].id.get_chunk_info(1)
    xor_bytes(raw / part, chunk.byte_offset + chunk.size // 2, count=2)
    # caches since #16 carry HDF5's fletcher32 checksum: the chunk fails to read (distill stops, naming the clip)
    assert_problems(raw, "d", "trunk: unreadable", "filter returned failure", redo=True)


# ----------------------------------------------------------------------------------------------- 8. errors
def test_out_folder_that_is_not_a_cache_is_left_alone(tmp_path, teacher, data_root):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(StdvsrError, match=r"exists and is not a stdvsr cache \(no manifest.json\)"):
        build(out, teacher, data_root)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_not_enough_disk_space(tmp_path, teacher, data_root, monkeypatch):
    monkeypatch.setattr(cache_build, "_free_bytes", lambda path: 0)
    with pytest.raises(StdvsrError, match="not enough disk space for the cache"):
        build(tmp_path / "c.zarr", teacher, data_root)
    assert list(tmp_path.iterdir()) == []
    result = build(tmp_path / "c.zarr", teacher, data_root, check_space=False, max_clips=1)
    assert result["complete"] and result["clips"] == 1


def test_cli_user_errors(tmp_path, teacher, data_root):
    runner = CliRunner()
    result = runner.invoke(cli, ["cache-teacher", "--weights", str(teacher.path), "--data", f"folder:{data_root}",
                                 "--out", str(tmp_path / "c.zarr"), "--store", "bogus"])
    assert_one_error_line(result, "--store bogus: unknown tier bogus")
    assert result.stdout == "" and not (tmp_path / "c.zarr").exists()
    result = runner.invoke(cli, ["cache", "info", str(tmp_path / "missing")])
    assert_one_error_line(result, "is not a teacher cache (no manifest.json)")
    result = runner.invoke(cli, ["cache", "verify", str(tmp_path / "missing")])
    assert_one_error_line(result, "is not a teacher cache")
    with pytest.raises(StdvsrError, match=r"is not a teacher cache \(no manifest.json\)"):
        CacheReader(tmp_path / "missing")


# --------------------------------------------------------------------------------------------- 9. dataset
@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_cache_dataset_is_worker_independent(fmt, built, online):
    tiers = ("trunk", "feat_sr", "sr", "attention")
    ds = CacheDataset(built[fmt], num_frames=3, patch_size=32, tiers=tiers, seed=3)
    assert len(ds) == 3 + 2 + 2 + 1
    keys = [(epoch, i) for epoch in (0, 1) for i in range(len(ds))]

    def load(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=None, sampler=keys, num_workers=workers)
        return list(loader)

    serial, parallel = load(0), load(2)
    assert len(serial) == len(parallel) == len(keys)
    names = ("lq", "gt", "trunk", "valid", "lq_margin", "feat_sr", "sr", "attention")
    for a, b in zip(serial, parallel):
        assert (a["index"], a["frames"], a["box"]) == (b["index"], b["frames"], b["box"])
        for name in names:
            assert torch.equal(a[name], b[name]), name
    boxes_seen = {(item["index"], tuple(item["box"])) for item in serial}  # DataLoader makes tuples lists
    assert len(boxes_seen) > len(ds)  # epochs draw other crops
    assert [tuple(s["box"]) for s in serial] == [ds[k]["box"] for k in keys]  # and the same again for the same key
    reader = CacheReader(built[fmt])
    head = reader.head()
    for item in serial:
        top, left = item["box"]
        frames = range(*item["frames"])
        want = reader.read(item["index"], frames, (top, left, 32, 32), tiers)
        for name in names:
            assert torch.equal(item[name], want[name]), name
        assert item["lq"].shape == (3, 3, 8, 8) and item["trunk"].shape == (3, 8, 12, 12)
        ref = online[item["index"]]
        f = slice(frames.start, frames.stop)
        crop = ref.feat_sr[f, :, top:top + 32, left:left + 32]
        fsr, _ = head.targets(item["trunk"], item["valid"], item["lq_margin"])
        assert rel_err(fsr, crop, ref.feat_sr.abs().max()) <= REBUILD_TOL
    no_gt = CacheDataset(built[fmt], num_frames=3, patch_size=32, seed=3, gt=False)[(1, 4)]
    assert "gt" not in no_gt and torch.equal(no_gt["trunk"], serial[len(ds) + 4]["trunk"])


# ------------------------------------------------------------------------------------------------ 10. info
@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_cache_info_cli(fmt, built, teacher):
    result = CliRunner().invoke(cli, ["cache", "info", str(built[fmt])])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "edvr" in text and '"num_feat": 8' in text and "complete" in text
    assert "lq, trunk, attention, feat_sr, sr (fp16)" in text
    assert "4 / 16" in text and "64x96 (9 frames), 48x80 (4 frames), 72x88 (3 frames)" in text
    result = CliRunner().invoke(cli, ["cache", "info", "--json", str(built[fmt])])
    assert result.exit_code == 0
    r = json.loads(result.stdout)
    assert r["format"] == fmt and r["complete"] and (r["clips"], r["clips_done"], r["frames"]) == (4, 4, N_FRAMES)
    assert r["teacher"]["name"] == "edvr" and r["teacher"]["kwargs"]["num_feat"] == 8
    assert len(r["teacher"]["weights_sha256"]) == 64
    assert r["tiers"] == ["lq", *ALL_TIERS] and r["dtype"] == "fp16" and r["padding"] == "replicate"
    assert r == json.loads(json.dumps(info(built[fmt])))
    assert set(r["stored_bytes"]) == set(r["raw_bytes"]) == {"lq", *ALL_TIERS}
    assert all(v > 0 for v in r["stored_bytes"].values())
    # raw bytes: frames × channels × pixels × bytes per value (lq float32 at LR, feat_sr fp16 at 64 channels)
    assert r["raw_bytes"]["lq"] == 4 * 3 * (9 * 16 * 24 + 4 * 12 * 20 + 3 * 18 * 22)
    assert r["raw_bytes"]["feat_sr"] == 2 * 64 * (9 * 64 * 96 + 4 * 48 * 80 + 3 * 72 * 88)


# ------------------------------------------------------------------------------------------------ 11. views
# the first 3 frames of clip a (64×96), and clip d (72×88, LR 18×22: the trunk is stored padded, and transposed
# views are 88×72 with LR 22×18 and trunk 24×20)
VIEW_CLIPS = {"a": (*CLIPS["a"][:2], 3, *CLIPS["a"][3:]), "d": CLIPS["d"]}


@pytest.fixture(scope="module")
def views_root(tmp_path_factory, carphone_frames, bikes_frames):
    return write_clips(tmp_path_factory.mktemp("views_frames"), VIEW_CLIPS,
                       {"carphone": carphone_frames, "bikes": bikes_frames})


@pytest.fixture(scope="module")
def views_hr(pngs):
    """The HR frames of VIEW_CLIPS, decoded by OpenCV (the same files as CLIPS a and d)."""
    return {"a": pngs[0][:3], "d": pngs[3]}


@pytest.fixture(scope="module")
def views_cache(tmp_path_factory, teacher, views_root):
    """All 8 dihedral views of both clips, trunk and sr."""
    out = tmp_path_factory.mktemp("views") / "v8.zarr"
    result = build(out, teacher, views_root, views=8, store=("trunk", "sr"))
    assert result["complete"] and result["clips"] == 16 and result["summary"]["views"] == 8
    return out


@pytest.fixture(scope="module")
def views_online(teacher, views_hr):
    """The teacher run online on each view: the HR frames transformed, then degraded (BD)."""
    return [run_online(teacher.model, f"{name}@t{v}" if v else name, dihedral(hr, v))
            for name, hr in views_hr.items() for v in range(8)]


def test_views_hold_the_teacher_run_on_transformed_clips(views_cache, views_online, views_hr):
    reader = CacheReader(views_cache)
    assert reader.views == 8 and len(reader) == 16
    assert [c["name"] for c in reader.clips] == [r.name for r in views_online]
    assert [c["name"] for c in reader.clips][:3] == ["a", "a@t1", "a@t2"]  # view 0 keeps the clip's name
    groups = {c["name"]: c["group"] for c in reader.clips}
    assert {groups[f"a@t{v}"] for v in range(1, 4)} == {"64x96"} and {groups[f"a@t{v}"] for v in range(4, 8)} == {
        "96x64"}
    assert groups["d@t5"] == "88x72" and reader.groups["88x72"]["trunk_size"] == [24, 20]
    head = reader.head()
    for i, ref in enumerate(views_online):
        v = i % 8
        out = reader.read(i)
        source = views_hr["a" if i < 8 else "d"]
        assert torch.equal(out["gt"], dihedral(source, v))  # the HR frames decoded by OpenCV, transformed
        assert torch.equal(out["lq"], ref.lq)  # degrade(dihedral(hr, v)) exactly
        if v & 3:  # a flip moves BD's sampling phase: the view's LR is not the identity view's LR flipped
            first = reader.read(i - v, tiers=["lq"], gt=False)["lq"]
            assert not torch.equal(out["lq"], dihedral(first, v))
        scale = {t: getattr(ref, t).abs().max() for t in ("feat_lr", "feat_sr", "sr")}
        lh, lw = ref.lr_size
        err = rel_err(out["trunk"], margin_crop(ref.feat_lr, 0, 0, lh, lw, M), scale["feat_lr"])
        assert err <= FP16_TOL, (ref.name, "trunk", err)
        assert rel_err(out["sr"], ref.sr, scale["sr"]) <= FP16_TOL, ref.name
        fsr, sr = head.targets(out["trunk"], out["valid"], out["lq_margin"])
        assert rel_err(fsr, ref.feat_sr, scale["feat_sr"]) <= REBUILD_TOL, ref.name
        assert rel_err(sr, ref.sr, scale["sr"]) <= REBUILD_TOL, ref.name
    assert verify(views_cache, sources=True) == []
    assert info(views_cache)["views"] == 8


def test_transposed_views_read_exact_crops(views_cache, views_online):
    reader = CacheReader(views_cache)
    head = reader.head()
    for i in (4, 8 + 6):  # a@t4 (96×64) and d@t6 (88×72, trunk padded on its other sides)
        ref = views_online[i]
        H, W = ref.hr_size
        assert H > W and reader.groups[reader.clips[i]["group"]]["hr_size"] == [H, W]
        peak = {t: getattr(ref, t).abs().max() for t in ("feat_sr", "sr")}
        for box in boxes(H, W):
            out = reader.read(i, range(1, 3), box)
            top, left, height, width = box or (0, 0, H, W)
            y, x, h, w = top // 4, left // 4, height // 4, width // 4
            hr_crop = (slice(1, 3), slice(None), slice(top, top + height), slice(left, left + width))
            assert torch.equal(out["lq"], ref.lq[1:3, :, y:y + h, x:x + w])
            assert torch.equal(out["lq_margin"], margin_crop(ref.lq[1:3], y, x, h, w, M, mode="replicate"))
            fsr, sr = head.targets(out["trunk"], out["valid"], out["lq_margin"])
            assert rel_err(fsr, ref.feat_sr[hr_crop], peak["feat_sr"]) <= REBUILD_TOL, (ref.name, box)
            assert rel_err(sr, ref.sr[hr_crop], peak["sr"]) <= REBUILD_TOL, (ref.name, box)
            assert out["gt"].shape == (2, 3, height, width)
    ds = CacheDataset(views_cache, num_frames=3, patch_size=32, seed=1)
    assert len(ds) == 8 * (1 + 1)
    for key in range(len(ds)):
        item = ds[key]
        assert item["gt"].shape == (3, 3, 32, 32) and item["trunk"].shape == (3, 8, 12, 12)


def test_views_are_fingerprinted_and_old_caches_still_work(tmp_path, teacher, views_root):
    out = tmp_path / "v2.zarr"
    with one_thread():
        assert build(out, teacher, views_root, views=2, rank=0, world_size=2)["done"] == 2
    fp = json.loads((out / "manifest.json").read_text())["fingerprint"]
    assert fp["views"] == 2 and [c[0] for c in fp["clips"]] == ["a", "a@t1", "d", "d@t1"]
    with pytest.raises(StdvsrError, match=r"was built with other settings: views is 2 there, 1 now"):
        build(out, teacher, views_root, rank=1, world_size=2)
    with one_thread():
        assert build(out, teacher, views_root, views=2, rank=1, world_size=2)["complete"]
    assert {r["name"]: r["rank"] for r in records(out).values()} == {"a": 0, "a@t1": 1, "d": 0, "d@t1": 1}
    # a cache written before --views existed: its fingerprint has no `views`; it resumes and reads as one view
    old = tmp_path / "old.zarr"
    with one_thread():
        build(old, teacher, views_root, rank=0, world_size=2)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["fingerprint"]["views"], manifest["manifest_sha256"]  # nor a hash of the manifest (#26)
    (old / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    with pytest.raises(StdvsrError, match=r"other settings: views is 1 there, 2 now"):
        build(old, teacher, views_root, views=2, rank=1, world_size=2)
    with one_thread():
        assert build(old, teacher, views_root, rank=1, world_size=2)["complete"]
    reader = CacheReader(old)
    assert reader.views == 1 and "views" not in reader.fingerprint  # kept as written: checkpoints still compare
    assert [c["name"] for c in reader.clips] == ["a", "d"]
    assert torch.equal(reader.read(1, range(2), (0, 0, 16, 16))["gt"], reader.read(1, range(2))["gt"][..., :16, :16])
    assert build(old, teacher, views_root)["processed"] == 0  # complete: nothing to do, not refused
    assert info(old)["views"] == 1 and verify(old, sources=True) == []


def test_views_cli(tmp_path, teacher, views_root):
    runner = CliRunner()
    base = ["cache-teacher", "--weights", str(teacher.path), "--data", f"folder:{views_root}"]
    for bad in ("0", "9"):
        result = runner.invoke(cli, [*base, "--out", str(tmp_path / "c.zarr"), "--views", bad])
        assert_one_error_line(result, f"--views {bad} is not in 1..8")
    result = runner.invoke(cli, [*base, "--out", str(tmp_path / "c.zarr"), "--views", "2", "--lq-from-disk"])
    assert_one_error_line(result, "--views needs LR frames made from the transformed HR frames")
    assert not (tmp_path / "c.zarr").exists()
    help_text = " ".join(runner.invoke(cli, ["cache-teacher", "--help"]).stdout.split())
    assert "--views INTEGER" in help_text and "one more teacher pass" in help_text
    result = runner.invoke(cli, [*base, "--out", str(tmp_path / "v.zarr"), "--views", "2", "--max-clips", "1"])
    assert result.exit_code == 0, result.output
    assert "2 clips (2 views of each), 6 frames" in " ".join(result.stdout.split())
