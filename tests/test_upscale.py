"""stdvsr upscale: real clips in, playable videos / PNG frames out, equal to infer.upscale_frames, chunking exact,
tiling within a measured tolerance, atomic output, one-line errors."""

from __future__ import annotations

from pathlib import Path

import shutil
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from stdvsr.cli import cli
from stdvsr.data import list_frames, to_tensor
from stdvsr.infer import upscale_frames
from stdvsr.io import read_image, video_header, write_image
from stdvsr.models import build_model, load_model
from stdvsr.upscale import UpscaleConfig, run, tile_starts, upscale_stream
from tests.helpers import corrupt_mid_stream, count_decodable, decode_frames, write_video
from tests.test_cli import assert_user_error

FPS = 10.0


def invoke(*args) -> object:
    return CliRunner().invoke(cli, ["upscale", *map(str, args)])


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """A 7-frame FastDVDnet (width 1/4) with seeded random weights, saved as a stdvsr checkpoint."""
    torch.manual_seed(0)
    model = build_model("fastdvdnet-quarter")
    path = tmp_path_factory.mktemp("ckpt") / "student.pth"
    torch.save({"model": {"name": "fastdvdnet-quarter", "kwargs": {}}, "params": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def clip(carphone_frames) -> list[np.ndarray]:
    """Six real frames cropped to 62×94: not a multiple of 4, so padding and cropping back are exercised."""
    return [np.ascontiguousarray(f[40:102, 40:134]) for f in carphone_frames[:6]]


@pytest.fixture(scope="module")
def frame_folder(clip, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("input") / "frames"
    for i, frame in enumerate(clip):
        write_image(folder / f"f{i + 1}.png", frame)  # f1 … f6: natural order, not %08d
    return folder


@pytest.fixture(scope="module")
def video(carphone_frames, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (96, 64))
    for frame in carphone_frames[:6]:
        writer.write(cv2.cvtColor(frame[40:104, 40:136], cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def read_folder(folder: Path) -> np.ndarray:
    frames = list_frames(folder)
    assert [p.name for p in frames] == [f"{i:08d}.png" for i in range(len(frames))]
    return np.stack([read_image(p) for p in frames]).astype(np.int16)


@pytest.fixture(scope="module")
def untiled(student, frame_folder, tmp_path_factory) -> np.ndarray:
    """The reference: PNG output of an untiled, unchunked run (6 frames ≤ the default chunk) through the CLI."""
    out = tmp_path_factory.mktemp("untiled") / "sr"
    result = invoke(frame_folder, out, "--model", student)
    assert result.exit_code == 0, result.output
    assert f"6 frames 94×62 → 376×248 at 25 fps written to {out}" in result.stdout
    return read_folder(out)


def test_untiled_equals_upscale_frames_on_the_whole_clip(untiled, student, clip):
    model, _ = load_model(student)
    expected = upscale_frames(model, to_tensor(clip))  # the whole clip at once, batches of 4 windows
    expected = torch.round(expected * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert untiled.shape == (6, 248, 376, 3)
    # Only float rounding differs (batch 4 here, 6 there: other conv kernels), which may flip a level at .5.
    assert np.abs(untiled - expected).max() <= 1
    assert np.mean(untiled != expected) < 1e-3


def test_chunked_equals_unchunked(untiled, student, frame_folder, tmp_path):
    out = tmp_path / "sr"
    assert invoke(frame_folder, out, "--model", student, "--chunk-frames", "2").exit_code == 0
    np.testing.assert_array_equal(read_folder(out), untiled)


def test_tiled_equals_untiled_within_tolerance(untiled, student, frame_folder, tmp_path):
    # LR 62×94 is padded to 64×96: 48-pixel tiles overlapping ≥ 16 give a 2×3 grid (starts 0/16 and 0/24/48).
    assert tile_starts(64, 48, 16) == [0, 16] and tile_starts(96, 48, 16) == [0, 24, 48]
    out = tmp_path / "tiled"
    assert invoke(frame_folder, out, "--model", student, "--tile", 48, "--tile-overlap", 16).exit_code == 0
    diff = np.abs(read_folder(out) - untiled)
    # Measured: at most 1 level on 0.3 % of the values. A tile's pixels near its border see zero padding instead
    # of the neighbouring pixels; the linear ramps give them little weight, so what is left is float noise
    # turned into a flipped rounding here and there.
    assert diff.max() <= 2 and diff.mean() < 0.02
    # Without overlap the same tiles leave seams (measured: up to ~50 levels): the blending is what removes them.
    seams = tmp_path / "seams"
    assert invoke(frame_folder, seams, "--model", student, "--tile", 48, "--tile-overlap", 0).exit_code == 0
    assert np.abs(read_folder(seams) - untiled).max() > 10


def test_frames_are_streamed(student, carphone_frames):
    """Decoding runs at most one chunk plus the window's half-width ahead of the frame being written."""
    model, _ = load_model(student)
    frames = [np.ascontiguousarray(f[:32, :32]) for f in carphone_frames]
    pulled, ahead = [], []

    def source():
        for f in frames:
            pulled.append(1)
            yield f

    out = []
    for sr in upscale_stream(model, source(), chunk_frames=3):
        ahead.append(len(pulled) - len(out))
        out.append(sr)
    assert len(out) == 8 and max(ahead) <= 3 + 3  # chunk + num_frame // 2
    expected = torch.round(upscale_frames(model, to_tensor(frames)) * 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert np.abs(np.stack(out).astype(int) - expected.numpy()).max() <= 1


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_video_in_video_out_is_playable(student, video, tmp_path, suffix):
    out = tmp_path / f"sr{suffix}"
    result = invoke(video, out, "--model", student, "--chunk-frames", 4)
    assert result.exit_code == 0, result.output
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened()
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS, rel=1e-3)
    frames = []
    while (frame := cap.read())[0]:
        frames.append(frame[1])
    cap.release()
    assert len(frames) == 6 and frames[0].shape == (256, 384, 3)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left next to it


def test_video_in_frames_out(student, video, tmp_path):
    out = tmp_path / "frames"
    assert invoke(video, out, "--model", student, "--tile", 32, "--tile-overlap", 8).exit_code == 0
    assert read_folder(out).shape == (6, 256, 384, 3)


def test_refuses_to_overwrite_without_force(student, frame_folder, untiled, tmp_path):
    out = tmp_path / "sr"
    out.mkdir()
    write_image(out / "00000000.png", np.zeros((8, 8, 3), np.uint8))  # a folder of stdvsr's own frames only
    assert_user_error(invoke(frame_folder, out, "--model", student), "already exists", "--force")
    assert [p.name for p in out.iterdir()] == ["00000000.png"]
    assert invoke(frame_folder, out, "--model", student, "--force").exit_code == 0
    np.testing.assert_array_equal(read_folder(out), untiled)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr"]


def test_force_never_deletes_files_stdvsr_did_not_write(student, frame_folder, untiled, tmp_path):
    out = tmp_path / "sr"
    write_image(out / "00000000.png", np.zeros((8, 8, 3), np.uint8))
    (out / "precious.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "notes.md").write_text("notes")
    assert_user_error(invoke(frame_folder, out, "--model", student, "--force"), f"{out / 'precious.txt'}",
                      "stdvsr did not write", "move your files")
    assert (out / "precious.txt").read_text() == "mine" and (out / "sub" / "notes.md").read_text() == "notes"
    (out / "precious.txt").unlink()  # the first foreign entry gone, the next one is named
    assert_user_error(invoke(frame_folder, out, "--model", student, "--force"), f"{out / 'sub'}")
    assert (out / "sub" / "notes.md").read_text() == "notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr"]  # nothing written beside it either
    (tmp_path / "file").write_text("a file where the frame folder would go")
    assert_user_error(invoke(frame_folder, tmp_path / "file", "--model", student, "--force"), "is a file")
    assert (tmp_path / "file").read_text().startswith("a file")


def test_files_put_into_output_during_the_run_are_not_deleted_at_the_swap(tmp_path):
    """``--force`` checks OUTPUT before the run and again at the swap: a file the user added meanwhile survives and
    the new frames are kept beside it, not lost."""
    from stdvsr.errors import StdvsrError
    from stdvsr.upscale import frame_folder_writer

    out = tmp_path / "sr"
    write_image(out / "00000000.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(StdvsrError, match="new frames are kept in"):
        with frame_folder_writer(out) as write:
            write(np.full((8, 8, 3), 7, np.uint8))
            (out / "added.txt").write_text("mine")
    assert (out / "added.txt").read_text() == "mine" and (out / "00000000.png").is_file()
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("sr.")]
    assert len(kept) == 1 and int(read_image(kept[0] / "00000000.png")[0, 0, 0]) == 7


@pytest.mark.parametrize("where", ["cwd", "parent of cwd"])
def test_force_never_deletes_the_current_directory(student, video, tmp_path, monkeypatch, where):
    work = tmp_path / "work"
    (work / "inner").mkdir(parents=True)
    shutil.copy(video, tmp_path / "in.mp4")
    monkeypatch.chdir(work if where == "cwd" else work / "inner")
    out = "../work" if where == "cwd" else ".."
    assert_user_error(invoke("../in.mp4" if where == "cwd" else "../../in.mp4", out, "--model", student, "--force"),
                      "current directory", "never deletes it")
    assert (work / "inner").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "work"]
    monkeypatch.chdir(work)
    assert_user_error(invoke("../in.mp4", ".", "--model", student, "--force"), "is the current directory")


def test_unwritable_output_is_refused_before_the_model_runs(student, frame_folder, tmp_path, monkeypatch):
    import stdvsr.upscale

    monkeypatch.setattr(stdvsr.upscale, "upscale_stream", lambda *a, **k: pytest.fail("upscaled before checking"))
    (tmp_path / "blocker").write_text("a file where a folder is needed")  # ENOTDIR, also as root
    assert_user_error(invoke(frame_folder, tmp_path / "blocker" / "sr.mp4", "--model", student), "OUTPUT",
                      "blocker")
    assert_user_error(invoke(frame_folder, tmp_path / "blocker" / "sr", "--model", student), "OUTPUT", "blocker")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


@pytest.mark.parametrize("output", ["sr.mp4", "sr"])
def test_interrupted_run_leaves_no_output(student, frame_folder, tmp_path, monkeypatch, output):
    import stdvsr.upscale

    real, calls = stdvsr.upscale.tensor_to_uint8, []

    def interrupt_on_third_frame(t):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(t)

    monkeypatch.setattr(stdvsr.upscale, "tensor_to_uint8", interrupt_on_third_frame)
    with pytest.raises(KeyboardInterrupt):
        run(UpscaleConfig(str(frame_folder), str(tmp_path / output), str(student), chunk_frames=1))
    assert list(tmp_path.iterdir()) == []


def test_mixed_sizes_found_while_streaming_leave_no_output(student, clip, tmp_path):
    folder = tmp_path / "jpg"
    for i, frame in enumerate(clip):  # JPEG sizes are only known once decoded: frame 5 fails mid-run
        write_image(folder / f"{i:08d}.jpg", frame[:-4] if i == 4 else frame)
    out = tmp_path / "sr"
    assert_user_error(invoke(folder, out, "--model", student, "--chunk-frames", 1), "00000004.jpg is 94×58",
                      "00000000.jpg is 94×62")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jpg"]


def test_user_errors(student, frame_folder, clip, tmp_path):
    out = tmp_path / "out"
    assert_user_error(invoke(tmp_path / "nope.mp4", out, "--model", student), "nope.mp4 does not exist")
    (tmp_path / "broken.mp4").write_text("not a video")
    assert_user_error(invoke(tmp_path / "broken.mp4", out, "--model", student), "broken.mp4")
    (tmp_path / "empty").mkdir()
    assert_user_error(invoke(tmp_path / "empty", out, "--model", student), "empty holds no frames")
    mixed = tmp_path / "mixed"
    write_image(mixed / "00000000.png", clip[0])
    write_image(mixed / "00000001.png", clip[1][:, :-8])
    assert_user_error(invoke(mixed, out, "--model", student), "00000001.png is 86×62", "same size")
    assert_user_error(invoke(frame_folder, tmp_path / "out.gif", "--model", student), "unknown extension '.gif'")
    assert_user_error(invoke(frame_folder, out, "--model", tmp_path / "missing.pth"), "missing.pth does not exist")
    assert_user_error(invoke(frame_folder, out, "--model", student, "--tile", 50), "--tile 50", "multiple of 4")
    assert_user_error(invoke(frame_folder, out, "--model", student, "--tile", 16), "--tile-overlap 16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mp4", "empty", "mixed"]


# ------------------------------------------------------------------------------------------- issue #16 items
@pytest.fixture(scope="module")
def corrupt_video(demo_videos, tmp_path_factory) -> tuple[Path, int]:
    """A 10-frame carphone mp4 with 6,000 bytes zeroed at a third: the container states 10 frames, fewer decode."""
    path = write_video(tmp_path_factory.mktemp("corrupt") / "carphone.mp4", decode_frames(demo_videos["carphone"], 10))
    corrupt_mid_stream(path)
    decoded = count_decodable(path)
    assert 0 < decoded < 10 and video_header(path)[1] == 10
    return path, decoded


def test_corrupt_video_is_refused_unless_allow_short(student, corrupt_video, tmp_path):
    path, decoded = corrupt_video
    out = tmp_path / "sr.mp4"
    # before: exit 0 and a 2-frame video; now an error naming the file and both counts, and no output
    assert_user_error(invoke(path, out, "--model", student), f"video {path}: only {decoded} of the 10 frames",
                      "--allow-short")
    assert list(tmp_path.iterdir()) == []
    result = invoke(path, out, "--model", student, "--allow-short")
    assert result.exit_code == 0, result.output
    assert f"Warning: video {path}: only {decoded} of the 10 frames" in result.stderr
    assert result.stdout.startswith(f"{decoded} frames 176×144 → 704×576")
    assert count_decodable(out) == decoded


def test_video_without_a_stated_frame_count_is_not_checked(student, carphone_frames, tmp_path):
    raw = tmp_path / "clip.mjpeg"  # a raw MJPEG stream: no container, so OpenCV knows no frame count
    raw.write_bytes(b"".join(cv2.imencode(".jpg", cv2.cvtColor(f[40:104, 40:136], cv2.COLOR_RGB2BGR))[1].tobytes()
                             for f in carphone_frames[:5]))
    assert video_header(raw)[1] is None
    result = invoke(raw, tmp_path / "sr", "--model", student)
    assert result.exit_code == 0, result.output
    assert read_folder(tmp_path / "sr").shape == (5, 256, 384, 3) and "Warning" not in result.stderr


@pytest.mark.parametrize("case, fragment", [("equal", "is the INPUT itself"), ("spelled", "is the INPUT itself"),
                                            ("symlink", "is the INPUT itself"), ("nested", "is inside the INPUT"),
                                            ("parent", "contains the INPUT"), ("video", "is the INPUT itself")])
def test_output_never_replaces_the_input(student, frame_folder, video, tmp_path, case, fragment):
    inp = tmp_path / "in" / "frames"
    shutil.copytree(frame_folder, inp)
    if case == "video":
        inp = tmp_path / "in" / "clip.mp4"
        shutil.copy(video, inp)
    out = {"equal": inp, "spelled": inp.parent / "." / ".." / "in" / inp.name, "symlink": tmp_path / "link",
           "nested": inp / "sr", "parent": inp.parent, "video": inp}[case]
    if case == "symlink":
        out.symlink_to(inp, target_is_directory=True)
    before = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in (tmp_path / "in").rglob("*") if p.is_file())
    assert_user_error(invoke(inp, out, "--model", student, "--force"), f"OUTPUT {out} {fragment}")
    after = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in (tmp_path / "in").rglob("*") if p.is_file())
    assert after == before and not (inp.is_dir() and (inp / "sr").exists())


@pytest.mark.parametrize("wrap", ["raw", "params_ema"])
def test_raw_and_basicsr_state_dicts_run_with_arch(student, frame_folder, untiled, tmp_path, wrap):
    state = load_model(student)[0].state_dict()
    weights = tmp_path / "net_g.pth"
    torch.save(state if wrap == "raw" else {"params_ema": state}, weights)
    out = tmp_path / "sr"
    assert_user_error(invoke(frame_folder, out, "--model", weights), "not a stdvsr checkpoint",
                      "--arch, one of edvr, fastdvdnet")
    assert_user_error(invoke(frame_folder, out, "--model", weights, "--arch", "fastdvdnet-x"),
                      "--arch 'fastdvdnet-x' is not a model name")
    assert_user_error(invoke(frame_folder, out, "--model", weights, "--arch", "vdsr"), "do not fit VDSR", "--arch")
    result = invoke(frame_folder, out, "--model", weights, "--arch", "fastdvdnet-quarter")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_folder(out), untiled)


def test_progress_lines_when_stderr_is_not_a_terminal(student, frame_folder, tmp_path, monkeypatch):
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    result = invoke(frame_folder, tmp_path / "sr", "--model", student, "--chunk-frames", 2)  # CliRunner: no tty
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("upscale: ")]
    assert lines[-1].startswith("upscale: 6/6 frames") and "frames/s" in lines[-1]
    assert "upscale:" not in result.stdout


def test_plain_progress_lines_come_every_few_seconds_too(monkeypatch, capsys):
    """A job whose count is unknown (a video container that does not state it) or slow still logs, by time."""
    import stdvsr.progress as progress

    monkeypatch.delenv("FORCE_COLOR", raising=False)
    clock = iter([0.0, 3.0, 11.0, 12.0, 25.0] + [30.0] * 6)
    monkeypatch.setattr(progress, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    with progress.work_progress(None, "upscale", "frames", every_s=10) as bar:  # pytest's stderr: not a terminal
        for _ in range(4):  # at 3, 11, 12, 25 s
            bar.advance(10)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["upscale: 20 frames", "upscale: 40 frames"]
    assert lines[0].endswith("1.82 frames/s")
    with progress.work_progress(5, "upscale", "frames", enabled=False) as bar:  # show_progress=False: silent
        for _ in range(5):
            bar.advance()
    assert capsys.readouterr().err == ""
