"""uint8 vs int8 activations of ``stdvsr export --quantize int8``: how the default (uint8) was chosen.

Each activation type quantises the same student with the same calibration windows; the int8 graph is scored against
PyTorch and the fp32 graph (Y-PSNR, ms per frame in ONNX Runtime) on the validation clip, never on the test clip
(carphone). The defaults are the protocol of README "Deploying a student": the validation clip demo:bigbuckbunny at
its LR size 92x160, calibrated on the bikes clips only, so neither the test clip nor the scored clip picks the type
(docs/results/quantize_activations_bigbuckbunny.json).

    .venv/bin/python pipelines/studies/quantize_activations.py runs/demo/fastdvdnet-quarter-kd_output/student.pth \\
        --json docs/results/quantize_activations_bigbuckbunny.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from stdvsr.io import write_text
from stdvsr.names import ACTIVATIONS
from stdvsr.quantize import QuantizeConfig, run

BIKES = "demo:" + ",".join(f"bikes_{i:02d}" for i in range(1, 7))


def compare(student: str, calibrate: str, check_set: str, lq_size: str, activations: list[str],
            threads: int) -> dict:
    """Per activation type: each graph's Y-PSNR and ms per frame on ``check_set``, int8's drop and speed-up."""
    rows = {}
    with tempfile.TemporaryDirectory(prefix="quantize_activations-") as tmp:
        for act in activations:
            r = run(QuantizeConfig(model=student, calibrate=calibrate, lq_size=lq_size, out=f"{tmp}/{act}/s.onnx",
                                   check_set=check_set, activations=act, threads=threads,
                                   accept_drop=True))  # measured, not shipped
            rows[act] = {x["name"]: {"psnr": x["psnr"], "ms": x["ms_per_frame"]} for x in r["check"]["rows"]}
            rows[act]["drop_db"] = r["check"]["int8_psnr_drop"]
            rows[act]["speedup"] = r["check"]["int8_speedup"]
            print(act, json.dumps(rows[act]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("student", nargs="?", default="runs/demo/fastdvdnet-quarter-kd_output/student.pth",
                    help="a trained student checkpoint (default: the demo's output-KD student, from `make demo`)")
    ap.add_argument("--calibrate", default=BIKES, help="teacher cache or dataset spec the windows are drawn from")
    ap.add_argument("--check-set", default="demo:bigbuckbunny", help="the clip(s) the types are compared on")
    ap.add_argument("--lq-size", default="92x160", help="LR size HxW of the graphs (the check set's frames fit it)")
    ap.add_argument("--activations", default=",".join(ACTIVATIONS), help="comma list of " + ", ".join(ACTIVATIONS))
    ap.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    ap.add_argument("--json", default="runs/quantize_activations.json", help="where the rows are written")
    args = ap.parse_args()
    activations = [a.strip() for a in args.activations.split(",")]
    unknown = [a for a in activations if a not in ACTIVATIONS]
    if unknown:
        raise SystemExit(f"Error: --activations {','.join(unknown)}: choose from {', '.join(ACTIVATIONS)}")
    torch.set_num_threads(args.threads)
    rows = compare(args.student, args.calibrate, args.check_set, args.lq_size, activations, args.threads)
    write_text(Path(args.json), json.dumps({"student": args.student, "check_set": args.check_set,
                                            "calibrate": args.calibrate, "lq_size": args.lq_size, "rows": rows},
                                           indent=1))
    print(f"wrote {args.json}", flush=True)


if __name__ == "__main__":
    main()
