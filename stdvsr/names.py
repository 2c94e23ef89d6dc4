"""The names stdvsr offers as choices, in one torch-free place: the students and model presets, and each stage's
choice lists. The command line builds its options from them without importing PyTorch (``stdvsr --help`` stays
fast); the modules that implement the choices import them from here."""

from __future__ import annotations

#: The students of the paper (everything in MODELS but the teachers).
STUDENTS = ("fastdvdnet", "vsrnet", "vespcn", "vdsr")
#: The teachers: EDVR (the paper's) and RBPN (its Table 5).
TEACHERS = ("edvr", "rbpn")

# name → (architecture, constructor arguments, what it is). Arguments given to build_model override these.
PRESETS: dict[str, tuple[str, dict, str]] = {
    "edvr-s": ("edvr", dict(num_feat=32, num_frame=7, deformable_groups=4, num_extract_block=2,
                            num_reconstruct_block=4), "small EDVR, 7 frames, trains on a CPU (the demo teacher)"),
    "edvr-m": ("edvr", dict(num_feat=64, num_frame=5, deformable_groups=8, num_extract_block=5,
                            num_reconstruct_block=10), "BasicSR's EDVR-M, 5 frames, 3.3M parameters"),
    "edvr-l": ("edvr", dict(num_feat=128, num_frame=7, deformable_groups=8, num_extract_block=5,
                            num_reconstruct_block=40), "EDVR-L with 7 frames (the paper's teacher), 20.7M"),
    "fastdvdnet-half": ("fastdvdnet", dict(width=0.5), "FastDVDnet-VSR at width 1/2 (F^SR 32 channels, Table 6)"),
    "fastdvdnet-quarter": ("fastdvdnet", dict(width=0.25), "FastDVDnet-VSR at width 1/4 (F^SR 16 channels)"),
    "fastdvdnet-quarter-h64": ("fastdvdnet", dict(width=0.25, head_feat=64),
                               "FastDVDnet-VSR at width 1/4 in front of a 64-channel head (F^SR as the teacher's)"),
    "rbpn-s": ("rbpn", dict(base_filter=32, feat=16, n_resblock=1, nFrames=7, sr_feat=64),
               "small RBPN with the STD last conv (F^SR 64 channels), 7 frames, trains on a CPU"),
    "rbpn": ("rbpn", {}, "RBPN as published (RBPN-PyTorch), 7 frames, 12.8M; F^SR = the 384-channel concatenation"),
}
#: Each teacher's CPU-sized preset: what train-teacher trains when --preset is not given.
SMALL_TEACHER = {"edvr": "edvr-s", "rbpn": "rbpn-s"}


def student_names() -> list[str]:
    """What ``distill --student`` takes: each student and, after it, its presets."""
    return [n for s in STUDENTS for n in (s, *(p for p, (arch, _, _) in PRESETS.items() if arch == s))]


def teacher_presets() -> list[str]:
    """The teachers' size presets, each teacher's smallest first."""
    return [p for t in TEACHERS for p, (arch, _, _) in PRESETS.items() if arch == t]



# speed (stdvsr.perf)
#: ``--precision``: auto = bf16 where the hardware does bf16 arithmetic natively, else fp32
PRECISIONS = ("auto", "fp32", "bf16")

# data (stdvsr.data)
PADDING_MODES = ("replicate", "reflection", "reflection_circle", "circle")
DEGRADATIONS = ("bd", "bi")
#: ``cache-teacher --degradation none``: the dataset's frames *are* the LR input (a user's own footage): read as
#: given, nothing degraded, no ground truth read or stored.
NO_DEGRADATION = "none"
CACHE_DEGRADATIONS = (*DEGRADATIONS, NO_DEGRADATION)
# the teacher cache (stdvsr.cache)
FORMATS = ("zarr", "hdf5")
DTYPES = ("fp16", "int8")
#: Optional tiers ``--store`` chooses from; ``lq`` (the teacher's float32 input frames) is always stored.
TIERS = ("trunk", "attention", "feat_sr", "sr")
DEFAULT_TIERS = ("trunk",)
#: Teachers with no LR trunk + small head to cache (RBPN makes its HR maps inside every projection): their caches
#: store HR tiers directly, never ``trunk``; by default F^SR (SD, TD, KD-MSE) and the teacher's SR (output KD).
NO_TRUNK = ("rbpn",)
NO_TRUNK_TIERS = ("feat_sr", "sr")
#: A footage cache's default: the teacher's SR frames (3 channels at HR), the target a student reads without
#: re-running the teacher's head each step (which costs more than the student itself).
FOOTAGE_TIERS = ("sr",)
# distillation (stdvsr.distill, stdvsr.losses)
KD_MODES = ("std", "sd", "td", "none", "mse", "mean2", "output")
FEATURES = ("sr", "lr")
AUGMENTS = ("none", "approx")
ADAPTERS = ("default", "fit")
MAPPINGS = ("sum2", "sum", "max2")
SD_NORMS = ("none", "l2")
# training (stdvsr.training)
SCHEDULES = ("cosine", "step")
# evaluation, export and quantisation (stdvsr.evaluate, stdvsr.export, stdvsr.quantize)
EVAL_SETS = ("vid4", "vimeo90k-test", "vimeo90k-fast", "vimeo90k-medium", "vimeo90k-slow", "demo")
FRAME_MODES = ("all", "skip-border-2")
EVAL_DEGRADATIONS = (*DEGRADATIONS, "lr-folder")
EXPORT_FORMATS = ("onnx", "torchscript")
MIN_OPSET, MAX_OPSET = 11, 20  # the TorchScript-based exporter stops at 20
ACTIVATIONS = ("quint8", "qint8")  # int8 activations: uint8 ran 1.15× faster at equal PSNR (README)
MAX_CALIB_WINDOWS = 1024
