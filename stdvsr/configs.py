"""Every stage's settings, declared once and torch-free: the fields of these dataclasses carry their options' help,
types and choices (see :mod:`stdvsr.options`), from which the command line, ``--config`` TOML files, the checks of
settings made in Python and the sets a resumed run may change are all derived. The stages re-export them
(``stdvsr.distill.DistillConfig`` is :class:`DistillConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import click

from stdvsr.names import (ACTIVATIONS, ADAPTERS, AUGMENTS, CACHE_DEGRADATIONS, DEGRADATIONS, DTYPES,
                          EVAL_DEGRADATIONS, EXPORT_FORMATS, FEATURES, FORMATS, FRAME_MODES, KD_MODES, MAPPINGS,
                          MAX_CALIB_WINDOWS, MAX_OPSET, MIN_OPSET, PADDING_MODES, PRECISIONS, SCHEDULES, SD_NORMS,
                          TEACHERS, student_names, teacher_presets)
from stdvsr.options import REQUIRED, option, redeclare

DEVICE_HELP = "auto, cpu, cuda or cuda:N."
#: Every --seed: what numpy's and Python's generators accept (a negative seed was an internal error, #26).
SEED = click.IntRange(0, 2**32 - 1)
ARCH_HELP = ("Architecture of --model files that do not record it (a raw state dict, BasicSR's {'params': …} / "
             "{'params_ema': …}): a model or preset name such as edvr-m, edvr-l, fastdvdnet, vdsr.")


@dataclass
class TrainingConfig:
    """The settings both training stages share (``train-teacher``, ``distill``), declared once. Each stage's
    dataclass adds its own and re-declares, with :func:`redeclare`, the few whose default differs."""
    out: str = option("runs/train", "Run folder.", type=click.Path(file_okay=False), resumable=True)
    steps: int = option(2000, "Training iterations.", type=click.IntRange(1), resumable=True)
    batch_size: int = option(2, type=click.IntRange(1))
    patch_size: int = option(64, "HR crop size (÷4 at LR).", type=click.IntRange(4))
    lr: float = option(2e-4, "Peak Adam learning rate.")
    min_lr: float = option(1e-6, "Final learning rate (cosine).")
    schedule: str = option("cosine", "cosine, or step: ×--lr-gamma every --lr-step steps.",
                           type=click.Choice(SCHEDULES))
    lr_step: int = option(200_000, "step schedule: multiply the lr by --lr-gamma every this many steps.",
                          type=click.IntRange(1))
    lr_gamma: float = option(0.5)
    seed: int = option(0, "Seed of the initial weights, crops and batch order, 0 to 2**32-1.",
                       type=SEED)
    workers: int = option(2, "DataLoader workers.", type=click.IntRange(0), resumable=True)
    device: str = option("auto", DEVICE_HELP, resumable=True)
    log_every: int = option(20, type=click.IntRange(1), resumable=True)
    val_data: str | None = option("auto", "Held-out clips for validation: auto = the held-out split of "
                                  "demo/vimeo90k; 'none' disables.", none="none", resumable=True)
    val_every: int = option(500, "Held-out Y-PSNR every N steps.", type=click.IntRange(1), resumable=True)
    val_stride: int = option(4, "Validate every N-th frame of each held-out clip.", type=click.IntRange(1),
                             resumable=True)
    val_clips: int = option(8, "Validate on at most this many held-out clips, evenly spaced (0: all).",
                            type=click.IntRange(0), resumable=True)
    ckpt_every: int = option(500, type=click.IntRange(1), resumable=True)
    keep_checkpoints: int = option(3, "Checkpoints kept in --out/checkpoints (the newest).", type=click.IntRange(1),
                                   resumable=True, cli=False)


@dataclass
class TeacherConfig(TrainingConfig):
    teacher: str = option("edvr", "Teacher network: EDVR (the paper's) or RBPN (its Table 5; flows from OpenCV, "
                          "computed in the DataLoader workers).", type=click.Choice(TEACHERS))
    preset: str | None = option(None, "Size preset of --teacher: edvr-s / rbpn-s train on a CPU (the default); "
                                "edvr-m / edvr-l are BasicSR's EDVR-M / EDVR-L, rbpn the published RBPN.",
                                type=click.Choice(teacher_presets()))
    model_args: dict = field(default_factory=dict)  # overrides of the preset (--num-feat, ...)
    init_weights: str | None = option(None, "Start from these weights (BasicSR, xinntao/EDVR or stdvsr checkpoint) "
                                      "instead of random.", type=click.Path(dir_okay=False), flag="--weights",
                                      resumable=True)
    data: str = option("demo", "Training dataset spec (see `stdvsr data`).")
    val_data: str | None = redeclare(TrainingConfig, "val_data", "auto", resumable=False)
    degradation: str = option("bd", type=click.Choice(DEGRADATIONS))
    padding: str = option("replicate", "Frame padding of validation windows at clip ends.",
                          type=click.Choice(PADDING_MODES))
    steps: int = redeclare(TrainingConfig, "steps", 3000)
    batch_size: int = redeclare(TrainingConfig, "batch_size", 4)
    patch_size: int = redeclare(TrainingConfig, "patch_size", 128)
    lr: float = redeclare(TrainingConfig, "lr", 4e-4)
    ema: float = option(0.999, "EMA decay of the weights (0 disables); validation and teacher.pth use the EMA "
                        "weights.", type=click.FloatRange(0, 1, max_open=True))
    augment: bool = option(True, "Random flips and rotations.", negatable=True)
    out: str = redeclare(TrainingConfig, "out", "runs/teacher",
                         help="Output folder: checkpoints, metrics.jsonl, teacher.pth.")


@dataclass
class DistillConfig(TrainingConfig):
    #: what a checkpoint written before a setting existed ran with (resume_run fills its config with these)
    BEFORE_RECORDED: ClassVar[dict] = {"precision": "fp32", "channels_last": False}
    student: str = option("fastdvdnet", "Student network (the -half / -quarter widths are Table 6's; -h64 keeps a "
                          "64-channel head).", type=click.Choice(student_names()))
    cache: str = option("cache/demo-edvr.zarr", "Teacher cache written by `stdvsr cache-teacher`.",
                        type=click.Path(file_okay=False), resumable=True)
    data: str | None = option(None, "Where the cache's dataset lives now, if it moved (default: as recorded).",
                              type=click.STRING, resumable=True)
    out: str = redeclare(TrainingConfig, "out", "runs/distill",
                         help="Run folder: checkpoints/, metrics.jsonl, config.json, student.pth.")
    kd: str = option("std", "Distillation: std = SD + TD (the paper), sd / td alone, none (plain student), mse "
                     "(KD-MSE on features), mean2 (Gao et al.'s KD-M²_mean), output (teacher's SR frames).",
                     type=click.Choice(KD_MODES))
    feature: str | None = option(None, "Feature to distil: F^SR (the paper) or F^LR (Table 4). Default: lr for "
                                 "mean2, sr otherwise.", type=click.Choice(FEATURES))
    lambda_sd: float = option(1.0, "λ1, weight of L_SD (and of the mse / mean2 / output term).")
    lambda_td: float = option(100.0, "λ2, weight of L_TD.")
    attention: str = option("sum2", "SD mapping: Σ|F|² (Eq. 2, the paper), Σ|F| (Eq. 1), max|F|² (Eq. 3).",
                            type=click.Choice(MAPPINGS))
    sd_norm: str = option("none", "Normalise attention maps by their L2 norm (attention transfer); the paper does "
                          "not.", type=click.Choice(SD_NORMS))
    td_hidden: int = option(16, "ConvLSTM hidden channels (TD).", type=click.IntRange(1))
    td_freeze: float = option(1e-8, "Freeze the ConvLSTM once L_TD falls below this (the paper's collapse guard).")
    td_forget_bias: float | None = option(None, "Initial forget-gate bias of the ConvLSTM (default: PyTorch's init; "
                                          "1 keeps early frames in C).", type=click.FLOAT)
    adapter: str = option("default", "1×1 adapter from the student's to the teacher's channels: default (PyTorch "
                          "init, with bias) or fit (no bias, least squares on the first distillation batch: no "
                          "switch-on shock).", type=click.Choice(ADAPTERS))
    kd_ramp: int = option(0, "Ramp the distillation terms' weights linearly from 0 over this many steps after "
                          "warm-up.", type=click.IntRange(0))
    lambda_out: float = option(0.0, "Weight of an output-KD term (Charbonnier to the teacher's SR) added to --kd's "
                               "terms.")
    log_first: int = option(0, "Log each of the first N distillation steps to metrics.jsonl with every term's "
                            "gradient norm, its cosine with L_rec's and where it lands (single process).",
                            type=click.IntRange(0), resumable=True)
    probe_every: int = option(0, "Also log that gradient probe every N steps once distillation runs, to see the "
                              "terms late in training as well as at switch-on (0: never).", type=click.IntRange(0),
                              resumable=True)
    clip_frames: int = option(7, "Frames per training sample, 2k+1 (the TD sequence).", type=click.IntRange(1))
    warmup_steps: int = option(200, "Steps with L_rec only before distillation starts (the paper: 20000).",
                               type=click.IntRange(0))
    steps: int = redeclare(TrainingConfig, "steps", 2000)
    batch_size: int = redeclare(TrainingConfig, "batch_size", 2, help="Clips per step, per rank.")
    patch_size: int = redeclare(TrainingConfig, "patch_size", 64, type=click.IntRange(16),
                                help="HR crop size: a multiple of 16 for FastDVDnet and VESPCN, of 4 for VSRNet and "
                                "VDSR (the paper: 256).")
    lr: float = redeclare(TrainingConfig, "lr", 2e-4, help="Peak Adam learning rate (the paper: 1e-4).")
    augment: str = option("none", "none: exact cached targets; approx: the same flip/rotation of inputs and targets "
                          "(a transformed target is not the teacher's output on the transformed input).",
                          type=click.Choice(AUGMENTS))
    online_teacher: bool = option(False, "Run the teacher every step instead of reading the cache (same losses; to "
                                  "check and time it).")
    init: str | None = option(None, "Start from this student checkpoint (a student.pth of stdvsr distill or adapt) "
                              "instead of random weights: its network and width, which --student then defaults to. "
                              "The optimizer starts fresh.", type=click.Path(dir_okay=False))
    holdout: float = option(0.1, "LR footage caches only (no ground truth): the fraction of each clip's last frames "
                            "kept out of training; validation scores the student's agreement with the teacher there "
                            "(Y-PSNR to the teacher's SR). 0: train on every frame, no validation.",
                            type=click.FloatRange(0, 0.9))
    precision: str = option("auto", "Arithmetic of the student's, ConvLSTM's and cached head's forward passes: bf16 "
                            "autocast (weights, optimizer, losses and validation stay fp32) or fp32. auto: bf16 where "
                            "it is native (CUDA; CPUs with avx512_bf16 or AMX), else fp32.",
                            type=click.Choice(PRECISIONS))
    cache_ram_mb: int = option(1024, "RAM per DataLoader worker (or this process, with --workers 0) for whole "
                               "frames of the cache and decoded ground truth, read once and cropped many times; "
                               "what does not fit is read from disk each time (0: always). The same values either "
                               "way.", type=click.IntRange(0), resumable=True)
    channels_last: bool = option(True, "Keep the student's activations channels-last (faster convolutions on CPUs; "
                                 "the same maths).", negatable=True)
    ema: float = option(0.0, "EMA decay of the student's weights (0: none); validation and student.pth use the EMA "
                        "weights (student.pth keeps the raw ones as params too).",
                        type=click.FloatRange(0, 1, max_open=True))
    mix_cache: str | None = option(None, "LR footage caches only: a teacher cache with ground truth (e.g. the one the "
                                   "student was trained on) whose batches are mixed into the fine-tuning, against "
                                   "forgetting; those steps train L_rec to its ground truth alone.",
                                   type=click.Path(file_okay=False))
    mix_share: float = option(0.25, "Share of the steps whose batch comes from --mix-cache (spread evenly).",
                              type=click.FloatRange(0, 1, min_open=True, max_open=True))
    teacher_weights: str | None = option(None, "Weights for --online-teacher (default: those the cache was built "
                                         "from; sha256 checked).", type=click.Path(dir_okay=False), resumable=True)
    degradation: str | None = option(None, "Refuse a cache built with another one.", type=click.Choice(DEGRADATIONS))
    padding: str | None = option(None, "Refuse a cache built with another padding mode.",
                                 type=click.Choice(PADDING_MODES))
    val_every: int = redeclare(TrainingConfig, "val_every", 500, type=click.IntRange(0),
                               help="Held-out Y-PSNR every N steps (0: never).")


@dataclass
class CacheConfig:
    teacher: str = option("edvr", "Teacher network: EDVR, or RBPN (no trunk: its caches store feat_sr / attention "
                          "/ sr).", type=click.Choice(TEACHERS))
    weights: str | None = option(None, "Teacher weights (stdvsr, BasicSR or official RBPN checkpoint). Default: the "
                                 "shipped demo teacher of --teacher (edvr-s, rbpn-s).",
                                 type=click.Path(dir_okay=False))
    preset: str | None = option(None, "Architecture of --weights that are not a stdvsr checkpoint (e.g. BasicSR's "
                                "EDVR-L; rbpn for official RBPN weights, configuration read off their shapes).",
                                type=click.Choice(teacher_presets()))
    data: str = option("demo", "Dataset spec (see `stdvsr data`).")
    split: str = option("train", "Dataset split to cache.")
    max_clips: int | None = option(None, "Only the first N clips of the dataset (smoke runs).",
                                   type=click.IntRange(1))
    views: int = option(1, "Cache each clip through the first N of the 8 dihedral transforms (1: as it is, 2: + "
                        "horizontal flip, 4: every flip, 8: + transposes) with the teacher run on each; a view costs "
                        "one more teacher pass and the bytes of the clip.")
    out: str | None = option(None, "Cache folder. Default: cache/<data>-<teacher>.<format>.",
                             type=click.Path(file_okay=False))
    format: str = option("zarr", "Zarr v3 with sharding, or HDF5 part files joined by a virtual dataset.",
                         type=click.Choice(FORMATS), aliases=("fmt",))
    store: str | tuple | None = option(None, "Comma list of tiers besides the LR input: trunk (F^LR + the head, "
                                       "serves SD and TD; EDVR only), attention (M^T, HR), feat_sr (F^SR, HR, 16× "
                                       "trunk at 64 ch), sr (teacher output, HR, 3 ch). Default: trunk (RBPN: "
                                       "feat_sr,sr); sr with --degradation none.", type=click.STRING)
    dtype: str = option("fp16", "Storage of trunk / feat_sr; int8 has one scale per frame and channel (half the "
                        "size).", type=click.Choice(DTYPES))
    degradation: str = option("bd", "How the teacher's LR input is made from the --data frames: bd (the paper) or "
                              "bi of the HR frames; none: the frames are the LR input as given (your own footage, "
                              "video:FILE or folder:ROOT): no ground truth is read or stored.",
                              type=click.Choice(CACHE_DEGRADATIONS))
    lq_from_disk: bool = option(False, "Use the dataset's own LR frames (Vid4 BDx4/BIx4).")
    mod_crop: bool = option(False, "Crop frames to a multiple of the scale instead of refusing them.")
    padding: str = option("replicate", "Frame padding of windows at clip ends (the paper: replicate).",
                          type=click.Choice(PADDING_MODES))
    chunk: int = option(64, "Inner chunk tile in LR pixels (×4 for HR tiers); a shard is one frame.",
                        type=click.IntRange(4))
    compress: bool = option(True, "zstd level 1 (Zarr) or lzf (HDF5) on every chunk.", negatable=True)
    part_mb: int = option(1024, "HDF5: start a new part file after this many MB (the unit of resume).",
                          type=click.IntRange(0), flag="--hdf5-part-mb")
    batch_size: int = option(1, "Windows per teacher forward (1 was fastest on a CPU; try 4-8 on a GPU).",
                             type=click.IntRange(1))
    device: str = option("auto", DEVICE_HELP)
    rank: int | None = option(None, "This process's rank when not started by torchrun.", type=click.IntRange(0))
    world_size: int | None = option(None, "Number of processes when not started by torchrun.",
                                    type=click.IntRange(1))
    check_space: bool = option(True, "Start even if the uncompressed estimate exceeds the free disk space.",
                               flag="--no-space-check")


@dataclass
class EvalConfig:
    set: str = option("demo", "vid4, vimeo90k-test, vimeo90k-fast, vimeo90k-medium, vimeo90k-slow, demo (carphone), "
                      "demo:CLIP (named demo clips, e.g. demo:bigbuckbunny) or folder:PATH.")
    root: str | None = option(None, "Dataset folder for vid4 / vimeo90k-*.", type=click.Path(file_okay=False))
    models: tuple = option((), "A checkpoint (student.pth, a teacher …), repeatable; NAME=PATH sets the column name.",
                           flag="--model", multiple=True)
    arch: str | None = option(None, ARCH_HELP + " stdvsr checkpoints always use the model they record.",
                              type=click.STRING, metavar="NAME")
    bicubic: bool = option(False, "Add bicubic upsampling as a row.")
    color: str = option("y", "Score the Y channel (BT.601, as the paper) or RGB.", type=click.Choice(["y", "rgb"]))
    crop_border: int = option(0, "HR pixels removed per side before scoring.", type=click.IntRange(0))
    frames: str = option("all", "Frames scored per clip (Vimeo90K-T: always the centre frame).",
                         type=click.Choice(FRAME_MODES))
    degradation: str = option("bd", "LR input: BD / BI of the GT frames, or the dataset's own LR folder (Vid4 "
                              "BDx4/BIx4).", type=click.Choice(EVAL_DEGRADATIONS))
    padding: str = option("replicate", "Frame padding of windows at clip ends.", type=click.Choice(PADDING_MODES))
    max_clips: int | None = option(None, "Only the first N clips (a quick look at Vimeo90K-T).",
                                   type=click.IntRange(1))
    json: str | None = option(None, "Write every figure as JSON.", type=click.Path(dir_okay=False))
    csv: str | None = option(None, "Write per-clip rows as CSV.", type=click.Path(dir_okay=False))
    save_images: str | None = option(None, "Write SR frames to DIR/<model>/<clip>/.", type=click.Path(file_okay=False))
    temporal_profile: int | None = option(None, "HR pixel row: write per clip its temporal profile for GT, bicubic "
                                          "and every model.", type=click.IntRange(0))
    figures: str | None = option(None, "Folder for profile and crop images (default: runs/evaluate/<set>).",
                                 type=click.Path(file_okay=False))
    max_figures: int = option(40, "Write the profile and crop images of the first N clips only (0: none).",
                              type=click.IntRange(0))
    device: str = option("auto", DEVICE_HELP)
    batch_size: int = option(4, "Windows per forward.", type=click.IntRange(1))
    chunk_frames: int = option(16, "Output frames computed at a time (bounds memory on long clips).",
                               type=click.IntRange(1))


@dataclass
class ExportConfig:
    model: str = option(REQUIRED, "Student checkpoint written by stdvsr (e.g. runs/distill/student.pth).",
                        type=click.Path(dir_okay=False))
    format: str = option("onnx", "ONNX (input lq, output sr) or a TorchScript trace.",
                         type=click.Choice(EXPORT_FORMATS))
    lq_size: str = option("120x180", "LR input size HxW the model is traced at, multiples of 4 (the paper: "
                          "120x180).")
    dynamic: bool = option(False, "Dynamic batch, height and width (checked at a second size too). FastDVDnet and "
                           "VESPCN files still need LR H and W multiples of 4: pad the frames and crop the output, as "
                           "upscale does.")
    out: str | None = option(None, "Output file. Default: next to --model, <stem>.onnx or <stem>.torchscript.pt.",
                             type=click.Path(dir_okay=False))
    opset: int = option(17, "ONNX opset.", type=click.IntRange(MIN_OPSET, MAX_OPSET))
    force: bool = option(False, "Overwrite --out if it exists (with --quantize also <stem>.int8.onnx, "
                         "<stem>.quant.json and their .rejected twins).")
    seed: int = option(0, "Seed of the calibration draw and check inputs, 0 to 2**32-1.",
                       type=SEED)
    tolerance: float = option(1e-4, "Largest |exported − PyTorch| accepted by the check.", cli=False)


@dataclass
class QuantizeConfig(ExportConfig):
    """``export --quantize int8``: the export's settings and the calibration's."""
    calibrate: str | None = option(None, "int8 calibration data: a teacher cache (its LR frames) or a dataset spec "
                                   "(demo, folder:PATH, video:FILE, ...; LR = BD x4 of its training split, all "
                                   "frames of a folder, video or Vid4).", type=click.STRING,
                                   metavar="CACHE_DIR|SPEC")
    calib_windows: int = option(32, "LR windows drawn for calibration.", type=click.IntRange(1, MAX_CALIB_WINDOWS))
    accept_drop: bool = option(False, "Keep <stem>.int8.onnx even if it loses more than 0.1 dB Y-PSNR against "
                               "PyTorch on --check-set. Without it such a file is kept only as "
                               "<stem>.int8.rejected.onnx (report <stem>.quant.rejected.json), a name no "
                               "deployment picks up by mistake but one you can inspect or rename without rerunning "
                               "the check, and export exits 1; the fp32 .onnx is kept either way.")
    check_set: str = option("demo:carphone", "Held-out set the int8 check scores: an evaluate set (demo, demo:CLIP, "
                            "folder:PATH) or vid4:ROOT, vimeo90k-test:ROOT.")
    activations: str = option(ACTIVATIONS[0], "int8 activation type.", type=click.Choice(ACTIVATIONS), cli=False)
    threads: int | None = option(None, "ONNX Runtime threads in the check (default: torch's).",
                                 type=click.IntRange(1), cli=False)


@dataclass
class UpscaleConfig:
    input: str = option(REQUIRED, "A video file OpenCV reads, or a folder of frames (natural order).", cli=False)
    output: str = option(REQUIRED, ".mp4 / .avi video, or a folder (no suffix) of %08d.png frames.", cli=False)
    model: str = option(REQUIRED, "stdvsr checkpoint: a student (runs/distill/student.pth) or a teacher "
                        "(stdvsr/weights/edvr_s_demo.pth, runs/teacher/teacher.pth); with --arch also a raw or "
                        "BasicSR state dict.", type=click.Path(dir_okay=False))
    arch: str | None = option(None, ARCH_HELP, type=click.STRING, metavar="NAME")
    tile: int = option(0, "Run the network on LR tiles of this size (a multiple of 4) to bound its memory; 0: whole "
                       "frames. Tiles change the output, small tiles most (EDVR-s: up to 10 grey levels at --tile 32 "
                       "--tile-overlap 8, 2 at --tile 96): use the largest tile that fits.", type=click.IntRange(0))
    tile_overlap: int = option(16, "LR pixels neighbouring tiles share (a multiple of 4), blended with linear ramps.",
                               type=click.IntRange(0))
    chunk_frames: int = option(8, "Frames upscaled per batch; each holds 12 bytes per output pixel (100 MB at 4K) in "
                               "CPU memory.", type=click.IntRange(1))
    fps: float | None = option(None, "Output frame rate. Default: the input video's; 25 for a folder of frames.",
                               type=click.FloatRange(0, min_open=True))
    device: str = option("auto", DEVICE_HELP)
    force: bool = option(False, "Replace OUTPUT if it exists (never the INPUT: an OUTPUT that is, contains or lies "
                         "inside the INPUT is refused).")
    allow_short: bool = option(False, "Accept a video that decodes fewer frames than its container states (corrupt "
                               "or truncated) and upscale the frames that decode, with a warning; without it such a "
                               "video is an error.")


@dataclass
class ProfileConfig:
    models: tuple = option(REQUIRED, "Registered model or preset (repeat for several): fastdvdnet, vsrnet, vespcn, "
                           "vdsr, edvr-m, rbpn-s, ...; or a checkpoint written by stdvsr (teacher.pth, student.pth), "
                           "profiled as the network it records.", flag="--model", multiple=True)
    lq_size: str = option("120x180", "LR input size HxW (the paper: 120x180).")
    frames: int | None = option(None, "Window length for networks where it is configurable (EDVR, RBPN, VSRNet); "
                                "default: the network's own.", type=click.IntRange(1))
    repeats: int = option(10, "Timed passes (median).", type=click.IntRange(1))
    warmup: int = option(2, "Untimed passes first.", type=click.IntRange(0))
    threads: int | None = option(None, "torch CPU threads (default: torch's choice).", type=click.IntRange(1))
    device: str = option("cpu", "cpu, cuda or cuda:N.")
    timing: bool = option(True, "Count parameters and MACs only.", flag="--no-timing")


@dataclass
class PlotConfig:
    runs: tuple = option(REQUIRED, "Run folders (or their metrics.jsonl) to draw.", cli=False)
    out: str | None = option(None, "PNG to write. Default: RUN/curves.png for one run, ./curves.png for several.",
                             type=click.Path(dir_okay=False))
    labels: tuple = option((), "Legend name of each RUN, in order (repeat once per RUN). Default: the folder names.",
                           flag="--label", multiple=True)
    tensorboard: str | None = option(None, "Also write TensorBoard event files, one folder per run under this one "
                                     "(needs pip install tensorboard).", type=click.Path(file_okay=False))


@dataclass
class AdaptConfig:
    """``stdvsr adapt``: a trained student fine-tuned to the user's own LR footage against the teacher's outputs on
    it (issue #22). --steps and --lr were chosen on bigbuckbunny's LR frames (pipelines/studies/adapt_study.py),
    never on carphone, the demo's test clip; --kd sd/std, --views 2 and --mix-cache did not beat the defaults there."""
    student: str = option(REQUIRED, "The trained student to adapt: a student.pth written by stdvsr distill (or adapt).",
                          type=click.Path(dir_okay=False))
    data: str = option(REQUIRED, "Your LR footage: folder:ROOT (one sub-folder of frames per clip, or ROOT's own "
                       "frames), video:FILE, or demo:CLIP (a demo clip's frames taken as footage). The frames are the "
                       "input as given: no ground truth is read.")
    out: str = option(REQUIRED, "Folder for everything: cache/ (the teacher's labels), run/ (the fine-tuning), "
                      "student.pth (the adapted student), adapt.json. Rerun the same command to continue or reuse.",
                      type=click.Path(file_okay=False))
    teacher_weights: str | None = option(None, "Teacher (stdvsr or BasicSR checkpoint). Default: the shipped demo "
                                         "teacher (edvr-s).", type=click.Path(dir_okay=False))
    teacher_preset: str | None = option(None, "Architecture of --teacher-weights that are not a stdvsr checkpoint "
                                        "(e.g. BasicSR's EDVR-L).", type=click.Choice(teacher_presets()))
    steps: int = option(1200, "Fine-tuning steps (chosen on bigbuckbunny: pipelines/studies/adapt_study.py).",
                        type=click.IntRange(1))
    lr: float = option(3e-4, "Peak Adam learning rate, cosine to 1e-6 (chosen on bigbuckbunny).",
                       type=click.FloatRange(0, min_open=True))
    kd: str = option("output", "Loss: output = Charbonnier to the teacher's SR frames; std / sd / td add the paper's "
                     "terms on the teacher's features (they need the trunk, cached too then).",
                     type=click.Choice(("output", "std", "sd", "td")))
    views: int = option(1, "Label each clip through the first N dihedral transforms too (the teacher runs on the "
                        "flipped frames, so targets stay exact; N× the labelling time).", type=click.IntRange(1, 8))
    holdout: float = option(0.1, "Share of each clip's last frames kept out of fine-tuning; the agreement with the "
                            "teacher (before and after) is scored on them. 0: train on every frame, score nothing.",
                            type=click.FloatRange(0, 0.9))
    batch_size: int = option(2, "Clips per step.", type=click.IntRange(1))
    patch_size: int = option(64, "HR crop size (÷4 at LR): a multiple of 16 for FastDVDnet and VESPCN, of 4 for "
                             "VSRNet and VDSR; the footage must be at least a quarter of it on each side.",
                             type=click.IntRange(16))
    clip_frames: int = option(7, "Frames per training sample, 2k+1 (the TD sequence).", type=click.IntRange(1))
    seed: int = option(0, "Seed of the crops and batch order, 0 to 2**32-1.", type=SEED)
    device: str = option("auto", DEVICE_HELP, resumable=True)
    mix_cache: str | None = redeclare(DistillConfig, "mix_cache", None,
                                      help="A teacher cache with ground truth (e.g. the one the student was trained "
                                      "on: cache/demo-6clips-edvr-sr.zarr for the demo's) mixed into the fine-tuning, "
                                      "against forgetting: --mix-share of the steps train on its frames and ground "
                                      "truth instead.")
    mix_share: float = redeclare(DistillConfig, "mix_share", 0.25)
    workers: int = option(2, "DataLoader workers of the fine-tuning.", type=click.IntRange(0), resumable=True)
