"""pipelines/ablations.py's table arithmetic: paired differences per seed, the reference rows, the paper's figures."""

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ablations", REPO / "pipelines" / "ablations.py")
ablations = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablations)


def args(**kw):
    base = dict(seeds="0,1,2", table_seeds=["6=0,1"], student="fastdvdnet-quarter", steps=800, warmup_steps=400)
    return argparse.Namespace(**{**base, **kw})


def fake_scores(a, tables, psnr_of):
    scores = {}
    for table in tables:
        for label, student, overrides in ablations.TABLES[table]:
            for seed in ablations.table_seeds(a, table):
                name = ablations.run_name(student or a.student, overrides, seed)
                scores[name] = {"psnr": psnr_of(label, seed), "ssim": 0.5 + seed / 100}
    return scores


def test_paired_differences_and_paper_figures():
    a = args()
    base = {0: 25.0, 1: 25.5, 2: 24.5}
    offset = {"w/o STD": 0.0, "SD": 0.1, "TD": -0.2, "STD": 0.3}
    scores = fake_scores(a, ["2"], lambda label, seed: base[seed] + offset[label] + (0.06 if seed == 1 else 0.0) *
                         (label == "STD"))
    rows = {r["row"]: r for r in ablations.table_rows("2", a, scores)}
    assert rows["w/o STD"]["psnr_mean"] == pytest.approx(25.0)
    assert rows["w/o STD"]["psnr_std"] == pytest.approx(0.5)
    # the seed-to-seed spread (0.5 dB) cancels in the paired difference
    assert rows["STD"]["delta_mean"] == pytest.approx(0.32)
    assert rows["STD"]["delta_std"] == pytest.approx(0.034641016, abs=1e-6)
    assert rows["TD"]["delta_mean"] == pytest.approx(-0.2) and rows["TD"]["delta_std"] == pytest.approx(0.0, abs=1e-9)
    paper = json.loads((REPO / "pipelines" / "paper" / "paper_results.json").read_text())["table2"]["rows"]
    assert rows["STD"]["paper"] == paper["FastDVDnet w/ STD"][-1] == 26.14
    assert rows["STD"]["paper_delta"] == pytest.approx(26.14 - 25.43)
    cells = ablations.format_row(rows["STD"])
    assert cells[3] == "+0.32 ± 0.03" and cells[6] == "26.14" and cells[7] == "+0.71"
    assert ablations.format_row(rows["w/o STD"])[3] == "—"


def test_table6_compares_each_width_with_its_own_baseline():
    a = args()
    width = {"1/4": 24.0, "1/2": 25.0, "1": 26.0}
    scores = fake_scores(a, ["6"], lambda label, seed: width[label.split()[1]] + (0.5 if label.endswith(" STD") and
                                                                                  "w/o" not in label else 0.0))
    rows = {r["row"]: r for r in ablations.table_rows("6", a, scores)}
    assert [r["seeds"] for r in rows.values()] == [[0, 1]] * 6  # --table-seeds 6=0,1
    assert rows["width 1/2 STD"]["reference"] == "width 1/2 w/o STD"
    assert rows["width 1/2 STD"]["delta_mean"] == pytest.approx(0.5)
    assert rows["width 1 STD"]["paper"] == 29.22 and rows["width 1 STD"]["paper_delta"] == pytest.approx(0.77)
    assert rows["width 1/4 STD"]["student"] == "fastdvdnet-quarter" and rows["width 1 STD"]["student"] == "fastdvdnet"
    md = ablations.markdown({"tables": {"6": list(rows.values())}}, a)
    assert "| width 1 STD | fastdvdnet | 26.50 ± 0.00 | +0.50 ± 0.00 |" in md


def test_run_names_are_shared_between_tables():
    a = args()
    t2 = {ablations.run_name(s or a.student, o, 0) for _, s, o in ablations.TABLES["2"]}
    t6 = {ablations.run_name(s or a.student, o, 0) for _, s, o in ablations.TABLES["6"]}
    assert t2 & t6 == {"fastdvdnet-quarter_kd-none_seed0", "fastdvdnet-quarter_kd-std_seed0"}


def test_table5_compares_the_teachers_with_the_paper(tmp_path):
    a = args(seeds="0,1")
    offset = {"w/o STD": 0.0, "STD-EDVR": 0.2, "STD-RBPN": 0.1}
    scores = fake_scores(a, ["5"], lambda label, seed: 25.0 + seed + offset.get(label, -1.0))
    rows = {r["row"]: r for r in ablations.table_rows("5", a, scores)}
    assert rows["STD-RBPN"]["delta_mean"] == pytest.approx(0.1) and rows["STD-RBPN"]["reference"] == "w/o STD"
    paper = json.loads((REPO / "pipelines" / "paper" / "paper_results.json").read_text())["table5"]["rows"]
    assert rows["STD-RBPN"]["paper"] == paper["FastDVDnet-RBPN"][-1] == 25.89
    assert rows["STD-EDVR"]["paper_delta"] == pytest.approx(26.14 - 25.43)
    # the EDVR row is Table 2's STD run; the RBPN row is a run of its own
    names = [ablations.run_name(a.student, o, 0) for _, _, o in ablations.TABLES["5"]]
    assert names == ["fastdvdnet-quarter_kd-none_seed0", "fastdvdnet-quarter_kd-std_seed0",
                     "fastdvdnet-quarter_cache-rbpn_kd-std_seed0",
                     "fastdvdnet-quarter_cache-rbpn_kd-std_sd_norm-l2_seed0"]


def test_a_missing_teacher_cache_is_one_line_naming_the_row(tmp_path):
    import subprocess
    import sys
    edvr = tmp_path / "edvr.zarr"
    edvr.mkdir()
    r = subprocess.run([sys.executable, str(REPO / "pipelines" / "ablations.py"), "--tables", "5", "--cache", str(edvr),
                        "--rbpn-cache", str(tmp_path / "rbpn.zarr"), "--out", str(tmp_path / "runs")],
                       capture_output=True, text=True)
    assert r.returncode != 0
    missing = tmp_path / "rbpn.zarr"
    assert r.stderr.strip() == f"Error: cache {missing} (Table 5, row STD-RBPN) does not exist; see --help"
    assert not (tmp_path / "runs").exists()


def test_table5_plan_reads_each_teachers_cache_at_every_seed(tmp_path):
    (tmp_path / "edvr.zarr").mkdir()
    (tmp_path / "rbpn.zarr").mkdir()
    a = args(seeds="0,1", cache=str(tmp_path / "edvr.zarr"), rbpn_cache=str(tmp_path / "rbpn.zarr"), out="runs/t5",
             lambda_sd=1.0, lambda_td=100.0, lr=1e-3, workers=0)
    plan = ablations.plan_runs(a, ["2", "5"])
    rbpn = {n: c for n, c in plan.items() if "rbpn" in n}
    assert sorted(rbpn) == ["fastdvdnet-quarter_cache-rbpn_kd-std_sd_norm-l2_seed0",
                            "fastdvdnet-quarter_cache-rbpn_kd-std_sd_norm-l2_seed1",
                            "fastdvdnet-quarter_cache-rbpn_kd-std_seed0", "fastdvdnet-quarter_cache-rbpn_kd-std_seed1"]
    assert {c.cache for c in rbpn.values()} == {a.rbpn_cache} and {c.kd for c in rbpn.values()} == {"std"}
    assert [c.sd_norm for n, c in sorted(rbpn.items())] == ["l2", "l2", "none", "none"]
    assert {c.cache for n, c in plan.items() if n not in rbpn} == {a.cache}
    assert len(plan) == 4 * 2 + 4  # Table 5's plain and EDVR rows are Table 2's runs
