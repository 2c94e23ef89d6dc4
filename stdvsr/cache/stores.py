"""The two on-disk formats of a teacher cache behind one small interface (writing a clip, reading a crop).

**Zarr v3** (default): one array per size group and tier, sharded so that one shard is one frame (all channels,
the whole frame) and one inner chunk a spatial tile. A clip owns the shards of its frames, so writers (ranks) that
own different clips never share a shard; LocalStore writes each shard to a temporary file and renames it, so a
killed writer leaves either the old shard or the new one (plus a ``*.partial`` file that resume removes).

**HDF5**: a writer fills *part files* (``part-r<rank>-<seq>.h5``): written under a temporary name and renamed
only after they are closed and fsynced, since an HDF5 file killed mid-write can be unreadable. A clip is done
when its part is renamed; ``cache.h5`` joins the parts with one virtual dataset per group and tier (relative
paths, so the folder can move) and is opened lazily, once per reading process.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
import numpy as np

from stdvsr.io import atomic_path, fsync_paths

VDS = "cache.h5"


def _scale_key(key: str) -> str:
    return f"{key}_scale"


class ZarrBackend:
    """Sharded Zarr v3 arrays ``<group>/<tier>`` (and ``<group>/<tier>_scale`` for int8 tiers)."""

    format = "zarr"

    def __init__(self, root: Path, manifest: dict, rank: int = 0):
        self.root, self.manifest, self.rank = Path(root), manifest, rank
        self.layout = manifest["layout"]["arrays"]
        self._arrays: dict = {}
        self._pid = None

    # ------------------------------------------------------------------------------------------------ create
    def create(self) -> None:
        import zarr
        from zarr.codecs import ZstdCodec

        # the frame checksum makes a corrupted chunk fail to decode instead of decoding into wrong numbers
        compressors = [ZstdCodec(level=1, checksum=True)] if self.manifest["layout"]["compress"] else None
        root = zarr.open_group(self.root, mode="a", zarr_format=3)
        for key, a in self.layout.items():
            root.create_array(key, shape=a["shape"], dtype=a["dtype"], chunks=a["chunks"], shards=a["shards"],
                              fill_value=0, compressors=compressors, overwrite=True)
            if a["quantised"]:
                # one scale per frame and channel; a chunk per frame so that writers never share a chunk
                root.create_array(_scale_key(key), shape=a["shape"][:2], dtype="float32",
                                  chunks=[1, a["shape"][1]], fill_value=0, compressors=None, overwrite=True)

    def _array(self, key: str):
        if self._pid != os.getpid():  # DataLoader workers (fork) open their own handles
            self._arrays, self._pid = {}, os.getpid()
        if key not in self._arrays:
            import zarr

            self._arrays[key] = zarr.open_array(self.root / key, mode="r+", zarr_format=3)
        return self._arrays[key]

    # ----------------------------------------------------------------------------------------------- writing
    def _frame_dirs(self, clip: dict) -> list[Path]:
        dirs = []
        for key, a in self.layout.items():
            if a["group"] != clip["group"]:
                continue
            for row in range(clip["offset"], clip["offset"] + clip["frames"]):
                dirs.append(self.root / key / "c" / str(row))
                if a["quantised"]:
                    dirs.append(self.root / _scale_key(key) / "c" / str(row))
        return dirs

    def discard(self, clip: dict) -> None:
        """Remove whatever an interrupted run wrote for this clip (whole shards and ``*.partial`` temporaries)."""
        for d in self._frame_dirs(clip):
            if d.exists():
                shutil.rmtree(d)

    def start_part(self, seq: int) -> None:
        pass

    def write(self, clip: dict, tier: str, start: int, data: np.ndarray, scales: np.ndarray | None) -> None:
        key = f"{clip['group']}/{tier}"
        rows = slice(clip["offset"] + start, clip["offset"] + start + len(data))
        self._array(key)[rows] = data
        if scales is not None:
            self._array(_scale_key(key))[rows] = scales

    def end_clip(self, clip: dict) -> list[tuple[dict, dict]]:
        """Make the clip's shards durable; returns ``[(clip, {"stored_bytes": …})]`` — the clips now done."""
        files = [p for d in self._frame_dirs(clip) for p in d.rglob("*") if p.is_file()]
        fsync_paths(files)
        return [(clip, {"stored_bytes": sum(p.stat().st_size for p in files)})]

    def close(self) -> list[tuple[dict, dict]]:
        return []

    def finalise(self, records: dict[int, dict]) -> None:
        pass

    # ----------------------------------------------------------------------------------------------- reading
    def read(self, clip: dict, tier: str, frames: slice, rows: slice, cols: slice
             ) -> tuple[np.ndarray, np.ndarray | None]:
        """Frames ``frames`` (clip-relative) of a tier, spatial window ``rows × cols``; int8 tiers with scales."""
        key = f"{clip['group']}/{tier}"
        f = slice(clip["offset"] + frames.start, clip["offset"] + frames.stop)
        data = self._array(key)[f, :, rows, cols]
        scales = self._array(_scale_key(key))[f] if self.layout[key]["quantised"] else None
        return data, scales

    def missing(self, clip: dict, record: dict | None = None) -> list[str]:
        """Shards of the clip that are not on disk (for ``cache verify``)."""
        out = []
        for d in self._frame_dirs(clip):
            if not d.is_dir() or not any(p.is_file() and not p.name.endswith(".partial") for p in d.rglob("*")):
                out.append(str(d.relative_to(self.root)))
        return out

    def _rows_on_disk(self, key: str) -> set[int]:
        """Rows (frames) of array ``key`` whose shard is on disk: one walk over the array, not one per frame."""
        base = self.root / key / "c"
        rows = set()
        for folder, _, files in os.walk(base):
            parts = Path(folder).relative_to(base).parts
            if parts and parts[0].isdigit() and any(not f.endswith(".partial") for f in files):
                rows.add(int(parts[0]))
        return rows

    def missing_all(self, clips: list[dict], records: dict[int, dict]) -> dict[int, list[str]]:
        """:meth:`missing` for many clips at once (``cache info``, resume): ``index → shards not on disk``, only
        clips that have any missing."""
        present: dict[str, set[int]] = {}
        out: dict[int, list[str]] = {}
        for clip in clips:
            rows = range(clip["offset"], clip["offset"] + clip["frames"])
            missing = []
            for key, a in self.layout.items():
                if a["group"] != clip["group"]:
                    continue
                for k in (key, _scale_key(key)) if a["quantised"] else (key,):
                    if k not in present:
                        present[k] = self._rows_on_disk(k)
                    missing += [f"{k}/c/{row}" for row in rows if row not in present[k]]
            if missing:
                out[clip["index"]] = missing
        return out

    def join_missing(self) -> bool:
        return False  # Zarr has no join step

    def stored_bytes(self) -> dict[str, int]:
        """Bytes on disk per tier (all groups)."""
        out: dict[str, int] = {}
        for key, a in self.layout.items():
            for k in (key, _scale_key(key)) if a["quantised"] else (key,):
                n = sum(p.stat().st_size for p in (self.root / k).rglob("*") if p.is_file())
                out[a["tier"]] = out.get(a["tier"], 0) + n
        return out


class HDF5Backend:
    """Part files of whole clips, joined by virtual datasets in ``cache.h5``."""

    format = "hdf5"

    def __init__(self, root: Path, manifest: dict, rank: int = 0):
        self.root, self.manifest, self.rank = Path(root), manifest, rank
        self.layout = manifest["layout"]["arrays"]
        self.part_bytes = int(manifest["layout"].get("part_mb", 1024) * 2 ** 20)
        self._file = None        # the part being written
        self._part = None        # its final name
        self._pending: list[dict] = []
        self._seq = 0
        self._vds = None
        self._pid = None

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------------------------------------- writing
    def _parts(self, rank: int | None = None) -> list[Path]:
        who = str(rank) if rank is not None else r"\d+"
        pattern = re.compile(r"part-r" + who + r"-\d+\.h5$")
        return sorted(p for p in self.root.iterdir() if pattern.match(p.name))

    def start_part(self, seq: int) -> None:
        """Resume numbering after this rank's existing parts (which stay: their clips are done)."""
        existing = [int(p.stem.rsplit("-", 1)[1]) for p in self._parts(self.rank)]
        self._seq = max([seq - 1, *existing]) + 1
        for tmp in self.root.glob(f".part-r{self.rank}-*.partial"):
            tmp.unlink()

    def discard(self, clip: dict) -> None:
        pass  # a clip lives in a part that was either renamed (done) or is a .partial file (removed on start)

    def _open_part(self) -> None:
        import h5py

        self._part = self.root / f"part-r{self.rank}-{self._seq:05d}.h5"
        self._tmp = self.root / f".{self._part.name}.partial"
        self._file = h5py.File(self._tmp, "w")
        self._seq += 1

    def write(self, clip: dict, tier: str, start: int, data: np.ndarray, scales: np.ndarray | None) -> None:
        if self._file is None:
            self._open_part()
        name = f"clips/{clip['index']}/{tier}"
        if name not in self._file:
            a = self.layout[f"{clip['group']}/{tier}"]
            shape = (clip["frames"], *a["shape"][1:])
            self._file.create_dataset(name, shape=shape, dtype=a["dtype"], chunks=tuple(a["chunks"]),
                                      compression="lzf" if self.manifest["layout"]["compress"] else None,
                                      fletcher32=True)  # a corrupted chunk fails to read, not reads wrong
            if a["quantised"]:
                self._file.create_dataset(_scale_key(name), shape=shape[:2], dtype="float32")
        self._file[name][start:start + len(data)] = data
        if scales is not None:
            self._file[_scale_key(name)][start:start + len(data)] = scales

    def end_clip(self, clip: dict) -> list[tuple[dict, dict]]:
        self._pending.append(clip)
        self._file.flush()
        if os.path.getsize(self._tmp) >= self.part_bytes:
            return self.close()
        return []

    def close(self) -> list[tuple[dict, dict]]:
        """Close the open part: fsync, rename into place; its clips are done now."""
        if self._file is None:
            return []
        self._file.close()
        self._file = None
        fsync_paths([self._tmp])
        os.replace(self._tmp, self._part)
        fsync_paths([self.root])
        size = self._part.stat().st_size
        total = sum(c["frames"] for c in self._pending) or 1
        done = [(c, {"part": self._part.name, "stored_bytes": round(size * c["frames"] / total)})
                for c in self._pending]
        self._pending = []
        return done

    def finalise(self, records: dict[int, dict]) -> None:
        """Write ``cache.h5``: one virtual dataset per group/tier mapping each clip's rows to its part file."""
        import h5py

        clips = self.manifest["clips"]
        with atomic_path(self.root / VDS) as tmp:
            with h5py.File(tmp, "w") as f:
                for key, a in self.layout.items():
                    names = [key, _scale_key(key)] if a["quantised"] else [key]
                    for name in names:
                        shape = a["shape"] if name == key else a["shape"][:2]
                        dtype = a["dtype"] if name == key else "float32"
                        vlayout = h5py.VirtualLayout(shape=tuple(shape), dtype=dtype)
                        for c in clips:
                            if c["group"] != a["group"]:
                                continue
                            src_name = f"clips/{c['index']}/{a['tier']}" + ("" if name == key else "_scale")
                            src = h5py.VirtualSource(records[c["index"]]["part"], src_name,
                                                     shape=(c["frames"], *shape[1:]))
                            vlayout[c["offset"]:c["offset"] + c["frames"]] = src
                        f.create_virtual_dataset(name, vlayout, fillvalue=0)
        referenced = {r["part"] for r in records.values()}
        for p in self._parts():
            if p.name not in referenced:  # a part renamed just before a kill, whose clips were redone
                p.unlink(missing_ok=True)
        for p in self.root.glob(".part-*.partial"):  # left by a killed rank of an earlier, wider run
            p.unlink(missing_ok=True)

    # ----------------------------------------------------------------------------------------------- reading
    def _h5(self):
        if self._pid != os.getpid() or self._vds is None:
            import h5py

            self._vds, self._pid = h5py.File(self.root / VDS, "r"), os.getpid()
        return self._vds

    def read(self, clip: dict, tier: str, frames: slice, rows: slice, cols: slice
             ) -> tuple[np.ndarray, np.ndarray | None]:
        key = f"{clip['group']}/{tier}"
        f = slice(clip["offset"] + frames.start, clip["offset"] + frames.stop)
        data = self._h5()[key][f, :, rows, cols]
        scales = self._h5()[_scale_key(key)][f] if self.layout[key]["quantised"] else None
        return data, scales

    def missing(self, clip: dict, record: dict | None = None) -> list[str]:
        if record is None or not (self.root / record.get("part", "")).is_file():
            return [record.get("part", "part file") if record else "part file"]
        import h5py

        try:
            with h5py.File(self.root / record["part"], "r") as f:
                return [f"{record['part']}:clips/{clip['index']}/{a['tier']}" for key, a in self.layout.items()
                        if a["group"] == clip["group"] and f"clips/{clip['index']}/{a['tier']}" not in f]
        except OSError as e:
            return [f"{record['part']} (unreadable: {e})"]

    def missing_all(self, clips: list[dict], records: dict[int, dict]) -> dict[int, list[str]]:
        """``index → [part file]`` for the clips whose part file (named in their record, or the manifest's entry
        of a complete cache) is not on disk."""
        parts = {p.name for p in self._parts()}
        out: dict[int, list[str]] = {}
        for clip in clips:
            part = (records.get(clip["index"]) or clip).get("part")
            if part is not None and part not in parts:
                out[clip["index"]] = [part]
        return out

    def join_missing(self) -> bool:
        """The manifest says complete but ``cache.h5`` (the join of the parts, written last) is not on disk."""
        return bool(self.manifest.get("complete")) and not (self.root / VDS).is_file()

    def stored_bytes(self) -> dict[str, int]:
        """Bytes on disk per tier, from the HDF5 storage size of each dataset."""
        import h5py

        out: dict[str, int] = {}
        for p in self._parts():
            with h5py.File(p, "r") as f:
                for index in f.get("clips", {}):
                    for name, ds in f["clips"][index].items():
                        tier = name.removesuffix("_scale")
                        out[tier] = out.get(tier, 0) + ds.id.get_storage_size()
        return out


def backend(root: Path, manifest: dict, rank: int = 0):
    cls = {"zarr": ZarrBackend, "hdf5": HDF5Backend}[manifest["fingerprint"]["format"]]
    return cls(root, manifest, rank)

