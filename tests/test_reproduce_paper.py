"""pipelines/reproduce_paper.py: every command it would run parses with stdvsr's own CLI (flags, choices, the TOML
configs' keys and values), the per-rank batch, the comparison with the paper, and the transcribed paper figures."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from stdvsr.cli import cli

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "pipelines" / "reproduce_paper.py"
PAPER = json.loads((REPO / "pipelines" / "paper" / "paper_results.json").read_text())


def _load_script():
    spec = importlib.util.spec_from_file_location("reproduce_paper", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


rp = _load_script()


@pytest.fixture()
def roots(tmp_path) -> dict[str, Path]:
    paths = {"vimeo": tmp_path / "vimeo_septuplet", "vid4": tmp_path / "vid4", "weights": tmp_path / "EDVR_L_BD.pth"}
    paths["vimeo"].mkdir()
    paths["vid4"].mkdir()
    paths["weights"].write_bytes(b"not a checkpoint")
    return paths


def _args(roots, tmp_path, *extra: str):
    return rp.parse_args(["--vimeo", str(roots["vimeo"]), "--vid4", str(roots["vid4"]),
                          "--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache.zarr"), *extra])


def stdvsr_argv(argv) -> list[str]:
    """The arguments after ``-m stdvsr`` (plain python or torchrun)."""
    argv = list(argv)
    i = next(i for i in range(len(argv) - 1) if argv[i] == "-m" and argv[i + 1] == "stdvsr")
    return argv[i + 2:]


def parse_with_click(args: list[str]) -> click.Context:
    """Parse a stdvsr command line the way `stdvsr` would, without running it: unknown flags, bad choices and
    unknown or ill-typed --config keys raise click errors."""
    group = cli.make_context("stdvsr", list(args))
    name, rest = args[0], args[1:]
    assert group.args == rest
    command = cli.get_command(group, name)
    assert command is not None, f"stdvsr has no command {name}"
    return command.make_context(name, list(rest), parent=group)


def _steps(stages):
    return [(stage.name, step) for stage in stages for step in stage.steps]


@pytest.mark.parametrize("gpus", [1, 4])
@pytest.mark.parametrize("with_weights", [False, True])
def test_every_command_parses_with_stdvsr_cli(roots, tmp_path, gpus, with_weights):
    extra = ["--gpus", str(gpus)] + (["--teacher-weights", str(roots["weights"])] if with_weights else [])
    stages = rp.commands(_args(roots, tmp_path, *extra))
    names = [s.name for s in stages]
    assert names == (["cache", "distill", "evaluate", "compare"] if with_weights else list(rp.STAGES))
    seen = {}
    for stage, step in _steps(stages):
        if not step.argv:
            assert step.action is not None
            continue
        args = stdvsr_argv(step.argv)
        ctx = parse_with_click(args)
        seen.setdefault(args[0], []).append(ctx.params)
        if stage in ("cache", "distill") and gpus > 1:
            assert "torchrun" in Path(step.argv[0]).name and step.argv[step.argv.index("--nproc_per_node") + 1] == "4"
        else:
            assert step.argv[1:3] == ("-m", "stdvsr")
    # the TOML files reached the options
    if not with_weights:
        (teacher,) = seen["train-teacher"]
        assert (teacher["preset"], teacher["steps"], teacher["patch_size"], teacher["lr"], teacher["min_lr"]) == \
            ("edvr-l", 600_000, 256, 4e-4, 1e-7)
        assert teacher["resume"] == "auto" and teacher["device"] == "cuda"
    (cache,) = seen["cache-teacher"]
    assert (cache["preset"], cache["dtype"], cache["store"], cache["split"], cache["degradation"], cache["padding"]) \
        == ("edvr-l", "int8", "trunk", "train", "bd", "replicate")
    assert cache["weights"] == str(roots["weights"] if with_weights else tmp_path / "runs" / "teacher" / "teacher.pth")
    distill = seen["distill"]
    assert sorted((d["student"], d["kd"]) for d in distill) == sorted((s, k) for s in rp.STUDENTS for k in rp.KDS)
    for d in distill:
        assert (d["steps"], d["lambda_td"], d["warmup_steps"], d["resume"]) == (800_000, 100.0, 20_000, "auto")
        assert d["batch_size"] == (2 if gpus == 1 else 1)
        assert d["out"] == str(tmp_path / "runs" / f"{d['student']}-kd-{d['kd']}")
    evaluate = seen["evaluate"]
    assert [e["set"] for e in evaluate] == list(rp.EVAL_SETS)
    for e in evaluate:
        assert e["bicubic"] and e["json"].endswith(f"table1_{e['set']}.json")
        assert e["root"] == str(roots["vid4"] if e["set"] == "vid4" else roots["vimeo"])
        assert [m.split("=")[0] for m in e["models"]] == ["teacher", "fastdvdnet", "fastdvdnet_std", "vsrnet",
                                                          "vsrnet_std", "vespcn", "vespcn_std", "vdsr", "vdsr_std"]


def test_click_parsing_rejects_bad_commands_and_configs(roots, tmp_path):
    """Negative controls: the parse above would catch a bad flag, a bad choice, or a bad key/value in a TOML."""
    stages = rp.commands(_args(roots, tmp_path))
    distill = next(stdvsr_argv(step.argv) for name, step in _steps(stages) if name == "distill")
    parse_with_click(distill)
    with pytest.raises(click.NoSuchOption):
        parse_with_click(distill + ["--no-such-flag"])
    with pytest.raises(click.BadParameter):
        parse_with_click(distill + ["--kd", "bogus"])
    config = distill.index("--config") + 1  # (keys the command line also sets would lose to its flags)
    for body in ["bogus_key = 1\n", 'steps = "many"\n', "patch_size = 8\n", 'schedule = "linear"\n']:
        toml = tmp_path / "bad.toml"
        toml.write_text(body)
        with pytest.raises(click.BadParameter):
            parse_with_click(distill[:config] + [str(toml)] + distill[config + 1:])


def test_batch_per_rank_keeps_the_papers_batch_of_two():
    assert rp.per_rank_batch(1) == (2, None)
    assert rp.per_rank_batch(2) == (1, None)
    batch, warning = rp.per_rank_batch(4)
    assert batch == 1 and "global batch becomes 4" in warning
    assert rp.per_rank_batch(3)[0] == 1


def test_dry_run_prints_shell_quoted_commands_and_runs_nothing(roots, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("--dry-run ran a command"))
    rp.main(["--vimeo", str(tmp_path / "missing"), "--vid4", str(tmp_path / "missing"), "--gpus", "4",
             "--students", "fastdvdnet", "--out", str(tmp_path / "runs"), "--dry-run"])
    captured = capsys.readouterr()
    commands = [shlex.split(line) for line in captured.out.splitlines() if not line.startswith("#")]
    assert [stdvsr_argv(c)[0] for c in commands] == ["train-teacher", "cache-teacher", "distill", "distill",
                                                     *["evaluate"] * 5]
    assert "global batch becomes 4" in captured.err
    assert not (tmp_path / "runs").exists()


def test_missing_roots_and_failing_commands_end_with_one_error_line(roots, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match=r"^Error: --vimeo .* is not a folder"):
        rp.main(["--vimeo", str(tmp_path / "nope"), "--vid4", str(roots["vid4"])])
    with pytest.raises(SystemExit, match=r"^Error: --vid4 .* is not a folder"):
        rp.main(["--vimeo", str(roots["vimeo"]), "--vid4", str(tmp_path / "nope"), "--stages", "evaluate"])

    class Done:
        returncode = 3

    monkeypatch.setattr(subprocess, "run", lambda argv, check: Done())
    with pytest.raises(SystemExit, match=r"^Error: teacher failed \(exit 3\): .*train-teacher"):
        rp.run_stages(rp.commands(_args(roots, tmp_path)))


def test_finished_steps_are_skipped(roots, tmp_path, monkeypatch):
    args = _args(roots, tmp_path, "--stages", "teacher,distill", "--students", "vdsr")
    (tmp_path / "runs" / "teacher").mkdir(parents=True)
    (tmp_path / "runs" / "teacher" / "teacher.pth").write_bytes(b"")
    (tmp_path / "cache.zarr").mkdir()
    (tmp_path / "cache.zarr" / "manifest.json").write_text(json.dumps({"complete": True}))
    for kd in rp.KDS:
        (tmp_path / "runs" / f"vdsr-kd-{kd}").mkdir()
        (tmp_path / "runs" / f"vdsr-kd-{kd}" / "student.pth").write_bytes(b"")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a finished step ran again"))
    rp.run_stages(rp.commands(args))
    # an incomplete cache is not "finished": distill would refuse to start on it
    (tmp_path / "cache.zarr" / "manifest.json").write_text(json.dumps({"complete": False}))
    (tmp_path / "runs" / "vdsr-kd-none" / "student.pth").unlink()
    with pytest.raises(SystemExit, match=r"^Error: distill: .*manifest.json is missing or incomplete"):
        rp.run_stages(rp.commands(args))


def _evaluation(set_name: str, models: dict[str, dict[str, float]]) -> dict:
    """A hand-written `stdvsr evaluate --json` document (the format of stdvsr/evaluate.py)."""
    return {"protocol": {"set": set_name, "channel": "Y", "crop_border": 0, "frames": "all frames", "degradation": "bd",
                         "lr": "BD (13×13 Gaussian σ 1.6)", "scale": 4, "padding": "replicate", "mod_crop": True,
                         "uint8": True},
            "models": [{"name": name, "path": None, "average": {"psnr": clips.pop("average"), "ssim": 0.8},
                        "clips": [{"clip": c, "frames": 10, "psnr": v, "ssim": 0.8} for c, v in clips.items()],
                        "frames_scored": 10 * len(clips), "ms_per_frame": 1.0, "device": "cuda"}
                       for name, clips in models.items()],
            "pictures": []}


def test_compare_gives_the_differences_to_the_paper(tmp_path, capsys):
    out = tmp_path / "runs"
    out.mkdir()
    vid4 = {"bicubic": dict(calendar=20.39, city=25.16, foliage=23.47, walk=26.10, average=23.78),
            "fastdvdnet": dict(calendar=22.00, city=26.34, foliage=24.90, walk=28.45, average=25.42),
            "fastdvdnet_std": dict(calendar=22.80, city=27.00, foliage=25.46, walk=29.30, average=26.14)}
    (out / "table1_vid4.json").write_text(json.dumps(_evaluation("Vid4", vid4)))
    for speed, value in [("fast", 37.00), ("medium", 34.54), ("slow", 32.50), ("test", 34.60)]:
        doc = _evaluation(f"Vimeo90K-T ({speed})", {"fastdvdnet": {"00001/0266": value, "average": value}})
        (out / f"table1_vimeo90k-{speed}.json").write_text(json.dumps(doc))
    table = rp.comparison(rp.load_results(out), PAPER)
    rows = {r["model"]: r for r in table["vid4"]}
    assert [r["paper_row"] for r in table["vid4"]] == ["Bicubic", "FastDVDnet", "FastDVDnet STD"]
    fast = rows["fastdvdnet"]["cells"]
    assert fast["calendar"] == {"ours": 22.00, "paper": 22.11, "diff": pytest.approx(-0.11)}
    assert fast["foliage"]["diff"] == pytest.approx(0.10)
    assert fast["average"]["diff"] == pytest.approx(-0.01)
    assert rows["fastdvdnet_std"]["cells"]["walk"]["diff"] == pytest.approx(0.08)
    assert all(c["diff"] == pytest.approx(0) for c in rows["bicubic"]["cells"].values())
    vimeo = table["vimeo90k"][0]["cells"]
    assert [vimeo[c]["diff"] for c in ("fast", "medium", "slow", "average")] == \
        pytest.approx([37.00 - 37.25, 0.0, 32.50 - 32.11, 34.60 - 34.48])

    path = rp.compare(out)
    markdown = path.read_text()
    assert path == out / "table1.md"
    assert "| fastdvdnet | FastDVDnet | 22.00 | 22.11 | -0.11 |" in markdown
    assert "Paper rows not reproduced here: TOFlow, VSR-DUF, EDVR," in markdown
    assert "-0.11" in capsys.readouterr().out


def test_compare_without_evaluations_is_one_error_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^Error: compare: no evaluation results in .*run --stages evaluate"):
        rp.compare(tmp_path)


def test_paper_results_transcription():
    vid4 = PAPER["table1"]["vid4"]
    assert vid4["rows"]["FastDVDnet"] == [22.11, 26.34, 24.80, 28.45, 25.43]
    assert vid4["rows"]["FastDVDnet STD"] == [22.71, 27.18, 25.46, 29.22, 26.14]
    assert len(vid4["rows"]) == 13 and list(vid4["rows"]) == list(PAPER["table1"]["vimeo90k"]["rows"]) \
        == list(PAPER["table1"]["cost"]["rows"])
    for name, row in vid4["rows"].items():
        if name == "VSR-DUF":
            # The paper's own figures: 27.33 is the frame-weighted mean (27.32); the mean of the clips is 27.275.
            continue
        assert sum(row[:4]) / 4 == pytest.approx(row[4], abs=0.02), name
    for table in ("table2", "table3", "table4", "table5"):
        for name, row in PAPER[table]["rows"].items():
            assert sum(row[:4]) / 4 == pytest.approx(row[4], abs=0.02), (table, name)
    # rows shared between tables agree
    assert PAPER["table2"]["rows"]["FastDVDnet w/ STD"] == vid4["rows"]["FastDVDnet STD"]
    assert PAPER["table6"]["rows"]["FastDVDnet w/o STD"][2] == vid4["rows"]["FastDVDnet"][3]
    assert PAPER["table6"]["bicubic"] == vid4["rows"]["Bicubic"][3]


def test_teacher_weights_are_resaved_for_evaluate(roots, tmp_path):
    """`stdvsr evaluate` loads only checkpoints naming their architecture: --teacher-weights is re-saved as one."""
    from stdvsr.models import DEMO_TEACHER, load_model

    target = tmp_path / "teacher_eval.pth"
    rp.import_teacher(DEMO_TEACHER, target)
    model, ckpt = load_model(target)
    reference, _ = load_model(DEMO_TEACHER)
    assert ckpt["source"] == str(DEMO_TEACHER)
    assert all((a == b).all() for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    # a broken file ends the stage with one line
    args = _args(roots, tmp_path, "--stages", "evaluate", "--teacher-weights", str(roots["weights"]))
    with pytest.raises(SystemExit, match=r"^Error: evaluate failed: checkpoint .*EDVR_L_BD.pth"):
        rp.run_stages(rp.commands(args))
