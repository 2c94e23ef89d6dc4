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

On a cache of LR footage (no ground truth; ``cache-teacher --degradation none``) L_rec's target is the teacher's SR,
``init`` starts from a trained student, the last ``holdout`` of each clip is validation's (the agreement with the
teacher), and ``mix_cache`` mixes batches of a cache with ground truth into a ``mix_share`` of the steps (L_rec to
that ground truth alone), against forgetting. ``stdvsr adapt`` is this, as one command.

Outputs in ``out``: ``config.json``, ``metrics.jsonl``, ``checkpoints/step_<7-digit step>.pth`` (student, adapter and
ConvLSTM, optimizer, step, RNG states, resolved config, cache fingerprint) and ``student.pth``, the deployable
student alone (what ``stdvsr.models.load_model``, ``evaluate`` and ``export`` take). ``resume="auto"`` continues
from the newest checkpoint with exactly the batches, crops and losses of an uninterrupted run (on a CPU).
Scale-out: ``torchrun --nproc_per_node N stdvsr distill …`` (gloo on CPU, NCCL on GPU); ``batch_size`` is per
rank and rank r takes its slice of every global batch.

The modules, in the order a run uses them: :mod:`.plan` (what the config asks for, and the checks),
:mod:`.samples` (the cached clips a step trains on), :mod:`.targets` (the teacher's side), :mod:`.distiller`
(the student with its adapter and ConvLSTM: the loss of Eq. 9), :mod:`.loop` (setup, the loop, checkpoints).
"""

from stdvsr.configs import DistillConfig
from stdvsr.distill.agreement import TeacherAgreement
from stdvsr.distill.distiller import Distiller, gradient_probe, student_channels
from stdvsr.distill.loop import RESUMABLE_CHANGES, run, run_or_reuse
from stdvsr.distill.plan import (cache_tiers, check_cache, check_mix_cache, distilled_feature, held_back, kd_weight,
                                 mixed_steps, resolve_init, teacher_needs, term_weights, uses, validate_config)
from stdvsr.distill.samples import DistillDataset, collate
from stdvsr.distill.targets import Targets, augment_batch, cached_targets, load_online_teacher, online_targets

__all__ = ["DistillConfig", "run", "run_or_reuse", "RESUMABLE_CHANGES", "validate_config", "check_cache", "uses",
           "term_weights", "kd_weight", "teacher_needs", "cache_tiers", "distilled_feature", "DistillDataset",
           "collate", "Targets", "cached_targets", "online_targets", "augment_batch", "load_online_teacher",
           "Distiller", "gradient_probe", "student_channels", "TeacherAgreement", "held_back", "resolve_init",
           "check_mix_cache", "mixed_steps"]
