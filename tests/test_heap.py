"""stdvsr.heap: the C allocator keeps a training step's freed memory for the next step instead of returning it to
the system (measured as minor page faults per step in a fresh process), and leaves a user's own settings alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STEPS = """
import resource, sys, torch
from stdvsr.heap import keep_freed_memory
from stdvsr.models import build_model
from stdvsr.perf import channels_last
changed = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.set_num_threads(1)
torch.manual_seed(0)
model = channels_last(build_model("fastdvdnet-quarter"))
lq, gt = torch.rand(4, 7, 3, 16, 16), torch.rand(4, 3, 64, 64)
def step():
    model.zero_grad(set_to_none=True)
    (model(lq) - gt).abs().mean().backward()
for _ in range(6):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(changed, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults_per_step(mode: str, **env: str) -> tuple[str, float]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, cwd=ROOT, env=environ,
                         timeout=300, check=True).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and Linux's fault counters")
def test_a_step_stops_faulting_its_memory_in_again():
    changed, kept = _faults_per_step("keep")
    assert changed == "True"
    _, default = _faults_per_step("default")
    # glibc's defaults hand a step's few-MB activations back and fault them in, zeroed, at the next step (~2,500
    # faults a step for a batch of 14 windows, ~700 for this batch of 4); kept, a step reuses its heap (0-5, up to
    # ~100 when Python's own arenas, which bypass malloc, come and go)
    assert default > 300 and kept < default / 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_users_own_malloc_settings_are_left_alone():
    changed, _ = _faults_per_step("keep", MALLOC_TRIM_THRESHOLD_="131072")
    assert changed == "False"
