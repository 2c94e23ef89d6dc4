"""What a distillation run computes, decided from its config alone (and checked against the cache before any
step): the loss terms and their λ, the KD factor over the steps, what the terms take from the teacher and which
cache tiers serve it, and the refusals of settings that cannot train as labelled."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from torch import nn

from stdvsr.cache.layout import feature_point
from stdvsr.cache.reader import CacheReader
from stdvsr.configs import DistillConfig
from stdvsr.errors import StdvsrError
from stdvsr.models import model_spec, size_multiple
from stdvsr.options import check_fields, flag_of
from stdvsr.training import check_schedule


def distilled_feature(cfg: DistillConfig) -> str:
    """The feature map the terms compare: ``--feature``, else F^LR for KD-M²_mean (Gao et al.) and F^SR otherwise."""
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


def kd_weight(cfg: DistillConfig, step: int) -> float:
    """The KD weight, the factor on every distillation term at (0-based) ``step`` (Eq. 9's terms besides L_rec):
    0 during warm-up, then a linear ramp to 1 over ``kd_ramp`` steps (1 at once without a ramp). Not the SR scale;
    metrics.jsonl logs it as ``kd_scale``."""
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
        needs.add("feat" if (distilled_feature(cfg) == "lr" or cfg.attention != "sum2") else "attention")
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


def held_back(frames: int, holdout: float) -> int:
    """How many of a footage clip's last ``frames`` are kept out of training for validation: ``holdout`` of them,
    rounded, and at least one when ``holdout`` > 0."""
    return 0 if holdout <= 0 else max(1, round(frames * holdout))


def _check_footage(cfg: DistillConfig, reader: CacheReader) -> None:
    """A cache of LR footage has no ground truth: the teacher's SR takes L_rec's place, so a loss without it
    (--kd none) or a second copy of it (--lambda-out) cannot train; every clip must keep a training sample."""
    if cfg.kd == "none":
        raise StdvsrError(f"cache {reader.root} is LR footage without ground truth, so --kd none has nothing to learn "
                          "from; use --kd output (the teacher's SR frames as the target), or std / sd / td to add the "
                          "paper's terms to it")
    if cfg.lambda_out > 0:
        raise StdvsrError(f"--lambda-out: on LR footage ({reader.root}) the teacher's SR is the reconstruction "
                          "target already; drop --lambda-out")
    for c in reader.clips:
        left = c["frames"] - held_back(c["frames"], cfg.holdout)
        if left < cfg.clip_frames:
            raise StdvsrError(f"clip {c['name']} of {reader.root} has {c['frames']} frames: with --holdout "
                              f"{cfg.holdout} it keeps {left} for training, fewer than --clip-frames {cfg.clip_frames}; "
                              "lower --holdout or --clip-frames")


def mixed_steps(cfg: DistillConfig, steps: int) -> int:
    """How many of the first ``steps`` steps take their batch from ``--mix-cache``: ⌊steps · share⌋, so that step s
    (0-based) is one when that count rises at s + 1 — spread evenly, and a function of the step alone (resuming
    continues both batch streams where they were)."""
    return math.floor(steps * cfg.mix_share) if cfg.mix_cache else 0


def check_mix_cache(cfg: DistillConfig, mix: CacheReader, scale: int) -> None:
    """``--mix-cache`` anchors fine-tuning on LR footage to ground truth: it must have ground truth, the student's
    scale, and clips that hold a training sample (that --cache is footage is checked by :func:`check_cache`)."""
    if not mix.has_gt:
        raise StdvsrError(f"--mix-cache {mix.root} is LR footage without ground truth: mix in a cache built from a "
                          "dataset with HR frames (e.g. the demo's, cache/demo-6clips-edvr-sr.zarr)")
    if mix.scale != scale:
        raise StdvsrError(f"--mix-cache {mix.root} is ×{mix.scale} but the student is ×{scale}; mix in a ×{scale} "
                          "cache")
    if cfg.clip_frames > max(c["frames"] for c in mix.clips):
        raise StdvsrError(f"--clip-frames {cfg.clip_frames} is longer than every clip of --mix-cache {mix.root}")


def check_cache(cfg: DistillConfig, reader: CacheReader, student: nn.Module) -> None:
    """Refuse a cache whose settings cannot serve this student, and a patch size the student cannot take, naming
    the field."""
    fp = reader.fingerprint
    if student.scale != reader.scale:
        raise StdvsrError(f"cache {reader.root}: scale is ×{reader.scale} there but student {cfg.student} is "
                          f"×{student.scale}; build a ×{student.scale} cache")
    lr_multiple = size_multiple(cfg.student)  # FastDVDnet and VESPCN downsample twice
    if cfg.patch_size % (student.scale * lr_multiple):
        why = f" × {lr_multiple} for its LR downsampling" if lr_multiple > 1 else ""
        raise StdvsrError(f"--patch-size {cfg.patch_size} must be a multiple of {student.scale * lr_multiple} for "
                          f"{cfg.student} ({student.scale} for the scale{why})")
    for name in ("degradation", "padding"):
        want = getattr(cfg, name)
        if want is not None and want != fp[name]:
            raise StdvsrError(f"cache {reader.root}: {name} is {fp[name]!r} there, --{name} {want!r} here; "
                              f"drop --{name} or build a cache with --{name} {want}")
    expected = feature_point(fp["teacher"]["name"])
    if fp["feature_point"] != expected:
        raise StdvsrError(f"cache {reader.root}: feature_point is {fp['feature_point']!r} there, not what this "
                          f"version distils ({expected!r}); rebuild the cache")
    if distilled_feature(cfg) == "lr" and uses(cfg) and not getattr(student, "lr_features", True):
        raise StdvsrError(f"--feature lr: {cfg.student} has no LR feature map (it works at HR throughout); use "
                          "--feature sr, or a student with an LR trunk (fastdvdnet, vespcn)")
    if not reader.has_gt:
        _check_footage(cfg, reader)
    elif cfg.mix_cache:
        raise StdvsrError(f"--mix-cache acts on fine-tuning on LR footage, but {reader.root} has ground truth; drop "
                          "--mix-cache")
    elif cfg.holdout != _default("holdout"):
        raise StdvsrError(f"--holdout {cfg.holdout} acts on caches of LR footage only; {reader.root} has ground truth "
                          "(validation uses --val-data): drop --holdout")
    longest = max(c["frames"] for c in reader.clips)
    if cfg.clip_frames > longest:
        raise StdvsrError(f"--clip-frames {cfg.clip_frames} is longer than every clip in {reader.root} "
                          f"(longest: {longest})")


def _default(name: str):
    return next(f.default for f in dataclasses.fields(DistillConfig) if f.name == name)


def checkpoint_student(path: str, flag: str) -> str:
    """The student network a checkpoint records (a preset or student name, what ``--student`` takes); one that
    records none, a teacher, or arguments other than its preset's is refused, naming ``flag``."""
    from stdvsr.models import read_checkpoint
    from stdvsr.names import student_names

    spec = read_checkpoint(path, flag).get("model")
    name = spec.get("name") if isinstance(spec, dict) else None
    if name not in student_names():
        raise StdvsrError(f"{flag} {path} is not a student checkpoint of stdvsr (it records "
                          f"{'no network' if name is None else repr(name)}); pass a student.pth written by stdvsr "
                          "distill or adapt")
    if model_spec(name, **(spec.get("kwargs") or {}))[1] != model_spec(name)[1]:  # kwargs override the preset
        raise StdvsrError(f"{flag} {path}: its {name} was built with other arguments ({spec.get('kwargs')}) than "
                          f"the {name} preset; only preset students are fine-tuned")
    return name


def resolve_init(cfg: DistillConfig, explicit: set[str] | None) -> DistillConfig:
    """With ``--init``, the student is the checkpoint's network (:func:`checkpoint_student`): ``--student`` takes
    its name, and a different one given on the command line is refused."""
    if not cfg.init:
        return cfg
    name = checkpoint_student(cfg.init, "--init")
    if name != cfg.student and explicit is not None and "student" in explicit:
        raise StdvsrError(f"--student {cfg.student} differs from the network of --init {cfg.init} ({name}); drop "
                          "--student (it follows --init)")
    return dataclasses.replace(cfg, student=name)


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
    if not cfg.mix_cache and cfg.mix_share != _default("mix_share"):
        raise StdvsrError(f"--mix-share {cfg.mix_share} has no effect without --mix-cache; drop it")
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
