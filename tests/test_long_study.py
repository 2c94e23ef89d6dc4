"""pipelines/studies/long_study.py's argument refusals (the study itself is hours of CPU and is not run here)."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "pipelines" / "studies" / "long_study.py"


def test_threads_below_one_is_refused_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--threads", "0", "--out", str(tmp_path / "runs"), "--json",
                        str(tmp_path / "r.json")], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip() == "Error: --threads 0: give 1 or more torch threads per run"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r.json").exists()
