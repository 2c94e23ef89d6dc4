"""uint8 vs int8 activations of `export --quantize int8`, compared on the validation clip (demo:bigbuckbunny, LR
92x160) and calibrated on the bikes clips only, so neither the test clip (carphone) nor the scored clip picks it.

    .venv/bin/python pipelines/quantize_activations.py STUDENT.pth OUT.json
    (STUDENT: e.g. runs/demo/fastdvdnet-quarter-kd_output/student.pth from `make demo`)
"""
import json, sys, tempfile
import torch
from stdvsr.quantize import QuantizeConfig, run

student = sys.argv[1]
calib = "demo:" + ",".join(f"bikes_0{i}" for i in range(1, 7))
rows = {}
torch.set_num_threads(2)
with tempfile.TemporaryDirectory() as tmp:
    for act in ("quint8", "qint8"):
        r = run(QuantizeConfig(model=student, calibrate=calib, lq_size="92x160", out=f"{tmp}/{act}/s.onnx",
                               check_set="demo:bigbuckbunny", activations=act, threads=2, accept_drop=True))
        rows[act] = {x["name"]: {"psnr": x["psnr"], "ms": x["ms_per_frame"]} for x in r["check"]["rows"]}
        rows[act]["drop_db"] = r["check"]["int8_psnr_drop"]
        rows[act]["speedup"] = r["check"]["int8_speedup"]
        print(act, json.dumps(rows[act]), flush=True)
json.dump({"student": student, "check_set": "demo:bigbuckbunny", "calibrate": calib, "lq_size": "92x160",
           "rows": rows}, open(sys.argv[2], "w"), indent=1)
