"""What the cache's integrity checks cost a training step, measured side by side in one run.

stdvsr refuses a damaged cache instead of training on it (a deleted shard used to read as zeros, a flipped bit as
NaN). Three checks guard the reads; each is timed here against the same reads without it:

1. **zstd frame checksums** (written into every new Zarr cache): random training crops of one clip's trunk decoded
   from two copies of the same arrays, with and without checksums — the codec verifies each chunk it decodes.
2. **the finiteness check** on every float tier read (``torch.isfinite(x).all()``): its time against the read's.
3. **the pieces check** (every shard / part file of a clip present), once per clip and reading process: its time
   against one training step's reads.

    .venv/bin/python pipelines/bench/bench_cache_checks.py [--cache cache/demo-6clips-edvr.zarr] [--crops 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stdvsr.cache import CacheReader
from stdvsr.cache.layout import HEAD_MARGIN


def crops(reader: CacheReader, index: int, n: int, frames: int, patch: int, seed: int = 0):
    clip = reader.clips[index]
    lh, lw = reader.groups[clip["group"]]["lr_size"]
    rng = np.random.default_rng(seed)
    p = patch // reader.scale + 2 * HEAD_MARGIN
    for _ in range(n):
        f = int(rng.integers(0, clip["frames"] - frames + 1))
        y, x = int(rng.integers(0, lh - p + 1)), int(rng.integers(0, lw - p + 1))
        yield slice(f, f + frames), slice(y, y + p), slice(x, x + p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default="cache/demo-6clips-edvr.zarr")
    ap.add_argument("--crops", type=int, default=300, help="training crops read per measurement")
    ap.add_argument("--frames", type=int, default=7)
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="alternating passes; the median is reported")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import zarr
    from zarr.codecs import ZstdCodec

    reader = CacheReader(args.cache)
    index = max(range(len(reader.clips)), key=lambda i: reader.clips[i]["frames"])
    clip = reader.clips[index]
    key = f"{clip['group']}/trunk"
    layout = reader.store.layout[key]
    trunk = reader.store.read(clip, "trunk", slice(0, clip["frames"]), slice(None), slice(None))[0]
    print(f"cache {reader.root}, clip {clip['name']} ({clip['frames']} frames, trunk {trunk.shape[1:]} "
          f"{trunk.dtype}), {args.crops} crops of {args.frames} frames at HR {args.patch_size} (+ margin)")

    with tempfile.TemporaryDirectory() as tmp:
        arrays = {}
        for name, checksum in (("plain", False), ("checksum", True)):
            a = zarr.create_array(Path(tmp) / name, shape=trunk.shape, dtype=trunk.dtype,
                                  chunks=[1, *layout["chunks"][1:]], shards=[1, *layout["shards"][1:]],
                                  compressors=[ZstdCodec(level=1, checksum=checksum)], fill_value=0)
            a[:] = trunk
            arrays[name] = a
        boxes = list(crops(reader, index, args.crops, args.frames, args.patch_size))
        times = {name: [] for name in arrays}
        for _ in range(args.repeats):
            for name, a in arrays.items():
                t0 = time.perf_counter()
                for f, r, c in boxes:
                    a[f, :, r, c]
                times[name].append((time.perf_counter() - t0) / len(boxes))
        plain, checked = (float(np.median(times[n])) for n in ("plain", "checksum"))
        print(f"1. zstd checksums: {1e3 * plain:.3f} ms/crop without, {1e3 * checked:.3f} ms/crop with: "
              f"×{checked / plain:.3f}")

    read_s, finite_s = [], []
    for f, r, c in boxes:
        t0 = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(reader.store.read(clip, "trunk", f, r, c)[0])).float()
        t1 = time.perf_counter()
        torch.isfinite(x).all()
        finite_s.append(time.perf_counter() - t1)
        read_s.append(t1 - t0)
    read, finite = float(np.median(read_s)), float(np.median(finite_s))
    print(f"2. finiteness: {1e6 * finite:.1f} µs per trunk read of {1e3 * read:.3f} ms "
          f"({100 * finite / read:.2f} %)")

    t0 = time.perf_counter()
    for c in reader.clips:
        assert not reader.store.missing(c, c)
    pieces = (time.perf_counter() - t0) / len(reader.clips)
    print(f"3. pieces present: {1e3 * pieces:.1f} ms per clip, once per clip and process "
          f"({len(reader.clips)} clips: {1e3 * pieces * len(reader.clips):.0f} ms per DataLoader worker per run)")


if __name__ == "__main__":
    main()
