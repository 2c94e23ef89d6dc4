"""``stdvsr upscale``: super-resolve a whole video (or a folder of frames) with any stdvsr checkpoint.

Every output frame t comes from the ``model.num_frame`` window centred on t, replicate-padded at the clip's ends,
and LR frames whose size is not a multiple of 4 are replicate-padded on the bottom/right and the output cropped
back — exactly :func:`stdvsr.infer.upscale_frames`, so an untiled run equals it on the whole clip.

Memory stays bounded for long and large videos:

* **Streaming in chunks.** Frames are decoded as they are needed; ``chunk_frames`` output frames are computed at a
  time (their windows are one batch per forward) from a buffer that holds the chunk plus ``num_frame // 2``
  context frames on each side, and written before the next chunk is read. Each window is computed from the same
  frames whatever the chunking, so chunked and unchunked runs agree — bit for bit as far as the convolution
  kernels do not depend on the batch size (on a CPU a batch of a single window can differ in the last float bit,
  which flips a rounding to uint8 on a few pixels in a million).
* **Tiling.** With ``tile > 0`` each LR frame is cut into ``tile``×``tile`` tiles that overlap their neighbours by
  at least ``tile_overlap`` pixels, spread evenly over the frame. The network sees one tile (of every window in the
  chunk) at a time; SR tiles are blended on a CPU canvas with weights that ramp linearly across each overlap
  (normalised to sum to one), so a tile's border pixels — where its zero padding differs from the true
  neighbourhood — count for little and no seam is left. Tiled output differs from untiled output only where a
  tile border lies within the network's receptive field.

Outputs are written atomically: a video into a hidden temporary file next to OUTPUT, frames into a hidden
temporary folder, renamed onto OUTPUT only once every frame is written, so an interrupted run leaves nothing that
looks complete.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
from torch import nn

from stdvsr.configs import UpscaleConfig
from stdvsr.data import list_frames, to_tensor, window_indices
from stdvsr.errors import StdvsrError
from stdvsr.options import check_fields
from stdvsr.infer import MULTIPLE, pad_bottom_right, padded_size
from stdvsr.io import (IMAGE_SUFFIXES, atomic_path, check_replaceable, check_writable, image_size, is_image,
                       iter_video_frames, read_image, video_header, write_image)
from stdvsr.metrics import tensor_to_uint8
from stdvsr.progress import work_progress
from stdvsr.training import resolve_device

#: Output video containers by suffix and the OpenCV FourCC written into them.
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
DEFAULT_FPS = 25.0


@dataclass
class FrameSource:
    """Frames to upscale, decoded lazily: ``frames`` yields RGB uint8 arrays of size ``height``×``width``."""

    frames: Iterator[np.ndarray]
    height: int
    width: int
    fps: float | None                 # the video's own rate (None for frame folders or when the file has none)
    count: int | None                 # None when the container does not say


def open_input(path: Path, allow_short: bool = False) -> FrameSource:
    """A video file or a folder of frames, checked up front as far as possible without decoding everything.

    A video that ends before the frame count its container states is refused when the stream ends, unless
    ``allow_short`` (:func:`stdvsr.io.iter_video_frames`)."""
    if path.is_dir():
        return _folder_source(path)
    if not path.exists():
        raise StdvsrError(f"INPUT {path} does not exist; give a video file or a folder of frames")
    return _video_source(path, allow_short)


def _folder_source(folder: Path) -> FrameSource:
    if not any(is_image(p) for p in folder.iterdir()):
        raise StdvsrError(f"INPUT folder {folder} holds no frames ({', '.join(IMAGE_SUFFIXES)}); give a folder of "
                          "frames or a video file")
    paths = list_frames(folder)
    first = read_image(paths[0])
    size = first.shape[:2]
    # PNG headers are cheap to read: a folder of mixed sizes fails now rather than after hours of work.
    for p in paths[1:]:
        if p.suffix.lower() == ".png":
            _check_size(p, image_size(p), paths[0], size)

    def frames() -> Iterator[np.ndarray]:
        yield first
        for p in paths[1:]:
            frame = read_image(p)
            _check_size(p, frame.shape[:2], paths[0], size)
            yield frame

    return FrameSource(frames(), size[0], size[1], None, len(paths))


def _check_size(path: Path, size: tuple[int, int], first: Path, expected: tuple[int, int]) -> None:
    if tuple(size) != tuple(expected):
        raise StdvsrError(f"frame {path} is {size[1]}×{size[0]} but {first.name} is {expected[1]}×{expected[0]}; "
                          "every frame of the INPUT folder must have the same size")


def _video_source(path: Path, allow_short: bool) -> FrameSource:
    frames = iter_video_frames(path, allow_short)
    first = next(frames)  # raises the one-line errors for files OpenCV cannot open or decode
    fps, count = video_header(path)

    def chained() -> Iterator[np.ndarray]:
        yield first
        yield from frames

    return FrameSource(chained(), first.shape[0], first.shape[1], fps, count)


# -------------------------------------------------------------------------------------------------- output
def output_kind(path: Path) -> str:
    """``"video"`` for .mp4/.avi, ``"frames"`` for a folder (an existing one, or a name without a suffix)."""
    if path.suffix.lower() in VIDEO_CODECS:
        return "video"
    if path.is_dir() or not path.suffix:
        return "frames"
    raise StdvsrError(f"OUTPUT {path}: unknown extension {path.suffix!r}; use .mp4 (mp4v), .avi (MJPG) or a folder "
                      "name without an extension for PNG frames")


#: What a frame OUTPUT folder holds (:func:`frame_folder_writer`): the only folder ``--force`` replaces.
OWN_FRAMES = r"\d{8}\.png"


def check_output(path: Path, kind: str, force: bool, input_path: Path | None = None) -> None:
    """Refuse, before any work, an OUTPUT that is, lies inside or contains the INPUT (after resolving symlinks:
    replacing it would destroy the input), an existing OUTPUT without ``force``, an existing frame folder that holds
    anything but stdvsr's ``%08d.png`` frames or is the current directory (or holds it), and a location that cannot
    be written (frames and videos are written beside OUTPUT, then renamed onto it)."""
    if input_path is not None:
        src, dst = input_path.resolve(), path.resolve()
        how = ("is the INPUT itself" if dst == src else "is inside the INPUT folder" if src in dst.parents
               else "contains the INPUT" if dst in src.parents else None)
        if how:
            raise StdvsrError(f"OUTPUT {path} {how} ({src}); upscale never writes over, into or around its input: "
                              "choose an OUTPUT outside the INPUT, e.g. a sibling folder")
    if path.exists() or path.is_symlink():
        if not force:
            raise StdvsrError(f"OUTPUT {path} already exists; pass --force to replace it or choose another path")
        if kind == "video" and path.is_dir():
            raise StdvsrError(f"OUTPUT {path} is a folder and cannot be replaced by a video; remove it or choose "
                              "another path")
        if kind == "frames":
            check_replaceable(path, "OUTPUT", OWN_FRAMES, "%08d.png frames")
    check_writable(path.parent, "OUTPUT", folder=True)


@contextlib.contextmanager
def video_writer(path: Path, fps: float, width: int, height: int) -> Iterator[Callable[[np.ndarray], None]]:
    """Write RGB frames into a video that appears at ``path`` only once the block succeeds."""
    codec = VIDEO_CODECS[path.suffix.lower()]
    with atomic_path(path) as tmp:  # keeps the suffix: OpenCV picks the container from it
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), fps, (width, height))
        if not writer.isOpened():
            raise StdvsrError(f"OpenCV cannot write a {codec} {path.suffix} video of {width}×{height} to {path}; "
                              "write PNG frames instead (an OUTPUT folder without an extension)")
        try:
            yield lambda rgb: writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()


@contextlib.contextmanager
def frame_folder_writer(path: Path) -> Iterator[Callable[[np.ndarray], None]]:
    """Write RGB frames as ``%08d.png`` into a hidden folder renamed onto ``path`` once the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}.{secrets.token_hex(4)}"
    tmp = path.parent / f".{path.name}.{tag}.partial"
    tmp.mkdir()
    count = 0

    def write(rgb: np.ndarray) -> None:
        nonlocal count
        write_image(tmp / f"{count:08d}.png", rgb)
        count += 1

    try:
        yield write
        if path.exists() or path.is_symlink():  # --force: swap, then drop the old output
            try:  # checked again: a user may have put files into it while the frames were computed
                check_replaceable(path, "OUTPUT", OWN_FRAMES, "%08d.png frames")
            except StdvsrError as e:
                kept = path.parent / f"{path.name}.{tag}"
                os.replace(tmp, kept)
                raise StdvsrError(f"{e}; the {count} new frames are kept in {kept}") from None
            old = path.parent / f".{path.name}.{tag}.old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# ------------------------------------------------------------------------------------------------- tiling
def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``size`` (all multiples of 4), spread evenly so that
    neighbours overlap by at least ``overlap``; ``[0]`` when one tile covers the whole size."""
    if tile <= 0 or size <= tile:
        return [0]
    n = -(-(size - overlap) // (tile - overlap))  # fewest tiles whose stride is at most tile - overlap
    span = (size - tile) // MULTIPLE
    # floor keeps every stride ≤ tile - overlap (so overlaps never shrink below it); the last start is size - tile
    return [MULTIPLE * (i * span // (n - 1)) for i in range(n)]


def blend_weights(starts: list[int], tile: int, size: int, scale: int) -> list[torch.Tensor]:
    """Per-tile 1-D weights along one axis in output pixels: 1 inside, a linear ramp across each overlap with a
    neighbour (none at the frame's edges), normalised so the tiles' weights sum to one at every pixel.

    Tiles form a grid, so the 2-D weight of tile (i, j) is the outer product of its row and column weights and the
    sum over tiles factorises into the two 1-D sums: normalising each axis normalises the grid.
    """
    length = min(tile, size)
    spans = [(s * scale, (s + length) * scale) for s in starts]
    weights = []
    for k, (a, b) in enumerate(spans):
        x = torch.arange(a, b, dtype=torch.float64) + 0.5
        w = torch.ones(b - a, dtype=torch.float64)
        if k > 0 and spans[k - 1][1] > a:  # ramp up across the overlap with the previous tile
            w = torch.minimum(w, (x - a) / (spans[k - 1][1] - a))
        if k + 1 < len(spans) and spans[k + 1][0] < b:  # ramp down across the overlap with the next tile
            w = torch.minimum(w, (b - x) / (b - spans[k + 1][0]))
        weights.append(w)
    total = torch.zeros(size * scale, dtype=torch.float64)
    for (a, b), w in zip(spans, weights):
        total[a:b] += w
    return [(w / total[a:b]).float() for (a, b), w in zip(spans, weights)]


# --------------------------------------------------------------------------------------------------- model
def load_upscaler(path: Path, arch: str | None = None) -> nn.Module:
    """The network in ``path``: a stdvsr checkpoint, or with ``arch`` a raw / BasicSR state dict of that model."""
    from stdvsr.models import load_model

    return load_model(path, arch=arch, flag="--model")[0]


@torch.inference_mode()
def upscale_stream(model: nn.Module, frames: Iterator[np.ndarray], chunk_frames: int = 8, tile: int = 0,
                   tile_overlap: int = 16) -> Iterator[np.ndarray]:
    """SR of every frame of a stream of RGB uint8 frames, in order, as RGB uint8 frames ``scale``× larger.

    Holds at most ``chunk_frames + 2·(num_frame // 2)`` LR frames and ``chunk_frames`` SR frames at a time; the
    model runs on its own device. See the module docstring for windows, padding and tiling.
    """
    device = next(model.parameters()).device
    scale, half = model.scale, model.num_frame // 2
    buffer: list[torch.Tensor] = []  # LR frames buffer_start, buffer_start + 1, … (float32, padded to MULTIPLE)
    buffer_start, done, ended = 0, 0, False
    grid, size, padded = None, None, None  # tiles, LR frame size and its size padded to MULTIPLE, from the first frame
    while True:
        while not ended and buffer_start + len(buffer) < done + chunk_frames + half:
            frame = next(frames, None)
            if frame is None:
                ended = True
                break
            if size is None:
                size = frame.shape[:2]
                padded = padded_size(*size)
                grid = _tile_grid(*padded, tile, tile_overlap, scale)
            buffer.append(pad_bottom_right(to_tensor([frame]), *padded)[0])
        available = buffer_start + len(buffer)  # frames read so far (the clip's length once ended)
        last = available if ended else available - half  # frames whose whole window has been read
        todo = range(done, min(done + chunk_frames, last))
        if not todo:
            return
        # Before the end is reached no window reaches past `available - 1`, so clamping there changes nothing.
        index = torch.tensor([[i - buffer_start for i in window_indices(t, available, model.num_frame)]
                              for t in todo])
        lq = torch.stack(buffer)
        sr = _upscale_tiles(model, lq, index, grid, device)
        for frame in sr[..., : size[0] * scale, : size[1] * scale]:
            yield tensor_to_uint8(frame)
        done += len(todo)
        drop = done - half - buffer_start
        if drop > 0:
            del buffer[:drop]
            buffer_start += drop


def _tile_grid(hp: int, wp: int, tile: int, overlap: int, scale: int) -> list[tuple]:
    """``(y, x, tile_h, tile_w, weight)`` per tile, LR coordinates; weight is None for a single whole-frame tile."""
    ys, xs = tile_starts(hp, tile, overlap), tile_starts(wp, tile, overlap)
    if len(ys) == len(xs) == 1:
        return [(0, 0, hp, wp, None)]
    th, tw = min(tile, hp), min(tile, wp)
    wy, wx = blend_weights(ys, tile, hp, scale), blend_weights(xs, tile, wp, scale)
    return [(y, x, th, tw, wy[i][:, None] * wx[j][None, :]) for i, y in enumerate(ys) for j, x in enumerate(xs)]


def _upscale_tiles(model: nn.Module, lq: torch.Tensor, index: torch.Tensor, grid: list[tuple],
                   device: torch.device) -> torch.Tensor:
    """Windows ``index`` (n, num_frame) into LR frames ``lq`` (N, 3, hp, wp) → SR (n, 3, s·hp, s·wp) on the CPU."""
    s = model.scale
    if grid[0][4] is None:
        return model(lq[index].to(device)).float().cpu()
    canvas = torch.zeros(len(index), 3, s * lq.shape[-2], s * lq.shape[-1])
    for y, x, th, tw, weight in grid:
        # crop before gathering the windows: only tile-sized copies of the frames are ever made
        sr = model(lq[:, :, y:y + th, x:x + tw][index].to(device)).float().cpu()
        canvas[:, :, s * y:s * (y + th), s * x:s * (x + tw)].addcmul_(sr, weight)
    return canvas


# ---------------------------------------------------------------------------------------------------- stage
def check_config(cfg: UpscaleConfig) -> None:
    check_fields(cfg)  # types and ranges (--chunk-frames ≥ 1, --fps > 0, ...), from the fields' options
    if cfg.tile % MULTIPLE:
        raise StdvsrError(f"--tile {cfg.tile} must be 0 (no tiling) or a positive multiple of {MULTIPLE} "
                          f"(e.g. {max(MULTIPLE, cfg.tile - cfg.tile % MULTIPLE)})")
    if cfg.tile_overlap % MULTIPLE:
        raise StdvsrError(f"--tile-overlap {cfg.tile_overlap} must be a multiple of {MULTIPLE} (0 for none)")
    if cfg.tile and cfg.tile_overlap >= cfg.tile:
        raise StdvsrError(f"--tile-overlap {cfg.tile_overlap} must be smaller than --tile {cfg.tile}")


def run(cfg: UpscaleConfig, show_progress: bool = True) -> dict:
    """Upscale ``cfg.input`` into ``cfg.output``; returns what was written and how long it took."""
    start = time.perf_counter()
    check_config(cfg)
    source = open_input(Path(cfg.input).expanduser(), cfg.allow_short)
    out = Path(cfg.output).expanduser()
    kind = output_kind(out)
    check_output(out, kind, cfg.force, Path(cfg.input).expanduser())
    model = load_upscaler(Path(cfg.model).expanduser(), cfg.arch)
    device = resolve_device(cfg.device)
    model.to(device)
    fps = cfg.fps or source.fps or DEFAULT_FPS
    s = model.scale
    height, width = s * source.height, s * source.width
    writer = video_writer(out, fps, width, height) if kind == "video" else frame_folder_writer(out)
    count = 0
    # on a terminal a bar; in logs a line such as "upscale: 40/120 frames  3.10 frames/s" every ~10 s (stderr)
    with writer as write, work_progress(source.count, "upscale", "frames", enabled=show_progress) as bar:
        for frame in upscale_stream(model, source.frames, cfg.chunk_frames, cfg.tile, cfg.tile_overlap):
            write(frame)
            count += 1
            bar.advance()
    return {"output": str(out), "kind": kind, "frames": count, "width": width, "height": height,
            "input_width": source.width, "input_height": source.height, "fps": fps, "scale": s,
            "num_frame": model.num_frame, "device": str(device), "seconds": time.perf_counter() - start}
