#!/usr/bin/env bash
# Trains the shipped demo teacher (edvr-s on the demo training clips, BD ×4) and writes its EMA weights to
# stdvsr/weights/edvr_s_demo.pth, the default teacher of cache-teacher and the demo.
#   bash pipelines/train_demo_teacher.sh            # ~1 h on 2 CPU cores; resumes if interrupted
# Extra arguments go to `stdvsr train-teacher` (e.g. --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
STDVSR=${STDVSR:-.venv/bin/stdvsr}
OUT=${OUT:-runs/demo-teacher}
"$STDVSR" train-teacher --preset edvr-s --data demo --steps 2000 --batch-size 8 --patch-size 96 \
    --lr 1e-3 --min-lr 1e-6 --schedule cosine --ema 0.999 --seed 0 --workers 1 \
    --val-every 250 --val-stride 4 --ckpt-every 250 --out "$OUT" --resume auto "$@"
# Ship only what inference needs: the model spec and the final weights, ~3 MB. The final raw weights, not the EMA:
# this recipe's run used the EMA before its decay warm-up existed (8535ba4), so its EMA still held 0.999^2000 = 13%
# of the random initial weights; the cosine schedule ends at lr 1e-6, which already settles the raw weights.
.venv/bin/python - "$OUT/teacher.pth" stdvsr/weights/edvr_s_demo.pth <<'PY'
import sys, torch
from stdvsr.training import save_checkpoint
src = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
save_checkpoint(sys.argv[2], {"model": src["model"], "params": src["params"], "config": src["config"],
                              "step": src["step"], "stdvsr": src["stdvsr"]})
print("wrote", sys.argv[2])
PY
.venv/bin/python pipelines/eval_demo_teacher.py stdvsr/weights/edvr_s_demo.pth
