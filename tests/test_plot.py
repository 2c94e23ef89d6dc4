"""Training curves: metrics.jsonl rows read as a user's run wrote them (probe events, a resume's repeated steps,
a killed run's half line), curves.png written atomically for one run or several, `stdvsr plot` and its one-line
errors, the TensorBoard conversion, and curves of a real tiny train-teacher run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from stdvsr import train_teacher
from stdvsr.cli import cli
from stdvsr.errors import StdvsrError
from stdvsr.plot import (curves_figure, load_runs, loss_terms, plot_runs, read_metrics, write_run_plot,
                         write_tensorboard)
from tests.test_cli import assert_user_error
from tests.test_teacher import tiny_config, tiny_frames  # noqa: F401  (tiny_frames is a fixture)


def write_rows(path: Path, rows: list, tail: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


def distill_rows(steps, offset: float = 0.0, val_every: int = 3) -> list[dict]:
    """Rows as distill writes them: probe events before the first steps' log rows, a freeze event, validation."""
    rows = []
    for s in steps:
        if s <= 2:
            rows.append({"step": s, "event": "probe", "kd_scale": 1.0, "loss_total": 999.0, "terms": {"rec": {}}})
        rows.append({"step": s, "loss_total": offset + s, "loss_rec": offset + s / 2, "loss_sd": 0.1, "loss_td": 0.0,
                     "lr": 1e-4 / s, "distil": True, "kd_scale": 1.0, "step_s": 0.5})
        if s == 4:
            rows.append({"step": s, "event": "td_frozen", "td": 0.0})
        if s % val_every == 0:
            rows.append({"step": s, "val_psnr": 25.0 + offset + s / 10, "bicubic_psnr": 24.0})
    return rows


def assert_png(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None and img.size > 0 and img.shape[2] == 3
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob(f".{path.name}.*"))  # no temporary left behind
    return img


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


# ---------------------------------------------------------------------------------------------------- rows
def test_events_are_skipped_and_a_resume_keeps_each_steps_last_row(tmp_path):
    # steps 1-7 logged, killed mid-line at 8; resumed from the step-4 checkpoint, it logs 5-9 again (+100)
    first = distill_rows(range(1, 8))
    resumed = distill_rows(range(5, 10), offset=100)
    path = write_rows(tmp_path / "metrics.jsonl", first, tail='{"step": 8, "loss_to')
    with open(path, "a") as f:
        f.write("\n" + "".join(json.dumps(r) + "\n" for r in resumed))
    series = read_metrics(path).series
    assert series["loss_total"] == {1: 1, 2: 2, 3: 3, 4: 4, 5: 105, 6: 106, 7: 107, 8: 108, 9: 109}
    assert list(series["loss_total"]) == sorted(series["loss_total"])
    # validation at 6 came from both attempts: the resumed one wins; 3 only from the first, 9 only from the second
    assert series["val_psnr"] == pytest.approx({3: 25.3, 6: 125.6, 9: 125.9})
    assert series["bicubic_psnr"] == {3: 24.0, 6: 24.0, 9: 24.0}
    assert series["lr"][9] == pytest.approx(1e-4 / 9)
    assert 999.0 not in series["loss_total"].values() and "td" not in series and "terms" not in series
    assert "distil" not in series  # booleans are not curves
    assert list(loss_terms(series)) == ["total", "rec", "sd", "td"]


def test_a_repeated_step_at_the_resume_point_replaces_the_earlier_attempts_rows(tmp_path):
    # same step as the last row (log_every 3, checkpoint at 3, killed after 6's log and validation)
    rows = distill_rows([3, 6]) + distill_rows([6], offset=50, val_every=100)
    series = read_metrics(write_rows(tmp_path / "metrics.jsonl", rows)).series
    assert series["loss_total"] == {3: 3, 6: 56}
    assert series["val_psnr"] == pytest.approx({3: 25.3})  # the interrupted attempt's 6 is gone with it


def test_teacher_rows_have_a_single_loss_term(tmp_path):
    rows = [{"step": s, "loss": 1 / s, "lr": 4e-4, "data_wait": 0.1, "elapsed": s} for s in (1, 2, 3)]
    series = read_metrics(write_rows(tmp_path / "metrics.jsonl", rows)).series
    assert loss_terms(series) == {"loss": {1: 1.0, 2: 0.5, 3: pytest.approx(1 / 3)}}


# -------------------------------------------------------------------------------------------------- pictures
def test_plot_runs_overlays_several_runs_in_one_png(tmp_path):
    plain = write_rows(tmp_path / "plain" / "metrics.jsonl", distill_rows(range(1, 10))).parent
    std = write_rows(tmp_path / "std" / "metrics.jsonl", distill_rows(range(1, 10), offset=1)).parent
    out = plot_runs([plain, std], tmp_path / "figs" / "kd.png", labels=["kd none", "kd std"])
    assert out == tmp_path / "figs" / "kd.png"
    h, w, _ = assert_png(out).shape
    assert w > 2 * h > 0  # three panels side by side


def test_write_run_plot_writes_curves_png_and_skips_runs_without_rows(tmp_path):
    run_dir = write_rows(tmp_path / "run" / "metrics.jsonl", distill_rows(range(1, 7))).parent
    assert write_run_plot(run_dir) == run_dir / "curves.png"
    assert_png(run_dir / "curves.png")
    (tmp_path / "none").mkdir()
    events_only = write_rows(tmp_path / "events" / "metrics.jsonl", [{"step": 1, "event": "probe"}]).parent
    empty = write_rows(tmp_path / "empty" / "metrics.jsonl", []).parent
    for folder in (tmp_path / "none", tmp_path / "missing", events_only, empty):
        assert write_run_plot(folder) is None
        assert not (folder / "curves.png").exists()


def test_a_run_without_validation_still_plots(tmp_path):
    rows = [r for r in distill_rows(range(1, 5)) if "val_psnr" not in r]
    run_dir = write_rows(tmp_path / "noval" / "metrics.jsonl", rows).parent
    assert_png(write_run_plot(run_dir))


def test_matplotlib_is_imported_only_to_draw():
    code = "import sys, stdvsr.cli, stdvsr.plot; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --------------------------------------------------------------------------------------------------------- CLI
def test_cli_plots_one_run_into_its_folder_and_several_into_the_cwd(tmp_path, monkeypatch):
    a = write_rows(tmp_path / "a" / "metrics.jsonl", distill_rows(range(1, 7))).parent
    b = write_rows(tmp_path / "b" / "metrics.jsonl", distill_rows(range(1, 4), offset=2)).parent
    result = run("plot", str(a))
    assert result.exit_code == 0, result.output
    assert_png(a / "curves.png")
    monkeypatch.chdir(tmp_path)
    result = run("plot", str(a), str(b), "--label", "kd none", "--label", "kd std")
    assert result.exit_code == 0, result.output
    assert_png(tmp_path / "curves.png")
    assert "kd none" in result.stdout and "kd std" in result.stdout and "25.60" in result.stdout  # a's val at 6


def test_cli_errors_are_one_line_naming_the_path(tmp_path):
    a = write_rows(tmp_path / "a" / "metrics.jsonl", distill_rows(range(1, 4))).parent
    (tmp_path / "bare").mkdir()
    assert_user_error(run("plot", str(tmp_path / "nope")), f"run folder {tmp_path / 'nope'} does not exist")
    assert_user_error(run("plot", str(a), str(tmp_path / "bare")), f"{tmp_path / 'bare'} has no metrics.jsonl",
                      "distill or train-teacher")
    (tmp_path / "file").write_text("")
    assert_user_error(run("plot", str(a), "--out", str(tmp_path / "file" / "c.png")),
                      f"cannot write {tmp_path / 'file' / 'c.png'}", "--out")
    assert_user_error(run("plot", str(a), "--out", str(tmp_path / "c.jpg")), "ending in .png")
    assert_user_error(run("plot", str(a), "--label", "x", "--label", "y"), "--label once per RUN")
    assert not list(tmp_path.rglob("*.png"))


# ------------------------------------------------------------------------------------- damaged and odd logs
def test_a_binary_metrics_file_is_an_error_naming_it_even_beside_good_runs(tmp_path):
    good = write_rows(tmp_path / "good" / "metrics.jsonl", distill_rows(range(1, 4))).parent
    binary = tmp_path / "binary" / "metrics.jsonl"
    binary.parent.mkdir()
    binary.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)) + b"\n\x00\xff\n")
    with pytest.raises(StdvsrError, match="not a metrics log"):
        read_metrics(binary)
    for runs in ([binary.parent], [good, binary.parent]):
        assert_user_error(run("plot", *map(str, runs)), f"{binary} is not a metrics log", "line 1")
    assert not list(tmp_path.rglob("*.png"))


def test_garbage_lines_are_skipped_with_a_warning_naming_the_file_and_first_line(tmp_path):
    rows = [json.dumps(r) for r in distill_rows(range(1, 7))]
    lines = rows[:2] + ["not json {", "[1, 2]"] + rows[2:-1] + ["\x00\x00garbage"] + rows[-1:]
    path = tmp_path / "run" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n")
    log = read_metrics(path)
    assert log.bad_lines == [3, 4, len(lines) - 1]
    assert log.series["loss_total"] == {s: s for s in range(1, 7)}  # the good rows all survive
    result = run("plot", str(path.parent))
    assert result.exit_code == 0, result.output
    assert f"Warning: {path}: skipped 3 line(s) that are not JSON rows (first: line 3)" in result.stderr
    assert_png(path.parent / "curves.png")
    # a killed run's half-written last line is normal: not counted, no warning
    clean = write_rows(tmp_path / "killed" / "metrics.jsonl", distill_rows(range(1, 4)), tail='{"step": 4, "lo')
    assert read_metrics(clean).bad_lines == []
    assert "Warning" not in run("plot", str(clean.parent)).stderr


def _pixels_at(fig, ax, x: float, y: float, radius: int = 3) -> np.ndarray:
    """The rendered RGB pixels around data point (x, y) of ``ax``."""
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    px, py = ax.transData.transform((x, y))
    row, col = img.shape[0] - int(round(py)), int(round(px))
    return img[row - radius:row + radius + 1, col - radius:col + radius + 1]


def test_runs_with_few_rows_are_drawn_with_markers(tmp_path):
    # a 20-step run logged once (--log-every 20): one row, a line through one point is invisible without a marker
    one = write_rows(tmp_path / "one" / "metrics.jsonl", [{"step": 20, "loss_total": 0.5, "loss_rec": 0.3,
                                                           "lr": 1e-4}]).parent
    fig = curves_figure(load_runs([one]))
    ax_loss, ax_lr, _ = fig.axes[:3]
    assert [line.get_marker() for line in ax_loss.get_lines()] == ["o", "o"]
    assert [line.get_marker() for line in ax_lr.get_lines()] == ["o"]
    # the point is drawn: matplotlib's C0 (#1f77b4) where step 20, loss 0.5 lands, not the white background
    patch = _pixels_at(fig, ax_loss, 20, 0.5)
    assert (np.abs(patch - [0x1F, 0x77, 0xB4]).sum(axis=2) < 40).sum() >= 5
    assert_png(write_run_plot(one))
    # a long run keeps plain lines
    many = write_rows(tmp_path / "many" / "metrics.jsonl", distill_rows(range(1, 40), val_every=100)).parent
    lines = curves_figure(load_runs([many])).axes[0].get_lines()
    assert {line.get_marker() for line in lines if len(line.get_xdata())} == {"None"}


def test_non_finite_steps_are_marked_red_and_warned(tmp_path):
    rows = distill_rows(range(1, 7))
    for r in rows:
        if r.get("step") == 4 and "loss_total" in r and "event" not in r:
            r["loss_total"], r["loss_rec"] = float("nan"), float("inf")
        if r.get("step") == 6 and "val_psnr" in r:
            r["val_psnr"] = float("nan")
    path = write_rows(tmp_path / "nan" / "metrics.jsonl", rows)  # json.dumps writes NaN / Infinity
    log = read_metrics(path)
    assert log.nonfinite == {"loss_total": [4], "loss_rec": [4], "val_psnr": [6]}
    assert 4 not in log.series["loss_total"] and log.series["val_psnr"] == pytest.approx({3: 25.3})
    fig = curves_figure({"nan": log})
    marks = {ax.get_title(): [line for line in ax.get_lines() if line.get_label() == "non-finite"]
             for ax in fig.axes[:3]}
    loss_marks = marks["training loss terms"]
    assert len(loss_marks) == 1 and list(loss_marks[0].get_xdata()) == [4]
    assert loss_marks[0].get_marker() == "x" and loss_marks[0].get_color() == "red"
    assert [list(m.get_xdata()) for m in marks["held-out Y-PSNR (dB), bicubic dashed"]] == [[6]]
    assert marks["learning rate"] == []
    assert "non-finite" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    result = run("plot", str(path.parent))
    assert result.exit_code == 0, result.output
    assert f"Warning: {path}: non-finite values (NaN/inf) at 2 step(s), first step 4 (loss_total, loss_rec)" \
        in result.stderr
    # several runs: the marker gets its legend entry among the runs' and terms' handles
    other = write_rows(tmp_path / "ok" / "metrics.jsonl", distill_rows(range(1, 7))).parent
    fig = curves_figure(load_runs([path.parent, other]))
    assert "non-finite" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    # a run whose every value is non-finite still plots: the markers are all there is
    nan_only = write_rows(tmp_path / "nan_only" / "metrics.jsonl", [{"step": 2, "loss_total": float("nan")}])
    assert_png(write_run_plot(nan_only.parent))


# ------------------------------------------------------------------------------------------------ TensorBoard
def test_tensorboard_event_files_hold_the_curves(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    a = write_rows(tmp_path / "a" / "metrics.jsonl", distill_rows(range(1, 7))).parent
    result = run("plot", str(a), "--tensorboard", str(tmp_path / "tb"))
    assert result.exit_code == 0, result.output
    write_tensorboard([a], tmp_path / "tb")  # converting again replaces, not doubles
    assert len(list((tmp_path / "tb" / "a").glob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(str(tmp_path / "tb" / "a")).Reload()
    assert {"loss/total", "loss/rec", "lr", "val/psnr", "val/bicubic_psnr"} <= set(acc.Tags()["scalars"])
    assert [(e.step, e.value) for e in acc.Scalars("loss/total")] == [(s, float(s)) for s in range(1, 7)]
    assert [e.step for e in acc.Scalars("val/psnr")] == [3, 6]


def test_tensorboard_missing_is_one_line_saying_what_to_install(tmp_path, monkeypatch):
    a = write_rows(tmp_path / "a" / "metrics.jsonl", distill_rows(range(1, 4))).parent
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    with pytest.raises(StdvsrError, match="pip install tensorboard"):
        write_tensorboard([a], tmp_path / "tb")
    assert_user_error(run("plot", str(a), "--tensorboard", str(tmp_path / "tb")), "pip install tensorboard")
    assert not (a / "curves.png").exists() and not (tmp_path / "tb").exists()  # refused before writing


# ------------------------------------------------------------------------------------------------ a real run
def test_curves_of_a_real_tiny_teacher_run(tiny_frames, tmp_path):  # noqa: F811
    out = tmp_path / "teacher"
    train_teacher.run(tiny_config(tiny_frames, out, steps=4, val_every=2, ckpt_every=4, val_clips=1),
                      show_progress=False)
    series = read_metrics(out / "metrics.jsonl").series
    assert sorted(series["loss"]) == [1, 2, 3, 4] and sorted(series["val_psnr"]) == [2, 4]
    assert write_run_plot(out) == out / "curves.png"
    assert_png(out / "curves.png")
