"""Reading a teacher cache in stage two: a clip's frames, a crop, and the teacher's targets for that crop.

:class:`CacheReader` opens the manifest once and the arrays lazily in each process (so it can be handed to
DataLoader workers). :meth:`CacheReader.read` returns, for a clip, a range of its frames and an HR crop box, the
LR input the teacher saw, the HR ground truth (decoded from the dataset's frames), and the stored tiers cropped
to the box (a cache of LR footage, ``--degradation none``, has no ground truth: its samples carry no ``gt``). The
trunk comes with a margin of :data:`HEAD_MARGIN` LR pixels (zeros and a ``valid`` mask beyond
the frame), which is what :class:`TeacherHead` needs to rebuild F^SR and SR *exactly* for the crop: the crop of
the head's output on the whole frame equals the head's output on the margin-padded crop, cropped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from stdvsr.cache.layout import HEAD, HEAD_MARGIN, PROGRESS, dequantise, has_ground_truth, read_manifest
from stdvsr.cache.records import read_records
from stdvsr.cache.stores import backend
from stdvsr.errors import StdvsrError
from stdvsr.models.common import lrelu


class TeacherHead(nn.Module):
    """The teacher's layers after the trunk (EDVR: upconv1, upconv2, conv_hr, conv_last), loaded from the cache.

    ``feat_sr(trunk, valid)`` is EDVR.upsample_head on a margin-padded crop; ``valid`` (``(..., 1, h, w)``, 1 inside
    the frame) zeroes every intermediate map outside the frame, as the zero padding of a whole-frame run does.
    """

    def __init__(self, num_feat: int, center_frame_idx: int, num_out_ch: int = 3):
        super().__init__()
        self.center_frame_idx = center_frame_idx
        self.upconv1 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
        self.upconv2 = nn.Conv2d(num_feat, 64 * 4, 3, 1, 1)
        self.conv_hr = nn.Conv2d(64, 64, 3, 1, 1)
        self.conv_last = nn.Conv2d(64, num_out_ch, 3, 1, 1)

    @classmethod
    def load(cls, path: Path) -> "TeacherHead":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise StdvsrError(f"cannot read the teacher head {path} ({type(e).__name__}); the cache is damaged — "
                              "rebuild it with stdvsr cache-teacher") from None
        state = obj["state_dict"]
        head = cls(obj["num_feat"], obj["center_frame_idx"], state["conv_last.weight"].shape[0])
        head.load_state_dict(state, strict=True)
        return head.eval().requires_grad_(False)

    def feat_sr(self, trunk: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """F^LR ``(N, C, h, w)`` → F^SR ``(N, 64, 4h, 4w)``; ``valid`` ``(N or 1, 1, h, w)`` masks out the rest."""
        def mask(x, factor):
            if valid is None:
                return x
            return x * (valid if factor == 1 else F.interpolate(valid, scale_factor=factor, mode="nearest"))

        x = mask(trunk, 1)
        x = mask(lrelu(F.pixel_shuffle(self.upconv1(x), 2)), 2)
        x = mask(lrelu(F.pixel_shuffle(self.upconv2(x), 2)), 4)
        return mask(lrelu(self.conv_hr(x)), 4)

    def sr(self, feat_sr: torch.Tensor, lq_center: torch.Tensor) -> torch.Tensor:
        """SR = conv_last(F^SR) + bilinear ×4 of the centre LR frame (both margin-padded crops)."""
        base = F.interpolate(lq_center, scale_factor=4, mode="bilinear", align_corners=False)
        return self.conv_last(feat_sr) + base

    def targets(self, trunk: torch.Tensor, valid: torch.Tensor, lq_margin: torch.Tensor | None = None,
                margin: int = HEAD_MARGIN) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(F^SR, SR)`` for the crop inside a ``margin``-padded trunk crop (leading dims ``(B, T)`` or ``(T,)``).

        ``lq_margin``: the LR frames of the same padded box (replicate beyond the frame, as bilinear sampling
        clamps); without it SR is not rebuilt (``None``).
        """
        lead = trunk.shape[:-3]  # (T,) or (B, T)
        t = trunk.reshape(-1, *trunk.shape[-3:])
        v = valid.reshape(-1, 1, *valid.shape[-2:])  # one mask per sample: (1 or B, 1, h, w)
        if v.shape[0] != t.shape[0]:
            v = v.repeat_interleave(t.shape[0] // v.shape[0], dim=0)
        fsr = self.feat_sr(t, v)
        m = 4 * margin
        inner = (..., slice(m, fsr.shape[-2] - m), slice(m, fsr.shape[-1] - m))
        sr = None
        if lq_margin is not None:
            sr = self.sr(fsr, lq_margin.reshape(-1, *lq_margin.shape[-3:]))[inner]
            sr = sr.reshape(*lead, *sr.shape[1:])
        fsr = fsr[inner]
        return fsr.reshape(*lead, *fsr.shape[1:]), sr


class CacheReader:
    """A built teacher cache, ready to read. ``data`` overrides the dataset spec (a dataset that moved)."""

    def __init__(self, path: str | Path, data: str | None = None, require_complete: bool = True):
        self.root = Path(path)
        self.manifest = read_manifest(self.root, required=True)
        if require_complete and not self.manifest.get("complete"):
            done = len(list((self.root / PROGRESS).glob("*.json")))
            raise StdvsrError(f"cache {self.root} is incomplete ({done} of {len(self.manifest['clips'])} clips "
                              "written); run the same stdvsr cache-teacher command again to finish it")
        self.fingerprint = self.manifest["fingerprint"]
        self.clips: list[dict] = self.manifest["clips"]
        self.groups: dict = self.manifest["groups"]
        self.tiers: list[str] = ["lq", *self.fingerprint["tiers"]]
        self.scale: int = self.fingerprint["scale"]
        self.num_frame: int = self.fingerprint["num_frame"]
        self.views: int = self.fingerprint.get("views", 1)  # absent from caches written before --views existed
        #: False for a cache of LR footage (``--degradation none``): no HR frames exist, samples carry no ``gt``.
        self.has_gt: bool = has_ground_truth(self.fingerprint)
        from stdvsr.data import resolve_spec

        self.data = resolve_spec(data) if data else self.fingerprint["data"]["spec"]
        self.store = backend(self.root, self.manifest)
        self._clip_objects = None
        self._intact: set[int] = set()  # clips whose pieces were found on disk, by this process
        self._pid = os.getpid()
        self._ram = FrameMemory(0)  # off until keep_in_memory()

    def keep_in_memory(self, budget_bytes: int) -> None:
        """Keep whole frames this process reads — of every tier, and the decoded ground truth — in RAM, up to
        ``budget_bytes`` (a DataLoader worker holds its own), so that later crops of them are sliced, not read
        and decoded again. What does not fit is read from disk every time (no eviction: nothing thrashes). The
        values are the same either way."""
        self._ram = FrameMemory(budget_bytes)

    def __len__(self) -> int:
        return len(self.clips)

    def head(self) -> TeacherHead:
        """The cached head that rebuilds F^SR and SR from the trunk (EDVR); a cache without a trunk has none."""
        if "trunk" not in self.tiers:
            raise StdvsrError(f"cache {self.root} stores no trunk ({', '.join(self.tiers)}), so it has no head to "
                              "rebuild the teacher's F^SR or SR; read its stored tiers instead")
        return TeacherHead.load(self.root / HEAD)

    def teacher_channels(self, feature: str) -> int:
        """The teacher's channels at F^SR (``feature`` ``sr``) or F^LR (``lr``): as the manifest records them, else
        (caches written before it did, all EDVR) from the cached head, else EDVR's 64 of F^SR."""
        recorded = self.manifest["layout"].get("channels")
        if recorded:
            return int(recorded[feature])
        if "trunk" in self.tiers:
            head = self.head()
            return head.conv_hr.out_channels if feature == "sr" else head.upconv1.in_channels
        return 64

    def require_ground_truth(self, needed_by: str) -> None:
        """Refuse, in one line, a cache of LR footage to a consumer that needs ground truth (``needed_by``, e.g.
        ``"the reconstruction loss L_rec"``): such a cache holds the teacher's targets only."""
        if not self.has_gt:
            raise StdvsrError(f"cache {self.root} is LR footage without ground truth (built with --degradation "
                              f"none), so it cannot serve {needed_by}; train against the teacher's outputs only, or "
                              "use a cache built from HR frames (--degradation bd or bi)")

    def dataset_clips(self):
        """The dataset's :class:`stdvsr.data.Clip` objects (for the HR frames), one per cached clip (views
        included, so ``read_hr`` returns a view's frames transformed), checked against the cache."""
        if self._clip_objects is None:
            from stdvsr.data import load_clips, with_views

            fp = self.fingerprint["data"]
            clips = load_clips(self.data, fp["split"])
            if fp["max_clips"]:
                clips = clips[:fp["max_clips"]]
            clips = with_views(clips, self.views)
            names = [c[0] for c in self.fingerprint["clips"]]
            if [c.name for c in clips] != names or [len(c) for c in clips] != [c[1] for c in self.fingerprint["clips"]]:
                raise StdvsrError(f"dataset {self.data} no longer holds the clips cache {self.root} was built from "
                                  "(names or frame counts differ); point --data at the original dataset")
            self._clip_objects = clips
        return self._clip_objects

    # --------------------------------------------------------------------------------------------------- read
    def _damaged(self, clip: dict, what: str) -> StdvsrError:
        return StdvsrError(f"cache {self.root}: clip {clip['name']} is damaged ({what}); `stdvsr cache verify "
                           f"{self.root}` lists every damaged clip and the smallest fix (most often: run the same "
                           "stdvsr cache-teacher command again)")

    def _check_pieces(self, clip: dict) -> None:
        """Refuse a clip with a shard or part file missing, once per clip and process: the stores read a missing
        piece as the fill value (zeros), which would train on silence without a word."""
        if self._pid != os.getpid():  # a DataLoader worker checks for itself
            self._intact, self._pid = set(), os.getpid()
        if clip["index"] in self._intact:
            return
        record = clip
        if "part" not in clip and "hashes" not in clip:  # an incomplete cache: the clip's progress record
            record = read_records(self.root).get(clip["index"])
            if record is None:
                raise StdvsrError(f"cache {self.root}: clip {clip['name']} is not written yet; run the same "
                                  "stdvsr cache-teacher command again to finish it")
        missing = self.store.missing(clip, record)
        if missing:
            raise self._damaged(clip, f"{len(missing)} piece(s) missing on disk, e.g. {missing[0]}")
        self._intact.add(clip["index"])

    def _read(self, clip: dict, tier: str, frames: range, rows: slice, cols: slice) -> torch.Tensor:
        self._check_pieces(clip)
        try:
            if self._ram.budget:
                whole = [self._ram.get((clip["index"], tier, f), lambda f=f: self.store.read(
                    clip, tier, slice(f, f + 1), slice(None), slice(None))) for f in frames]
                data = np.concatenate([d[:, :, rows, cols] for d, _ in whole])  # crop, then copy the crops
                scales = None if whole[0][1] is None else np.concatenate([sc for _, sc in whole])
            else:
                data, scales = self.store.read(clip, tier, slice(frames.start, frames.stop), rows, cols)
        except Exception as e:  # a corrupted chunk fails to decode (or its checksum to match)
            raise self._damaged(clip, f"{tier} does not decode: {type(e).__name__}") from None
        if scales is not None:
            out = dequantise(data, scales)
        else:
            out = torch.from_numpy(np.ascontiguousarray(data)).float()
        if (scales is not None or data.dtype.kind == "f") and not torch.isfinite(out).all():
            raise self._damaged(clip, f"{tier} holds NaN/inf")
        return out

    def read(self, index: int, frames: Sequence[int] | range | None = None,
             box: tuple[int, int, int, int] | None = None, tiers: Sequence[str] | None = None,
             gt: bool | None = None, margin: int = HEAD_MARGIN, lq: bool = True) -> dict:
        """Clip ``index``, consecutive ``frames`` (default all), HR crop ``box = (top, left, height, width)``
        (multiples of the scale; default the whole frame).

        Returns float32 tensors: ``lq`` ``(T,3,h,w)``, ``gt`` ``(T,3,H,W)`` (if ``gt``; default: when the cache
        has ground truth, and ``gt=True`` on LR footage is refused), every stored tier in
        ``tiers`` (default all) cropped to the box — except ``trunk``, which comes as ``(T,C,h+2m,w+2m)`` with
        ``valid`` ``(1,h+2m,w+2m)`` and ``lq_margin`` ``(T,3,h+2m,w+2m)`` for :meth:`TeacherHead.targets`.
        ``lq=False`` skips the LR crop when it would be a read of its own (callers that read LR frames themselves).
        """
        clip = self.clips[index]
        group = self.groups[clip["group"]]
        H, W = group["hr_size"]
        s = self.scale
        frames = range(clip["frames"]) if frames is None else frames
        frames = range(frames[0], frames[-1] + 1) if not isinstance(frames, range) else frames
        if frames.step != 1 or frames.start < 0 or frames.stop > clip["frames"] or len(frames) == 0:
            raise StdvsrError(f"frames {frames.start}..{frames.stop - 1} are not consecutive frames of clip "
                              f"{clip['name']} ({clip['frames']} frames)")
        top, left, height, width = box if box is not None else (0, 0, H, W)
        inside = min(top, left, height, width) >= 0 and top + height <= H and left + width <= W
        if not inside or (top | left | height | width) % s:
            raise StdvsrError(f"crop box {box} does not fit clip {clip['name']} ({W}×{H}) on the ×{s} grid")
        y, x, h, w = top // s, left // s, height // s, width // s
        tiers = self.tiers if tiers is None else list(tiers)
        if gt is None:
            gt = self.has_gt
        elif gt:
            self.require_ground_truth("ground-truth frames (gt)")
        out: dict = {"clip": clip["name"], "index": index, "frames": (frames.start, frames.stop), "box": (top, left)}
        for tier in tiers:
            if tier == "lq":
                continue
            if tier not in self.tiers:
                raise StdvsrError(f"cache {self.root} does not store {tier!r} (it stores {', '.join(self.tiers)}); "
                                  "rebuild it with --store including it")
            if tier == "trunk":
                out.update(self._trunk(clip, group, frames, y, x, h, w, margin))
                # the box lies inside the frame, so the middle of lq_margin is the crop itself (one read fewer)
                out["lq"] = out["lq_margin"][..., margin:margin + h, margin:margin + w].contiguous()
            else:
                out[tier] = self._read(clip, tier, frames, slice(top, top + height), slice(left, left + width))
        if lq and "lq" not in out:
            out["lq"] = self._read(clip, "lq", frames, slice(y, y + h), slice(x, x + w))
        if gt:
            from stdvsr.data import read_hr

            out["gt"] = read_hr(self.dataset_clips()[index], frames, s, self.fingerprint["mod_crop"],
                                box=(top, left, height, width), read=self._read_image)
        return out

    def read_lq(self, index: int, frames: range, lr_box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """The teacher's LR input ``(T, 3, h, w)`` for consecutive ``frames`` of clip ``index``, cropped to the LR
        box ``(top, left, height, width)`` (default: the whole frame)."""
        clip = self.clips[index]
        if frames.step != 1 or frames.start < 0 or frames.stop > clip["frames"] or len(frames) == 0:
            raise StdvsrError(f"frames {frames.start}..{frames.stop - 1} are not consecutive frames of clip "
                              f"{clip['name']} ({clip['frames']} frames)")
        lh, lw = self.groups[clip["group"]]["lr_size"]
        y, x, h, w = lr_box if lr_box is not None else (0, 0, lh, lw)
        return self._read(clip, "lq", frames, slice(y, y + h), slice(x, x + w))

    def _trunk(self, clip: dict, group: dict, frames: range, y: int, x: int, h: int, w: int, m: int) -> dict:
        th, tw = group["trunk_size"]
        lh, lw = group["lr_size"]
        # the part of the padded box inside the stored trunk, and where it lands in the box
        y0, y1, x0, x1 = max(y - m, 0), min(y + h + m, th), max(x - m, 0), min(x + w + m, tw)
        inner = self._read(clip, "trunk", frames, slice(y0, y1), slice(x0, x1))
        pad = (x0 - (x - m), (x + w + m) - x1, y0 - (y - m), (y + h + m) - y1)
        trunk = F.pad(inner, pad)
        valid = F.pad(torch.ones(1, y1 - y0, x1 - x0), pad)
        # LR input around the box, replicate-padded beyond the (unpadded) frame as bilinear sampling clamps
        ly0, ly1, lx0, lx1 = max(y - m, 0), min(y + h + m, lh), max(x - m, 0), min(x + w + m, lw)
        lq = self._read(clip, "lq", frames, slice(ly0, ly1), slice(lx0, lx1))
        lpad = (lx0 - (x - m), (x + w + m) - lx1, ly0 - (y - m), (y + h + m) - ly1)
        return {"trunk": trunk, "valid": valid, "lq_margin": F.pad(lq, lpad, mode="replicate")}

    def _read_image(self, path: Path) -> np.ndarray:
        """A ground-truth frame, decoded once per process while :meth:`keep_in_memory`'s budget lasts."""
        from stdvsr.io import read_image

        return self._ram.get(("image", str(path)), lambda: read_image(path))


class FrameMemory:
    """Values by key, each computed once and kept while their bytes fit ``budget`` (then computed every time)."""

    def __init__(self, budget: int):
        self.budget, self.used, self.items = budget, 0, {}

    def get(self, key, compute):
        if key in self.items:
            return self.items[key]
        value = compute()
        size = sum(a.nbytes for a in (value if isinstance(value, tuple) else (value,)) if a is not None)
        if self.used + size <= self.budget:
            self.items[key], self.used = value, self.used + size
        return value


class CacheDataset(torch.utils.data.Dataset):
    """Training samples from a cache: ``num_frames`` consecutive frames of a clip at a random scale-aligned HR
    crop of ``patch_size``, with the teacher's targets for exactly that crop (see :meth:`CacheReader.read`).

    Item ``(epoch, i)`` (or ``i``) draws its crop from ``(seed, epoch, i)`` only, so the samples do not depend on
    the number of workers. ``gt=False`` skips decoding the HR frames (timing the cache alone); by default they are
    read when the cache has them (not from LR footage, ``--degradation none``). No flips or
    rotations are drawn here: a transformed cached target is not the teacher's output on the transformed input
    (docs/ARCHITECTURE.md, "The teacher cache"); flipped and rotated samples come from views cached as clips of their own (``cache-teacher
    --views``), whose targets are exact.
    """

    def __init__(self, path: str | Path, num_frames: int | None = None, patch_size: int = 64,
                 tiers: Sequence[str] = ("trunk",), seed: int = 0, data: str | None = None,
                 gt: bool | None = None):
        self.reader = CacheReader(path, data=data)
        if gt:
            self.reader.require_ground_truth("samples with ground truth (gt=True)")
        self.gt = self.reader.has_gt if gt is None else gt
        self.num_frames = num_frames or self.reader.num_frame
        self.patch_size, self.tiers, self.seed = patch_size, list(tiers), seed
        if patch_size % self.reader.scale:
            raise StdvsrError(f"--patch-size {patch_size} must be a multiple of the scale {self.reader.scale}")
        for c in self.reader.clips:
            H, W = self.reader.groups[c["group"]]["hr_size"]
            if patch_size > min(H, W):
                raise StdvsrError(f"--patch-size {patch_size} is larger than the {W}×{H} frames of clip {c['name']}")
        self.items = [(c["index"], s) for c in self.reader.clips for s in range(c["frames"] - self.num_frames + 1)]
        if not self.items:
            raise StdvsrError(f"no clip in {path} has the {self.num_frames} frames a sample needs")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key) -> dict:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        index, start = self.items[i]
        top, left, _ = draw_crop(self.reader, index, self.patch_size, np.random.default_rng([self.seed, epoch, i]))
        p = self.patch_size
        return self.reader.read(index, range(start, start + self.num_frames), (top, left, p, p), self.tiers,
                                gt=self.gt)


def draw_crop(reader: CacheReader, index: int, patch_size: int,
              rng: np.random.Generator) -> tuple[int, int, np.random.Generator]:
    """A uniformly drawn, scale-aligned HR crop ``(top, left)`` of ``patch_size`` inside clip ``index``."""
    clip = reader.clips[index]
    H, W = reader.groups[clip["group"]]["hr_size"]
    s, p = reader.scale, patch_size
    top = int(rng.integers(0, (H - p) // s + 1)) * s
    left = int(rng.integers(0, (W - p) // s + 1)) * s
    return top, left, rng
