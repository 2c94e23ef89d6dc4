"""stdvsr export --quantize int8: every student's int8 graph loads in ONNX Runtime and stays close to the fp32 graph on
real frames (checked here independently of the command's own check), calibration is reproducible from its seed and
reads a teacher cache's LR frames, and bad input is refused with one line before anything is written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from stdvsr.cli import cli
from stdvsr.data import window_indices
from stdvsr.degradations import bd_downsample
from stdvsr.io import write_image
from stdvsr.models import build_model, load_model
from stdvsr.quantize import QuantizeConfig, calibration_windows, run
from tests.helpers import write_video
from tests.test_export import CASES, save_checkpoint

pytest.importorskip("onnx", reason="onnx is not installed: pip install 'stdvsr[export]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'stdvsr[export]'")

SIZE = (16, 24)  # LR of the check frames (HR 64×96)
CHECK_BOX = (slice(80, 144), slice(80, 176))
LQ_SIZE = "16x24"
# int8 vs fp32 on real frames, PSNR of the clamped RGB output in [0, 1], calibrated on other frames of the clip.
# 8-bit activations round every intermediate map to 1/255 of its calibrated range (the input and the output
# exactly: their range is [0, 1]), and the rounding noise accumulates with depth. Measured on these random-weight
# students: 40.7 dB for vdsr (20 convolutions at HR; 2.3 grey levels RMS) and 55-63 dB for the others; asserted
# ≥ 37 dB (3.6 grey levels RMS). Activations that saturate because the calibration windows miss the check frames'
# range (calibrating on the top-left 64×96 corner of carphone only) measured 24.3 dB for fastdvdnet.
MIN_PSNR_VS_FP32 = 37.0
# The ONNX fp32 graph scores what PyTorch scores (its outputs differ by < 1e-4 before rounding to uint8).
FP32_PSNR_TOL = 0.01


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def folders(tmp_path_factory, carphone_frames) -> dict[str, Path]:
    """Two folder datasets of real carphone frames: ``calib``, frames 0-3 whole (HR 144×176; windows are drawn at
    random LR positions), calibrates; ``check``, frames 4-7 cropped to HR 64×96, is the held-out set."""
    root = tmp_path_factory.mktemp("quant_frames")
    for i, frame in enumerate(carphone_frames[:4]):
        write_image(root / "calib" / f"{i:08d}.png", frame)
    for i, frame in enumerate(carphone_frames[4:]):
        write_image(root / "check" / f"{i:08d}.png", frame[CHECK_BOX])
    return {"calib": root / "calib", "check": root / "check"}


@pytest.fixture(scope="module")
def check_lq(carphone_frames) -> torch.Tensor:
    """The check folder's LR frames, BD ×4, computed here from the decoded frames: (4, 3, 16, 24)."""
    hr = np.stack([f[CHECK_BOX] for f in carphone_frames[4:]])
    return bd_downsample(torch.from_numpy(hr).permute(0, 3, 1, 2).float() / 255, 4)


def quantize(tmp_path: Path, name: str, folders, **kw) -> dict:
    ckpt = save_checkpoint(tmp_path, name)
    args = dict(model=str(ckpt), calibrate=f"folder:{folders['calib']}", calib_windows=4, lq_size=LQ_SIZE,
                check_set=f"folder:{folders['check']}")
    return run(QuantizeConfig(**{**args, **kw}))


def run_cli(*args: str):
    return CliRunner().invoke(cli, ["export", *args])


@pytest.mark.parametrize("name", CASES)
def test_int8_round_trip_on_real_frames(tmp_path, folders, check_lq, name):
    result = quantize(tmp_path, name, folders)
    fp32, int8 = tmp_path / f"{name}.onnx", tmp_path / f"{name}.int8.onnx"
    assert result["export"]["path"] == str(fp32) and result["int8"]["path"] == str(int8)
    assert result["int8"]["bytes"] == int8.stat().st_size and result["int8"]["quantize_linear"] > 0
    # the graph is int8: its weights are stored as 8-bit integers (per output channel: one scale per channel)
    import onnx

    graph = onnx.load(str(int8)).graph
    weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert weights and all(t.data_type != onnx.TensorProto.FLOAT or len(t.dims) != 4 for t in graph.initializer)

    sessions = {k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for k, p in
                (("fp32", fp32), ("int8", int8))}
    assert [i.name for i in sessions["int8"].get_inputs()] == ["lq"]
    assert [o.name for o in sessions["int8"].get_outputs()] == ["sr"]
    model, _ = load_model(tmp_path / f"{name}.pth")
    t = len(check_lq)
    windows = np.stack([check_lq[window_indices(f, t, model.num_frame)].numpy() for f in range(t)])
    # compared as deployed: clamped to [0, 1] (the int8 graph's output is quantised on that range)
    out = {k: np.stack([s.run(["sr"], {"lq": w[None]})[0][0] for w in windows]).clip(0, 1)
           for k, s in sessions.items()}
    assert out["int8"].shape == (t, 3, 64, 96)
    assert psnr(out["int8"], out["fp32"]) >= MIN_PSNR_VS_FP32

    # the command's own check: written next to the model, PyTorch and ONNX fp32 agree
    report = json.loads((tmp_path / f"{name}.quant.json").read_text())
    assert report == json.loads(json.dumps(result))
    rows = {r["name"]: r for r in report["check"]["rows"]}
    assert list(rows) == ["pytorch-fp32", "onnx-fp32", "onnx-int8"]
    assert all(r["frames"] == 4 for r in rows.values()) and rows["pytorch-fp32"]["ms_per_frame"] is None
    assert rows["onnx-fp32"]["ms_per_frame"] > 0 and rows["onnx-int8"]["ms_per_frame"] > 0
    assert abs(rows["onnx-fp32"]["psnr"] - rows["pytorch-fp32"]["psnr"]) < FP32_PSNR_TOL
    assert report["check"]["run_lq_size"] == [list(SIZE)]


def test_calibration_is_reproducible_from_its_seed(tmp_path, folders):
    for sub in "abc":
        (tmp_path / sub).mkdir()
    # 4 windows of 4 frames: seed 3 loses 0.19 dB on the check clip, which is not what this test is about
    a = quantize(tmp_path / "a", "fastdvdnet-quarter", folders, seed=3, accept_drop=True)
    b = quantize(tmp_path / "b", "fastdvdnet-quarter", folders, seed=3, accept_drop=True)
    c = quantize(tmp_path / "c", "fastdvdnet-quarter", folders, seed=4, accept_drop=True)
    data = [Path(r["int8"]["path"]).read_bytes() for r in (a, b, c)]
    assert data[0] == data[1]
    assert data[0] != data[2]  # other windows, other activation ranges


def test_calibration_windows(folders):
    spec = f"folder:{folders['calib']}"
    a = calibration_windows(spec, 5, (12, 20), 3, seed=0)
    assert len(a) == 3 and all(w.shape == (1, 5, 3, 12, 20) and w.dtype == np.float32 for w in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, calibration_windows(spec, 5, (12, 20), 3, seed=0)))
    assert not all(np.array_equal(x, y) for x, y in zip(a, calibration_windows(spec, 5, (12, 20), 3, seed=1)))
    # more windows than frames: each (clip, frame) once; a size larger than the frames (LR 36×44): replicate-padded
    big = calibration_windows(spec, 3, (40, 48), 100, seed=0)
    assert len(big) == 4 and all(w.shape == (1, 3, 3, 40, 48) for w in big)
    assert all(np.array_equal(w[..., 35, :], w[..., 39, :]) for w in big)


def test_calibrates_on_a_teacher_cache(tmp_path, folders):
    """A cache's stored LR frames give the windows the dataset's BD frames give (same draw), within fp16."""
    from stdvsr import cache
    from stdvsr.cache import CacheConfig

    torch.manual_seed(0)
    kwargs = dict(num_feat=8, num_frame=3, deformable_groups=1, num_extract_block=1, num_reconstruct_block=1)
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": {"name": "edvr", "kwargs": kwargs}, "params": build_model("edvr", **kwargs).state_dict()},
               teacher)
    spec = f"folder:{folders['calib']}"
    cache.run(CacheConfig(weights=str(teacher), data=spec, out=str(tmp_path / "c.zarr"), store=("trunk",)),
              show_progress=False)
    from_cache = calibration_windows(str(tmp_path / "c.zarr"), 5, SIZE, 4, seed=0)
    from_spec = calibration_windows(spec, 5, SIZE, 4, seed=0)
    assert max(float(np.abs(x - y).max()) for x, y in zip(from_cache, from_spec)) < 2e-3

    ckpt = save_checkpoint(tmp_path, "vsrnet")
    result = run_cli("--model", str(ckpt), "--lq-size", LQ_SIZE, "--quantize", "int8", "--calibrate",
                     str(tmp_path / "c.zarr"), "--calib-windows", "4", "--check-set", f"folder:{folders['check']}")
    assert result.exit_code == 0, result.output
    cells = [[c.strip() for c in line.split("│") if c.strip()] for line in result.stdout.splitlines()]
    rows = {c[0]: c for c in cells if c and c[0] in ("pytorch-fp32", "onnx-fp32", "onnx-int8")}
    assert list(rows) == ["pytorch-fp32", "onnx-fp32", "onnx-int8"] and rows["pytorch-fp32"][3] == "(not timed)"
    assert rows["onnx-fp32"][1] == rows["pytorch-fp32"][1]  # the same Y-PSNR to 3 decimals
    assert f"wrote {tmp_path / 'vsrnet.int8.onnx'}" in result.stdout
    lr = json.loads((tmp_path / "vsrnet.quant.json").read_text())["int8"]["calibration"]["lr"]
    assert lr == (f"the cache's stored lq frames (BD ×4 of folder:{folders['calib']}, split train), 4 frame(s) of "
                  "1 clip(s)")


def test_dynamic_int8_runs_at_other_sizes(tmp_path, folders):
    result = quantize(tmp_path, "fastdvdnet-quarter", folders, dynamic=True)
    session = ort.InferenceSession(result["int8"]["path"], providers=["CPUExecutionProvider"])
    out = session.run(["sr"], {"lq": np.random.default_rng(0).random((2, 7, 3, 20, 28), dtype=np.float32)})[0]
    assert out.shape == (2, 3, 80, 112) and np.isfinite(out).all()


def assert_refused(result, tmp_path: Path, *fragments: str, keep=("student.pth",)):
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)  # nothing written


def student(tmp_path: Path, name: str = "fastdvdnet-quarter") -> Path:
    return save_checkpoint(tmp_path, name).rename(tmp_path / "student.pth")


def test_no_calibration_data_is_refused(tmp_path, folders):
    ckpt = student(tmp_path)
    assert_refused(run_cli("--model", str(ckpt), "--quantize", "int8"), tmp_path, "--calibrate", "calibration data")
    assert_refused(run_cli("--model", str(ckpt), "--calibrate", "demo"), tmp_path, "--quantize int8")


def test_empty_or_foreign_calibration_source_is_refused(tmp_path):
    ckpt = student(tmp_path)
    plain = tmp_path / "frames"
    plain.mkdir()
    assert_refused(run_cli("--model", str(ckpt), "--quantize", "int8", "--calibrate", str(plain)), tmp_path,
                   "not a teacher cache", f"folder:{plain}", keep=("student.pth", "frames"))
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    manifest = {"fingerprint": {"format": "zarr", "tiers": ["trunk"], "scale": 4, "num_frame": 7, "views": 1,
                                "data": {"spec": "demo", "split": "train", "max_clips": None}},
                "complete": True, "clips": [], "groups": {}, "layout": {"arrays": {}, "compress": True}}
    (empty / "manifest.json").write_text(json.dumps(manifest))
    assert_refused(run_cli("--model", str(ckpt), "--quantize", "int8", "--calibrate", str(empty), "--lq-size",
                           LQ_SIZE), tmp_path, "no frames to calibrate on", keep=("student.pth", "frames",
                                                                                  "empty.zarr"))
    assert_refused(run_cli("--model", str(ckpt), "--quantize", "int8", "--calibrate", "nonsense"), tmp_path,
                   "neither a teacher cache folder nor a dataset spec", keep=("student.pth", "frames", "empty.zarr"))


def test_teacher_is_refused(tmp_path):
    path = tmp_path / "student.pth"
    torch.save({"model": {"name": "edvr-s", "kwargs": {}}, "params": build_model("edvr-s").state_dict()}, path)
    assert_refused(run_cli("--model", str(path), "--quantize", "int8", "--calibrate", "demo"), tmp_path,
                   "EDVR", "student")


@pytest.mark.parametrize("args, fragment", [
    (("--opset", "12"), "opset 13 or newer"),
    (("--format", "torchscript"), "--quantize int8 writes ONNX"),
    (("--lq-size", "8x8"), "larger than the graph's --lq-size 8x8"),
    (("--check-set", "nonsense"), "--check-set nonsense"),
])
def test_bad_options_are_refused(tmp_path, folders, args, fragment):
    ckpt = student(tmp_path)
    assert_refused(run_cli("--model", str(ckpt), "--quantize", "int8", "--calibrate", f"folder:{folders['calib']}",
                           "--check-set", f"folder:{folders['check']}", *args), tmp_path, fragment)


def test_missing_onnxruntime_names_the_extra(tmp_path, monkeypatch):
    ckpt = student(tmp_path)
    for module in ("onnxruntime", "onnxruntime.quantization"):  # makes `import onnxruntime.quantization` fail
        monkeypatch.setitem(sys.modules, module, None)
    assert_refused(run_cli("--model", str(ckpt), "--quantize", "int8", "--calibrate", "demo"), tmp_path,
                   "pip install 'stdvsr[export]'")


def test_existing_int8_file_needs_force(tmp_path, folders):
    ckpt = student(tmp_path)
    (tmp_path / "student.int8.onnx").write_bytes(b"keep me")
    assert_refused(run_cli("--model", str(ckpt), "--quantize", "int8", "--calibrate", f"folder:{folders['calib']}"),
                   tmp_path, "student.int8.onnx already exists", "--force", keep=("student.pth", "student.int8.onnx"))
    assert (tmp_path / "student.int8.onnx").read_bytes() == b"keep me"


# ----------------------------------------------------------------------------- int8 that is not good enough
def test_a_one_frame_calibration_warns_and_its_lossy_int8_is_refused_but_kept_as_rejected(tmp_path, stdvsr_home,
                                                                                           folders, carphone_frames):
    """Issue #26: a one-frame video as --calibrate gives 1 of 32 windows and an int8 graph that loses 0.29 dB on
    the check clip (42 grey levels), which exited 0 and looked like any other int8 file."""
    ckpt = student(tmp_path)
    video = write_video(tmp_path / "one.mp4", carphone_frames[:1])
    args = ["--model", str(ckpt), "--quantize", "int8", "--calibrate", f"video:{video}", "--lq-size", LQ_SIZE,
            "--check-set", f"folder:{folders['check']}"]
    result = run_cli(*args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "Warning: --calib-windows 32 asked, but --calibrate" in result.stderr
    assert "has only 1 frame(s)" in result.stderr and "calibrating on 1 window(s)" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0]
    assert "dB Y-PSNR against PyTorch" in errors[0] and "more than 0.1 dB" in errors[0]
    assert "calibrated on 1 of the 32 windows asked" in errors[0] and "--accept-drop" in errors[0]
    # the fp32 export is good and kept; the int8 file and its report are kept under names that say they failed
    def files() -> list[str]:
        return sorted(p.name for p in tmp_path.iterdir() if p != stdvsr_home)

    assert files() == ["one.mp4", "student.int8.rejected.onnx", "student.onnx", "student.pth",
                       "student.quant.rejected.json"]
    report = json.loads((tmp_path / "student.quant.rejected.json").read_text())
    assert report["check"]["accepted"] is False and report["check"]["int8_psnr_drop"] > 0.1
    assert report["int8"]["path"] == str(tmp_path / "student.int8.rejected.onnx")
    calibration = report["int8"]["calibration"]
    assert calibration["windows"] == 1 and calibration["windows_asked"] == 32
    assert calibration["lr"].startswith("BD ×4 of the video's decoded frames, 1 frame(s) of 1 clip(s)")
    assert "training split" not in calibration["lr"]
    assert "loses more than 0.1 dB: kept as" in result.stdout  # the table is printed before the refusal

    # --accept-drop keeps it under the real name, and the rejected files of the earlier run go (with --force)
    result = run_cli(*args, "--accept-drop", "--force")
    assert result.exit_code == 0, result.output
    assert files() == ["one.mp4", "student.int8.onnx", "student.onnx", "student.pth", "student.quant.json"]
    assert json.loads((tmp_path / "student.quant.json").read_text())["check"]["accepted"] is True
    assert f"wrote {tmp_path / 'student.int8.onnx'}" in result.stdout


def test_accept_drop_without_quantize_is_refused(tmp_path):
    ckpt = student(tmp_path)
    assert_refused(run_cli("--model", str(ckpt), "--accept-drop"), tmp_path, "--accept-drop", "--quantize int8")


def test_calibrating_on_the_check_clip_is_warned(tmp_path, folders):
    ckpt = student(tmp_path)
    result = run_cli("--model", str(ckpt), "--quantize", "int8", "--calibrate", f"folder:{folders['check']}",
                     "--calib-windows", "4", "--lq-size", LQ_SIZE, "--check-set", f"folder:{folders['check']}")
    assert result.exit_code == 0, result.output
    assert (f"Warning: --calibrate folder:{folders['check']} holds 4 frame(s) of --check-set "
            f"folder:{folders['check']}: the check is not held out") in result.stderr
    assert json.loads((tmp_path / "student.quant.json").read_text())["int8"]["calibration"]["check_frames_seen"] == 4


def test_held_out_calibration_gives_no_warning(tmp_path, folders):
    from stdvsr.quantize import _check_overlap, check_clips, open_source

    clips, _, _ = check_clips(f"folder:{folders['check']}")
    assert _check_overlap(open_source(f"folder:{folders['calib']}"), clips) == 0
    assert _check_overlap(open_source(f"folder:{folders['check']}"), clips) == 4


def test_calibration_source_is_described_truly_for_every_kind(tmp_path, stdvsr_home, folders, carphone_frames):
    from stdvsr.quantize import open_source
    from tests.helpers import make_vid4

    assert open_source(f"folder:{folders['calib']}").lr == \
        "BD ×4 of every clip of the folder, 4 frame(s) of 1 clip(s): calib"
    video = write_video(tmp_path / "eight.mp4", carphone_frames)
    assert open_source(f"video:{video}").lr == "BD ×4 of the video's decoded frames, 8 frame(s) of 1 clip(s): eight"
    vid4 = make_vid4(tmp_path / "vid4", carphone_frames[:2])
    assert open_source(f"vid4:{vid4}").lr == "BD ×4 of every Vid4 clip, 4 frame(s) of 2 clip(s): calendar, city"
    # the splits (demo, vimeo90k) without preparing their data: what the spec's clips are is said as they are
    from stdvsr.data import Clip
    from stdvsr.quantize import _spec_lr

    clips = [Clip("bikes", (Path("a.png"),) * 3), Clip("bigbuckbunny", (Path("b.png"),) * 2)]
    assert _spec_lr("demo", clips) == "BD ×4 of the demo training split, 5 frame(s) of 2 clip(s): bikes, bigbuckbunny"
    assert _spec_lr("demo:bikes", clips[:1]).startswith("BD ×4 of the named demo clips, 3 frame(s)")
    assert _spec_lr("vimeo90k:/v", clips).startswith("BD ×4 of the Vimeo90K training list, 5 frame(s)")
