"""Stage one and the stage-two reader, measured side by side in one run on the demo data.

1. **Build overhead**: the bare teacher over the clips (read + degrade + every window, outputs dropped) vs
   ``stdvsr cache-teacher`` over the same clips (the same work plus converting, writing, hashing, fsync).
   The goal is an overhead ≤ 10 %.
2. **Bytes** per clip and tier, raw vs stored (compression ratio).
3. **Reads**: training crops/s through a DataLoader (``--workers``) from the cache (``CacheDataset``, trunk with
   its margin + LR frames, no HR decoding) vs the same crops sliced from raw ``np.memmap`` copies of the arrays;
   and the inner-chunk sweep that chose the default ``--chunk``.
4. **Projection** for Vimeo90K (64,612 clips × 7 frames, HR 448×256) from the layout maths and the measured
   compression ratio.

    .venv/bin/python pipelines/bench/bench_cache.py [--max-clips 3] [--samples 200] [--patch-size 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from stdvsr.cache import CacheConfig, CacheDataset, CacheReader, run
from stdvsr.cache.build import load_teacher
from stdvsr.cache.layout import HEAD_MARGIN, array_layout, estimate_bytes
from stdvsr.data import degrade, load_clips, read_hr, window_indices
from stdvsr.infer import pad_to_multiple


def bare_teacher(cfg: CacheConfig, clips) -> float:
    """Seconds for what cache-teacher computes, without storing anything."""
    model, _ = load_teacher(cfg)
    t0 = time.perf_counter()
    with torch.no_grad():
        for clip in clips:
            lq = degrade(read_hr(clip, range(len(clip))), cfg.degradation, 4)
            windows = torch.tensor([window_indices(t, len(clip), model.num_frame, cfg.padding)
                                    for t in range(len(clip))])
            for _ in model.iter_windows(pad_to_multiple(lq)[None], windows, chunk=cfg.batch_size):
                pass
    return time.perf_counter() - t0


class MemmapCrops(torch.utils.data.Dataset):
    """The crops CacheDataset reads (same keys → same boxes), sliced from raw .npy memmaps of the same arrays."""

    def __init__(self, cached: CacheDataset, folder: Path):
        self.cached, self.folder = cached, folder
        self.reader = cached.reader
        self.arrays = None

    def __len__(self) -> int:
        return len(self.cached)

    def _open(self):
        if self.arrays is None:
            self.arrays = {p.stem: np.load(p, mmap_mode="r") for p in self.folder.glob("*.npy")}
        return self.arrays

    def __getitem__(self, key):
        epoch, i = key
        index, start = self.cached.items[i]
        clip = self.reader.clips[index]
        g = self.reader.groups[clip["group"]]
        H, W = g["hr_size"]
        rng = np.random.default_rng([self.cached.seed, epoch, i])
        s, p, m = 4, self.cached.patch_size, HEAD_MARGIN
        top = int(rng.integers(0, (H - p) // s + 1))  # LR pixels: the same draws as CacheDataset's HR box / s
        left = int(rng.integers(0, (W - p) // s + 1))
        h = p // s
        rows = slice(clip["offset"] + start, clip["offset"] + start + self.cached.num_frames)
        arrays = self._open()
        trunk_arr, lq_arr = arrays[f"{clip['group']}-trunk"], arrays[f"{clip['group']}-lq"]
        th, tw = trunk_arr.shape[-2:]
        y0, y1, x0, x1 = max(top - m, 0), min(top + h + m, th), max(left - m, 0), min(left + h + m, tw)
        trunk = torch.from_numpy(np.ascontiguousarray(trunk_arr[rows, :, y0:y1, x0:x1])).float()
        pad = (x0 - (left - m), left + h + m - x1, y0 - (top - m), top + h + m - y1)
        lq = torch.from_numpy(np.ascontiguousarray(lq_arr[rows, :, top:top + h, left:left + h]))
        return {"trunk": F.pad(trunk, pad), "lq": lq}


def loader_rate(ds, keys, workers: int) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=1, sampler=keys, num_workers=workers,
                                         persistent_workers=False)
    it = iter(loader)
    next(it)  # worker start-up is not part of the steady rate
    t0 = time.perf_counter()
    n = 1 + sum(1 for _ in it)
    return (n - 1) / (time.perf_counter() - t0)


def chunk_sweep(reader: CacheReader, folder: Path, chunks, crops: int, patch: int) -> dict[int, float]:
    """ms to read one sample's trunk crop (all frames of a window, with margin) for each inner chunk size."""
    import zarr
    from zarr.codecs import ZstdCodec

    gname, g = max(reader.groups.items(), key=lambda kv: kv[1]["frames"])
    key = f"{gname}/trunk"
    src = zarr.open_array(reader.root / key, mode="r")
    data = src[:]
    out = {}
    rng = np.random.default_rng(0)
    th, tw = data.shape[-2:]
    n = reader.num_frame
    side = patch // 4 + 2 * HEAD_MARGIN
    boxes = [(int(rng.integers(0, data.shape[0] - n + 1)), int(rng.integers(0, th - side + 1)),
              int(rng.integers(0, tw - side + 1))) for _ in range(crops)]
    for c in chunks:
        lay = array_layout({gname: g}, ["trunk"], data.shape[1], reader.fingerprint["dtype"], 4, c)[key]
        root = zarr.open_group(folder / f"chunk{c}", mode="w")
        a = root.create_array("t", shape=data.shape, dtype=data.dtype, chunks=lay["chunks"], shards=lay["shards"],
                              fill_value=0, compressors=[ZstdCodec(level=1)])
        a[:] = data
        a = zarr.open_array(folder / f"chunk{c}" / "t", mode="r")
        t0 = time.perf_counter()
        for f, y, x in boxes:
            a[f:f + n, :, y:y + side, x:x + side]
        out[c] = (time.perf_counter() - t0) / crops * 1e3
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-clips", type=int, default=3, help="First N demo training clips (7 = all).")
    ap.add_argument("--store", default="trunk")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "int8"])
    ap.add_argument("--samples", type=int, default=200, help="Crops read per loader measurement.")
    ap.add_argument("--patch-size", type=int, default=64, help="HR crop of a training sample.")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunks", default="16,32,64,128", help="Inner chunk sizes (LR px) for the sweep.")
    ap.add_argument("--keep", help="Keep the cache in this folder instead of a temporary one.")
    ap.add_argument("--json", help="Also write the figures to this JSON file.")
    return ap.parse_args()


def measure_build(cfg: CacheConfig, clips, frames: int) -> tuple[float, float, dict]:
    """1. The bare teacher, then cache-teacher, over the same clips: ``(bare s, cache-teacher s, its result)``."""
    # bare first (both read the same PNGs; the OS cache is warm for the second)
    bare_teacher(cfg, clips[:1])  # warm-up: imports, first allocations, PNGs into the page cache
    bare = bare_teacher(cfg, clips)
    t0 = time.perf_counter()
    result = run(cfg, show_progress=False)
    built = time.perf_counter() - t0
    s = result["summary"]
    print("\n1. build: cache-teacher vs bare teacher over the same clips")
    print(f"   bare teacher       {bare:8.1f} s  ({bare / frames * 1e3:.0f} ms/frame)")
    print(f"   cache-teacher      {built:8.1f} s  → overhead {100 * (built / bare - 1):+.1f} %  "
          f"(inside it: teacher {s['teacher_s']:.1f} s, writing {s['write_s']:.1f} s, frames {s['read_s']:.1f} s)")
    return bare, built, result


def print_bytes(result: dict, clips: int) -> None:
    """2. Raw and stored bytes per clip and tier."""
    s = result["summary"]
    print("\n2. bytes per clip and tier")
    print(f"   {'tier':10s} {'raw MB/clip':>12s} {'stored MB/clip':>15s} {'ratio':>7s}")
    for tier in result["tiers"]:
        raw, st = s["raw_bytes"][tier], s["stored_bytes"][tier]
        print(f"   {tier:10s} {raw / clips / 2**20:12.2f} {st / clips / 2**20:15.2f} {raw / st:7.2f}")


def memmap_copies(reader: CacheReader, cache: Path, folder: Path) -> None:
    """Raw ``.npy`` copies of the cache's trunk and lq arrays in ``folder``, one per size group."""
    import zarr

    folder.mkdir(exist_ok=True)
    for key in reader.manifest["layout"]["arrays"]:
        if key.endswith(("/trunk", "/lq")):
            arr = zarr.open_array(cache / key, mode="r")[:]
            mm = np.lib.format.open_memmap(folder / (key.replace("/", "-") + ".npy"), mode="w+", dtype=arr.dtype,
                                           shape=arr.shape)
            mm[:] = arr
            mm.flush()


def measure_reads(cache: Path, work: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    """3. Training crops/s through a DataLoader from the cache vs raw memmaps (and with HR frames), and the
    inner-chunk sweep: ``(crops per s, sweep ms)``."""
    reader = CacheReader(cache)
    ds = CacheDataset(cache, patch_size=args.patch_size, tiers=("trunk",), gt=False)
    memmap_copies(reader, cache, work / "memmap")
    mem = MemmapCrops(ds, work / "memmap")
    rng = np.random.default_rng(1)
    keys = [(0, int(i)) for i in rng.integers(0, len(ds), args.samples)]
    a, b = ds[keys[0]], mem[keys[0]]
    assert torch.equal(a["trunk"], b["trunk"]) and torch.equal(a["lq"], b["lq"]), "memmap crops differ"
    rates = {"cache": [], "memmap": []}
    for _ in range(2):  # interleaved, twice
        rates["cache"].append(loader_rate(ds, keys, args.workers))
        rates["memmap"].append(loader_rate(mem, keys, args.workers))
    rc, rm = statistics.median(rates["cache"]), statistics.median(rates["memmap"])
    with_gt = loader_rate(CacheDataset(cache, patch_size=args.patch_size, tiers=("trunk",), gt=True),
                          keys[: max(20, args.samples // 4)], args.workers)
    print(f"\n3. reads: {reader.num_frame}-frame samples, HR crop {args.patch_size}, trunk + margin {HEAD_MARGIN} "
          f"+ lq, DataLoader {args.workers} workers")
    print(f"   cache (zarr)       {rc:8.1f} crops/s")
    print(f"   raw np.memmap      {rm:8.1f} crops/s   → cache/memmap {rc / rm:.2f}")
    print(f"   cache + HR frames  {with_gt:8.1f} crops/s   (decoding the PNG ground truth as well)")
    sweep = chunk_sweep(reader, work, [int(c) for c in args.chunks.split(",")], 60, args.patch_size)
    print("   inner chunk sweep (one process, ms per sample's trunk crop): "
          + ", ".join(f"{c}: {ms:.1f}" for c, ms in sweep.items()))
    return {"cache": rc, "memmap": rm, "cache_with_gt": with_gt}, sweep


def project_vimeo90k(result: dict, dtype: str, frames: int) -> dict:
    """4. The Vimeo90K train cache's size per teacher and dtype, at this run's compression ratios (GB per tier)."""
    s = result["summary"]
    ratio = {t: s["raw_bytes"][t] / s["stored_bytes"][t] for t in result["tiers"]}
    group = {"448x256": {"hr_size": [256, 448], "lr_size": [64, 112], "trunk_size": [64, 112], "frames": 64612 * 7}}
    vclips = [{"group": "448x256", "frames": 64612 * 7}]
    print("\n4. projected Vimeo90K train cache (64,612 clips × 7 frames), stored with this run's compression ratios")
    proj = {}
    for teacher, ch in (("EDVR-M", 64), ("EDVR-L", 128)):
        for projected in ("fp16", "int8"):
            lay = array_layout(group, ["trunk", "attention", "feat_sr"], ch, projected, 4, 64)
            est = estimate_bytes(lay, vclips, ["trunk", "attention", "feat_sr"])
            r = ratio.get("trunk", 1.0) if projected == dtype else 1.0
            proj[f"{teacher} {projected}"] = {t: est[t] / 1e9 for t in est}
            print(f"   {teacher} {projected}: lq {est['lq'] / 1e9:6.0f} GB, trunk {est['trunk'] / 1e9:6.0f} GB raw "
                  f"({est['trunk'] / r / 1e9:.0f} GB at ratio {r:.2f}), attention {est['attention'] / 1e9:5.0f} GB, "
                  f"feat_sr {est['feat_sr'] / 1e12:5.1f} TB")
    per_frame = s["teacher_s"] / frames
    print(f"   build time at this run's teacher speed (demo teacher, this CPU, {per_frame:.2f} s per 160-wide frame):"
          f" scale by the teacher's MACs on your GPU (stdvsr profile --model edvr-l --lq-size 64x112)")
    return proj


def main() -> None:
    args = parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_cache_"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "demo.zarr"
    if cache.exists():
        shutil.rmtree(cache)
    cfg = CacheConfig(out=str(cache), max_clips=args.max_clips, store=tuple(args.store.split(",")),
                      dtype=args.dtype)
    clips = load_clips("demo", "train")[:args.max_clips]
    frames = sum(len(c) for c in clips)
    print(f"demo train clips: {len(clips)} ({frames} frames), demo teacher, {torch.get_num_threads()} threads, "
          f"store lq+{args.store} {args.dtype}")

    bare, built, result = measure_build(cfg, clips, frames)
    print_bytes(result, len(clips))
    crops_per_s, sweep = measure_reads(cache, work, args)
    proj = project_vimeo90k(result, args.dtype, frames)

    figures = {"clips": len(clips), "frames": frames, "bare_s": bare, "cache_s": built,
               "overhead": built / bare - 1, "summary": result["summary"], "crops_per_s": crops_per_s,
               "chunk_sweep_ms": sweep, "vimeo90k_projection_gb": proj}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
