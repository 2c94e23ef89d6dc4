"""``stdvsr export``: a distilled student as an ONNX or TorchScript file, checked against PyTorch.

What is exported is the deployable path ``forward(lq) -> sr`` (docs/ARCHITECTURE.md, "The model contract"):
``lq`` is ``(B, num_frame, 3, h, w)`` in [0, 1], ``sr`` is ``(B, 3, 4h, 4w)``. ONNX files name the input ``lq``
and the output ``sr``; with ``dynamic`` their batch, height and width are symbolic. TorchScript files are ``torch.jit.trace`` graphs, which keep the shape
arithmetic of the students, so they run at other sizes too; ``dynamic`` makes that checked. "Other sizes" means LR
heights and widths that are multiples of 4 for FastDVDnet and VESPCN (:func:`stdvsr.models.size_multiple`): the graph has no
shape check, so a deployer pads the LR frames (replicate, bottom/right, as ``stdvsr upscale`` does) and crops the
output; at other sizes ONNX Runtime fails.

ONNX goes through the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): the dynamo exporter
broke VESPCN's dynamic shapes where the TorchScript-based one exports all four students correctly. Opsets below 11
are refused (FastDVDnet's bilinear ×4 base exports at opset 9-10 but computes something else), and VESPCN needs 16
(``GridSample`` for its warp).

Every export is checked before it is kept: the written file is loaded (ONNX Runtime / ``torch.jit.load``) and run
on a seeded random input of the export size — with ``dynamic`` also on a second size at batch 2 — and its output
must match PyTorch's within ``tolerance`` (max absolute difference); otherwise nothing is written. The tracer's
warnings are silenced because they are expected: the students' input-shape checks become constants of the graph.

EDVR (the teacher) is refused on purpose: its deformable convolution (DCNv2 with learned offsets, a bilinear
gather at data-dependent positions) is not a deployment target of stdvsr, and exporting it is neither supported
nor tested.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Callable, Iterator

import torch
from rich.table import Table
from torch import nn

from stdvsr.configs import ExportConfig
from stdvsr.errors import StdvsrError
from stdvsr.infer import MULTIPLE, padded_size
from stdvsr.io import atomic_path, check_writable, mib
from stdvsr.models import STUDENTS, load_model, model_spec, read_checkpoint, size_multiple
from stdvsr.names import MIN_OPSET
from stdvsr.options import check_fields
from stdvsr.profile import parse_size
from stdvsr.progress import stdout

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
MIN_OPSET_FOR = {"vespcn": 16}  # GridSample


def default_out(model: str | Path, fmt: str) -> Path:
    """``runs/distill/student.pth`` → ``runs/distill/student.onnx`` (or ``student.torchscript.pt``)."""
    path = Path(model).expanduser()
    return path.with_name(path.stem + SUFFIXES[fmt])


def load_student(path: str | Path) -> tuple[nn.Module, str, str]:
    """``(model, name, architecture)`` of the student in a stdvsr checkpoint; EDVR and non-stdvsr files are refused."""
    path = Path(path).expanduser()
    spec = read_checkpoint(path, "--model").get("model")
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str)):
        raise StdvsrError(f"{path} is not a stdvsr checkpoint (no model name inside); export takes a checkpoint "
                          "written by stdvsr, e.g. runs/distill/student.pth from `stdvsr distill`")
    arch, _ = model_spec(spec["name"], **spec.get("kwargs", {}))
    if arch == "edvr":
        raise StdvsrError(f"{path} holds EDVR ({spec['name']}), the teacher, which stdvsr does not export: its "
                          "deformable convolution (DCNv2 with learned offsets, a bilinear gather) is not an export "
                          "target; distil a student with `stdvsr distill` and export its student.pth instead")
    if arch not in STUDENTS:
        raise StdvsrError(f"{path} holds {spec['name']!r}, not a student; export takes one of {', '.join(STUDENTS)}")
    model, _ = load_model(path, flag="--model")
    return model, spec["name"], arch


def parse_lq_size(text: str) -> tuple[int, int]:
    """``--lq-size HxW`` of an exported graph: LR height and width, multiples of :data:`stdvsr.infer.MULTIPLE`."""
    h, w = parse_size(text)
    if h % MULTIPLE or w % MULTIPLE:
        raise StdvsrError(f"--lq-size {text}: height and width must be multiples of {MULTIPLE} (the students "
                          "downsample by 4), e.g. {}x{}".format(*padded_size(h, w)))
    return h, w


def run(cfg: ExportConfig) -> dict:
    """Export ``cfg.model`` to ``cfg.format``, check the file against PyTorch, and keep it only if it matches.

    Returns ``{"path", "format", "model", "arch", "bytes", "lq_size", "dynamic", "opset", "checks", "max_abs_diff",
    "size_multiple"}``; ``checks`` lists ``{"batch", "lq_size", "max_abs_diff"}`` for every input the file was run
    on, ``size_multiple`` is what the LR height and width fed to the file must be multiples of (1: any).
    """
    check_fields(cfg)  # --format among names.EXPORT_FORMATS, --opset in MIN_OPSET..MAX_OPSET, ...
    h, w = parse_lq_size(cfg.lq_size)
    if cfg.format == "onnx":
        require_onnx()
    if not Path(cfg.model).expanduser().is_file():
        raise StdvsrError(f"--model {cfg.model} does not exist; give a student checkpoint, e.g. "
                          "runs/distill/student.pth")
    model, name, arch = load_student(cfg.model)  # first: an .onnx --model is named as such, not as the --out
    out = Path(cfg.out).expanduser() if cfg.out else default_out(cfg.model, cfg.format)
    if out.resolve() == Path(cfg.model).expanduser().resolve():
        raise StdvsrError(f"--out {out} is the checkpoint itself; choose another path")
    if out.exists() and not cfg.force:
        raise StdvsrError(f"{out} already exists; pass --force to overwrite it or choose another --out")
    check_writable(out, "--out")

    if cfg.format == "onnx" and cfg.opset < MIN_OPSET_FOR.get(arch, MIN_OPSET):
        raise StdvsrError(f"--opset {cfg.opset}: {arch} needs opset {MIN_OPSET_FOR[arch]} or newer (GridSample for "
                          "its warp); use the default 17")
    gen = torch.Generator().manual_seed(cfg.seed)
    cases = [torch.rand(1, model.num_frame, 3, h, w, generator=gen)]
    if cfg.dynamic:  # another size and batch than the traced one: catches shapes frozen into the graph
        cases.append(torch.rand(2, model.num_frame, 3, h + 4, w + 8, generator=gen))

    with atomic_path(out) as tmp, torch.no_grad():
        if cfg.format == "onnx":
            _export_onnx(model, cases[0], tmp, cfg.opset, cfg.dynamic)
            exported = _onnx_runner(tmp)
        else:
            _export_torchscript(model, cases[0], tmp)
            with _quiet_tracer():
                exported = torch.jit.load(str(tmp), map_location="cpu")
        checks = [_compare(model, exported, lq) for lq in cases]
        failed = [c for c in checks if not c["max_abs_diff"] <= cfg.tolerance]  # `not <=` also catches NaN
        if failed:
            c = failed[0]
            hint = "; export without --dynamic for a fixed-size model" if c is not checks[0] else ""
            raise StdvsrError(f"the exported {cfg.format} model of {arch} differs from PyTorch by "
                              f"{c['max_abs_diff']:.3g} (> {cfg.tolerance:g}) at batch {c['batch']}, LR "
                              f"{c['lq_size'][0]}×{c['lq_size'][1]}; nothing was written to {out}{hint}; rerun "
                              "with --debug and report it")
        size = tmp.stat().st_size
    return {"path": str(out), "format": cfg.format, "model": name, "arch": arch, "bytes": size, "lq_size": [h, w],
            "dynamic": cfg.dynamic, "opset": cfg.opset if cfg.format == "onnx" else None, "checks": checks,
            "max_abs_diff": max(c["max_abs_diff"] for c in checks), "size_multiple": size_multiple(arch)}


def require_onnx(flag: str = "--format onnx") -> None:
    """onnx and onnxruntime (with its quantisation tools) importable, else one line naming ``flag`` and the extra."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
    except ImportError as e:
        raise StdvsrError(f"{flag} needs the onnx and onnxruntime packages ({e}); "
                          "pip install 'stdvsr[export]'") from None


@contextlib.contextmanager
def _quiet_tracer() -> Iterator[None]:
    """Silence the tracer's expected warnings (shape checks turned into constants) and TorchScript's deprecations."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def _export_onnx(model: nn.Module, lq: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    import onnx

    axes = ({"lq": {0: "batch", 3: "height", 4: "width"}, "sr": {0: "batch", 2: "height_x4", 3: "width_x4"}}
            if dynamic else None)
    try:
        with _quiet_tracer():
            torch.onnx.export(model, (lq,), str(path), input_names=["lq"], output_names=["sr"],
                              opset_version=opset, dynamic_axes=axes, dynamo=False)
    except torch.onnx.errors.OnnxExporterError as e:
        raise StdvsrError(f"ONNX export at --opset {opset} failed: {str(e).splitlines()[0][:200]}; "
                          "use the default --opset 17") from None
    onnx.checker.check_model(str(path))


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda lq: torch.from_numpy(session.run(["sr"], {"lq": lq.numpy()})[0])


def _export_torchscript(model: nn.Module, lq: torch.Tensor, path: Path) -> None:
    with _quiet_tracer():
        traced = torch.jit.trace(model, (lq,), check_trace=False)  # run() does a stricter check on the file
    traced.save(str(path))


def _compare(model: nn.Module, exported: Callable[[torch.Tensor], torch.Tensor], lq: torch.Tensor) -> dict:
    ref = model(lq)
    try:
        got = exported(lq)
    except Exception as e:  # ONNX Runtime / TorchScript errors of every kind: the file does not run on this input
        detail = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        raise StdvsrError(f"the exported model fails on input {tuple(lq.shape)} ({detail}); nothing was written; "
                          "rerun with --debug and report it") from None
    if got.shape != ref.shape:
        raise StdvsrError(f"the exported model returned shape {tuple(got.shape)} for input {tuple(lq.shape)} where "
                          f"PyTorch returns {tuple(ref.shape)}; nothing was written; rerun with --debug and report it")
    return {"batch": lq.shape[0], "lq_size": [lq.shape[-2], lq.shape[-1]],
            "max_abs_diff": float((got - ref).abs().max())}


def print_export(result: dict) -> None:
    """What `stdvsr export` prints: the check table, the file written and, for a --dynamic graph, the sizes it takes."""
    table = Table(title=f"{result['model']} → {result['format']}: check")
    for col in ("batch", "LR (H×W)", "max |exported − PyTorch|"):
        table.add_column(col, justify="right")
    for c in result["checks"]:
        table.add_row(str(c["batch"]), "{}×{}".format(*c["lq_size"]), f"{c['max_abs_diff']:.2e}")
    out = stdout()
    out.print(table)
    h, w = result["lq_size"]
    kind = f"ONNX opset {result['opset']}" if result["opset"] else "TorchScript"
    shapes = "dynamic batch, H and W" if result["dynamic"] else f"traced at batch 1, LR {h}×{w}"
    out.print(f"wrote {result['path']} ({kind}, {mib(result['bytes'])} MB, {shapes})", soft_wrap=True,
              highlight=False)
    if result["dynamic"] and result["size_multiple"] > 1:
        m = result["size_multiple"]
        out.print(f"feed it LR heights and widths that are multiples of {m} (pad the frames by replicating their "
                  f"bottom/right edge, then crop the output ×4, as stdvsr upscale does); other sizes fail",
                  soft_wrap=True, highlight=False)
