"""``stdvsr export --quantize int8``: a student's ONNX graph with int8 weights and activations, calibrated on real
LR windows, and scored against the fp32 graph and PyTorch on held-out video.

Post-training static quantisation with ONNX Runtime (``onnxruntime.quantization.quantize_static``):

* **QDQ format** — QuantizeLinear/DequantizeLinear pairs around every quantised op, which ONNX Runtime's CPU
  provider fuses into int8 kernels and which mobile runtimes (NNAPI, XNNPACK, QNN, Core ML) import as int8 ops;
* **weights** int8, symmetric, one scale per output channel (``per_channel=True``);
* **activations** 8 bits, per tensor, asymmetric (:data:`ACTIVATIONS`), their ranges the min/max over
  ``calib_windows`` LR windows (MinMax calibration) drawn with a seeded RNG from a teacher cache (the ``lq`` frames
  the student is trained on) or from a dataset (LR = BD ×4 of its frames, as everywhere in stdvsr). The input
  ``lq`` and the output ``sr`` get the range [0, 1] (step 1/255) whatever the windows hold: 8-bit frames go in
  exactly, and the output lands on the grid it is rounded to anyway, clamped as every consumer clamps it
  (calibrated on one corner of a clip, the output's own range clipped bright pixels of another: 24 dB vs fp32).
  Calibration is deterministic: the same seed and data give the same file, byte for byte.

Every node is quantised, the last one (which writes ``sr``) too: keeping it in float gained 0.0005 dB on the demo
student (README "Deploying a student"), not worth a float node in a graph meant for int8 accelerators.

The check (:func:`score`) runs PyTorch fp32, the fp32 ONNX graph and the int8 graph on the same padded LR windows
of a held-out set (default ``demo:carphone``, BD ×4) and reports Y-PSNR/SSIM under ``stdvsr evaluate``'s protocol
(all frames, replicate window padding, crop 0), and the milliseconds per frame of the two ONNX graphs, whose
sessions are built with the same options and thread count and timed interleaved (frame by frame, alternating
which goes first) after untimed warm-up runs. PyTorch is the quality reference only and is not timed. A fixed-size
graph takes frames padded (replicate, bottom/right) to its size; frames larger than it are refused up front.

An int8 graph that loses more than :data:`MAX_INT8_DROP_DB` there is not shipped silently: unless
``accept_drop``, it and its report keep names that say so (``<stem>.int8.rejected.onnx``,
``<stem>.quant.rejected.json``) and :class:`Int8Rejected` is raised; the fp32 file, checked on its own, stays.
Fewer windows than asked (a short source) and calibration frames of the check set are warned about.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from rich.table import Table
from torch import nn

from stdvsr.configs import QuantizeConfig
from stdvsr.data import SPEC_KINDS, degrade, load_clips, read_hr, window_indices
from stdvsr.errors import StdvsrError
from stdvsr.export import ExportConfig, default_out, load_student, parse_lq_size, require_onnx
from stdvsr.export import run as export_fp32
from stdvsr.infer import pad_bottom_right, padded_size
from stdvsr.io import atomic_path, check_writable, image_size, mib, write_text
from stdvsr.metrics import VideoMetrics, tensor_to_uint8
from stdvsr.models import size_multiple
from stdvsr.names import ACTIVATIONS as ACTIVATION_TYPES
from stdvsr.options import check_fields
from stdvsr.progress import stderr, stdout

MIN_OPSET_INT8 = 13          # per-channel DequantizeLinear (its ``axis`` attribute) is opset 13
ACTIVATIONS = ACTIVATION_TYPES[0]  # the default: see README "Deploying a student" for how it was chosen
WARMUP = 2                   # untimed runs of each runner before the check's timing
# Largest Y-PSNR loss (PyTorch fp32 − ONNX int8, dB) on the check set that keeps the int8 file without
# --accept-drop: the demo student loses 0.004-0.006 dB (README "Deploying a student"), random-weight students
# -0.001..0.001 dB (VDSR gains 0.32 dB: int8 clamps its out-of-range output); 0.1 dB is 20× the documented loss.
MAX_INT8_DROP_DB = 0.1
REJECTED = ".rejected"       # tag in the names of an int8 file and report that failed the check (int8_path)


def int8_path(fp32: str | Path, tag: str = "") -> Path:
    """``runs/distill/student.onnx`` → ``runs/distill/student.int8.onnx`` (``tag`` :data:`REJECTED`:
    ``student.int8.rejected.onnx``)."""
    fp32 = Path(fp32)
    return fp32.with_name(f"{fp32.stem}.int8{tag}.onnx")


def report_path(fp32: str | Path, tag: str = "") -> Path:
    """``runs/distill/student.onnx`` → ``runs/distill/student.quant.json`` (or ``student.quant.rejected.json``)."""
    fp32 = Path(fp32)
    return fp32.with_name(f"{fp32.stem}.quant{tag}.json")


class Int8Rejected(StdvsrError):
    """The int8 graph lost more than :data:`MAX_INT8_DROP_DB` on the check set; ``result`` is what :func:`run`
    returns otherwise, its files under their rejected names."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


# ---------------------------------------------------------------------------------------------- calibration
@dataclass
class _Source:
    """Clips to draw LR windows from: ``lengths[i]`` frames of LR size ``sizes[i]``; ``read(i, frames)`` gives
    the LR frames ``(len(frames), 3, h, w)`` of clip i. ``lr`` says what those frames are (quant.json's
    ``calibration.lr``); ``files()`` lists the HR frame files they come from (empty where they cannot be found: a
    cache whose dataset moved), to tell whether calibration saw the check set."""
    kind: str
    lengths: list[int]
    sizes: list[tuple[int, int]]
    read: Callable[[int, list[int]], torch.Tensor]
    lr: str
    files: Callable[[], set[Path]]


def _clip_names(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f", … ({len(names)} clips)" if len(names) > limit else "")


def _spec_lr(spec: str, clips: list) -> str:
    """What the LR frames of a dataset spec's training split are, true for every spec kind."""
    kind, arg = spec.partition(":")[0], spec.partition(":")[2]
    frames = sum(len(c) for c in clips)
    what = f"{frames} frame(s) of {len(clips)} clip(s): {_clip_names([c.name for c in clips])}"
    where = {"demo": "the named demo clips" if arg else "the demo training split",
             "vimeo90k": "the Vimeo90K training list",
             "vid4": "every Vid4 clip",
             "folder": "every clip of the folder",
             "video": "the video's decoded frames"}[kind]
    return f"BD ×4 of {where}, {what}"


def open_source(source: str) -> _Source:
    """A teacher cache folder (its stored ``lq`` frames) or a dataset spec (BD ×4 of its training split; folder,
    video and Vid4 specs have no split: all their frames)."""
    path = Path(source).expanduser()
    if path.is_dir():
        from stdvsr.cache.layout import MANIFEST
        from stdvsr.cache.reader import CacheReader

        if not (path / MANIFEST).is_file():
            raise StdvsrError(f"--calibrate {source} is a folder but not a teacher cache (no {MANIFEST}); give a "
                              f"cache built by stdvsr cache-teacher, or its frames as a dataset spec: "
                              f"folder:{source}")
        reader = CacheReader(path)
        clips = reader.clips

        def read_cache(i: int, frames: list[int]) -> torch.Tensor:
            lo, hi = min(frames), max(frames) + 1
            lq = reader.read_lq(clips[i]["index"], range(lo, hi))
            return lq[[f - lo for f in frames]]

        def cache_files() -> set[Path]:
            try:
                return {Path(f).resolve() for c in reader.dataset_clips() for f in c.frames}
            except StdvsrError:  # the cache's dataset moved: its frames cannot be compared with the check set's
                return set()

        fp = reader.fingerprint
        how = (f"{str(fp.get('degradation', 'bd')).upper()} ×{reader.scale} of" if reader.has_gt else
               "LR footage as given:")
        lr = (f"the cache's stored lq frames ({how} {fp['data']['spec']}, split {fp['data']['split']}), "
              f"{sum(c['frames'] for c in clips)} frame(s) of {len(clips)} clip(s)")
        return _Source("cache", [c["frames"] for c in clips],
                       [tuple(reader.groups[c["group"]]["lr_size"]) for c in clips], read_cache, lr, cache_files)
    if source.partition(":")[0] not in SPEC_KINDS:
        raise StdvsrError(f"--calibrate {source} is neither a teacher cache folder nor a dataset spec; give a cache "
                          "built by stdvsr cache-teacher (e.g. cache/demo.zarr) or a spec such as demo or "
                          "folder:PATH")
    clips = load_clips(source, "train")
    sizes = []
    for clip in clips:
        h, w = image_size(clip.frames[0]) if len(clip) else (0, 0)
        sizes.append((h // 4, w // 4))

    def read_spec(i: int, frames: list[int]) -> torch.Tensor:
        return degrade(read_hr(clips[i], frames, 4, mod_crop=True), "bd", 4)

    return _Source("dataset", [len(c) for c in clips], sizes, read_spec, _spec_lr(source, clips),
                   lambda: {Path(f).resolve() for c in clips for f in c.frames})


def _checked(src: _Source, source: str) -> _Source:
    if not sum(src.lengths):
        raise StdvsrError(f"--calibrate {source}: the {src.kind} holds no frames to calibrate on; give a teacher "
                          "cache with clips or a dataset spec with frames, e.g. demo")
    return src


def calibration_windows(source: _Source | str, num_frame: int, size: tuple[int, int], count: int,
                        seed: int = 0) -> list[np.ndarray]:
    """``count`` LR windows ``(1, num_frame, 3, h, w)`` float32 drawn with ``numpy.random.default_rng(seed)``:
    a (clip, centre frame) pair without replacement over all frames, the window around it with replicate padding at
    the clip's ends, an LR crop of ``size`` at a random position (replicate-padded bottom/right where the frame is
    smaller). Fewer than ``count`` if the source has fewer frames."""
    src = _checked(open_source(source), source) if isinstance(source, str) else source
    items = [(i, t) for i, n in enumerate(src.lengths) for t in range(n)]
    rng = np.random.default_rng(seed)
    h, w = size
    windows = []
    for k in rng.choice(len(items), size=min(count, len(items)), replace=False):
        i, t = items[int(k)]
        lh, lw = src.sizes[i]
        frames = window_indices(t, src.lengths[i], num_frame, "replicate")
        ch, cw = min(h, lh), min(w, lw)
        top, left = int(rng.integers(0, lh - ch + 1)), int(rng.integers(0, lw - cw + 1))
        lq = src.read(i, frames)[..., top:top + ch, left:left + cw]
        windows.append(pad_bottom_right(lq, h, w)[None].numpy().astype(np.float32))
    return windows


# --------------------------------------------------------------------------------------------- quantisation
@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """ONNX Runtime's quantiser logs advice (pre-processing, opset) through the root logger and its C++ core
    warns about initialisers; neither is the user's to act on."""
    import onnxruntime as ort

    logging.disable(logging.WARNING)
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_int8(fp32: Path, out: Path, windows: list[np.ndarray], activations: str = ACTIVATIONS) -> dict:
    """Write the QDQ int8 graph of the fp32 ONNX file ``fp32`` to ``out``; returns what was done."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    act = {"quint8": QuantType.QUInt8, "qint8": QuantType.QInt8}[activations]

    class Windows(CalibrationDataReader):
        def __init__(self):
            self.it = iter(windows)

        def get_next(self):
            lq = next(self.it, None)
            return None if lq is None else {"lq": lq}

    with tempfile.TemporaryDirectory(prefix="stdvsr-quant-") as tmp, _quiet_ort():
        pre = Path(tmp) / "pre.onnx"
        # ONNX shape inference and graph fusions, what quantisation works on (ORT's symbolic shape inference, made for
        # transformers, fails on VESPCN's flow reshapes)
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(out), Windows(), quant_format=QuantFormat.QDQ, per_channel=True,
            weight_type=QuantType.QInt8, activation_type=act, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"TensorQuantOverrides": {t: [{"rmin": np.float32(0.0), "rmax": np.float32(1.0)}]
                                                    for t in ("lq", "sr")}})
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    return {"format": "QDQ", "weights": "int8, symmetric, per output channel",
            "activations": f"{'uint8' if activations == 'quint8' else 'int8'}, per tensor, MinMax over the windows",
            "lq_sr_range": [0.0, 1.0], "quantize_linear": ops.count("QuantizeLinear"),
            "windows": len(windows)}


# ------------------------------------------------------------------------------------------------- checking
def ort_session(path: str | Path, threads: int):
    """An ONNX Runtime CPU session; every session of the check is built with these same options."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_runner(path: str | Path, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    session = ort_session(path, threads)
    return lambda lq: torch.from_numpy(session.run(["sr"], {"lq": lq.numpy()})[0])


def check_clips(check_set: str):
    """``(clips, set name, centre_only)`` of ``--check-set``: an evaluate set (``demo``, ``demo:CLIP``,
    ``folder:PATH``) or one with its root after a colon (``vid4:/data/Vid4``, ``vimeo90k-test:/data/vimeo``)."""
    from stdvsr.evaluate import EvalConfig, resolve_set
    from stdvsr.names import EVAL_SETS

    name, _, root = check_set.partition(":")
    if name in ("demo", "folder") and (root or name == "demo"):
        return resolve_set(EvalConfig(set=check_set))
    if name in EVAL_SETS and root:
        return resolve_set(EvalConfig(set=name, root=root))
    raise StdvsrError(f"--check-set {check_set} is not a set; use demo:carphone (the default), demo, folder:PATH, "
                      "vid4:ROOT or vimeo90k-test:ROOT (also -fast, -medium, -slow)")


def run_size(lr: tuple[int, int], lq_size: tuple[int, int], dynamic: bool, multiple: int) -> tuple[int, int]:
    """The LR size frames of size ``lr`` are padded to: the graph's fixed size, or the next multiple."""
    return padded_size(*lr, multiple) if dynamic else lq_size


@torch.no_grad()
def score(model: nn.Module, runners: dict[str, Callable[[torch.Tensor], torch.Tensor]], check_set: str,
          lq_size: tuple[int, int], dynamic: bool, multiple: int = 4, reference: str = "pytorch-fp32") -> dict:
    """Y-PSNR/SSIM of PyTorch (``model``, row ``reference``) and of each runner (``name → lq → sr``, timed) on the
    check set, and the runners' ms per frame.

    Every network gets the same window, padded to the graph's size, and its output is cropped back, clamped and
    rounded as ``stdvsr evaluate`` does; ``max_levels`` is the largest difference to PyTorch's frames in grey levels
    (0-255, RGB). Timing: :data:`WARMUP` untimed runs each, then frame by frame, alternating which runner goes
    first; the median per runner.
    """
    from stdvsr.evaluate import read_clip, scored_frames

    clips, set_name, centre_only = check_clips(check_set)
    names = [reference, *runners]
    metrics = {n: VideoMetrics(0, True) for n in names}
    times: dict[str, list[float]] = {n: [] for n in runners}
    levels = {n: 0 for n in names}
    sizes = set()
    warm = False
    for clip in clips:
        lq, gt = read_clip(clip, "bd")
        t, _, h, w = lq.shape
        rh, rw = run_size((h, w), lq_size, dynamic, multiple)
        sizes.add((rh, rw))
        padded = pad_bottom_right(lq, rh, rw)
        for k, f in enumerate(scored_frames(t, "all", centre_only)):
            x = padded[window_indices(f, t, model.num_frame, "replicate")][None]
            if not warm:
                for run_ in runners.values():
                    for _ in range(WARMUP):
                        run_(x)
                warm = True
            outs = {reference: model(x)}
            order = list(runners) if k % 2 == 0 else list(runners)[::-1]
            for n in order:
                t0 = time.perf_counter()
                outs[n] = runners[n](x)
                times[n].append(time.perf_counter() - t0)
            ref = None
            for n in names:
                img = tensor_to_uint8(outs[n][0, :, :4 * h, :4 * w].clamp(0, 1))
                metrics[n].add(clip.name, f, img, tensor_to_uint8(gt[f]))
                ref = img.astype(np.int16) if ref is None else ref
                levels[n] = max(levels[n], int(np.abs(img.astype(np.int16) - ref).max()))
    if not len(metrics[reference]):
        raise StdvsrError(f"--check-set {check_set} has no frame to score; give a set with frames, e.g. "
                          "demo:carphone")
    rows = []
    for n in names:
        s = metrics[n].summary()
        ms = 1e3 * statistics.median(times[n]) if n in times else None
        rows.append({"name": n, "psnr": s["psnr"], "ssim": s["ssim"], "frames": s["frames"], "ms_per_frame": ms,
                     "max_levels": levels[n]})
    return {"set": set_name, "protocol": "Y-PSNR/SSIM ×4, crop 0, all frames, LR BD (13×13 Gaussian σ 1.6), "
                                         "replicate window padding, outputs rounded to uint8",
            "run_lq_size": sorted(sizes), "rows": rows}


# ----------------------------------------------------------------------------------------------------- run
@dataclass(frozen=True)
class _Outputs:
    """The files of a quantisation: the fp32 graph, and the int8 graph with its report under their names if it
    passes the check (``int8``, ``report``) or the names that say it did not (``rejected_*``)."""
    fp32: Path
    int8: Path
    report: Path
    rejected_int8: Path
    rejected_report: Path

    @classmethod
    def of(cls, fp32: Path) -> "_Outputs":
        return cls(fp32, int8_path(fp32), report_path(fp32), int8_path(fp32, REJECTED), report_path(fp32, REJECTED))

    def kept(self, accepted: bool) -> tuple[Path, Path]:
        """``(int8 graph, report)`` under the names of the verdict."""
        return (self.int8, self.report) if accepted else (self.rejected_int8, self.rejected_report)


def run(cfg: QuantizeConfig) -> dict:
    """fp32 ONNX export (checked against PyTorch, as ``stdvsr export``), int8 QDQ graph, and the check.

    Returns ``{"export": <export.run's result>, "int8": {path, bytes, ...}, "check": <score()>, "json": path}``
    and writes the same as JSON next to the fp32 file (:func:`report_path`).
    """
    h, w = _check_config(cfg)
    model, name, arch = load_student(cfg.model)  # first: an .onnx --model is named as such, not as an existing file
    out = _outputs(cfg)

    # everything that can be refused is refused before a file is written
    multiple = size_multiple(arch)
    source = _checked(open_source(cfg.calibrate), cfg.calibrate)
    clips, _, _ = check_clips(cfg.check_set)
    _check_fits(clips, cfg, h, w)
    overlap = _check_overlap(source, clips)
    windows = calibration_windows(source, model.num_frame, (h, w), cfg.calib_windows, cfg.seed)
    _warn_calibration(cfg, source, len(windows), overlap)

    exported = export_fp32(ExportConfig(model=cfg.model, format="onnx", lq_size=cfg.lq_size, dynamic=cfg.dynamic,
                                        out=str(out.fp32), opset=cfg.opset, force=cfg.force, seed=cfg.seed))
    threads = cfg.threads or torch.get_num_threads()
    # The int8 graph is written under the name that says it failed and takes its real name only once the check
    # passed: a run killed while scoring leaves no int8 file that looks valid.
    with atomic_path(out.rejected_int8) as staged:
        info, size = _write_int8(out.fp32, staged, out.int8, windows, cfg, model.num_frame, arch, threads)
        check = _score_graphs(model, out.fp32, staged, cfg, (h, w), multiple, threads)
    accepted = _judge(check, threads) or cfg.accept_drop
    check["accepted"] = accepted
    if accepted:
        out.rejected_int8.replace(out.int8)
    kept, json_path = out.kept(accepted)
    for stale in out.kept(not accepted):
        stale.unlink(missing_ok=True)  # an earlier run's (only there with --force): never beside a newer verdict

    import onnxruntime as ort

    result = {"model": name, "arch": arch, "checkpoint": str(cfg.model), "lq_size": [h, w], "dynamic": cfg.dynamic,
              "opset": cfg.opset, "size_multiple": multiple, "export": exported,
              "int8": {"path": str(kept), "bytes": size, **info, "onnxruntime": ort.__version__,
                       "calibration": {"source": cfg.calibrate, "windows": len(windows),
                                       "windows_asked": cfg.calib_windows, "seed": cfg.seed, "method": "MinMax",
                                       "lr": source.lr, "check_frames_seen": overlap}},
              "check": check, "json": str(json_path)}
    write_text(json_path, json.dumps(result, indent=1))
    if not accepted:
        raise _rejection(result, cfg, len(windows), out)
    return result


def _check_config(cfg: QuantizeConfig) -> tuple[int, int]:
    """The settings' own checks (ONNX installed, fields, opset, calibration data, ``--model`` exists); the graph's
    LR size ``(h, w)``."""
    require_onnx("--quantize int8")
    check_fields(cfg)  # --calib-windows in 1..MAX_CALIB_WINDOWS, activations among names.ACTIVATIONS, ...
    if cfg.opset < MIN_OPSET_INT8:
        raise StdvsrError(f"--opset {cfg.opset}: --quantize int8 needs opset {MIN_OPSET_INT8} or newer (per-channel "
                          "int8 weights); use the default 17")
    if not cfg.calibrate:
        raise StdvsrError("--quantize int8 needs calibration data: --calibrate CACHE_DIR (a teacher cache) or a "
                          "dataset spec, e.g. --calibrate demo")
    h, w = parse_lq_size(cfg.lq_size)
    if not Path(cfg.model).expanduser().is_file():
        raise StdvsrError(f"--model {cfg.model} does not exist; give a student checkpoint, e.g. "
                          "runs/distill/student.pth")
    return h, w


def _outputs(cfg: QuantizeConfig) -> _Outputs:
    """The files this run writes, refused if one exists (without ``--force``) or cannot be written."""
    fp32 = Path(cfg.out).expanduser() if cfg.out else default_out(cfg.model, "onnx")
    if fp32.suffix != ".onnx":
        raise StdvsrError(f"--out {fp32}: with --quantize int8 the fp32 file must end in .onnx (the int8 file is "
                          f"written beside it as <stem>.int8.onnx)")
    out = _Outputs.of(fp32)
    for path in (out.fp32, out.int8, out.report, out.rejected_int8, out.rejected_report):
        if path.exists() and not cfg.force:
            raise StdvsrError(f"{path} already exists; pass --force to overwrite it or choose another --out")
        check_writable(path, "--out")
    return out


def _check_fits(clips: list, cfg: QuantizeConfig, h: int, w: int) -> None:
    """A fixed-size graph takes the check set's frames only if none is larger than its ``h``×``w``."""
    for clip in clips:
        if not len(clip):
            continue
        ch, cw = (v // 4 for v in image_size(clip.frames[0]))
        if not cfg.dynamic and (ch > h or cw > w):
            raise StdvsrError(f"--check-set {cfg.check_set}: clip {clip.name} has LR frames {ch}×{cw} (H×W), larger "
                              f"than the graph's --lq-size {h}x{w}; export at --lq-size "
                              "{}x{} or larger, or with --dynamic".format(*padded_size(ch, cw)))


def _warn_calibration(cfg: QuantizeConfig, source: _Source, windows: int, overlap: int) -> None:
    """Fewer calibration windows than asked, and calibration frames that are also check frames, said up front."""
    if windows < cfg.calib_windows:
        _warn(f"--calib-windows {cfg.calib_windows} asked, but --calibrate {cfg.calibrate} has only "
              f"{sum(source.lengths)} frame(s) and each centres at most one window: calibrating on {windows} "
              "window(s); activation ranges from so few frames may clip other video (give a source with more "
              "frames, e.g. --calibrate demo)")
    if overlap:
        _warn(f"--calibrate {cfg.calibrate} holds {overlap} frame(s) of --check-set {cfg.check_set}: the check is "
              "not held out and overstates int8's quality on other video; calibrate on other clips (e.g. "
              "--calibrate demo, whose training clips are not carphone)")


def _score_graphs(model: nn.Module, fp32: Path, int8: Path, cfg: QuantizeConfig, lq_size: tuple[int, int],
                  multiple: int, threads: int) -> dict:
    """:func:`score` of PyTorch, the fp32 graph and the int8 graph, PyTorch on one thread meanwhile."""
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the untimed reference: no idle OpenMP workers spinning while ONNX Runtime is timed
    try:
        return score(model, {"onnx-fp32": ort_runner(fp32, threads), "onnx-int8": ort_runner(int8, threads)},
                     cfg.check_set, lq_size, cfg.dynamic, multiple)
    finally:
        torch.set_num_threads(torch_threads)


def _judge(check: dict, threads: int) -> bool:
    """Add int8's Y-PSNR drop and speed-up to ``check``; True when the drop is within :data:`MAX_INT8_DROP_DB`."""
    check["threads"] = threads
    rows = {r["name"]: r for r in check["rows"]}
    check["int8_psnr_drop"] = rows["pytorch-fp32"]["psnr"] - rows["onnx-int8"]["psnr"]
    check["int8_speedup"] = rows["onnx-fp32"]["ms_per_frame"] / rows["onnx-int8"]["ms_per_frame"]
    check["max_int8_psnr_drop"] = MAX_INT8_DROP_DB
    return check["int8_psnr_drop"] <= MAX_INT8_DROP_DB  # False for NaN too


def _rejection(result: dict, cfg: QuantizeConfig, windows: int, out: _Outputs) -> Int8Rejected:
    check = result["check"]
    few = f", calibrated on {windows} of the {cfg.calib_windows} windows asked" if windows < cfg.calib_windows else ""
    return Int8Rejected(
        f"the int8 graph loses {check['int8_psnr_drop']:.2f} dB Y-PSNR against PyTorch on {check['set']} (more "
        f"than {MAX_INT8_DROP_DB} dB; a well-calibrated student loses about 0.005 dB){few}; it is kept as "
        f"{out.rejected_int8} with its report {out.rejected_report}, and {out.fp32} is good; calibrate on more frames "
        f"like those you deploy on (e.g. --calibrate demo), or pass --accept-drop --force to keep it as {out.int8}",
        result)


def _check_overlap(source: _Source, check: list) -> int:
    """How many HR frame files of the check set's clips the calibration source also holds (compared by path)."""
    held_out = {Path(f).resolve() for clip in check for f in clip.frames}
    return len(held_out & source.files()) if held_out else 0


def _warn(text: str) -> None:
    stderr().print(f"Warning: {text}", soft_wrap=True, highlight=False)


def _write_int8(fp32: Path, out: Path, int8: Path, windows: list[np.ndarray], cfg: QuantizeConfig, frames: int,
                arch: str, threads: int) -> tuple[dict, int]:
    """Quantise ``fp32`` into ``out`` (a temporary file, renamed by the caller to ``int8`` or its rejected name),
    which must run at the export's sizes (with --dynamic also at another size and batch) and return finite frames
    of the right shape. Returns the quantisation's summary and the file's size."""
    h, w = parse_lq_size(cfg.lq_size)
    info = quantize_int8(fp32, out, windows, cfg.activations)
    runner = ort_runner(out, threads)
    for b, ch, cw in [(1, h, w)] + ([(2, h + 4, w + 8)] if cfg.dynamic else []):
        lq = torch.rand(b, frames, 3, ch, cw, generator=torch.Generator().manual_seed(cfg.seed))
        try:
            got = runner(lq)
        except Exception as e:  # ONNX Runtime errors of every kind
            detail = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            hint = "; export without --dynamic" if b == 2 else ""
            raise StdvsrError(f"the int8 graph of {arch} fails on input {tuple(lq.shape)} ({detail}); nothing "
                              f"was written to {int8}{hint}") from None
        if got.shape != (b, 3, 4 * ch, 4 * cw) or not torch.isfinite(got).all():
            raise StdvsrError(f"the int8 graph of {arch} returned shape {tuple(got.shape)} or non-finite values "
                              f"for input {tuple(lq.shape)}; nothing was written to {int8}; rerun with --debug "
                              "and report it")
    return info, out.stat().st_size


def print_report(result: dict, cfg: QuantizeConfig) -> None:
    """What `stdvsr export --quantize int8` prints: the fp32 export's check, then fp32 against int8 on the held-out
    set (Y-PSNR, SSIM, ms per frame) and the files written (under their rejected names if the check failed)."""
    from stdvsr.export import print_export

    print_export(result["export"])
    check = result["check"]
    sizes = ", ".join(f"{h}×{w}" for h, w in check["run_lq_size"])
    table = Table(title=f"{check['set']}, {check['rows'][0]['frames']} frames: Y-PSNR/SSIM (BD ×4), ms per frame "
                        f"in ONNX Runtime at LR {sizes}, {check['threads']} thread(s)")
    for col in ("", "Y-PSNR (dB)", "SSIM", "ms/frame", "max |Δ| vs PyTorch (levels)"):
        table.add_column(col, justify="right")
    for r in check["rows"]:
        ms = "(not timed)" if r["ms_per_frame"] is None else f"{r['ms_per_frame']:.1f}"
        table.add_row(r["name"], f"{r['psnr']:.3f}", f"{r['ssim']:.4f}", ms, str(r["max_levels"]))
    o = stdout()
    o.print(table)
    o.print(f"int8 − PyTorch fp32: {-check['int8_psnr_drop']:+.3f} dB Y-PSNR; ONNX int8 runs "
            f"{check['int8_speedup']:.2f}× as fast as ONNX fp32 here", soft_wrap=True, highlight=False)
    verb = "wrote" if check["accepted"] else f"loses more than {check['max_int8_psnr_drop']} dB: kept as"
    o.print(f"{verb} {result['int8']['path']} ({mib(result['int8']['bytes'])} MB, QDQ int8, calibrated on "
            f"{result['int8']['calibration']['windows']} windows of {cfg.calibrate}, seed {cfg.seed}) and "
            f"{result['json']}",
            soft_wrap=True, highlight=False)
