"""Builders shared by the tests: real frames decoded straight from video, fake dataset trees made of them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from stdvsr.io import write_image


def decode_frames(video: Path, count: int, start: int = 0) -> list[np.ndarray]:
    """First ``count`` frames from ``start`` of a video, RGB uint8, decoded with OpenCV directly."""
    cap = cv2.VideoCapture(str(video))
    frames = []
    index = 0
    while len(frames) < count:
        ok, bgr = cap.read()
        if not ok:
            break
        if index >= start:
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        index += 1
    cap.release()
    assert len(frames) == count, f"{video} has fewer than {start + count} frames"
    return frames


def make_vimeo(root: Path, frames: list[np.ndarray], clip_ids=("00001/0266", "00001/0267", "00002/0001")) -> Path:
    for n, clip_id in enumerate(clip_ids):
        for i in range(7):
            write_image(root / "sequences" / clip_id / f"im{i + 1}.png", frames[(i + n) % len(frames)])
    (root / "sep_trainlist.txt").write_text("\n".join(clip_ids[:2]) + "\n\n")
    (root / "sep_testlist.txt").write_text(clip_ids[2] + "\n")
    (root / "meta_info_Vimeo90K_test_slow_GT.txt").write_text(f"{clip_ids[2]} 7 (144,176,3)\n")
    return root


def make_vid4(root: Path, frames: list[np.ndarray], clips=("calendar", "city"), lq: bool = True) -> Path:
    for clip in clips:
        for i, frame in enumerate(frames):
            write_image(root / "GT" / clip / f"{i:08d}.png", frame)
            if lq:  # an LR twin made independently of stdvsr (area resize), so reading it back is checkable
                small = cv2.resize(frame, (frame.shape[1] // 4, frame.shape[0] // 4), interpolation=cv2.INTER_AREA)
                write_image(root / "BDx4" / clip / f"{i:08d}.png", small)
    return root


def write_clips(root: Path, clips: dict, videos: dict[str, list[np.ndarray]]) -> Path:
    """A folder dataset: ``clips`` maps a clip name to ``(video, first frame, frame count, top, left, height,
    width)``; each clip's frames are that crop of consecutive frames of ``videos[video]``."""
    for name, (video, first, count, top, left, h, w) in clips.items():
        for i in range(count):
            write_image(root / name / f"{i:08d}.png", videos[video][first + i][top:top + h, left:left + w])
    return root


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """RGB frames into an mp4v ``.mp4`` with OpenCV."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def corrupt_mid_stream(path: Path, nbytes: int = 6000) -> Path:
    """Zero ``nbytes`` at a third of a video file: its container still states every frame, but decoding stops early
    (what a damaged download or disk does; OpenCV reports no error, it just ends)."""
    blob = bytearray(path.read_bytes())
    start = len(blob) // 3
    blob[start:start + nbytes] = bytes(nbytes)
    path.write_bytes(bytes(blob))
    return path


def count_decodable(video: Path) -> int:
    """Frames OpenCV decodes from a video before it stops."""
    cap = cv2.VideoCapture(str(video))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    return count
