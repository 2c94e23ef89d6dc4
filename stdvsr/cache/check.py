"""``stdvsr cache info`` and ``stdvsr cache verify``: what a cache holds, and whether every clip of it is intact."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from rich.table import Table

from stdvsr.cache.layout import (HEAD, MANIFEST, MANIFEST_HASH, UNPROTECTED, estimate_bytes, has_ground_truth,
                                 read_manifest, sources_sha256)
from stdvsr.cache.records import not_intact, read_records, record_path
from stdvsr.cache.stores import VDS, backend
from stdvsr.errors import StdvsrError
from stdvsr.io import mib
from stdvsr.names import NO_TRUNK
from stdvsr.progress import stdout


def info(path: str | Path) -> dict:
    """The manifest's settings, completion counted on disk (progress records and arrays, not the manifest's word),
    what is missing, whether the manifest is protected by its hash, and raw (uncompressed) vs stored bytes per tier."""
    root = Path(path)
    manifest = read_manifest(root, required=True)
    fp = manifest["fingerprint"]
    records = read_records(root)
    broken = not_intact(root, manifest, records)
    store = backend(root, manifest)
    missing = [{"clip": c["name"], "problem": broken[c["index"]]} for c in manifest["clips"] if c["index"] in broken]
    if store.join_missing():
        missing.append({"clip": "-", "problem": f"missing on disk: {VDS} (the join of the part files)"})
    done = sum(1 for c in manifest["clips"] if c["index"] in records and c["index"] not in broken)
    raw = estimate_bytes(manifest["layout"]["arrays"], manifest["clips"], fp["tiers"])
    summary = manifest.get("summary") or {}
    stored = (None if missing else summary.get("stored_bytes")) or store.stored_bytes()
    return {
        "path": str(root), "format": fp["format"], "complete": bool(manifest.get("complete")) and not missing,
        "clips": len(manifest["clips"]), "clips_done": done, "missing": missing,
        "manifest_protected": MANIFEST_HASH in manifest,
        "frames": sum(c["frames"] for c in manifest["clips"]),
        "teacher": fp["teacher"], "data": fp["data"], "views": fp.get("views", 1),
        "degradation": fp["degradation"], "ground_truth": has_ground_truth(fp), "scale": fp["scale"],
        "num_frame": fp["num_frame"], "padding": fp["padding"], "tiers": ["lq", *fp["tiers"]], "dtype": fp["dtype"],
        "chunk": fp["chunk"], "compress": fp["compress"],
        "feature_point": fp["feature_point"],
        "stdvsr": fp["stdvsr"], "created": manifest.get("created"),
        "groups": {k: {"hr_size": g["hr_size"], "frames": g["frames"]} for k, g in manifest["groups"].items()},
        "raw_bytes": raw, "stored_bytes": stored,
        "teacher_s": summary.get("teacher_s"), "write_s": summary.get("write_s"),
    }


#: How a problem found by :func:`verify` is fixed, from the smallest fix up (see :func:`advice`).
RERUN, REDO, SOURCES, REBUILD = "rerun", "redo", "sources", "rebuild"
#: LR frames re-derived by ``--sources`` may differ from the stored ones by float rounding (another thread count
#: sums the blur in another order: ~1e-7); bd vs bi differ by ~1e-2 on any textured frame.
LQ_TOL = 1e-4


def _blake2b(a: np.ndarray) -> "hashlib.blake2b":
    return hashlib.blake2b(memoryview(np.ascontiguousarray(a)).cast("B"), digest_size=16)


def _rederive_lq(clip, record: dict, stored: np.ndarray, fp: dict, hr_size, chunk: int = 16) -> str | None:
    """Degrade the clip's source frames as the manifest says (``degradation``, ``scale``, ``mod_crop``; views
    transformed first) — for LR footage read them as given — and compare with the LR frames the teacher read:
    ``stored``, the clip's intact ``lq`` (equal to the record's hash, or within :data:`LQ_TOL` where only rounding
    differs). Returns what differs."""
    from stdvsr.data import degrade, read_footage, read_hr, read_lq_from_disk

    digest, worst = hashlib.blake2b(digest_size=16), 0.0
    for start in range(0, len(clip), chunk):
        frames = range(start, min(start + chunk, len(clip)))
        try:
            if not has_ground_truth(fp):
                lq = read_footage(clip, frames)
            elif fp["lq_from_disk"]:
                lq = read_lq_from_disk(clip, frames, fp["degradation"], tuple(hr_size), fp["scale"])
            else:
                lq = degrade(read_hr(clip, frames, fp["scale"], fp["mod_crop"]), fp["degradation"], fp["scale"])
        except (StdvsrError, OSError) as e:
            return f"cannot re-derive them ({e})"
        a = lq.numpy()
        digest.update(memoryview(np.ascontiguousarray(a)).cast("B"))
        part = stored[frames.start:frames.stop]
        if part.shape != a.shape:
            return f"they are {tuple(part.shape[1:])} per frame, re-derived {tuple(a.shape[1:])}"
        worst = max(worst, float(np.abs(part - a).max()))
    if digest.hexdigest() == record["hashes"].get("lq") or worst <= LQ_TOL:
        return None
    return f"they differ by up to {worst:.3g}"


def verify(path: str | Path, sources: bool = False, data: str | None = None, progress=None) -> list[dict]:
    """Re-check every clip; returns the problems found (``[]`` = intact), each ``{"clip", "problem", "fix"}``.

    Per clip: a progress record exists (completion), every shard / part holding it is on disk, each tier read
    back hashes to what was written, float tiers hold no NaN/inf; with ``sources`` the dataset's frames still hash
    to what the teacher read, and degrading them as the manifest records (degradation, scale, views) gives the
    stored LR frames — which catches a manifest edited even with its hash recomputed. ``fix`` says how to mend it
    (:func:`advice`). ``progress(n)`` is called after each clip.
    """
    root = Path(path)
    manifest = read_manifest(root, required=True)
    records = read_records(root)
    store = backend(root, manifest)
    found = _head_problems(root) if manifest["fingerprint"]["teacher"]["name"] not in NO_TRUNK else []
    joined = not store.join_missing()  # without cache.h5 nothing reads back; the same command writes it again
    if not joined:
        found.append(("-", f"missing on disk: {VDS} (the join of the part files)", RERUN))
    dataset = None
    if sources:
        from stdvsr.cache.reader import CacheReader

        dataset = CacheReader(root, data=data, require_complete=False).dataset_clips()
    complete = bool(manifest.get("complete"))
    again = not_intact(root, manifest, records)  # what the same cache-teacher command writes again by itself
    for clip in manifest["clips"]:
        record = records.get(clip["index"]) or (clip if complete and "hashes" in clip else None)
        if record is None:
            found.append((clip["name"], "not written yet (run the same cache-teacher command again)", RERUN))
        else:
            fix = RERUN if clip["index"] in again else REDO
            problems, lq = _clip_problems(store, clip, record, clip["index"] in records, fix, joined, manifest)
            if dataset is not None:
                problems += _source_problems(dataset[clip["index"]], clip, record, lq, manifest)
            found += [(clip["name"], text, how) for text, how in problems]
        if progress:
            progress(1)
    return [{"clip": clip, "problem": text, "fix": fix} for clip, text, fix in found]


def _head_problems(root: Path) -> list[tuple[str, str, str]]:
    """``head.pth``, which stage two rebuilds F^SR and SR with, loads."""
    import torch

    try:
        torch.load(root / HEAD, map_location="cpu", weights_only=True)
    except Exception as e:
        return [("-", f"{HEAD} unreadable ({type(e).__name__})", REBUILD)]
    return []


def _clip_problems(store, clip: dict, record: dict, recorded: bool, fix: str, joined: bool,
                   manifest: dict) -> tuple[list[tuple[str, str]], np.ndarray | None]:
    """A written clip's record, pieces on disk and every tier read back against its hashes (and NaN/inf):
    ``(problems as (text, fix), its LR frames if they read back intact)``. ``recorded``: its progress record exists;
    ``joined``: HDF5's join is on disk (Zarr reads without one)."""
    fp = manifest["fingerprint"]
    found, lq = [], None
    if not recorded:
        found.append((f"progress record {record_path(clip['index'])} missing", RERUN))
    missing = store.missing(clip, record)
    found += [(f"missing on disk: {piece}", fix) for piece in missing]
    if not joined or (missing and fp["format"] != "zarr"):
        return found, None
    for tier in ["lq", *fp["tiers"]]:
        try:
            arr, scales = store.read(clip, tier, slice(0, clip["frames"]), slice(None), slice(None))
        except Exception as e:  # a corrupted chunk fails to decode
            found.append((f"{tier}: unreadable ({type(e).__name__}: {e})"[:300], fix))
            continue
        for key, a in ((tier, arr), (f"{tier}_scale", scales)):
            if a is None:
                continue
            intact = _blake2b(a).hexdigest() == record["hashes"].get(key)
            if not intact:
                found.append((f"{key}: content differs from what was written (corrupted or missing chunk)", fix))
            elif key == "lq":
                lq = a
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                found.append((f"{key}: holds NaN/inf", fix))
    return found, lq


def _source_problems(source, clip: dict, record: dict, lq: np.ndarray | None, manifest: dict) -> list[tuple[str, str]]:
    """``--sources``: the dataset clip ``source`` still hashes to what the teacher read, and (given the intact
    stored ``lq``) degrading it as the manifest says gives those LR frames."""
    fp = manifest["fingerprint"]
    paths = list(source.frames) + (list(source.lq_frames[fp["degradation"]]) if fp["lq_from_disk"] else [])
    try:
        digest = sources_sha256(paths)
    except (OSError, KeyError) as e:
        digest = f"unreadable: {e}"
    if digest != record["source_sha256"]:
        return [("source frames changed since the cache was built", SOURCES)]
    if lq is None:  # the sources the teacher read, and intact LR frames: one follows from the other
        return []
    differs = _rederive_lq(source, record, lq, fp, manifest["groups"][clip["group"]]["hr_size"])
    if not differs:
        return []
    how = (f"read as given (LR footage, degradation none, as {MANIFEST} records)" if not has_ground_truth(fp) else
           f"degraded as {MANIFEST} records ({fp['degradation']} ×{fp['scale']})")
    return [(f"lq: the source frames {how} are not the LR frames the teacher read: {differs}; {MANIFEST} does not "
             "describe this cache (edited?)", REBUILD)]


def advice(path: str | Path, problems: list[dict]) -> str:
    """The one ``Error:`` line for :func:`verify`'s problems: the smallest fix that mends all of them."""
    root = Path(path)
    fixes = {p["fix"] for p in problems}
    clips = sorted({p["clip"] for p in problems if p["clip"] != "-"})
    names = ", ".join(clips[:5]) + (f" and {len(clips) - 5} more" if len(clips) > 5 else "")
    if all(p["problem"].startswith("not written yet") for p in problems):
        return (f"cache {root} is incomplete: {len(problems)} clip(s) not written yet; run the same stdvsr "
                "cache-teacher command again to finish it")
    head = f"cache {root}: {len(problems)} problem(s) found" + (f" in clip(s) {names}" if names else "")
    if REBUILD in fixes:
        what = [p["problem"] for p in problems if p["fix"] == REBUILD][0]
        if what.startswith(HEAD):
            return f"{head}; {HEAD} is unreadable: delete {root} and run the same stdvsr cache-teacher command again"
        return (f"{head}; {MANIFEST} does not describe the stored data (the LR frames are not the sources degraded "
                f"as it says): restore the original {MANIFEST}, or delete {root} and rebuild it with stdvsr "
                "cache-teacher")
    if SOURCES in fixes:
        return (f"{head}; the dataset's frames changed since the cache was built: restore them (or pass --data "
                f"with the original dataset), or delete {root} and rebuild it with stdvsr cache-teacher")
    redo = sorted({record_path(c["index"]) for c in read_manifest(root, required=True)["clips"]
                   for p in problems if p["fix"] == REDO and p["clip"] == c["name"]})
    first = (f"delete {' '.join(redo[:5])}{' …' if len(redo) > 5 else ''} inside {root}, then " if redo else "")
    what = "that clip" if len(clips) == 1 else "those clips" if clips else VDS
    return (f"{head}; {first}run the same stdvsr cache-teacher command again to write {what} again (the intact "
            "clips are kept)")


def print_info(r: dict) -> None:
    """``stdvsr cache info``'s tables: the fingerprint and state, then bytes per tier."""
    out = stdout()
    table = Table(title=f"Teacher cache {r['path']}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    t = r["teacher"]
    if r["complete"]:
        status = "complete"
    elif r["missing"]:
        shown = "; ".join(f"{m['clip']}: {m['problem']}" for m in r["missing"][:3])
        more = f"; and {len(r['missing']) - 3} more" if len(r["missing"]) > 3 else ""
        status = (f"not whole: {r['clips_done']} of {r['clips']} clips on disk ({shown}{more}); run the same stdvsr "
                  "cache-teacher command again to write the missing ones")
    else:
        status = f"incomplete: {r['clips_done']} of {r['clips']} clips done"
    views = r["views"]
    rows = [
        ("status", status),
        ("manifest", "protected by its sha256" if r["manifest_protected"] else UNPROTECTED),
        ("format", f"{r['format']}, chunk {r['chunk']} LR px, {'compressed' if r['compress'] else 'uncompressed'}"),
        ("teacher", f"{t['name']} {json.dumps(t['kwargs'])}"),
        ("weights sha256", t["weights_sha256"]),
        ("data", f"{r['data']['spec']} split {r['data']['split']}"
                 + (f", first {r['data']['max_clips']} clips" if r["data"]["max_clips"] else "")),
        ("clips / frames", f"{r['clips']} / {r['frames']}"),
        ("views", "1 (the clips as they are)" if views == 1 else
                  f"{views} (each clip also cached through {views - 1} flip{'s' if views > 2 else ''}"
                  f"{' and transposes' if views > 4 else ''}, as clips CLIP@t1..t{views - 1})"),
        ("frame sizes", ", ".join(f"{k} ({g['frames']} frames)" for k, g in r["groups"].items())),
        ("degradation", f"{r['degradation']} ×{r['scale']}" if r["ground_truth"] else
                        f"none: the frames are LR footage, read as given; the teacher upscales ×{r['scale']}"),
        ("ground truth", "the dataset's HR frames (read when training, not stored)" if r["ground_truth"] else
                         "none (LR footage): the teacher's outputs are the only targets"),
        ("window", f"{r['num_frame']} frames, {r['padding']} padding"),
        ("tiers", ", ".join(r["tiers"]) + f" ({r['dtype']})"),
        ("feature point", r["feature_point"]),
        ("stdvsr / created", f"{r['stdvsr']} / {r['created']}"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)
    sizes = Table(title="Bytes per tier")
    for col in ("tier", "raw MB", "stored MB", "compression"):
        sizes.add_column(col, justify="left" if col == "tier" else "right")
    for tier in r["tiers"]:
        raw, st = r["raw_bytes"].get(tier, 0), r["stored_bytes"].get(tier, 0)
        sizes.add_row(tier, mib(raw), mib(st), f"{raw / st:.2f}×" if st and r["complete"] else "-")
    out.print(sizes)


def print_problems(path, problems: list[dict]) -> None:
    table = Table(title=f"Problems in {path}")
    table.add_column("clip")
    table.add_column("problem")
    for p in problems:
        table.add_row(p["clip"], p["problem"])
    stdout().print(table)
