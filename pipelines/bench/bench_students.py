"""Each student against the EDVR teacher at the paper's LR size, ms per output frame and the ratio, in one run.

    .venv/bin/python pipelines/bench/bench_students.py [--lq 120x180] [--teacher edvr-l] [--rounds 5] [--device cpu]

Timings are interleaved (round-robin over the models, median per model) so that machine noise hits every model
alike; MACs come from stdvsr.profile.count_macs on the same input.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from stdvsr.models import STUDENTS, build_model
from stdvsr.profile import count_macs, parse_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lq", default="120x180")
    ap.add_argument("--teacher", default="edvr-l", help="teacher preset (7 frames)")
    ap.add_argument("--students", default=",".join(STUDENTS) + ",fastdvdnet-half,fastdvdnet-quarter")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    h, w = parse_size(args.lq, "--lq")
    device = torch.device(args.device)
    names = [args.teacher, *args.students.split(",")]
    models, inputs, macs = {}, {}, {}
    for name in names:
        torch.manual_seed(0)
        model = build_model(name, num_frame=7) if name.startswith("edvr") else build_model(name)
        models[name] = model.to(device).eval()
        inputs[name] = torch.rand(1, model.num_frame, 3, h, w, device=device)
        macs[name] = count_macs(model, inputs[name])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {n: [] for n in names}
    with torch.no_grad():
        for n in names:  # warm-up
            models[n](inputs[n])
        for _ in range(args.rounds):
            for n in names:
                sync()
                t0 = time.perf_counter()
                models[n](inputs[n])
                sync()
                times[n].append(time.perf_counter() - t0)
    ms = {n: statistics.median(t) * 1e3 for n, t in times.items()}
    print(f"LR {h}x{w} -> x4, {device}, {torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds")
    print(f"{'model':20s} {'frames':>6s} {'params M':>9s} {'GMACs':>8s} {'ms/frame':>9s} {'teacher/model':>14s}")
    t = ms[args.teacher]
    for n in names:
        params = sum(p.numel() for p in models[n].parameters()) / 1e6
        print(f"{n:20s} {models[n].num_frame:6d} {params:9.3f} {macs[n] / 1e9:8.1f} {ms[n]:9.1f} {t / ms[n]:14.2f}")


if __name__ == "__main__":
    main()
