"""``stdvsr cache info`` and ``stdvsr cache verify``: what a cache holds, and whether every clip of it is intact."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from rich.table import Table

from stdvsr.cache.build import read_records
from stdvsr.cache.layout import HEAD, estimate_bytes, read_manifest, sources_sha256
from stdvsr.cache.stores import backend
from stdvsr.io import mib
from stdvsr.progress import stdout


def info(path: str | Path) -> dict:
    """The manifest's settings, completion, and raw (uncompressed) vs stored bytes per tier."""
    root = Path(path)
    manifest = read_manifest(root, required=True)
    fp = manifest["fingerprint"]
    records = read_records(root)
    done = len(manifest["clips"]) if manifest.get("complete") else len(records)
    raw = estimate_bytes(manifest["layout"]["arrays"], manifest["clips"], fp["tiers"])
    stored = (manifest.get("summary") or {}).get("stored_bytes") or backend(root, manifest).stored_bytes()
    summary = manifest.get("summary") or {}
    return {
        "path": str(root), "format": fp["format"], "complete": bool(manifest.get("complete")),
        "clips": len(manifest["clips"]), "clips_done": done,
        "frames": sum(c["frames"] for c in manifest["clips"]),
        "teacher": fp["teacher"], "data": fp["data"], "views": fp.get("views", 1),
        "degradation": fp["degradation"], "scale": fp["scale"],
        "num_frame": fp["num_frame"], "padding": fp["padding"], "tiers": ["lq", *fp["tiers"]], "dtype": fp["dtype"],
        "chunk": fp["chunk"], "compress": fp["compress"], "feature_point": fp["feature_point"],
        "stdvsr": fp["stdvsr"], "created": manifest.get("created"),
        "groups": {k: {"hr_size": g["hr_size"], "frames": g["frames"]} for k, g in manifest["groups"].items()},
        "raw_bytes": raw, "stored_bytes": stored,
        "teacher_s": summary.get("teacher_s"), "write_s": summary.get("write_s"),
    }


def verify(path: str | Path, sources: bool = False, data: str | None = None, progress=None) -> list[dict]:
    """Re-check every clip; returns the problems found (``[]`` = intact).

    Per clip: a progress record exists (completion), every shard / part holding it is on disk, each tier read
    back hashes to what was written, float tiers hold no NaN/inf; with ``sources`` the dataset's frames still hash
    to what the teacher read. ``progress(n)`` is called after each clip.
    """
    import torch

    root = Path(path)
    manifest = read_manifest(root, required=True)
    fp = manifest["fingerprint"]
    records = read_records(root)
    store = backend(root, manifest)
    problems: list[dict] = []
    try:
        torch.load(root / HEAD, map_location="cpu", weights_only=True)
    except Exception as e:
        problems.append({"clip": "-", "problem": f"{HEAD} unreadable ({type(e).__name__})"})
    dataset = None
    if sources:
        from stdvsr.cache.reader import CacheReader

        dataset = CacheReader(root, data=data, require_complete=False).dataset_clips()
    for clip in manifest["clips"]:
        name = clip["name"]
        record = records.get(clip["index"]) or (clip if "hashes" in clip else None)
        if record is None:
            problems.append({"clip": name, "problem": "not written yet (run the same cache-teacher command again)"})
            if progress:
                progress(1)
            continue
        missing = store.missing(clip, record)
        for piece in missing:
            problems.append({"clip": name, "problem": f"missing on disk: {piece}"})
        if not missing or fp["format"] == "zarr":
            for tier in ["lq", *fp["tiers"]]:
                try:
                    arr, scales = store.read(clip, tier, slice(0, clip["frames"]), slice(None), slice(None))
                except Exception as e:  # a corrupted chunk fails to decode
                    problems.append({"clip": name, "problem": f"{tier}: unreadable ({type(e).__name__}: {e})"[:300]})
                    continue
                for key, a in ((tier, arr), (f"{tier}_scale", scales)):
                    if a is None:
                        continue
                    h = hashlib.blake2b(memoryview(np.ascontiguousarray(a)).cast("B"), digest_size=16)
                    if h.hexdigest() != record["hashes"].get(key):
                        problems.append({"clip": name, "problem": f"{key}: content differs from what was written "
                                                                  "(corrupted or missing chunk)"})
                    if a.dtype.kind == "f" and not np.isfinite(a).all():
                        problems.append({"clip": name, "problem": f"{key}: holds NaN/inf"})
        if dataset is not None:
            c = dataset[clip["index"]]
            paths = list(c.frames) + (list(c.lq_frames[fp["degradation"]]) if fp["lq_from_disk"] else [])
            try:
                digest = sources_sha256(paths)
            except OSError as e:
                digest = f"unreadable: {e}"
            if digest != record["source_sha256"]:
                problems.append({"clip": name, "problem": "source frames changed since the cache was built"})
        if progress:
            progress(1)
    if manifest.get("complete") and len(records) != len(manifest["clips"]):
        problems.append({"clip": "-", "problem": f"{len(manifest['clips']) - len(records)} progress records missing"})
    return problems


def print_info(r: dict) -> None:
    """``stdvsr cache info``'s tables: the fingerprint and state, then bytes per tier."""
    out = stdout()
    table = Table(title=f"Teacher cache {r['path']}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    t = r["teacher"]
    rows = [
        ("status", "complete" if r["complete"] else f"incomplete: {r['clips_done']} of {r['clips']} clips done"),
        ("format", f"{r['format']}, chunk {r['chunk']} LR px, {'compressed' if r['compress'] else 'uncompressed'}"),
        ("teacher", f"{t['name']} {json.dumps(t['kwargs'])}"),
        ("weights sha256", t["weights_sha256"]),
        ("data", f"{r['data']['spec']} split {r['data']['split']}"
                 + (f", first {r['data']['max_clips']} clips" if r["data"]["max_clips"] else "")),
        ("clips / frames", f"{r['clips']} / {r['frames']}"),
        ("frame sizes", ", ".join(f"{k} ({g['frames']} frames)" for k, g in r["groups"].items())),
        ("degradation", f"{r['degradation']} ×{r['scale']}"),
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
