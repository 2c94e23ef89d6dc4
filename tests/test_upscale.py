"""stdvsr upscale: real clips in, playable videos / PNG frames out, equal to infer.upscale_frames, chunking exact,
tiling within a measured tolerance, atomic output, one-line errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from stdvsr.cli import cli
from stdvsr.data import list_frames, to_tensor
from stdvsr.infer import upscale_frames
from stdvsr.io import read_image, write_image
from stdvsr.models import build_model, load_model
from stdvsr.upscale import UpscaleConfig, run, tile_starts, upscale_stream
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
    (out / "keep.txt").write_text("mine")
    assert_user_error(invoke(frame_folder, out, "--model", student), "already exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"
    assert invoke(frame_folder, out, "--model", student, "--force").exit_code == 0
    assert not (out / "keep.txt").exists()
    np.testing.assert_array_equal(read_folder(out), untiled)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr"]


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
