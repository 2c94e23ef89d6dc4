"""Where the time of one training sample goes, measured side by side on the demo training set.

A sample is N consecutive frames of a clip: decode N PNGs, degrade the *full* HR frames (so LR crops line up with
cached teacher targets computed on full frames), crop. This prints the share of each step and the DataLoader
throughput, so the loader can be compared with a training step later.

    .venv/bin/python pipelines/bench/bench_data.py [--frames 7] [--patch 128] [--samples 40] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from stdvsr.data import ClipDataset, degrade, load_clips, to_tensor
from stdvsr.io import read_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=7)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)

    clips = load_clips("demo", "train")
    ds = ClipDataset(clips, num_frames=args.frames, patch_size=args.patch, seed=0)
    step = max(1, len(ds) // args.samples)
    picks = list(range(0, len(ds), step))[: args.samples]

    read_t, bd_t, total_t = [], [], []
    for i in picks:
        c, start = ds.items[i]
        t0 = time.perf_counter()
        frames = [read_image(p) for p in clips[c].frames[start:start + args.frames]]
        gt = to_tensor(frames)
        t1 = time.perf_counter()
        degrade(gt, "bd", 4)
        t2 = time.perf_counter()
        ds[i]
        t3 = time.perf_counter()
        read_t.append(t1 - t0)
        bd_t.append(t2 - t1)
        total_t.append(t3 - t2)

    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, picks), batch_size=2,
                                         num_workers=args.workers)
    t0 = time.perf_counter()
    n = sum(len(b["clip"]) for b in loader)
    loader_t = time.perf_counter() - t0

    med = statistics.median
    print(f"demo train set: {len(clips)} clips, {len(ds)} samples of {args.frames} frames, "
          f"HR crop {args.patch}, {len(picks)} samples timed, 1 torch thread")
    print(f"  {f'decode {args.frames} PNGs':<20}: {med(read_t) * 1e3:7.1f} ms  ({med(read_t) / med(total_t):.2f} of a sample)")
    print(f"  BD of full frames   : {med(bd_t) * 1e3:7.1f} ms  ({med(bd_t) / med(total_t):.2f} of a sample)")
    print(f"  whole sample        : {med(total_t) * 1e3:7.1f} ms")
    print(f"  DataLoader, {args.workers} workers: {n / loader_t:7.1f} samples/s "
          f"({loader_t / n * 1e3:.1f} ms per sample, incl. worker start-up)")


if __name__ == "__main__":
    main()
