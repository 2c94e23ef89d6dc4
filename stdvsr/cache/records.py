"""Progress records: one JSON file per finished clip, ``progress/<index>.json``, written (fsynced) only after the
clip's data is durable. Completion is read from them, never inferred from array data (a missing Zarr shard reads
back as zeros; docs/ARCHITECTURE.md, invariant 1), by the writer (:mod:`.build`: resume, repair), the reader
(:mod:`.reader`: an incomplete cache's clips) and the checks (:mod:`.check`).
"""

from __future__ import annotations

import json
from pathlib import Path

from stdvsr.cache.layout import PROGRESS
from stdvsr.cache.stores import backend
from stdvsr.io import write_text


def record_path(index: int) -> str:
    """A clip's progress record, relative to the cache folder."""
    return f"{PROGRESS}/{index:07d}.json"


def write_record(root: Path, record: dict) -> None:
    """Write a finished clip's record (its ``index``, hashes, timings), durably: the clip is done once it exists."""
    write_text(Path(root) / record_path(record["index"]), json.dumps(record) + "\n", durable=True)


def read_records(root: Path) -> dict[int, dict]:
    """Finished clips: ``index → progress record``. A record that does not parse is ignored (and redone)."""
    records = {}
    folder = Path(root) / PROGRESS
    if folder.is_dir():
        for p in folder.glob("*.json"):
            try:
                r = json.loads(p.read_text())
                records[int(r["index"])] = r
            except (json.JSONDecodeError, KeyError, ValueError, UnicodeDecodeError):
                continue
    return records


def not_intact(root: Path, manifest: dict, records: dict[int, dict]) -> dict[int, str]:
    """Finished clips that are not whole on disk: ``index → what is missing``, counted on disk (one walk per array),
    not read from the manifest. A complete manifest's clip lacking its progress record is one; so is any clip
    with a record (or, complete, its manifest entry) whose shards / part file are gone. Unfinished clips of an
    incomplete cache are not (they are simply not written yet)."""
    complete = bool(manifest.get("complete"))
    finished = [c for c in manifest["clips"] if complete or c["index"] in records]
    absent = backend(root, manifest).missing_all(finished, records)
    out = {}
    for clip in finished:
        what = []
        if clip["index"] not in records:
            what.append(f"progress record {record_path(clip['index'])} missing")
        pieces = absent.get(clip["index"], [])
        if pieces:
            what.append(f"missing on disk: {pieces[0]}" + (f" and {len(pieces) - 1} more" if len(pieces) > 1 else ""))
        if what:
            out[clip["index"]] = "; ".join(what)
    return out
