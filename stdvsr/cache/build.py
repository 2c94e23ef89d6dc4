"""``stdvsr cache-teacher`` (stage one): run the teacher once over a dataset and store its targets.

For every clip and every frame t, the teacher sees the ``2k+1`` window around t (the cache's padding mode beyond
the clip's ends); EDVR extracts each frame's pyramid features once per clip and shares them among its windows
(:meth:`EDVR.iter_windows`), RBPN computes each window's flows and projections anew (:meth:`RBPN.iter_windows`).
What is stored per frame is chosen by ``tiers`` (see :mod:`stdvsr.cache.layout`); the teacher's float32 LR input
``lq`` is always stored, so stage two feeds the student exactly the pixels the teacher saw. RBPN has no LR trunk
and small head (:mod:`stdvsr.models.rbpn`), so its caches store F^SR, the attention map and SR directly (default
``feat_sr,sr``) and hold no ``head.pth``.

Views (``views`` > 1): every clip is also cached through the dihedral transforms 1..views−1
(:func:`stdvsr.data.with_views`), each a clip of its own named ``<clip>@t<v>``. A view's HR frames are transformed
first and then degraded, and the teacher runs on that LR input, so a flipped or rotated sample in stage two has
the teacher's exact targets (a transformed cached target would not be the teacher's output on the transformed
input; docs/ARCHITECTURE.md). Each view costs one more teacher pass and as many bytes as the clip itself.

LR footage (``degradation`` ``none``; issue #22): the dataset's frames are the teacher's input as given — a user's
own video with no HR original. Nothing is degraded, no ground truth is read or stored (the manifest says so:
:func:`stdvsr.cache.layout.has_ground_truth`), the default tier is the teacher's SR frames, and a view is the LR
frames transformed, on which the teacher runs: its targets are exact as well.

Crash safety: a clip is done when its progress record exists, and the record is written (fsynced) only after the
clip's data is durable. A killed run re-run with the same command removes the unfinished clips' pieces and
recomputes them; clips are independent (the teacher's batch is windows of one clip), so the arrays end identical
to an uninterrupted run. The same command also writes again the finished clips whose progress record, shards or
part file are gone (counted on disk, also when the manifest says complete), keeping the rest. Scale-out: rank r
of N (``torchrun`` or ``--rank/--world-size``) writes the clips
``i ≡ r (mod N)``, hence whole shards; the last step (``complete`` in the manifest, HDF5's virtual datasets) is
written once every record exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from rich.table import Table

from stdvsr import __version__, interrupts
from stdvsr.cache.layout import (FORMAT_VERSION, HEAD, MANIFEST, MIN_FOOTAGE_SIZE, PROGRESS, array_layout,
                                 estimate_bytes, feature_point, first_difference, lookup,
                                 parse_tiers, plan_clips, quantise, read_manifest, sources_sha256, write_manifest)
from stdvsr.cache.records import not_intact, read_records, record_path, write_record
from stdvsr.cache.stores import backend
from stdvsr.configs import CacheConfig
from stdvsr.data import (check_clip, degrade, load_clips, parse_spec, read_footage, read_hr, read_lq_from_disk,
                         resolve_spec, window_indices, with_views)
from stdvsr.distributed import barrier, end_process_group, torchrun_group
from stdvsr.errors import StdvsrError
from stdvsr.infer import pad_to_multiple
from stdvsr.io import atomic_path, folder_lock, mib, sha256_file, size_text
from stdvsr.names import (DEFAULT_TIERS, FOOTAGE_TIERS, NO_DEGRADATION, NO_TRUNK, NO_TRUNK_TIERS, TEACHERS,
                          teacher_presets)
from stdvsr.options import check_fields
from stdvsr.progress import stderr, stdout, work_progress
from stdvsr.training import resolve_device

FP16_MAX = 65504.0


def default_out(cfg: CacheConfig) -> Path:
    data = cfg.data.replace(":", "-").replace("/", "_").strip("_") or "data"
    suffix = f"-{cfg.split}" if cfg.split != "train" else ""
    suffix += "-lr" if footage(cfg) else ""  # a footage cache of a folder never meets that folder's GT cache
    return Path("cache") / f"{data}{suffix}-{cfg.teacher}.{cfg.format}"


def footage(cfg: CacheConfig) -> bool:
    """``--degradation none``: the ``--data`` frames are LR footage, the teacher's input as given (no GT)."""
    return cfg.degradation == NO_DEGRADATION


def store_tiers(cfg: CacheConfig) -> tuple[str, ...]:
    """The tiers ``--store`` names, or its default: ``trunk`` (serves SD and TD through the cached head; a teacher
    without a trunk, RBPN: ``feat_sr,sr``), and for footage ``sr`` (the teacher's output, what a student adapting to
    footage reads every step). A teacher without a trunk refuses ``trunk``, and on footage needs ``sr`` (no cached
    head can rebuild it)."""
    direct = cfg.teacher in NO_TRUNK
    if cfg.store is None:
        return FOOTAGE_TIERS if footage(cfg) else NO_TRUNK_TIERS if direct else DEFAULT_TIERS
    tiers = parse_tiers(cfg.store)
    if direct and "trunk" in tiers:
        raise StdvsrError(f"--store trunk: an {cfg.teacher.upper()} teacher has no LR trunk and small head to cache "
                          "(its HR maps are made inside every projection); store feat_sr, attention and/or sr "
                          f"(default: {','.join(NO_TRUNK_TIERS)})")
    if direct and footage(cfg) and "sr" not in tiers:
        raise StdvsrError(f"--store {','.join(tiers)}: a footage cache of an {cfg.teacher.upper()} teacher needs sr "
                          "(the student's target, which no cached head can rebuild for it); add sr to --store")
    return tiers


# ------------------------------------------------------------------------------------------------- teacher
def load_teacher(cfg: CacheConfig):
    """The teacher network and its fingerprint entry (architecture, arguments, weights hash; for a teacher without
    a trunk also what its F^SR is). Weights that record no network need ``--preset``; official RBPN weights get
    their configuration from their shapes."""
    from stdvsr.models import DEMO_TEACHERS, build_model, checkpoint_spec, load_weights, model_spec, read_checkpoint
    from stdvsr.models.edvr import EDVR

    path = Path(cfg.weights).expanduser() if cfg.weights else DEMO_TEACHERS[cfg.teacher]
    if cfg.weights is None and not path.is_file():
        raise StdvsrError(f"--teacher {cfg.teacher} needs --weights: no shipped demo teacher at {path}; train one "
                          f"with bash pipelines/train_demo_teacher.sh {cfg.teacher}")
    name, kwargs = checkpoint_spec(read_checkpoint(path), path, arch=cfg.preset)
    if name is None:
        raise StdvsrError(f"--weights {path} is not a stdvsr checkpoint (no model name inside); name its "
                          f"architecture with --preset, one of {', '.join(teacher_presets())}")
    arch, full = model_spec(name, **kwargs)
    if arch != cfg.teacher:
        hint = f"; pass --teacher {arch}" if arch in TEACHERS else ""
        raise StdvsrError(f"--weights {path} holds a {arch} network, not a {cfg.teacher} teacher{hint}")
    model = build_model(name, **kwargs)
    if isinstance(model, EDVR) and model.hr_in:
        raise StdvsrError("the cache needs an EDVR teacher with LR input (hr_in=False)")
    used = load_weights(model, path)["key"]
    info = {"name": arch, "kwargs": full, "weights_sha256": sha256_file(path), "weights_key": used,
            "weights": str(path)}
    return model.eval(), info


def teacher_arch(weights: str | None, preset: str | None) -> str:
    """The architecture of the teacher ``weights`` hold (recorded, else ``preset``'s; no weights: the shipped demo
    teacher, an EDVR), so that a caller can choose the tiers before :func:`load_teacher` runs it."""
    from stdvsr.models import checkpoint_spec, model_spec, read_checkpoint

    if weights is None:
        return "edvr"
    name, _ = checkpoint_spec(read_checkpoint(weights, "--teacher-weights"), Path(weights), arch=preset)
    return "edvr" if name is None else model_spec(name)[0]  # unnamed: load_teacher says what to pass


def head_state(model) -> dict:
    """What stage two needs to rebuild F^SR and SR from the trunk: the upsampling head and conv_last (EDVR)."""
    keep = ("upconv1.", "upconv2.", "conv_hr.", "conv_last.")
    return {"state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.startswith(keep)},
            "num_feat": model.upconv1.in_channels, "center_frame_idx": model.center_frame_idx,
            "num_frame": model.num_frame}


# ------------------------------------------------------------------------------------------------ manifest
def make_manifest(cfg: CacheConfig, teacher_info: dict, model, clips) -> dict:
    """The manifest of a new cache; ``layout.channels`` records the teacher's F^SR / F^LR widths (``sr`` / ``lr``),
    which distill's adapter and ConvLSTM are sized to."""
    from stdvsr.models import feature_channels

    scale = 4
    records, groups = plan_clips(clips, scale, cfg.mod_crop, lr_input=footage(cfg))
    tiers = store_tiers(cfg)
    channels = feature_channels(model)
    layout = array_layout(groups, tiers, channels["lr"], cfg.dtype, scale, cfg.chunk, channels["sr"])
    fingerprint = {
        "format_version": FORMAT_VERSION,
        "stdvsr": __version__,
        "format": cfg.format,
        "teacher": {k: v for k, v in teacher_info.items() if k != "weights"},
        "data": {"spec": resolve_spec(cfg.data), "split": cfg.split, "max_clips": cfg.max_clips},
        "views": cfg.views,
        "degradation": cfg.degradation,
        "lq_from_disk": cfg.lq_from_disk,
        "mod_crop": cfg.mod_crop,
        "scale": scale,
        "num_frame": model.num_frame,
        "padding": cfg.padding,
        "feature_point": feature_point(teacher_info["name"]),
        "tiers": list(tiers),
        "dtype": cfg.dtype,
        "chunk": cfg.chunk,
        "compress": cfg.compress,
        "clips": [[r["name"], r["frames"], groups[r["group"]]["hr_size"]] for r in records],
    }
    return {"fingerprint": fingerprint, "complete": False, "groups": groups, "clips": records,
            "layout": {"arrays": layout, "compress": cfg.compress, "part_mb": cfg.part_mb,
                       "head_margin": 2, "teacher_weights": teacher_info["weights"], "channels": channels},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def check_fingerprint(old: dict, new: dict, root: Path) -> None:
    """Refuse to add to a cache built with other settings, naming the first field that differs.

    The dataset counts by content, not by spelling: ``folder:tiny`` and ``folder:/abs/tiny`` (or a dataset that
    moved) are the same data when the kind and every clip's name, frame count and size (``clips``) agree.
    """
    old = {"views": 1, **old}  # caches written before --views existed hold one view per clip
    old, new = ({**fp, "data": {**fp["data"], "spec": parse_spec(fp["data"]["spec"])[0]}} for fp in (old, new))
    diff = first_difference(old, new)
    if diff:
        raise StdvsrError(f"cache {root} was built with other settings: {diff} is {lookup(old, diff)!r} there, "
                          f"{lookup(new, diff)!r} now; use the same settings to resume, or another --out")


# ------------------------------------------------------------------------------------------- distribution
def _distribution(cfg: CacheConfig) -> tuple[int, int, bool]:
    """``(rank, world_size, has_process_group)``: explicit flags, else torchrun's environment, else 1 process."""
    if cfg.world_size is not None or cfg.rank is not None:
        world = cfg.world_size or 1
        rank = cfg.rank or 0
        if not 0 <= rank < world:
            raise StdvsrError(f"--rank {rank} must be in [0, --world-size {world})")
        return rank, world, False
    # gloo only carries barriers here (the work needs no communication), and ranks may wait days for each other
    rank, world, _ = torchrun_group("gloo", timeout_minutes=2 * 24 * 60)
    return rank, world, world > 1


def _wait_for_manifest(root: Path, seconds: float = 900) -> None:
    t0 = time.time()
    while not (root / MANIFEST).is_file():
        if time.time() - t0 > seconds:
            raise StdvsrError(f"rank 0 has not created the cache {root} after {seconds:.0f} s; start rank 0 first")
        time.sleep(1)


# ------------------------------------------------------------------------------------------------- creation
def _free_bytes(path: Path) -> int:
    p = path.resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def _check_space(root: Path, need: int, check: bool, quiet: bool = False) -> None:
    free = _free_bytes(root)
    if not quiet:
        stderr().print(f"estimated size: {size_text(need)} uncompressed still to write; "
                       f"{size_text(free)} free at {root.resolve().parent}", highlight=False)
    if check and need > free:
        raise StdvsrError(f"not enough disk space for the cache {root}: it needs about {size_text(need)} "
                          f"(uncompressed estimate) and {size_text(free)} are free; free some space, choose "
                          "another --out, store fewer tiers (--store) or use --dtype int8")


def create(root: Path, manifest: dict, model) -> None:
    """Lay out an empty cache atomically: built in a hidden sibling folder, renamed into place when complete."""
    for stale in root.parent.glob(f".{root.name}.creating-*"):  # a creation killed before its rename
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root.parent / f".{root.name}.creating-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        backend(tmp, manifest).create()
        (tmp / PROGRESS).mkdir()
        if manifest["fingerprint"]["teacher"]["name"] not in NO_TRUNK:
            with atomic_path(tmp / HEAD) as t:
                torch.save(head_state(model), t)
        write_manifest(tmp, manifest)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# ---------------------------------------------------------------------------------------------- one clip
class _Hashes:
    def __init__(self):
        import hashlib

        self._new = lambda: hashlib.blake2b(digest_size=16)
        self.h: dict = {}

    def update(self, tier: str, data: np.ndarray, scales: np.ndarray | None = None) -> None:
        """Data and int8 scales hash separately (``tier`` and ``tier_scale``), in frame order."""
        for key, a in ((tier, data), (f"{tier}_scale", scales)):
            if a is not None:
                self.h.setdefault(key, self._new()).update(memoryview(np.ascontiguousarray(a)).cast("B"))

    def hex(self) -> dict[str, str]:
        return {k: v.hexdigest() for k, v in self.h.items()}


def tier_data(tier: str, feats, hr_size, dtype: str, clip_name: str):
    """The stored form of one tier for a chunk of windows: ``(data, scales or None)``."""
    h, w = hr_size
    if tier == "trunk":
        x = feats.feat_lr[0]
    elif tier == "feat_sr":
        x = feats.feat_sr[0, :, :, :h, :w]
    elif tier == "attention":
        x = feats.feat_sr[0, :, :, :h, :w].float().pow(2).sum(1, keepdim=True)
        peak = float(x.max())
        if not peak <= FP16_MAX:  # also catches NaN
            raise StdvsrError(f"clip {clip_name}: the teacher's attention map reaches {peak:.4g}, beyond float16; "
                              "store F^SR instead (--store trunk for EDVR, feat_sr for RBPN): attention is then "
                              "computed in float32")
    elif tier == "sr":
        x = feats.sr[0, :, :, :h, :w]
    else:
        raise AssertionError(tier)
    if not torch.isfinite(x).all():
        raise StdvsrError(f"clip {clip_name}: the teacher produced NaN/inf in {tier}; check the teacher weights")
    if dtype == "int8" and tier in ("trunk", "feat_sr"):
        return quantise(x)
    return x.to(torch.float16).cpu().numpy(), None


def process_clip(model, clip, rec: dict, group: dict, cfg: CacheConfig, store, device, tiers) -> dict:
    """Run the teacher over every window of one clip and write its tiers; returns hashes and timings."""
    t0 = time.perf_counter()
    indices = range(len(clip))
    hr_size = tuple(group["hr_size"])
    if footage(cfg):
        lq = read_footage(clip, indices)
        if tuple(lq.shape[-2:]) != tuple(group["lr_size"]):
            raise StdvsrError(f"clip {clip.name} changed size since the cache was planned; rebuild the cache")
        sources = list(clip.frames)
    elif cfg.lq_from_disk:
        lq = read_lq_from_disk(clip, indices, cfg.degradation, hr_size, 4)
        sources = [*clip.frames, *clip.lq_frames[cfg.degradation]]
    else:
        hr = read_hr(clip, indices, 4, cfg.mod_crop)
        if tuple(hr.shape[-2:]) != hr_size:
            raise StdvsrError(f"clip {clip.name} changed size since the cache was planned; rebuild the cache")
        lq = degrade(hr, cfg.degradation, 4)
        sources = list(clip.frames)
    source_hash = sources_sha256(sources)
    hashes = _Hashes()
    read_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    store.discard(rec)
    lq_np = lq.numpy()
    store.write(rec, "lq", 0, lq_np, None)
    hashes.update("lq", lq_np)
    write_s = time.perf_counter() - t1
    teacher_s = 0.0

    windows = torch.tensor([window_indices(t, len(clip), model.num_frame, cfg.padding) for t in indices])
    frames = pad_to_multiple(lq).unsqueeze(0).to(device)
    with torch.no_grad():
        it = model.iter_windows(frames, windows, chunk=cfg.batch_size)
        while True:
            t2 = time.perf_counter()
            part, feats = next(it, (None, None))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            teacher_s += time.perf_counter() - t2
            if part is None:
                break
            t3 = time.perf_counter()
            for tier in tiers:
                data, scales = tier_data(tier, feats, hr_size, cfg.dtype, clip.name)
                store.write(rec, tier, part.start, data, scales)
                hashes.update(tier, data, scales)
            write_s += time.perf_counter() - t3
    return {"index": rec["index"], "name": rec["name"], "source_sha256": source_hash, "hashes": hashes.hex(),
            "teacher_s": round(teacher_s, 4), "write_s": round(write_s, 4), "read_s": round(read_s, 4)}


# ------------------------------------------------------------------------------------------------- finalise
def finalise(root: Path, manifest: dict, records: dict[int, dict]) -> dict:
    """All clips done: merge the records into the manifest and mark it complete (HDF5: write cache.h5 first)."""
    store = backend(root, manifest)
    store.finalise(records)
    manifest = dict(manifest)
    clips = []
    for c in manifest["clips"]:
        r = records[c["index"]]
        clips.append({**c, "source_sha256": r["source_sha256"], "hashes": r["hashes"],
                      **({"part": r["part"]} if "part" in r else {})})
    manifest["clips"] = clips
    stored = store.stored_bytes()
    raw = estimate_bytes(manifest["layout"]["arrays"], manifest["clips"], manifest["fingerprint"]["tiers"])
    manifest["summary"] = {
        "clips": len(clips), "views": manifest["fingerprint"].get("views", 1),
        "frames": sum(c["frames"] for c in clips), "raw_bytes": raw, "stored_bytes": stored,
        "teacher_s": round(sum(r["teacher_s"] for r in records.values()), 3),
        "write_s": round(sum(r["write_s"] for r in records.values()), 3),
        "read_s": round(sum(r.get("read_s", 0) for r in records.values()), 3),
    }
    manifest["complete"] = True
    return write_manifest(root, manifest)


# ------------------------------------------------------------------------------------------------------ run
def _validate(cfg: CacheConfig) -> None:
    check_fields(cfg)
    if not 1 <= cfg.views <= 8:
        raise StdvsrError(f"--views {cfg.views} is not in 1..8; use 1 (the clips as they are), 2 (+ horizontal "
                          "flip), 4 (every flip) or 8 (flips and transposes)")
    if cfg.views > 1 and cfg.lq_from_disk:
        raise StdvsrError("--views needs LR frames made from the transformed HR frames; drop --lq-from-disk or "
                          "use --views 1")
    if footage(cfg):
        for flag, given in (("--lq-from-disk", cfg.lq_from_disk), ("--mod-crop", cfg.mod_crop)):
            if given:  # both are about HR frames, which footage does not have
                raise StdvsrError(f"{flag} applies to HR frames and their LR twins; with --degradation none the "
                                  f"--data frames are the LR input as given: drop {flag}")
    store_tiers(cfg)  # an unknown tier is refused before the teacher loads


def check_clips(clips, cfg: CacheConfig, num_frame: int) -> None:
    """Refuse, before anything is written, clips the teacher cannot run over: shorter than the window allows with
    ``--padding``, and (footage) frames of mixed sizes within a clip or smaller than :data:`MIN_FOOTAGE_SIZE`."""
    for clip in clips:
        for t in (0, len(clip) - 1):  # the windows at the clip's ends reach furthest beyond it
            window_indices(t, len(clip), num_frame, cfg.padding)
        if footage(cfg):
            h, w = check_clip(clip, scale=1)  # every frame's header: one size per clip
            if min(h, w) < MIN_FOOTAGE_SIZE:
                raise StdvsrError(f"frames of clip {clip.name} ({clip.frames[0]}) are {w}×{h}: LR footage needs at "
                                  f"least {MIN_FOOTAGE_SIZE}×{MIN_FOOTAGE_SIZE} pixels (the teacher aligns frames at "
                                  "1/4 of their size); use larger footage")


def run(cfg: CacheConfig, show_progress: bool = True) -> dict:
    """Build (or finish) the cache; returns a summary dict (``path``, ``complete``, counts, bytes, timings). Under
    torchrun the process group is shut down at the end, success or not."""
    try:
        with contextlib.ExitStack() as held:
            return _run(cfg, show_progress, held)
    finally:
        end_process_group()


def _run(cfg: CacheConfig, show_progress: bool, held: contextlib.ExitStack) -> dict:
    _validate(cfg)
    cfg = dataclasses.replace(cfg, store=store_tiers(cfg))
    root = Path(cfg.out) if cfg.out else default_out(cfg)
    rank, world, pg = _distribution(cfg)
    held.enter_context(folder_lock(root, "--out", rank))  # one writer per rank: the ranks share the folder
    device = resolve_device(cfg.device)
    if device.type == "cuda" and pg and cfg.device == "auto":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))

    model, teacher_info = load_teacher(cfg)
    clips = load_clips(cfg.data, cfg.split)
    if cfg.max_clips:
        clips = clips[:cfg.max_clips]
    check_clips(clips, cfg, model.num_frame)
    clips = with_views(clips, cfg.views)  # after --max-clips, which counts the dataset's clips
    manifest = make_manifest(cfg, teacher_info, model, clips)

    existing = read_manifest(root)
    if existing is None and root.exists() and any(root.iterdir()):
        raise StdvsrError(f"--out {root} exists and is not a stdvsr cache (no {MANIFEST}); choose another --out "
                          "or delete the folder")
    records, damaged = {}, {}
    if existing is not None:
        manifest, records, damaged, whole = _resume(root, existing, manifest, rank, pg)
        if whole:
            return _result(root, existing, processed=0, seconds=0.0, rank=rank)
    todo = [r for r in manifest["clips"] if r["index"] % world == rank and r["index"] not in records]
    # every rank checks (and fails) alike, so no rank is left waiting at a barrier for one that stopped
    _check_space(root, sum(estimate_bytes(manifest["layout"]["arrays"],
                                          [c for c in manifest["clips"] if c["index"] not in records],
                                          cfg.store).values()), cfg.check_space, quiet=rank != 0)
    if existing is None:
        manifest = _create_or_join(root, manifest, model, rank, pg)
    else:
        barrier(pg)  # ranks that found the cache already created meet the barrier of those that created it

    if rank == 0 and records:
        stderr().print(f"resuming {root}: {len(records)} of {len(manifest['clips'])} clips already done",
                       highlight=False)
    processed, seconds, done = _write_and_finalise(root, manifest, model.to(device), clips, todo, damaged, cfg,
                                                   device, rank, pg, show_progress)
    return _result(root, read_manifest(root), processed=processed, seconds=seconds, rank=rank, world=world,
                   done=done)


def _resume(root: Path, existing: dict, planned: dict, rank: int, pg: bool) -> tuple[dict, dict, dict, bool]:
    """A build into the existing cache ``root``, refused if ``planned`` has other settings: ``(manifest, records of
    the finished clips, damaged, whole)``. ``damaged``: finished clips not whole on disk, written again; ``whole``:
    the cache is complete and whole, nothing to do. A complete cache that is not whole is marked incomplete until
    it is repaired, so nothing reads it meanwhile."""
    check_fingerprint(existing["fingerprint"], planned["fingerprint"], root)
    records = read_records(root)
    # finished clips whose record, shards or part file are gone are written again (their stale record first
    # removed, by the rank that owns the clip), so the same command repairs what `cache verify` reports missing
    damaged = not_intact(root, existing, records)
    for index in damaged:
        records.pop(index, None)
    if not existing.get("complete"):
        return existing, records, damaged, False
    console = stderr()
    if not damaged and not backend(root, existing).join_missing():
        if rank == 0:
            console.print(f"cache {root} is complete ({len(existing['clips'])} clips); nothing to do",
                          highlight=False)
        return existing, records, damaged, True
    if rank == 0:
        by_index = {r["index"]: r for r in planned["clips"]}
        names = ", ".join(by_index[i]["name"] for i in sorted(damaged)) or "the join cache.h5"
        console.print(f"cache {root} is marked complete but not whole on disk ({names}); writing "
                      f"{'that' if len(damaged) < 2 else 'those'} again", highlight=False)
    manifest = existing
    if rank == 0 or not pg:
        manifest = write_manifest(root, {**existing, "complete": False})
    return manifest, records, damaged, False


def _create_or_join(root: Path, planned: dict, model, rank: int, pg: bool) -> dict:
    """A new cache: rank 0 lays it out, the others wait for it; every rank checks that it is the cache it planned
    (a rank started with other settings is refused) and returns its manifest."""
    if rank == 0:
        root.parent.mkdir(parents=True, exist_ok=True)
        create(root, planned, model)
    if pg:
        barrier(pg)
    else:
        _wait_for_manifest(root)
    manifest = read_manifest(root)
    check_fingerprint(manifest["fingerprint"], planned["fingerprint"], root)
    return manifest


def _write_and_finalise(root: Path, manifest: dict, model, clips, todo: list[dict], damaged: dict[int, str],
                        cfg: CacheConfig, device, rank: int, pg, show_progress: bool) -> tuple[int, float, int]:
    """This rank's clips written; the cache finalised by rank 0 (or each process alone) once every clip is whole;
    ``(clips written here, seconds, clips done by all ranks)``. On Ctrl-C / SIGTERM says what is kept."""
    try:
        processed, seconds = _write_clips(root, manifest, model, clips, todo, damaged, cfg, device, rank,
                                          show_progress)
        barrier(pg)
        records = read_records(root)
        if ((rank == 0 or not pg) and len(records) == len(manifest["clips"]) and not manifest.get("complete")
                and not not_intact(root, manifest, records)):
            finalise(root, manifest, records)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (stdvsr.errors.Terminated): the CLI exits 130 / 143
        interrupts.announce(e, f"{len(read_records(root))} of {len(manifest['clips'])} clips of {root} are written "
                               "and kept; run the same stdvsr cache-teacher command again to write the rest"
                            if rank == 0 or not pg else None)
        raise
    barrier(pg)
    return processed, seconds, len(records)


def _write_clips(root: Path, manifest: dict, model, clips, todo: list[dict], damaged: dict[int, str],
                 cfg: CacheConfig, device, rank: int, show_progress: bool) -> tuple[int, float]:
    """Run the teacher over this rank's ``todo`` clips and write them, each followed by its progress record;
    returns ``(clips written, seconds)``."""
    store = backend(root, manifest, rank)
    store.start_part(0)
    groups, layout = manifest["groups"], manifest["layout"]["arrays"]
    t0 = time.perf_counter()
    processed = 0
    pending: dict[int, dict] = {}
    with work_progress(len(todo), "teacher", enabled=show_progress and rank == 0) as bar:
        for rec in todo:
            if rec["index"] in damaged:  # a stale record must not outlive the pieces it vouches for
                (root / record_path(rec["index"])).unlink(missing_ok=True)
            result = process_clip(model, clips[rec["index"]], rec, groups[rec["group"]], cfg, store, device,
                                  cfg.store)
            pending[rec["index"]] = result
            t = time.perf_counter()
            done = store.end_clip(rec)
            result["write_s"] = round(result["write_s"] + time.perf_counter() - t, 4)
            for clip, extra in done:  # Zarr: this clip; HDF5: the clips of a part that was just closed
                write_record(root, {**pending.pop(clip["index"]), **extra, "rank": rank})
            processed += 1
            bar.advance(1, sum(estimate_bytes(layout, [rec], cfg.store).values()))
        for clip, extra in store.close():
            write_record(root, {**pending.pop(clip["index"]), **extra, "rank": rank})
    return processed, time.perf_counter() - t0


def _result(root: Path, manifest: dict, processed: int, seconds: float, rank: int = 0, world: int = 1,
            done: int | None = None) -> dict:
    return {"path": str(root), "complete": bool(manifest.get("complete")), "processed": processed,
            "clips": len(manifest["clips"]), "done": len(manifest["clips"]) if done is None else done,
            "frames": sum(c["frames"] for c in manifest["clips"]), "seconds": round(seconds, 3),
            "summary": manifest.get("summary"), "rank": rank, "world_size": world,
            "format": manifest["fingerprint"]["format"], "tiers": ["lq", *manifest["fingerprint"]["tiers"]]}


def print_summary(result: dict) -> None:
    """The table `stdvsr cache-teacher` ends with: bytes per tier raw and stored, and where the time went."""
    out = stdout()
    summary = result.get("summary")
    if not result["complete"] or not summary:
        out.print(f"{result['path']}: {result['done']} of {result['clips']} clips written by all ranks so far; "
                  f"this process wrote {result['processed']}", highlight=False)
        return
    views = summary.get("views", 1)
    table = Table(title=f"Teacher cache {result['path']} ({result['format']}): {summary['clips']} clips"
                        + (f" ({views} views of each)" if views > 1 else "") + f", {summary['frames']} frames")
    for col in ("tier", "raw MB", "stored MB", "compression", "MB / clip"):
        table.add_column(col, justify="left" if col == "tier" else "right")
    raw, stored = summary["raw_bytes"], summary["stored_bytes"]
    for tier in result["tiers"]:
        r, s_ = raw.get(tier, 0), stored.get(tier, 0)
        table.add_row(tier, mib(r), mib(s_), f"{r / s_:.2f}×" if s_ else "-", mib(s_ / max(summary["clips"], 1)))
    total_r, total_s = sum(raw.values()), sum(stored.values())
    table.add_row("total", mib(total_r), mib(total_s), f"{total_r / total_s:.2f}×" if total_s else "-",
                  mib(total_s / max(summary["clips"], 1)), style="bold")
    out.print(table)
    t, w = summary["teacher_s"], summary["write_s"]
    out.print(f"teacher {t:.1f} s, writing {w:.1f} s ({100 * w / max(t, 1e-9):.1f} % of teacher time), "
              f"reading frames {summary.get('read_s', 0):.1f} s; this run: {result['processed']} clips in "
              f"{result['seconds']:.1f} s", highlight=False)
