"""``stdvsr profile``: parameters, multiply-accumulates and time per output frame of any registered network.

MACs are counted from the layers that actually run in one forward pass at the stated LR size (forward hooks):
a convolution costs ``output elements × in_channels / groups × kh × kw``, a linear layer ``output elements ×
in_features``, and a modulated deformable convolution the same as a convolution of its shape (its offset branch is
an ordinary conv and counted as one; the bilinear sampling is not a MAC and is left out). Pooling, activations,
interpolation and warping are not counted. One forward pass produces one output frame, so the counts and times are
per frame. Times: warm-up passes, then the median of ``repeats`` timed passes, batch 1, ``torch.no_grad``.

A flow-based network (RBPN) computes its optical flow with OpenCV inside ``forward``: that time is part of the
measured ms (it is what a user waits for) and no part of the MACs (not a layer); it is also timed alone
(``flow_ms``, the same median) so the two can be told apart.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from stdvsr.configs import ProfileConfig
from stdvsr.errors import StdvsrError
from stdvsr.models import build_model
from stdvsr.models.dcn import DCNv2Pack
from stdvsr.models.flow import window_flows
from stdvsr.options import check_fields


def count_macs(model: nn.Module, lq: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on ``lq`` (see the module docstring for the rules)."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    def dcn_hook(module: DCNv2Pack, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        _, cin, kh, kw = module.weight.shape
        total += output.numel() * cin * kh * kw

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, DCNv2Pack):
            handles.append(module.register_forward_hook(dcn_hook))
    try:
        with torch.no_grad():
            model(lq)
    finally:
        for h in handles:
            h.remove()
    return total


def time_forward(model: nn.Module, lq: torch.Tensor, repeats: int = 10, warmup: int = 2) -> float:
    """Median seconds of one forward pass (after ``warmup`` untimed passes); ``model`` may be any callable."""
    sync = torch.cuda.synchronize if lq.is_cuda else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            model(lq)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def parse_size(text: str, flag: str = "--lq-size") -> tuple[int, int]:
    """``"120x180"`` → ``(120, 180)`` (height × width); ``flag`` is the option the text came from, named in the
    errors."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise StdvsrError(f"{flag} {text!r} is not HxW, e.g. 120x180") from None
    if h <= 0 or w <= 0:
        raise StdvsrError(f"{flag} {text!r} must be positive")
    return h, w


def profile_model(name: str, lq_size: tuple[int, int] = (120, 180), frames: int | None = None,
                  device: str = "cpu", repeats: int = 10, warmup: int = 2, timing: bool = True) -> dict:
    """Parameters, MACs per output frame and ms per frame of model ``name`` (a registered name, or a stdvsr
    checkpoint) at LR size ``lq_size`` (h, w); a flow-based network also gets ``flow_ms``, its OpenCV flow alone.

    ``frames`` (odd) sets the window of networks whose window is configurable (``num_frame``, RBPN's ``nFrames``);
    a network whose window is fixed at another length is refused.
    """
    model = _network(name, frames).to(device).eval()
    h, w = lq_size
    lq = torch.rand(1, model.num_frame, 3, h, w, device=device)
    try:
        macs = count_macs(model, lq)
    except ValueError as e:  # the network's own size rules, e.g. multiples of 4
        raise StdvsrError(f"{name} cannot run at --lq-size {h}x{w}: {e}") from None
    row = {"model": name, "frames": model.num_frame, "lq_size": [h, w], "params": sum(p.numel() for p in
           model.parameters()), "macs": macs, "device": str(device), "threads": torch.get_num_threads()}
    if timing:
        row["ms"] = time_forward(model, lq, repeats, warmup) * 1e3
        flow_method = getattr(model, "flow_method", None)
        if flow_method is not None:
            row["flow_ms"] = time_forward(lambda x: window_flows(x, flow_method), lq, repeats, warmup) * 1e3
    return row


def _network(name: str, frames: int | None) -> nn.Module:
    """The network ``name`` names (a registered name, or a checkpoint written by stdvsr), with window ``frames``."""
    from pathlib import Path

    from stdvsr.models import list_models, load_model, model_spec

    if frames is not None and (frames < 1 or frames % 2 == 0):
        raise StdvsrError(f"--frames {frames} must be odd, 2k+1: a window centred on the output frame")
    if name not in list_models() and Path(name).expanduser().is_file():
        model = load_model(Path(name), flag="--model")[0]
        if frames is not None and frames != model.num_frame:
            raise StdvsrError(f"--frames {frames}: {name} was trained with a window of {model.num_frame}; profile "
                              "it without --frames")
        return model
    window = "nFrames" if model_spec(name)[0] == "rbpn" else "num_frame"
    kwargs = {window: frames} if frames is not None else {}
    try:
        return build_model(name, **kwargs)
    except StdvsrError:
        if not kwargs:
            raise
        own = build_model(name).num_frame
        if own == frames:
            return build_model(name)
        raise StdvsrError(f"--frames {frames}: {name}'s window is fixed at {own} frame(s); profile it without "
                          "--frames (the option sets the window of EDVR, RBPN and VSRNet)") from None


def run(cfg: ProfileConfig) -> list[dict]:
    """``stdvsr profile``: :func:`profile_model` of each registered name in ``cfg.models`` at ``cfg.lq_size``."""
    from pathlib import Path

    from stdvsr.models import list_models
    from stdvsr.progress import stderr
    from stdvsr.training import resolve_device

    check_fields(cfg)
    size = parse_size(cfg.lq_size)
    unknown = [m for m in cfg.models if m not in list_models() and not Path(m).expanduser().is_file()]
    if unknown:
        raise StdvsrError(f"unknown --model {unknown[0]!r}; choose from {', '.join(list_models())}, or pass a "
                          "checkpoint written by stdvsr")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dev = resolve_device(cfg.device)
    rows = []
    with stderr().status("profiling") as status:
        for name in cfg.models:
            status.update(f"profiling {name}")
            rows.append(profile_model(name, size, cfg.frames, dev, cfg.repeats, cfg.warmup, timing=cfg.timing))
    return rows


def print_profiles(rows: list[dict], repeats: int) -> None:
    """The table of :func:`run`'s rows (ms / frame only when they were timed)."""
    from rich.table import Table

    from stdvsr.progress import stdout

    h, w = rows[0]["lq_size"]
    timed = rows[0].get("ms") is not None
    title = (f"Per output frame at LR {h}×{w} (×4 → {4 * h}×{4 * w}), {rows[0]['device']}"
             + (f", {rows[0]['threads']} threads, median of {repeats}" if timed else ""))
    table = Table(title=title)
    flows = timed and any("flow_ms" in r for r in rows)
    for col in ("model", "frames", "params (M)", "MACs (G)", *(("ms / frame",) if timed else ()),
                *(("of which flow ms",) if flows else ())):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(r["model"], str(r["frames"]), f"{r['params'] / 1e6:.3f}", f"{r['macs'] / 1e9:.1f}",
                      *((f"{r['ms']:.1f}",) if timed else ()),
                      *((f"{r['flow_ms']:.1f}" if "flow_ms" in r else "-",) if flows else ()))
    if flows:
        table.caption = ("RBPN's optical flow (OpenCV, on the CPU) is inside ms / frame and outside the MACs; "
                         "'of which flow ms' times it alone")
    stdout().print(table)
