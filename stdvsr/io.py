"""Frame files on disk: decoding with clear errors, and atomic writes.

Convention everywhere in stdvsr: a frame in memory is an ``H×W×3`` ``uint8`` numpy array in **RGB** order
(OpenCV's BGR never leaves this module).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
import tempfile
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from stdvsr.errors import StdvsrError, os_advice

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


# ------------------------------------------------------------------------------------------ output checks
def check_writable(path: str | os.PathLike, flag: str, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written: ``path`` is a file to write (``folder=False``;
    written atomically beside itself, so its folder must take new files, and it must not be a folder) or a folder to
    write files into (``folder=True``). A real check: missing folders are created and a temporary file is created
    and removed in the one that will receive the output; folders created for the check are removed again, so a
    command refused later leaves nothing behind."""
    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise StdvsrError(f"{flag} {path} is a file, not a folder; give a folder path or remove the file")
    if not folder and path.is_dir():
        raise StdvsrError(f"{flag} {path} is a folder; give a file path")
    where = path if folder else path.parent
    missing = [p for p in (where, *where.parents) if not p.exists()]  # deepest first
    above = missing[-1].parent if missing else where
    if above.exists() and not above.is_dir():
        raise StdvsrError(f"{flag} {path}: {above} is a file, not a folder; fix the path")
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".stdvsr-write-check.", dir=where)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise StdvsrError(f"{flag} {path}: cannot write in {where} ({os_advice(e)})") from None
    finally:
        for p in missing:
            with contextlib.suppress(OSError):
                p.rmdir()


def check_replaceable(path: str | os.PathLike, flag: str, ours: str, what: str, instead: str = "") -> None:
    """Refuse to delete the folder ``path`` (to replace it with new output, e.g. under ``--force``) unless everything
    in it is what stdvsr writes there: the ``/``-separated path of every file and folder in it, relative to it
    (hidden ones included), must fully match the regex ``ours``, described to the user as ``what``; ``instead`` is
    the other way out the error offers (default: choose another ``flag``). The current
    directory and the folders holding it are never deleted, nor a file in the folder's place. A symlink or a path
    that does not exist passes: replacing a symlink removes the link, never what it points to."""
    path = Path(path).expanduser()
    instead = instead or f"choose another {flag}"
    if path.is_symlink() or not path.exists():
        return
    real, cwd = path.resolve(), Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        what_it_is = "the current directory" if real == cwd else "a parent of the current directory"
        raise StdvsrError(f"{flag} {path} is {what_it_is} ({real}); stdvsr never deletes it: {instead}")
    if not path.is_dir():
        raise StdvsrError(f"{flag} {path} is a file, not a folder stdvsr wrote; remove it yourself or {instead}")
    pattern = re.compile(ours)
    for top, dirs, files in os.walk(path):  # top-down, sorted: the first foreign entry is the same every time
        dirs.sort()
        rel = Path(top).relative_to(path)
        for name in sorted(dirs + files):
            entry = (rel / name).as_posix()
            if not pattern.fullmatch(entry):
                raise StdvsrError(f"{flag} {path} holds {path / entry}, which stdvsr did not write (it replaces a "
                                  f"folder only if it holds nothing but {what}); move your files out of it or "
                                  f"{instead}")


# ------------------------------------------------------------------------------------------- home, hashes
def stdvsr_home() -> Path:
    """Root of stdvsr's per-user cache: ``$STDVSR_HOME`` or ``~/.cache/stdvsr``."""
    home = Path(os.environ.get("STDVSR_HOME") or Path.home() / ".cache" / "stdvsr").expanduser()
    if home.exists() and not home.is_dir():
        raise StdvsrError(f"STDVSR_HOME {home} is a file, not a folder; point STDVSR_HOME at a folder "
                          "(default ~/.cache/stdvsr)")
    return home


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoints, videos, cache sources)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def size_text(nbytes: float) -> str:
    """A byte count for people, with three significant digits where it matters: ``512 B``, ``3.4 MiB``,
    ``12.1 GiB`` (never "0.0 GiB" for a small cache)."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            value = nbytes / size
            return f"{value:.{2 if value < 10 else 1 if value < 100 else 0}f} {unit}"
    return f"{int(nbytes)} B"


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike, flag: str = "--out", rank: int = 0) -> Iterator[None]:
    """Hold an exclusive lock on the output ``path`` of a run or cache for the block; a second writer is refused.

    The lock is ``flock`` on a hidden file next to the folder (``.NAME.lock``; ``.NAME.rankR.lock`` for rank R > 0
    of a sharded cache build, whose ranks write one folder together), removed when the block ends. The kernel drops
    the lock when its process ends, however it ends, so a killed run never leaves a stale lock (only the empty file,
    which the next run takes over). Where ``fcntl`` is missing (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    path = Path(path)
    lock = path.parent / (f".{path.name}.lock" if rank == 0 else f".{path.name}.rank{rank}.lock")
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        except OSError as e:
            raise StdvsrError(f"{flag} {path}: cannot create {lock} ({e.strerror}); choose a writable {flag}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 100, 0).decode(errors="replace").strip() or "pid unknown"
            os.close(fd)
            raise StdvsrError(f"{flag} {path} is in use by another stdvsr process ({holder}); wait for it to end "
                              f"or choose another {flag}") from None
        try:  # the holder we waited on may have removed the file meanwhile: then lock the new one
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still holding it: no one can lock a file that is about to vanish
        os.close(fd)  # closing the descriptor releases the lock


def fsync_paths(paths) -> None:
    """Flush files (or folders) to the disk: written data survives a crash of the machine, not only of the process."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def video_header(path: str | os.PathLike) -> tuple[float | None, int | None]:
    """``(fps, frames)`` as the video's container states them; None for what it leaves unknown (0 or −1)."""
    cap = cv2.VideoCapture(str(path))
    try:
        fps, count = cap.get(cv2.CAP_PROP_FPS), cap.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        cap.release()
    return (fps if fps > 0 else None), (int(count) if count > 0 else None)


def check_frame_count(path: str | os.PathLike, decoded: int, expected: int | None, allow_short: bool) -> None:
    """Refuse a video that decoded fewer frames than its container states (corrupt or truncated mid-stream:
    OpenCV just stops), or with ``allow_short`` say so loudly on stderr and go on with what was decoded."""
    if expected is None or decoded >= expected:
        return
    what = f"video {path}: only {decoded} of the {expected} frames its container states could be decoded"
    if not allow_short:
        raise StdvsrError(f"{what} (corrupt or truncated file); re-encode or re-download it, or pass --allow-short "
                          f"to go on with the {decoded} frames (for other commands reading video:{path}, run "
                          f"`stdvsr data prepare video:{path} --allow-short` once)")
    from stdvsr.progress import stderr

    stderr().print(f"Warning: {what} (corrupt or truncated file); going on with those {decoded} frames "
                   "(--allow-short)", style="bold yellow", markup=False, highlight=False, soft_wrap=True)


def iter_video_frames(path: str | os.PathLike, allow_short: bool = False) -> Iterator[np.ndarray]:
    """Decode a video file with OpenCV, yielding RGB uint8 frames in order.

    When the stream ends before the frame count the container states (a corrupt or truncated file), the last
    ``next()`` raises :class:`StdvsrError` — after the frames that did decode — unless ``allow_short``, which
    prints a warning instead (:func:`check_frame_count`). Containers that do not state a count are not checked.
    """
    path = Path(path)
    if not path.is_file():
        raise StdvsrError(f"video {path} does not exist; check the path")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise StdvsrError(f"OpenCV cannot open video {path}; check the file or convert it to mp4 (H.264)")
    _, expected = video_header(path)
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
    check_frame_count(path, count, expected, allow_short)


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


def mib(n: int | None) -> str:
    """Bytes as MiB with thousands separators, as the cache and export tables print them ("-" for unknown)."""
    return "-" if n is None else f"{n / 2**20:,.1f}"
