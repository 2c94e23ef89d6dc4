"""The teacher's side of the losses: where its targets come from (the cache's tiers, the cached upsampling head
rebuilding F^SR / SR from the stored trunk, or the teacher run online), and the targets of a batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from stdvsr.cache.layout import HEAD_MARGIN
from stdvsr.cache.reader import CacheReader
from stdvsr.configs import DistillConfig
from stdvsr.data import dihedral
from stdvsr.distill.plan import cache_tiers, distilled_feature, teacher_needs
from stdvsr.errors import StdvsrError
from stdvsr.infer import pad_to_multiple
from stdvsr.models import build_model, feature_channels
from stdvsr.names import NO_TRUNK
from stdvsr.perf import autocast


@dataclasses.dataclass(frozen=True)
class TeacherSide:
    """Where a run's targets come from, decided once by :func:`teacher_side`."""

    needs: set[str]  # what the terms take from the teacher (teacher_needs)
    feature: str  # the distilled feature map, sr or lr
    tiers: list[str]  # the cache tiers to read ([] with the online teacher)
    head: nn.Module | None  # the cache's upsampling head: F^SR / SR rebuilt from the stored trunk
    online: nn.Module | None  # the teacher itself, run every step (--online-teacher with a distillation term)
    channels: int  # the teacher's channels at the distilled feature (what the adapter maps to)


def teacher_side(cfg: DistillConfig, reader: CacheReader, device: torch.device) -> TeacherSide:
    """The cached head or the online teacher, the tiers to read, and the teacher's channel count."""
    needs, feature, online = teacher_needs(cfg), distilled_feature(cfg), None
    if not reader.has_gt:  # LR footage: the teacher's SR is L_rec's target
        needs = needs | {"sr"}
    with torch.random.fork_rng(devices=[]):  # building teacher layers must not move the seeded RNG stream
        head = reader.head().to(device) if "trunk" in reader.tiers else None
        if cfg.online_teacher:
            tiers = []
            online = load_online_teacher(cfg, reader, device) if needs else None
        else:
            _check_trunkless(needs, feature, reader)
            tiers = cache_tiers(needs, feature, reader.tiers, reader.root)
        # the teacher's channels at the distilled feature (what the adapter maps to and the ConvLSTM reads); an
        # old cache's are read off its head, whose layers are built here too
        channels = feature_channels(online)[feature] if online is not None else reader.teacher_channels(feature)
    return TeacherSide(needs, feature, tiers, head, online, channels)


def _check_trunkless(needs: set[str], feature: str, reader: CacheReader) -> None:
    """A cache of a teacher without a trunk (RBPN) serves only what it stores: refuse what it lacks, naming the
    ``--store`` tier that would serve it (the general refusal points at ``--store trunk``, which such a cache
    cannot hold)."""
    teacher = reader.fingerprint["teacher"]["name"]
    if teacher not in NO_TRUNK:
        return
    if feature == "lr" and "feat" in needs:
        raise StdvsrError(f"cache {reader.root} holds an {teacher.upper()} teacher, which has no trunk to cache, so it "
                          "cannot provide F^LR (--feature lr, the default of --kd mean2); use --feature sr, or "
                          "--online-teacher")
    serving = {"feat": ("feat_sr",), "attention": ("attention", "feat_sr"), "sr": ("sr",)}
    for need in sorted(needs):
        if not any(t in reader.tiers for t in serving[need]):
            wanted = " or ".join(serving[need])
            raise StdvsrError(f"cache {reader.root} ({teacher.upper()} teacher) stores {', '.join(reader.tiers)}, not "
                              f"{wanted}, which --kd here needs; rebuild it with --store including {wanted}, or use "
                              "--online-teacher")


class Targets(dict):
    """The teacher's targets for a batch: ``feat`` ``(B,N,C,H,W)``, ``attention`` ``(B,N,H,W)``, ``sr``."""


@torch.no_grad()
def cached_targets(batch: dict, head, needs: set[str], feature: str, device, precision: str = "fp32") -> Targets:
    """Targets from the cache's tiers: stored tiers as they are, F^SR / SR rebuilt from the trunk by the head (in
    ``precision``, returned as float32)."""
    out = Targets()
    m = HEAD_MARGIN
    if feature == "lr" and "feat" in needs:
        trunk = batch["trunk"]
        out["feat"] = trunk[..., m:trunk.shape[-2] - m, m:trunk.shape[-1] - m].to(device)
    need_fsr = feature == "sr" and ("feat" in needs or ("attention" in needs and "attention" not in batch))
    if need_fsr and "feat_sr" in batch:
        out["feat"] = batch["feat_sr"].to(device)
        need_fsr = False
    need_sr = "sr" in needs and "sr" not in batch
    if need_fsr or need_sr:
        with autocast(device, precision):
            fsr, sr = head.targets(batch["trunk"].to(device), batch["valid"].to(device),
                                   batch["lq_margin"].to(device) if need_sr else None)
        if need_fsr:
            out["feat"] = fsr.float()
        if need_sr:
            out["sr"] = sr.float()
    if "sr" in needs and "sr" in batch:
        out["sr"] = batch["sr"].to(device)
    if "attention" in needs and "feat" not in out:
        out["attention"] = batch["attention"].to(device)[:, :, 0]
    return out


@torch.no_grad()
def online_targets(batch: dict, teacher: nn.Module, needs: set[str], feature: str, sr_scale: int, patch: int,
                   device) -> Targets:
    """Targets from the teacher run now on the whole LR frames (as the cache build runs it), cropped to the box."""
    feats, srs = [], []
    for b, (frames, index) in enumerate(zip(batch["teacher_lq"], batch["teacher_index"])):
        top, left = int(batch["box"][0][b]), int(batch["box"][1][b])
        f = teacher.forward_windows(pad_to_multiple(frames).unsqueeze(0).to(device), index.to(device))
        if feature == "lr":
            y, x, q = top // sr_scale, left // sr_scale, patch // sr_scale
            feats.append(f.feat_lr[0, :, :, y:y + q, x:x + q])
        else:
            feats.append(f.feat_sr[0, :, :, top:top + patch, left:left + patch])
        srs.append(f.sr[0, :, :, top:top + patch, left:left + patch])
    out = Targets()
    if needs & {"feat", "attention"}:
        out["feat"] = torch.stack(feats)
    if "sr" in needs:
        out["sr"] = torch.stack(srs)
    return out


def augment_batch(batch: dict, targets: Targets) -> tuple[torch.Tensor, torch.Tensor | None, Targets]:
    """Apply each sample's dihedral transform to its windows, ground truth (None for LR footage) and targets alike
    (``--augment approx``: a transformed target is not exactly the teacher's output on the transformed input)."""
    windows, gt = batch["windows"], batch.get("gt")
    transforms = [int(t) for t in batch["transform"]]
    if not any(transforms):
        return windows, gt, targets

    def each(x):
        return torch.stack([dihedral(x[b], t) for b, t in enumerate(transforms)])

    return each(windows), None if gt is None else each(gt), Targets({k: each(v) for k, v in targets.items()})


def load_online_teacher(cfg: DistillConfig, reader: CacheReader, device) -> nn.Module:
    """The teacher the cache was built from (weights checked against the cache's sha256)."""
    from stdvsr.io import sha256_file
    from stdvsr.models import load_weights

    fp = reader.fingerprint["teacher"]
    path = Path(cfg.teacher_weights or reader.manifest["layout"].get("teacher_weights", "")).expanduser()
    if not path.is_file():
        raise StdvsrError(f"--online-teacher: the teacher weights {path} are not there; pass --teacher-weights")
    if sha256_file(path) != fp["weights_sha256"]:
        raise StdvsrError(f"--online-teacher: {path} is not the teacher cache {reader.root} was built with "
                          "(sha256 differs); pass the same weights with --teacher-weights")
    teacher = build_model(fp["name"], **fp["kwargs"])
    load_weights(teacher, path, fp.get("weights_key"))
    return teacher.to(device).eval().requires_grad_(False)
