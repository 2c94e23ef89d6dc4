"""Frame files on disk: decoding with clear errors, and atomic writes.

Convention everywhere in stdvsr: a frame in memory is an ``H×W×3`` ``uint8`` numpy array in **RGB** order
(OpenCV's BGR never leaves this module).
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from stdvsr.errors import StdvsrError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import: mkstemp creates 0600 files, outputs get the usual 0666 & ~umask


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file into an ``H×W×3`` uint8 RGB array (grey is expanded, alpha dropped)."""
    path = Path(path)
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise StdvsrError(f"frame {path} does not exist; check the dataset folder") from None
    except OSError as e:
        raise StdvsrError(f"cannot read frame {path}: {e.strerror}") from None
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise StdvsrError(f"cannot decode frame {path}: the file is empty, truncated or not an image; "
                          "re-extract or remove it")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image, from the PNG header when possible (no decode), else by decoding."""
    path = Path(path)
    if path.suffix.lower() == ".png":
        try:
            with open(path, "rb") as f:
                head = f.read(24)
        except FileNotFoundError:
            raise StdvsrError(f"frame {path} does not exist; check the dataset folder") from None
        if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
            raise StdvsrError(f"cannot decode frame {path}: not a valid PNG file; re-extract or remove it")
        width, height = struct.unpack(">II", head[16:24])
        return int(height), int(width)
    img = read_image(path)
    return img.shape[0], img.shape[1]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    A crash inside the block leaves no file at ``path`` (and removes the temporary), so a file that exists is
    always complete. ``durable=True`` also fsyncs the file before and its folder after the rename, so the file
    survives a power loss once this returns (what progress records of long jobs need).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        if durable:
            fsync_paths([tmp])
        os.replace(tmp, path)
        if durable:
            fsync_paths([path.parent])
    finally:
        tmp.unlink(missing_ok=True)


def fsync_paths(paths) -> None:
    """Flush files (or folders) to the disk: written data survives a crash of the machine, not only of the process."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def iter_video_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Decode a video file with OpenCV, yielding RGB uint8 frames in order."""
    path = Path(path)
    if not path.is_file():
        raise StdvsrError(f"video {path} does not exist; check the path")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise StdvsrError(f"OpenCV cannot open video {path}; check the file or convert it to mp4 (H.264)")
    count = 0
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            count += 1
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
    if count == 0:
        raise StdvsrError(f"no frame could be decoded from video {path}; the file is empty or corrupt")


def write_image(path: str | os.PathLike, rgb: np.ndarray, png_compression: int = 1) -> None:
    """Write an ``H×W×3`` uint8 RGB array atomically (format from the suffix)."""
    path = Path(path)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_image expects H×W×3 uint8 RGB, got {rgb.dtype} {rgb.shape}")
    params = [cv2.IMWRITE_PNG_COMPRESSION, png_compression] if path.suffix.lower() == ".png" else []
    ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise StdvsrError(f"cannot encode an image as {path.suffix!r} for {path}; use .png")
    with atomic_path(path) as tmp:
        buf.tofile(tmp)


def write_text(path: str | os.PathLike, text: str, durable: bool = False) -> None:
    """Write a text file atomically (``durable``: fsynced, see :func:`atomic_path`)."""
    with atomic_path(path, durable) as tmp:
        tmp.write_text(text)
