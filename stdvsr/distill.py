"""``stdvsr distill``: stage two — train a compact student against a teacher cache with Space-Time Distillation.

One training sample is a clip of ``clip_frames`` = 2k+1 consecutive frames at one HR crop. The student runs the
window of every frame (its own window length, padded at the clip's ends as the cache was built), giving SR_t and
F^SR_t for each frame t; the teacher's F^SR_t for the same pixels comes from the cache (its trunk through the
cached upsampling head, or a stored tier) or, with ``online_teacher``, from running the teacher every step.

    L = L_rec + λ1·L_SD + λ2·L_TD                                  (Eq. 9)
    L_rec = Charbonnier(SR_t, HR_t) over the clip's frames          (Eq. 8, ε = 1e-6)
    L_SD  = mean_t L_d(M^S_t, M^T_t),  M = Σ_c |F^SR_c|²           (Eq. 1–5)
    L_TD  = L_d(C^S, C^T), C = ConvLSTM(F^SR_1 … F^SR_N) final cell (Eq. 6–7)

The ConvLSTM is shared by teacher and student, trains with the student and is frozen for good once L_TD < 1e-8
(the paper's guard against the all-zero collapse). A 1×1 adapter maps the student's features to the teacher's
channel count where a loss compares features (TD, KD-MSE); attention maps need none. For ``warmup_steps`` steps
only L_rec is used (the paper: 20K). Baselines (``kd``): ``none`` (L_rec only), ``sd``, ``td``, ``std``,
``mse`` (KD-MSE on the features), ``mean2`` (Gao et al.'s (mean_c F)², on F^LR by default), ``output`` (the
teacher's SR frames); ``feature="lr"`` distils F^LR (the trunk) instead of F^SR (Table 4).

Outputs in ``out``: ``config.json``, ``metrics.jsonl``, ``checkpoints/step_XXXXXXX.pth`` (student, adapter and
ConvLSTM, optimizer, step, RNG states, resolved config, cache fingerprint) and ``student.pth``, the deployable
student alone (what ``stdvsr.models.load_model``, ``evaluate`` and ``export`` take). ``resume="auto"`` continues
from the newest checkpoint with exactly the batches, crops and losses of an uninterrupted run (on a CPU).
Scale-out: ``torchrun --nproc_per_node N stdvsr distill …`` (gloo on CPU, NCCL on GPU); ``batch_size`` is per
rank and rank r takes its slice of every global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from stdvsr import __version__
from stdvsr.cache.build import pad4
from stdvsr.cache.layout import FEATURE_POINT, HEAD_MARGIN, first_difference, lookup
from stdvsr.cache.reader import CacheReader, draw_crop
from stdvsr.configs import DistillConfig
from stdvsr.data import dihedral, window_indices
from stdvsr.distributed import digests_across_ranks, end_process_group, mean_across_ranks, torchrun_group
from stdvsr.errors import StdvsrError
from stdvsr.io import folder_lock
from stdvsr.losses import ConvLSTM, charbonnier, kd_mean2, kd_mse, output_kd, sd_loss, td_loss
from stdvsr.models import build_model, model_spec, read_checkpoint
from stdvsr.options import check_fields, flag_of, resumable
from stdvsr.progress import stderr, training_progress
from stdvsr.training import (RunFolder, StepBatches, StepTimes, check_schedule, latest_checkpoint, learning_rate,
                             loader_batches, loader_worker_init, resolve_device, resolved_specs, resume_run, rng_state,
                             save_checkpoint, seed_everything, set_rng_state)

# Fields a resumed run may change; anything else must match the checkpoint.
RESUMABLE_CHANGES = resumable(DistillConfig)


# --------------------------------------------------------------------------------------------------- planning
def _feature(cfg: DistillConfig) -> str:
    return cfg.feature or ("lr" if cfg.kd == "mean2" else "sr")


def uses(cfg: DistillConfig) -> set[str]:
    """The loss terms besides L_rec: a subset of {sd, td, mse, mean2, output}."""
    terms = {"std": {"sd", "td"}, "sd": {"sd"}, "td": {"td"}, "none": set(), "mse": {"mse"},
             "mean2": {"mean2"}, "output": {"output"}}[cfg.kd]
    return terms | ({"output"} if cfg.lambda_out > 0 else set())


def term_weights(cfg: DistillConfig) -> dict[str, float]:
    """λ of every loss term besides L_rec (Eq. 9; the baselines' single term takes λ1)."""
    return {"sd": cfg.lambda_sd, "td": cfg.lambda_td, "mse": cfg.lambda_sd, "mean2": cfg.lambda_sd,
            "output": cfg.lambda_sd if cfg.kd == "output" else cfg.lambda_out}


def kd_scale(cfg: DistillConfig, step: int) -> float:
    """The factor on every distillation term at (0-based) ``step``: 0 during warm-up, then a linear ramp to 1 over
    ``kd_ramp`` steps (1 at once without a ramp)."""
    if step < cfg.warmup_steps:
        return 0.0
    if cfg.kd_ramp <= 0:
        return 1.0
    return min(1.0, (step - cfg.warmup_steps + 1) / cfg.kd_ramp)


def teacher_needs(cfg: DistillConfig) -> set[str]:
    """What the losses take from the teacher: ``feat`` (F^SR or F^LR), ``attention`` (M^T only), ``sr``."""
    terms = uses(cfg)
    needs = set()
    if terms & {"td", "mse", "mean2"}:
        needs.add("feat")
    if "sd" in terms:
        needs.add("feat" if (_feature(cfg) == "lr" or cfg.attention != "sum2") else "attention")
    if "output" in terms:
        needs.add("sr")
    return needs


def cache_tiers(needs: set[str], feature: str, stored: list[str], root) -> list[str]:
    """The cache tiers to read for ``needs``: the smallest stored tier that serves each, else the trunk."""
    candidates = {"feat": ["feat_sr"] if feature == "sr" else [], "attention": ["attention", "feat_sr"],
                  "sr": ["sr"]}
    tiers = set()
    for need in sorted(needs):
        found = next((t for t in [*candidates[need], "trunk"] if t in stored), None)
        if found is None:
            what = {"feat": f"the teacher's F^{feature.upper()}", "attention": "attention maps",
                    "sr": "the teacher's SR frames"}[need]
            raise StdvsrError(f"cache {root} cannot provide {what} (it stores {', '.join(stored)}); rebuild it with "
                              "--store trunk, or use --online-teacher")
        tiers.add(found)
    return sorted(tiers)


def check_cache(cfg: DistillConfig, reader: CacheReader, student: nn.Module) -> None:
    """Refuse a cache whose settings cannot serve this student, and a patch size the student cannot take, naming
    the field."""
    from stdvsr.export import SIZE_MULTIPLE

    fp = reader.fingerprint
    if student.scale != reader.scale:
        raise StdvsrError(f"cache {reader.root}: scale is ×{reader.scale} there but student {cfg.student} is "
                          f"×{student.scale}; build a ×{student.scale} cache")
    lr_multiple = SIZE_MULTIPLE.get(model_spec(cfg.student)[0], 1)  # FastDVDnet and VESPCN downsample twice
    if cfg.patch_size % (student.scale * lr_multiple):
        why = f" × {lr_multiple} for its LR downsampling" if lr_multiple > 1 else ""
        raise StdvsrError(f"--patch-size {cfg.patch_size} must be a multiple of {student.scale * lr_multiple} for "
                          f"{cfg.student} ({student.scale} for the scale{why})")
    for name in ("degradation", "padding"):
        want = getattr(cfg, name)
        if want is not None and want != fp[name]:
            raise StdvsrError(f"cache {reader.root}: {name} is {fp[name]!r} there, --{name} {want!r} here; "
                              f"drop --{name} or build a cache with --{name} {want}")
    if fp["feature_point"] != FEATURE_POINT:
        raise StdvsrError(f"cache {reader.root}: feature_point is {fp['feature_point']!r} there, not what this "
                          f"version distils ({FEATURE_POINT!r}); rebuild the cache")
    if _feature(cfg) == "lr" and uses(cfg) and not getattr(student, "lr_features", True):
        raise StdvsrError(f"--feature lr: {cfg.student} has no LR feature map (it works at HR throughout); use "
                          "--feature sr, or a student with an LR trunk (fastdvdnet, vespcn)")
    longest = max(c["frames"] for c in reader.clips)
    if cfg.clip_frames > longest:
        raise StdvsrError(f"--clip-frames {cfg.clip_frames} is longer than every clip in {reader.root} "
                          f"(longest: {longest})")


def validate_config(cfg: DistillConfig) -> None:
    """Refuse settings that cannot train as labelled, and levers that would have no effect; types, choices and
    ranges come from the fields' options. (The patch size, which depends on the student, is checked with the cache
    in :func:`check_cache`.)"""
    check_fields(cfg)
    if cfg.clip_frames < 1 or cfg.clip_frames % 2 == 0:
        raise StdvsrError(f"--clip-frames {cfg.clip_frames} must be odd, 2k+1: a centre frame with k on each side")
    if "td" in uses(cfg) and cfg.clip_frames < 3:
        raise StdvsrError("--kd std/td needs --clip-frames ≥ 3 (TD encodes a sequence)")
    if cfg.kd != "none" and cfg.warmup_steps >= cfg.steps:
        raise StdvsrError(f"--warmup-steps {cfg.warmup_steps} ≥ --steps {cfg.steps}: no step would distil with --kd "
                          f"{cfg.kd}; lower --warmup-steps, raise --steps, or train the plain student with --kd none")
    for name in ("lambda_sd", "lambda_td", "lambda_out", "td_freeze"):
        value = getattr(cfg, name)
        if not np.isfinite(value) or value < 0:
            raise StdvsrError(f"--{name.replace('_', '-')} {value} must be a finite number ≥ 0")
    check_schedule(cfg)
    for f in dataclasses.fields(cfg):  # every other number (--td-forget-bias): NaN or inf cannot train
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not np.isfinite(value):
            raise StdvsrError(f"{flag_of(f)} {value} must be a finite number")
    if cfg.lambda_out > 0 and cfg.kd == "none":
        raise StdvsrError("--lambda-out adds output KD to a distillation loss; with --kd none use --kd output "
                          "instead (its weight is --lambda-sd)")
    if cfg.lambda_out > 0 and cfg.kd == "output":
        raise StdvsrError("--lambda-out adds output KD to another --kd; --kd output is output KD already (its weight "
                          "is --lambda-sd): drop --lambda-out")
    _refuse_unused_levers(cfg)
    if cfg.kd_ramp and cfg.warmup_steps + cfg.kd_ramp > cfg.steps:
        raise StdvsrError(f"--kd-ramp {cfg.kd_ramp} after --warmup-steps {cfg.warmup_steps} would reach full weight "
                          f"at step {cfg.warmup_steps + cfg.kd_ramp}, past --steps {cfg.steps}; shorten the ramp or "
                          "raise --steps")


def _refuse_unused_levers(cfg: DistillConfig) -> None:
    """A lever set to other than its default where it cannot act is refused, naming it, whether it came from a flag
    or a --config file (a value equal to the default is never refused). The paper's own settings (λ, attention,
    ConvLSTM size, warm-up) stay allowed under --kd none, so that one config file serves the baseline too; so does
    --log-first, a logging option that logs nothing there."""
    terms = uses(cfg)
    unused = {"kd_ramp": not terms, "adapter": not terms & {"td", "mse"}, "td_forget_bias": "td" not in terms}
    needs = {"kd_ramp": "a distillation term", "adapter": "L_TD or KD-MSE (--kd std, td or mse)",
             "td_forget_bias": "L_TD's ConvLSTM (--kd std or td)"}
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for name, idle in unused.items():
        value = getattr(cfg, name)
        if idle and value != defaults[name]:
            flag = flag_of(next(f for f in dataclasses.fields(cfg) if f.name == name))
            raise StdvsrError(f"{flag} {value} has no effect with --kd {cfg.kd}: it acts on {needs[name]}; drop it")


# ----------------------------------------------------------------------------------------------------- data
class DistillDataset(torch.utils.data.Dataset):
    """Samples of ``clip_frames`` consecutive frames of a cached clip at a random HR crop of ``patch_size``.

    Item ``(epoch, i)`` depends on ``(seed, epoch, i)`` only. It holds ``windows`` ``(N, student_frames, 3, p/s,
    p/s)`` — every frame's student window, padded at the clip's ends with the cache's padding mode — ``gt``
    ``(N, 3, p, p)``, the cached ``tiers`` for the crop (see :meth:`CacheReader.read`), and ``transform`` (the
    dihedral augmentation to apply, 0 = none). With ``teacher_frames`` it also holds the whole LR frames the
    teacher's windows need (``teacher_lq``, ``teacher_index``) for the online teacher.
    """

    def __init__(self, reader: CacheReader, clip_frames: int, student_frames: int, patch_size: int,
                 tiers: list[str], seed: int, augment: str = "none", teacher_frames: int | None = None):
        self.reader, self.n, self.student_frames = reader, clip_frames, student_frames
        self.patch_size, self.tiers, self.seed, self.augment = patch_size, tiers, seed, augment
        self.teacher_frames = teacher_frames
        self.padding = reader.fingerprint["padding"]
        s = reader.scale
        for c in reader.clips:
            H, W = reader.groups[c["group"]]["hr_size"]
            if patch_size > min(H, W):
                raise StdvsrError(f"--patch-size {patch_size} is larger than the {W}×{H} frames of clip {c['name']}")
        assert patch_size % s == 0
        self.items = [(c["index"], t) for c in reader.clips for t in range(c["frames"] - clip_frames + 1)]

    def __len__(self) -> int:
        return len(self.items)

    def _context(self, length: int, start: int, frames: int) -> tuple[range, torch.Tensor]:
        """The frames the windows of ``start … start+N-1`` read, and each window's indices into them."""
        index = [window_indices(t, length, frames, self.padding) for t in range(start, start + self.n)]
        lo, hi = min(map(min, index)), max(map(max, index)) + 1
        return range(lo, hi), torch.tensor(index) - lo

    def __getitem__(self, key) -> dict:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        index, start = self.items[i]
        clip = self.reader.clips[index]
        # the same crop CacheDataset draws for this key; then the augmentation from the same stream
        top, left, rng = draw_crop(self.reader, index, self.patch_size, np.random.default_rng([self.seed, epoch, i]))
        s, p = self.reader.scale, self.patch_size
        transform = int(rng.integers(0, 8)) if self.augment == "approx" else 0
        # the student's windows are read below (with their context), so the plain LR crop is not read here
        item = self.reader.read(index, range(start, start + self.n), (top, left, p, p), self.tiers, lq=False)
        context, local = self._context(clip["frames"], start, self.student_frames)
        lq = self.reader.read_lq(index, context, (top // s, left // s, p // s, p // s))
        item["windows"] = lq[local]
        item["transform"] = transform
        if self.teacher_frames:
            context, local = self._context(clip["frames"], start, self.teacher_frames)
            item["teacher_lq"] = self.reader.read_lq(index, context)
            item["teacher_index"] = local
        return item


def collate(items: list[dict]) -> dict:
    """Stack the tensors of a batch; the online teacher's whole frames stay a list (clips differ in size)."""
    keep = {"teacher_lq", "teacher_index"}
    out = torch.utils.data.default_collate([{k: v for k, v in it.items() if k not in keep} for it in items])
    for k in keep & set(items[0]):
        out[k] = [it[k] for it in items]
    return out


class _RankBatches(torch.utils.data.Sampler):
    """Rank r's slice of every global batch of :class:`StepBatches` (``batch_size`` per rank)."""

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int, rank: int, world: int):
        self.inner = StepBatches(num_items, batch_size * world, seed, start_step)
        self.rank, self.batch_size = rank, batch_size

    def __iter__(self):
        for batch in self.inner:
            yield batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def __len__(self) -> int:
        return len(self.inner)


# -------------------------------------------------------------------------------------------------- teacher
class Targets(dict):
    """The teacher's targets for a batch: ``feat`` ``(B,N,C,H,W)``, ``attention`` ``(B,N,H,W)``, ``sr``."""


@torch.no_grad()
def cached_targets(batch: dict, head, needs: set[str], feature: str, device) -> Targets:
    """Targets from the cache's tiers: stored tiers as they are, F^SR / SR rebuilt from the trunk by the head."""
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
        fsr, sr = head.targets(batch["trunk"].to(device), batch["valid"].to(device),
                               batch["lq_margin"].to(device) if need_sr else None)
        if need_fsr:
            out["feat"] = fsr
        if need_sr:
            out["sr"] = sr
    if "sr" in needs and "sr" in batch:
        out["sr"] = batch["sr"].to(device)
    if "attention" in needs and "feat" not in out:
        out["attention"] = batch["attention"].to(device)[:, :, 0]
    return out


@torch.no_grad()
def online_targets(batch: dict, teacher: nn.Module, needs: set[str], feature: str, scale: int, patch: int,
                   device) -> Targets:
    """Targets from the teacher run now on the whole LR frames (as the cache build runs it), cropped to the box."""
    feats, srs = [], []
    for b, (frames, index) in enumerate(zip(batch["teacher_lq"], batch["teacher_index"])):
        top, left = int(batch["box"][0][b]), int(batch["box"][1][b])
        f = teacher.forward_windows(pad4(frames).unsqueeze(0).to(device), index.to(device))
        if feature == "lr":
            y, x, q = top // scale, left // scale, patch // scale
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


def augment_batch(batch: dict, targets: Targets) -> tuple[torch.Tensor, torch.Tensor, Targets]:
    """Apply each sample's dihedral transform to its windows, ground truth and targets alike (``--augment approx``:
    a transformed target is not exactly the teacher's output on the transformed input)."""
    windows, gt = batch["windows"], batch["gt"]
    transforms = [int(t) for t in batch["transform"]]
    if not any(transforms):
        return windows, gt, targets

    def each(x):
        return torch.stack([dihedral(x[b], t) for b, t in enumerate(transforms)])

    return each(windows), each(gt), Targets({k: each(v) for k, v in targets.items()})


# --------------------------------------------------------------------------------------------------- model
class Distiller(nn.Module):
    """The student and what trains with it — the 1×1 adapter and the shared ConvLSTM — and the loss of Eq. 9.

    ``forward`` returns the loss terms; it is the module DDP wraps, so gradients of the student, the adapter
    and the ConvLSTM are all synchronised. Teacher targets never require grad.

    ``adapter="fit"``: the adapter has no bias and is set, at the first distillation step, to the least-squares map
    from the student's features to the teacher's on that batch (summed over ranks), so L_TD / KD-MSE start from
    the student as it is instead of from a random offset that the student would first rewrite its features to
    cancel (the measured switch-on shock: λ2·L_TD ≈ 17× L_rec at the first step with PyTorch's default init).
    """

    def __init__(self, student: nn.Module, cfg: DistillConfig, teacher_channels: int, student_channels: int):
        super().__init__()
        self.student = student
        self.terms = uses(cfg)
        self.weights = term_weights(cfg)
        self.feature = _feature(cfg)
        self.cfg = cfg
        matches_features = bool(self.terms & {"td", "mse"})
        self.adapter = (nn.Conv2d(student_channels, teacher_channels, 1, bias=cfg.adapter == "default")
                        if matches_features and student_channels != teacher_channels else None)
        if self.adapter is not None and cfg.adapter == "fit":
            self.register_buffer("adapter_fitted", torch.zeros((), dtype=torch.bool))
        self.convlstm = (ConvLSTM(teacher_channels, cfg.td_hidden, forget_bias=cfg.td_forget_bias)
                         if "td" in self.terms else None)
        self.probe_feat = None  # with probe=True: the student's F (B·N, C, H, W) and N of the last forward, for
                                # where each term's gradient lands

    @torch.no_grad()
    def fit_adapter(self, feat: torch.Tensor, target: torch.Tensor, ridge: float = 1e-4) -> None:
        """Least squares ``W = argmin ‖W·f_s − f_t‖² + ridge·tr(XᵀX)/C·‖W‖²`` over every pixel of the batch."""
        x = feat.transpose(-3, -1).reshape(-1, feat.shape[-3]).double()
        y = target.transpose(-3, -1).reshape(-1, target.shape[-3]).double()
        xtx, xty = x.T @ x, x.T @ y
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(xtx)
            torch.distributed.all_reduce(xty)
        reg = ridge * xtx.diagonal().mean().clamp_min(1e-12)
        w = torch.linalg.solve(xtx + reg * torch.eye(xtx.shape[0], dtype=xtx.dtype, device=xtx.device), xty)
        self.adapter.weight.copy_(w.T.reshape(self.adapter.weight.shape).to(self.adapter.weight.dtype))
        self.adapter_fitted.fill_(True)

    def forward(self, windows: torch.Tensor, gt: torch.Tensor, targets: Targets, scale: float,
                probe: bool = False) -> dict:
        """Loss terms for a batch; ``scale`` multiplies every distillation term (0: L_rec only, warm-up)."""
        b, n = windows.shape[:2]
        out = self.student.forward_features(windows.flatten(0, 1))
        sr = out.sr.view(b, n, *out.sr.shape[1:])
        losses = {"rec": charbonnier(sr, gt)}
        if not (scale > 0 and self.terms):
            losses["total"] = losses["rec"]
            return losses
        cfg = self.cfg
        f = out.feat_sr if self.feature == "sr" else out.feat_lr
        feat = f.view(b, n, *f.shape[1:])
        if probe:
            self.probe_feat = (f, n)
        t_feat = targets.get("feat")
        if self.adapter is not None and hasattr(self, "adapter_fitted") and not self.adapter_fitted:
            self.fit_adapter(feat, t_feat)
        adapted = self.adapter(feat.flatten(0, 1)).view(b, n, -1, *feat.shape[-2:]) if self.adapter is not None \
            else feat
        if "sd" in self.terms:
            if t_feat is not None:
                losses["sd"] = sd_loss(feat, t_feat, cfg.attention, cfg.sd_norm)
            else:  # cached attention maps (Σ_c F², the default mapping)
                losses["sd"] = sd_loss(feat, targets["attention"].unsqueeze(2).sqrt(), cfg.attention, cfg.sd_norm)
        if "td" in self.terms:
            cell_s, _ = self.convlstm(adapted)
            cell_t, _ = self.convlstm(t_feat)
            losses["td"] = td_loss(cell_s, cell_t)
        if "mse" in self.terms:
            losses["mse"] = kd_mse(adapted, t_feat)
        if "mean2" in self.terms:
            losses["mean2"] = kd_mean2(feat, t_feat)
        if "output" in self.terms:
            losses["output"] = output_kd(sr, targets["sr"])
        total = losses["rec"]
        for name in self.terms:
            total = total + scale * self.weights[name] * losses[name]
        losses["total"] = total
        return losses


def gradient_probe(distiller: Distiller, losses: dict, scale: float) -> dict:
    """Where each weighted loss term pushes the student (the mechanism, not the score): the L2 norm of its gradient
    on the student's parameters, its ratio to L_rec's, their cosine, the share that lands in the reconstruction
    head (``head`` + ``conv_last``), and the share of its gradient on the student's F (per frame of the clip)."""
    names = [k for k in losses if k not in ("total",)]
    params = [(n, p) for n, p in distiller.student.named_parameters() if p.requires_grad]
    grads = {}
    for k in names:
        weight = 1.0 if k == "rec" else scale * distiller.weights[k]
        outs = [weight * losses[k]]
        inputs = [p for _, p in params]
        feat, n = distiller.probe_feat or (None, 0)
        if feat is not None:
            inputs = inputs + [feat]
        g = torch.autograd.grad(outs, inputs, retain_graph=True, allow_unused=True)
        flat = torch.cat([(gi if gi is not None else torch.zeros_like(p)).flatten()
                          for gi, (_, p) in zip(g, params)])
        head = sum(float((gi if gi is not None else torch.zeros_like(p)).pow(2).sum())
                   for gi, (n, p) in zip(g, params) if n.startswith(("head.", "conv_last.")))
        frames = None
        if feat is not None and g[-1] is not None:
            per = g[-1].pow(2).reshape(-1, n, g[-1][0].numel()).sum(dim=(0, 2))
            frames = [round(float(v), 4) for v in per / per.sum().clamp_min(1e-30)]
        grads[k] = (flat, head, frames)
    rec = grads["rec"][0]
    out = {}
    for k, (flat, head, frames) in grads.items():
        norm = float(flat.norm())
        out[k] = {"grad_norm": norm, "ratio_to_rec": norm / max(float(rec.norm()), 1e-30),
                  "cos_rec": float(torch.nn.functional.cosine_similarity(flat, rec, dim=0)),
                  "head_share": head / max(norm ** 2, 1e-30), "frame_share": frames}
    return out


def student_channels(student: nn.Module, feature: str, lq_size: int = 16) -> tuple[int, int]:
    """(F^SR channels, F^LR channels) of a student, by a tiny forward pass."""
    with torch.no_grad():
        x = torch.zeros(1, student.num_frame, 3, lq_size, lq_size, device=next(student.parameters()).device)
        f = student.forward_features(x)
    return f.feat_sr.shape[1], f.feat_lr.shape[1]


# ----------------------------------------------------------------------------------------------------- run
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


def run(cfg: DistillConfig, resume: str | None = None, explicit: set[str] | None = None,
        show_progress: bool = True) -> dict:
    """Distil (see :func:`_run`); under torchrun the process group is shut down at the end, success or not."""
    validate_config(cfg)
    try:
        # one writer per run folder (rank 0 writes for all ranks)
        with folder_lock(cfg.out) if torchrun_group()[0] == 0 else contextlib.nullcontext():
            return _run(cfg, resume, explicit, show_progress)
    finally:
        end_process_group()


def _run(cfg: DistillConfig, resume: str | None = None, explicit: set[str] | None = None,
         show_progress: bool = True) -> dict:
    """Distil; returns ``{"student": path, "val_psnr", "bicubic_psnr", "steps", "seconds", "td_frozen_at", ...}``.

    ``resume``: None (fresh run), ``"auto"`` (newest checkpoint in ``cfg.out``, if any) or a checkpoint path; when
    resuming, flags in ``explicit`` outside :data:`RESUMABLE_CHANGES` must match the checkpoint's config.
    """
    r = _setup(cfg, resume, explicit)
    cfg, show = r.cfg, show_progress and r.rank == 0
    if r.start_step and show:
        stderr().print(f"resuming {cfg.out} from step {r.start_step} of {cfg.steps}", highlight=False, soft_wrap=True)
    elif resume == "auto" and show:
        stderr().print(f"--resume auto: no checkpoint in {Path(cfg.out) / 'checkpoints'}; starting fresh at step 1 of "
                       f"{cfg.steps}", highlight=False, soft_wrap=True)
    start_time, times, val_psnr = time.perf_counter(), StepTimes(), None
    r.distiller.train()
    with r.folder.saving_on_interrupt(), loader_batches(r.loader) as batches, \
            training_progress(cfg.steps, r.start_step, enabled=show, log_every=cfg.log_every) as progress:
        for step in range(r.start_step, cfg.steps):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            values, t2 = _train_step(r, step, batch, show)
            done = step + 1
            times.add(t1 - t0, t2 - t1, time.perf_counter() - t0)
            r.smoothed = values["total"] if r.smoothed is None else 0.95 * r.smoothed + 0.05 * values["total"]
            lr = r.optimizer.param_groups[0]["lr"]
            progress.update(done, loss=r.smoothed, lr=lr, psnr=val_psnr,
                            **{k: v for k, v in values.items() if k != "total"}, wait=times.wait_frac())
            if done % cfg.log_every == 0 or done == cfg.steps or values.probed:
                r.folder.record(step=done, **{f"loss_{k}": v for k, v in values.items()}, lr=lr,
                                distil=values.scale > 0, kd_scale=values.scale, **times.row(),
                                elapsed=round(time.perf_counter() - start_time, 2))
            if r.validator is not None and (done % cfg.val_every == 0 or done == cfg.steps):
                val_psnr = r.validator(r.student)
                r.folder.record(step=done, val_psnr=val_psnr, bicubic_psnr=r.validator.bicubic)
                progress.update(done, loss=r.smoothed, lr=lr, psnr=val_psnr)
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                r.folder.save(done)
    if r.world > 1:
        _check_ranks_in_sync(r)
    r.folder.close()
    path = Path(cfg.out) / "student.pth"
    if r.rank == 0:
        save_checkpoint(path, {"model": {"name": cfg.student, "kwargs": r.kwargs}, "params": r.student.state_dict(),
                               "config": r.config, "step": cfg.steps, "kd": cfg.kd, "feature": r.feature,
                               "cache_fingerprint": r.reader.fingerprint, "stdvsr": __version__})
    return {"student": str(path), "steps": cfg.steps, "resumed_from": r.start_step, "val_psnr": val_psnr,
            "bicubic_psnr": r.validator.bicubic if r.validator is not None else None,
            "seconds": time.perf_counter() - start_time, "td_frozen_at": r.frozen_at, "tiers_read": r.tiers,
            **times.summary(), "rank": r.rank, "world_size": r.world}


class _Losses(dict):
    """A step's loss values (floats, averaged over ranks) with the distillation factor it ran at."""
    scale: float = 0.0
    probed: bool = False


def _train_step(r: SimpleNamespace, step: int, batch: dict, show: bool) -> tuple[_Losses, float]:
    """One optimisation step at (0-based) ``step``: the learning rate, the teacher's targets (cached or online),
    the losses, the update, and the ConvLSTM's collapse guard. Returns the loss values and the time the targets
    were ready (for the step-time split)."""
    cfg = r.cfg
    lr = learning_rate(step, cfg.lr, cfg.steps, cfg.schedule, cfg.min_lr, cfg.lr_step, cfg.lr_gamma)
    for group in r.optimizer.param_groups:
        group["lr"] = lr
    scale = kd_scale(cfg, step) if r.needs else 0.0
    probe = scale > 0 and r.world == 1 and step - cfg.warmup_steps < cfg.log_first
    targets = Targets()
    if scale > 0:
        targets = (online_targets(batch, r.teacher, r.needs, r.feature, r.reader.scale, cfg.patch_size, r.device)
                   if r.teacher is not None else cached_targets(batch, r.head, r.needs, r.feature, r.device))
    if r.device.type == "cuda":
        torch.cuda.synchronize(r.device)
    targets_ready = time.perf_counter()
    windows, gt, targets = augment_batch(batch, targets)
    losses = r.model(windows.to(r.device), gt.to(r.device), targets, scale, probe)
    values = _Losses(mean_across_ranks(losses, r.world))
    values.scale, values.probed = scale, probe
    if not np.isfinite(values["total"]):
        last = r.folder.last
        hint = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        terms = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
        raise StdvsrError(f"the distillation loss became non-finite at step {step + 1} ({terms}); {hint}; "
                          "lower --lr or --lambda-td / --lambda-sd")
    if probe:
        r.folder.record(step=step + 1, event="probe", kd_scale=scale, **{f"loss_{k}": v for k, v in values.items()},
                        terms=gradient_probe(r.distiller, losses, scale))
        r.distiller.probe_feat = None
    r.optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    if "td" in values and r.frozen_at is None and values["td"] < cfg.td_freeze:
        # the collapse guard (§3.2): L_TD ~ 0 means the ConvLSTM maps everything to ~0; stop training it
        r.frozen_at = step + 1
        r.folder.record(step=step + 1, event="td_frozen", td=values["td"])
        if show:
            stderr().print(f"step {step + 1}: L_TD = {values['td']:.3g} < {cfg.td_freeze:g}; "
                           "the ConvLSTM is frozen from here on")
    if r.frozen_at is not None:
        # Adam skips parameters without a gradient. (Their requires_grad stays on: DDP must not see the set of
        # trained parameters change after it was built.)
        for p in r.lstm_params:
            p.grad = None
    with r.folder.updating(step + 1):
        r.optimizer.step()
    if r.device.type == "cuda":
        torch.cuda.synchronize(r.device)
    return values, targets_ready


def _check_ranks_in_sync(r: SimpleNamespace) -> None:
    """DDP keeps replicas identical by construction; check it, since a silent divergence would waste a run."""
    digests = digests_across_ranks(r.distiller, r.world)
    r.folder.record(step=r.cfg.steps, event="ranks_in_sync", digests=digests)
    if len(set(digests)) != 1:
        raise StdvsrError(f"the {r.world} ranks ended with different weights ({digests}); report this as a bug")


def _setup(cfg: DistillConfig, resume: str | None, explicit: set[str] | None) -> SimpleNamespace:
    """Everything a run trains with: the resolved config, the cache, the student inside its :class:`Distiller`
    (restored from the checkpoint when resuming), the optimizer, the batches, the validator and the run folder."""
    rank, world, local_rank = torchrun_group()  # validate_config(cfg) ran in run()
    cfg, ckpt = resume_run(cfg, resume, explicit, RESUMABLE_CHANGES, kind="distill", warn=rank == 0)
    r = SimpleNamespace(cfg=cfg, rank=rank, world=world)
    r.device = resolve_device(cfg.device)
    if r.device.type == "cuda" and r.world > 1:
        r.device = torch.device("cuda", local_rank)
        torch.cuda.set_device(r.device)
    r.reader = CacheReader(cfg.cache, data=cfg.data)
    if ckpt is not None:
        diff = first_difference(ckpt["cache_fingerprint"], r.reader.fingerprint)
        if diff:
            raise StdvsrError(f"--resume: cache {r.reader.root} differs from the one this run started with: {diff} "
                              f"is {lookup(r.reader.fingerprint, diff)!r}, was "
                              f"{lookup(ckpt['cache_fingerprint'], diff)!r}")
    seed_everything(cfg.seed)
    _, r.kwargs = model_spec(cfg.student)
    r.student = build_model(cfg.student).to(r.device)
    check_cache(cfg, r.reader, r.student)
    r.feature, r.needs = _feature(cfg), teacher_needs(cfg)
    _build_distiller(r)
    r.optimizer = torch.optim.Adam(r.distiller.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    r.start_step, r.frozen_at, r.smoothed = 0, None, None
    if ckpt is not None:
        r.distiller.load_state_dict(ckpt["distill"])
        r.optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        # the progress line's smoothed loss continues where the checkpoint left it, as if never interrupted
        r.start_step, r.frozen_at, r.smoothed = ckpt["step"], ckpt.get("td_frozen_at"), ckpt.get("smoothed_loss")
    r.lstm_params = list(r.distiller.convlstm.parameters()) if r.distiller.convlstm is not None else []
    r.loader = _loader(r)
    r.model = r.distiller
    if r.world > 1:
        r.model = nn.parallel.DistributedDataParallel(
            r.distiller, device_ids=[r.device.index] if r.device.type == "cuda" else None,
            find_unused_parameters=r.distiller.adapter is not None or r.distiller.convlstm is not None)
    r.validator = None
    if r.rank == 0 and cfg.val_every and cfg.val_data is not None:
        from stdvsr.evaluate import Validator, validation_clips

        r.validator = Validator(validation_clips(cfg.val_data, r.reader.data, cfg.val_clips),
                                r.reader.fingerprint["degradation"], r.reader.fingerprint["padding"], cfg.val_stride)
        if not r.validator.items:
            r.validator = None
    r.config = dataclasses.asdict(cfg)
    r.folder = RunFolder(cfg.out, {**r.config, "model": {"name": cfg.student, "kwargs": r.kwargs},
                                   "feature_resolved": r.feature, "tiers_read": r.tiers,
                                   "cache_fingerprint": r.reader.fingerprint, "world_size": r.world,
                                   "stdvsr": __version__},
                         lambda step: _checkpoint(r, step), r.start_step, ckpt is not None, cfg.keep_checkpoints,
                         write=r.rank == 0)
    return r


def _checkpoint(r: SimpleNamespace, step: int) -> dict:
    """What a checkpoint holds: enough to --resume exactly (weights, adapter / ConvLSTM, optimizer, RNG)."""
    return {"model": {"name": r.cfg.student, "kwargs": r.kwargs}, "config": r.config, "step": step,
            "params": r.student.state_dict(), "distill": r.distiller.state_dict(),
            "optimizer": r.optimizer.state_dict(), "rng": rng_state(), "smoothed_loss": r.smoothed,
            "td_frozen_at": r.frozen_at, "cache_fingerprint": r.reader.fingerprint, "stdvsr": __version__}


def _build_distiller(r: SimpleNamespace) -> None:
    """The teacher side (the cached head, or the online teacher), the tiers to read, and the :class:`Distiller`."""
    cfg, r.teacher = r.cfg, None
    with torch.random.fork_rng(devices=[]):  # building teacher layers must not move the seeded RNG stream
        r.head = r.reader.head().to(r.device) if "trunk" in r.reader.tiers else None
        if cfg.online_teacher:
            r.tiers = []
            r.teacher = load_online_teacher(cfg, r.reader, r.device) if r.needs else None
        else:
            r.tiers = cache_tiers(r.needs, r.feature, r.reader.tiers, r.reader.root)
    # the teacher's channels at the distilled feature: F^SR is conv_hr's output (64 in EDVR), F^LR the trunk's
    source = r.teacher if r.teacher is not None else r.head
    if source is not None:
        teacher_channels = source.conv_hr.out_channels if r.feature == "sr" else source.upconv1.in_channels
    else:  # only stored HR tiers (feat_sr / attention / sr) and no trunk: F^SR
        teacher_channels = 64
    sr_ch, lr_ch = student_channels(r.student, r.feature)
    r.distiller = Distiller(r.student, cfg, teacher_channels, sr_ch if r.feature == "sr" else lr_ch).to(r.device)


def _loader(r: SimpleNamespace) -> torch.utils.data.DataLoader:
    """Batches of this rank's share of each step, in an order fixed by (seed, step): resuming continues it."""
    cfg = r.cfg
    dataset = DistillDataset(r.reader, cfg.clip_frames, r.student.num_frame, cfg.patch_size, r.tiers, cfg.seed,
                             cfg.augment, r.teacher.num_frame if r.teacher is not None else None)
    if len(dataset) < cfg.batch_size * r.world:
        raise StdvsrError(f"--batch-size {cfg.batch_size} × {r.world} rank(s) is larger than the {len(dataset)} "
                          f"samples in {r.reader.root}; lower it")
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=_RankBatches(len(dataset), cfg.batch_size, cfg.seed, r.start_step, r.rank, r.world),
        num_workers=cfg.workers, persistent_workers=cfg.workers > 0, collate_fn=collate,
        generator=torch.Generator().manual_seed(cfg.seed), worker_init_fn=loader_worker_init)


def run_or_reuse(cfg: DistillConfig, show_progress: bool = True) -> tuple[dict | None, str]:
    """Train ``cfg`` unless an identical finished run is in ``cfg.out`` (its ``student.pth`` has the same config);
    an interrupted run continues from its last checkpoint. Returns ``(run's result or None, "trained" | "resumed" |
    "reused")``. For pipelines that re-run many students (the demo, the ablations)."""
    out = Path(cfg.out)
    done = out / "student.pth"
    if done.is_file():
        saved = read_checkpoint(done).get("config", {})
        if saved == dataclasses.asdict(resolved_specs(cfg)):
            return None, "reused"
        raise StdvsrError(f"{out} holds a finished run with other settings; delete it or use another --out")
    resume = "auto" if latest_checkpoint(out / "checkpoints") is not None else None
    result = run(cfg, resume=resume, explicit=set() if resume else None, show_progress=show_progress)
    return result, "resumed" if resume else "trained"
