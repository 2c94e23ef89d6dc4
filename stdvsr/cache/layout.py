"""What a teacher cache holds and where: tiers, size groups, the manifest and its fingerprint, quantisation.

A cache is a folder. Next to the array data (a Zarr v3 hierarchy, or HDF5 part files joined by a virtual dataset)
it holds ``manifest.json`` (fingerprint, clip table, array layout; ``complete`` once every clip is written),
``head.pth`` (an EDVR teacher's upsampling head and last conv, so stage two can rebuild F^SR and SR from the trunk;
an RBPN cache has none) and
``progress/<clip index>.json`` (one record per finished clip: content hashes of its source frames and of every
stored array). Completion is only ever read from these records — never inferred from array data, because a
missing Zarr shard silently reads back as zeros.

The manifest carries ``manifest_sha256``, a hash over everything else in it, written with it and checked on every
open: a hand-edited manifest (say degradation bd → bi) is refused rather than trusted. Someone who also recomputes
the hash is caught by ``cache verify --sources``, which re-derives the LR frames from the sources with the recorded
degradation and compares them with what was stored. Manifests written before #26 carry no hash; they still open,
reported as unprotected.

Clips are grouped by frame size; each group has one array per tier with all its clips' frames end to end along
axis 0 (Vimeo90K: one group of 452,284 frames). A clip's frames are a contiguous range of rows.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from stdvsr.errors import StdvsrError
from stdvsr.names import NO_DEGRADATION, TIERS
from stdvsr.io import image_size, sha256_file, write_text

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: The manifest's own key holding :func:`manifest_sha256`; absent from manifests written before #26.
MANIFEST_HASH = "manifest_sha256"
#: What ``cache info`` / ``cache verify`` say about a manifest without :data:`MANIFEST_HASH`.
UNPROTECTED = (f"unprotected: no {MANIFEST_HASH} (written before stdvsr hashed its manifests, #26); edits to it "
               "cannot be detected, `cache verify --sources` still re-derives the LR frames")
HEAD = "head.pth"
PROGRESS = "progress"
#: LR pixels of trunk around a crop that make the rebuilt F^SR exact: upconv1 (3×3 at LR) needs 1 LR pixel,
#: upconv2 (3×3 at 2×) half of one, conv_hr (3×3 at 4×) a quarter; 1.75 rounds up to 2.
HEAD_MARGIN = 2
#: What the cached features are, recorded in the fingerprint so a cache from another feature point is never mixed
#: up (distill checks it against :func:`feature_point` of the cache's teacher): EDVR's trunk and F^SR...
FEATURE_POINT = ("trunk = EDVR F^LR (reconstruction output, input of upconv1); F^SR = lrelu(conv_hr(·)) "
                 "(input of conv_last); attention = sum_c F^SR^2")
#: ...and RBPN's (stdvsr.models.rbpn): no trunk is cached, F^SR and SR are stored as they are.
RBPN_FEATURE_POINT = ("no trunk; F^SR = input of conv_last: PReLU(output(·)) of the N−1 projections' HR maps "
                      "concatenated (sr_feat), or that concatenation itself (official, no sr_feat); "
                      "attention = sum_c F^SR^2")


def feature_point(teacher: str) -> str:
    """The feature point a cache of ``teacher`` (an architecture name) records."""
    return RBPN_FEATURE_POINT if teacher == "rbpn" else FEATURE_POINT


INT8_MAX = 127
#: The smallest LR frame edge of footage (``--degradation none``): EDVR aligns at 1/1, 1/2 and 1/4 of it, so at
#: 8 LR pixels its coarsest level is 2×2; below, the alignment convolutions see little but padding.
MIN_FOOTAGE_SIZE = 8


def has_ground_truth(fingerprint: dict) -> bool:
    """Whether a cache's clips have ground truth (HR frames that were degraded into its LR input): not a cache of
    LR footage, whose frames *are* the LR input (``degradation`` ``none``)."""
    return fingerprint.get("degradation") != NO_DEGRADATION


def tier_info(tier: str, trunk_channels: int, dtype: str, feat_sr_channels: int = 64) -> dict:
    """Channels, resolution (``lr``/``hr``) and storage dtype of a tier; ``quantised`` tiers carry scales.
    ``feat_sr_channels``: the teacher's F^SR width (EDVR: 64; RBPN: ``sr_feat``, or 384 as published)."""
    if tier == "lq":
        return {"channels": 3, "res": "lr", "dtype": "float32", "quantised": False}
    if tier == "trunk":
        return {"channels": trunk_channels, "res": "lr", "dtype": "int8" if dtype == "int8" else "float16",
                "quantised": dtype == "int8"}
    if tier == "feat_sr":
        return {"channels": feat_sr_channels, "res": "hr", "dtype": "int8" if dtype == "int8" else "float16",
                "quantised": dtype == "int8"}
    if tier == "attention":
        return {"channels": 1, "res": "hr", "dtype": "float16", "quantised": False}
    if tier == "sr":
        return {"channels": 3, "res": "hr", "dtype": "float16", "quantised": False}
    raise StdvsrError(f"unknown cache tier {tier!r}; use one of {', '.join(TIERS)}")


def parse_tiers(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"trunk,attention"`` → ``("trunk", "attention")`` in canonical order; refuses unknown names."""
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [t for t in names if t not in TIERS]
    if unknown or not names:
        raise StdvsrError(f"--store {','.join(names) or '(empty)'}: unknown tier {', '.join(unknown) or '(none)'}; "
                          f"use a comma list of {', '.join(TIERS)} (default: trunk)")
    return tuple(t for t in TIERS if t in names)


# ---------------------------------------------------------------------------------------------------- plan
def plan_clips(clips, scale: int, mod_crop: bool, lr_input: bool = False) -> tuple[list[dict], dict]:
    """Assign every clip a size group and a row offset in it. Reads only the first frame's header per clip; a
    transposing view (``clip.transform`` ≥ 4) of a W×H clip is H×W. ``lr_input``: the frames are LR footage, so
    the HR size (of the teacher's output) is ``scale`` times theirs.

    Returns ``(clip records, groups)``; a group is ``{"hr_size", "lr_size", "trunk_size", "frames"}`` where
    ``trunk_size`` is the LR size padded to the multiple of 4 EDVR needs (the trunk is stored padded so that the
    rebuilt F^SR at the bottom/right border is exact).
    """
    records, groups = [], {}
    for index, clip in enumerate(clips):
        h, w = image_size(clip.frames[0])
        if lr_input:
            h, w = h * scale, w * scale
        if not mod_crop and (h % scale or w % scale):
            raise StdvsrError(f"frames of clip {clip.name} ({clip.frames[0]}) are {w}×{h}, not divisible by scale "
                              f"{scale}; crop them to a multiple of {scale} or pass --mod-crop")
        h, w = h - h % scale, w - w % scale
        if clip.transform & 4:
            h, w = w, h
        name = f"{h}x{w}"
        group = groups.setdefault(name, {"hr_size": [h, w], "lr_size": [h // scale, w // scale],
                                         "trunk_size": [-(-h // scale // 4) * 4, -(-w // scale // 4) * 4],
                                         "frames": 0})
        records.append({"index": index, "name": clip.name, "frames": len(clip), "group": name,
                        "offset": group["frames"]})
        group["frames"] += len(clip)
    return records, groups


def tile(size: int, target: int) -> int:
    """Chunk edge for a frame edge ``size``: the frame split into near-equal tiles no larger than ``target``
    (68 LR rows at target 64 → two tiles of 34, not 64 + 4 that would store a mostly empty edge chunk)."""
    return -(-size // math.ceil(size / target))


def array_layout(groups: dict, tiers: Sequence[str], trunk_channels: int, dtype: str, scale: int,
                 chunk: int, feat_sr_channels: int = 64) -> dict:
    """Shape, chunk and shard of every ``group/tier`` array: a chunk is one frame, all channels, a spatial tile of
    about ``chunk`` LR pixels (×scale for HR tiers); a shard is one whole frame (the unit a writer writes)."""
    layout = {}
    for gname, g in groups.items():
        for tier in ("lq", *tiers):
            info = tier_info(tier, trunk_channels, dtype, feat_sr_channels)
            if tier == "trunk":
                h, w = g["trunk_size"]
            elif info["res"] == "lr":
                h, w = g["lr_size"]
            else:
                h, w = g["hr_size"]
            target = chunk if info["res"] == "lr" else chunk * scale
            ch, cw = tile(h, target), tile(w, target)
            c = info["channels"]
            layout[f"{gname}/{tier}"] = {
                "tier": tier, "group": gname, "shape": [g["frames"], c, h, w], "dtype": info["dtype"],
                "chunks": [1, c, ch, cw], "shards": [1, c, ch * math.ceil(h / ch), cw * math.ceil(w / cw)],
                "quantised": info["quantised"]}
    return layout


def frame_bytes(layout: dict, tier: str, group: str) -> int:
    """Uncompressed bytes of one frame of a tier (int8 scales included)."""
    a = layout[f"{group}/{tier}"]
    n = math.prod(a["shape"][1:]) * np.dtype(a["dtype"]).itemsize
    return n + (a["shape"][1] * 4 if a["quantised"] else 0)


def estimate_bytes(layout: dict, clips: Sequence[dict], tiers: Sequence[str]) -> dict[str, int]:
    """Uncompressed bytes per tier for ``clips`` (an upper bound: compression only shrinks it)."""
    out = {}
    for tier in ("lq", *tiers):
        out[tier] = sum(c["frames"] * frame_bytes(layout, tier, c["group"]) for c in clips)
    return out


# ---------------------------------------------------------------------------------------------- fingerprint
def sources_sha256(paths: Sequence[Path]) -> str:
    """Content hash of a clip's source frames (file bytes, in order)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """Dotted path of the first field where two fingerprints differ (``None`` if equal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if key not in old or key not in new:
                return f"{path}.{key}".lstrip(".")
            diff = first_difference(old[key], new[key], f"{path}.{key}")
            if diff:
                return diff
        return None
    if isinstance(old, list) and isinstance(new, list):
        for i, (a, b) in enumerate(zip(old, new)):
            diff = first_difference(a, b, f"{path}[{i}]")
            if diff:
                return diff
        return None if len(old) == len(new) else f"{path} (length {len(old)} vs {len(new)})".lstrip(".")
    return None if old == new else path.lstrip(".")


def lookup(tree: Any, dotted: str) -> Any:
    """The value at a :func:`first_difference` path (for error messages)."""
    import re

    node = tree
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", dotted.split(" (")[0]):
        try:
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


# ---------------------------------------------------------------------------------------------- quantisation
def quantise(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per frame and channel: ``x ≈ q · s``, ``s = max|x| / 127``.

    ``x``: ``(T, C, H, W)`` float. The error is at most ``s / 2`` per element (half a step); all-zero channels get
    ``s = 1``. Returns ``(q int8, s float32 (T, C))``.
    """
    x = x.float()
    s = x.abs().amax(dim=(2, 3)) / INT8_MAX
    s = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.round(x / s[:, :, None, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.cpu().numpy(), s.cpu().numpy()


def dequantise(q: np.ndarray, s: np.ndarray) -> torch.Tensor:
    """Inverse of :func:`quantise` for ``q`` ``(T, C, h, w)`` and scales ``(T, C)``."""
    scales = torch.from_numpy(np.ascontiguousarray(s))[:, :, None, None]
    return torch.from_numpy(np.ascontiguousarray(q)).float() * scales


def manifest_sha256(manifest: dict) -> str:
    """sha256 of the manifest without its :data:`MANIFEST_HASH` entry, over canonical JSON (sorted keys, no
    whitespace), so a re-indented file still matches and any changed value does not."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_HASH}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def write_manifest(root: str | Path, manifest: dict) -> dict:
    """Write ``manifest.json`` (atomically, fsynced) with its hash — the one writer of it; returns what it wrote."""
    manifest = {**{k: v for k, v in manifest.items() if k != MANIFEST_HASH}, MANIFEST_HASH: manifest_sha256(manifest)}
    write_text(Path(root) / MANIFEST, json.dumps(manifest, indent=1) + "\n", durable=True)
    return manifest


def read_manifest(root: str | Path, required: bool = False) -> dict | None:
    """The cache's ``manifest.json`` — the one reader of it (build, reader, info/verify). None when ``root`` holds no
    manifest, or with ``required`` an error saying ``root`` is not a cache; a manifest that does not parse is damage,
    one whose :data:`MANIFEST_HASH` does not match was edited after it was written (refused, see the module doc)."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        if required:
            raise StdvsrError(f"{root} is not a teacher cache (no {MANIFEST}); build one with stdvsr cache-teacher")
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StdvsrError(f"{path} is not valid JSON ({e}); the cache is damaged — delete {root} and rebuild "
                          "it") from None
    if not isinstance(manifest, dict):
        raise StdvsrError(f"{path} is not a teacher cache manifest; the cache is damaged — delete {root} and rebuild "
                          "it")
    if MANIFEST_HASH in manifest and manifest[MANIFEST_HASH] != manifest_sha256(manifest):
        raise StdvsrError(f"{path} was edited after the cache was written (it no longer matches its "
                          f"{MANIFEST_HASH}), so its settings cannot be trusted; restore the original {MANIFEST}, or "
                          f"delete {root} and rebuild it with stdvsr cache-teacher")
    return manifest
