"""Process-level behaviour of the training helpers (stdvsr.training)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

LEFTOVER_WORKER = textwrap.dedent("""
    import torch
    from stdvsr.training import loader_worker_init

    class Zeros(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.zeros(2)

    loader = torch.utils.data.DataLoader(Zeros(), batch_size=2, num_workers=1, persistent_workers=True,
                                         worker_init_fn=loader_worker_init)
    batches = iter(loader)
    next(batches)
    KEPT = batches  # a loop that leaves its worker running (no loader_batches), as an error's traceback would
    print("reached the end", flush=True)
""")


def test_a_process_exits_even_when_a_sigterm_ignoring_worker_outlives_its_loop():
    """Our DataLoader workers ignore SIGTERM, which is all multiprocessing sends its daemonic children at exit
    before waiting for them: without training's exit handler this process would never end (the CI hang of
    2026-12-03). With it: SIGTERM, a second's grace, then SIGKILL."""
    proc = subprocess.run([sys.executable, "-c", LEFTOVER_WORKER], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "reached the end" in proc.stdout, proc.stderr
