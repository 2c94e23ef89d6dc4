"""Every student as fp32 and int8 ONNX (``stdvsr export --quantize int8``): ms per frame in ONNX Runtime side by side,
and the Y-PSNR the int8 graph loses on the held-out carphone clip, in one run.

    .venv/bin/python pipelines/bench/bench_quantize.py [--lq 120x180] [--rounds 10] [--calibrate demo] [--json F]
    .venv/bin/python pipelines/bench/bench_quantize.py --trained runs/demo/fastdvdnet-quarter-kd_output/student.pth

Speed: each student exported at ``--lq`` (the paper's 120×180 by default), quantised with ``--calib-windows``
windows of ``--calibrate`` (default ``demo``: BD ×4 of the demo training clips, never carphone), both graphs run in
ONNX Runtime sessions with the same options and ``--threads``, on the same real LR window, interleaved round by
round after a warm-up (median per graph). Quality: the same students exported and quantised at carphone's own LR
size (36×44) and scored by ``stdvsr.quantize.score`` on all 120 frames (Y-PSNR, BD ×4): PyTorch fp32, ONNX fp32,
ONNX int8. Untrained students (seeded random weights) show the speed and how far int8 moves the output; the drop
that matters is that of a trained student, ``--trained CKPT`` (added as the last row; `make demo` writes one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from stdvsr.export import ExportConfig
from stdvsr.export import run as export_fp32
from stdvsr.models import load_model, save_random
from stdvsr.names import STUDENTS as REGISTERED
from stdvsr.profile import parse_size
from stdvsr.quantize import (QuantizeConfig, calibration_windows, int8_path, open_source, ort_session,
                             quantize_int8)
from stdvsr.quantize import run as quantize_run

STUDENTS = ("fastdvdnet-quarter", *REGISTERED)  # every student, and the demo's width
CARPHONE_LR = "36x44"


def random_student(folder: Path, name: str) -> Path:
    (folder / name).mkdir(parents=True)
    return save_random(name, folder / name / "student.pth")


def speed(ckpt: Path, folder: Path, lq: str, source, windows: int, rounds: int, threads: int) -> dict:
    model, _ = load_model(ckpt)
    h, w = parse_size(lq, "--lq")
    fp32 = folder / "speed.onnx"
    export_fp32(ExportConfig(model=str(ckpt), lq_size=lq, out=str(fp32), force=True))
    calib = calibration_windows(source, model.num_frame, (h, w), windows, seed=0)
    quantize_int8(fp32, int8_path(fp32), calib)
    sessions = {"fp32": ort_session(fp32, threads), "int8": ort_session(int8_path(fp32), threads)}
    feed = {"lq": calib[0]}
    times = {k: [] for k in sessions}
    for s in sessions.values():  # warm-up
        for _ in range(2):
            s.run(["sr"], feed)
    for r in range(rounds):
        for k in (("fp32", "int8") if r % 2 == 0 else ("int8", "fp32")):
            t0 = time.perf_counter()
            sessions[k].run(["sr"], feed)
            times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()} | {
        "bytes_fp32": fp32.stat().st_size, "bytes_int8": int8_path(fp32).stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lq", default="120x180", help="LR size of the speed measurement")
    ap.add_argument("--students", default=",".join(STUDENTS))
    ap.add_argument("--trained", help="a trained student checkpoint, scored as the last row")
    ap.add_argument("--calibrate", default="demo", help="teacher cache or dataset spec (default: demo train clips)")
    ap.add_argument("--calib-windows", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--check-set", default="demo:carphone")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    source = open_source(args.calibrate)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_quantize-") as tmp:
        cases = [(n, random_student(Path(tmp), n)) for n in args.students.split(",")]
        if args.trained:
            cases.append((f"{load_model(args.trained)[1]['model']['name']} (trained)", Path(args.trained)))
        for label, ckpt in cases:
            folder = Path(tmp) / "out" / label.replace(" ", "_")
            folder.mkdir(parents=True)
            ms = speed(ckpt, folder, args.lq, source, args.calib_windows, args.rounds, args.threads)
            quality = quantize_run(QuantizeConfig(model=str(ckpt), calibrate=args.calibrate,
                                                  calib_windows=args.calib_windows, lq_size=CARPHONE_LR,
                                                  out=str(folder / "student.onnx"), check_set=args.check_set,
                                                  threads=args.threads, accept_drop=True))  # measured, not shipped
            psnr = {r["name"]: r["psnr"] for r in quality["check"]["rows"]}
            rows.append({"student": label, "ms_fp32": ms["fp32"], "ms_int8": ms["int8"],
                         "speedup": ms["fp32"] / ms["int8"], "mb_fp32": ms["bytes_fp32"] / 2**20,
                         "mb_int8": ms["bytes_int8"] / 2**20, "psnr_pytorch": psnr["pytorch-fp32"],
                         "psnr_onnx_fp32": psnr["onnx-fp32"], "psnr_int8": psnr["onnx-int8"],
                         "drop_db": psnr["pytorch-fp32"] - psnr["onnx-int8"]})
            print(f"done {label}", flush=True)
    print(f"ONNX Runtime CPU, {args.threads} thread(s); ms/frame at LR {args.lq} (median of {args.rounds} "
          f"interleaved rounds); Y-PSNR on {args.check_set} at LR {CARPHONE_LR}, calibrated on {args.calibrate} "
          f"({args.calib_windows} windows)")
    print(f"{'student':32s} {'fp32 ms':>8s} {'int8 ms':>8s} {'fp32/int8':>9s} {'MB fp32':>8s} {'MB int8':>8s} "
          f"{'PyTorch dB':>10s} {'ONNX fp32':>9s} {'int8 dB':>8s} {'drop dB':>8s}")
    for r in rows:
        print(f"{r['student']:32s} {r['ms_fp32']:8.1f} {r['ms_int8']:8.1f} {r['speedup']:9.2f} {r['mb_fp32']:8.2f} "
              f"{r['mb_int8']:8.2f} {r['psnr_pytorch']:10.3f} {r['psnr_onnx_fp32']:9.3f} {r['psnr_int8']:8.3f} "
              f"{r['drop_db']:8.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
