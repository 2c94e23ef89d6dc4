"""Optical flow for flow-based teachers (RBPN): OpenCV's estimators in place of the official pyflow, and a warp.

**Layout** (RBPN's, from its ``dataset.get_flow``): a flow is ``(B, 2, h, w)`` float32 in LR pixels, channel 0 the
horizontal displacement ``u``, channel 1 the vertical ``v``, computed *from the centre frame to a neighbour*:
``centre(y, x) ≈ neighbour(y + v, x + u)`` — it tells where each centre pixel is found in the neighbour, i.e. it
warps the neighbour onto the centre (:func:`warp`). Official RBPN gets it from ``pyflow.coarse2fine_flow(centre,
neighbour)`` (Ce Liu's coarse-to-fine variational flow, whose third output is the neighbour warped this way) on the
LR RGB frames as float64 in [0, 1] (uint8 / 255), with alpha 0.012, ratio 0.75, minWidth 20, 7 outer / 1 inner
fixed-point and 30 SOR iterations. OpenCV's ``calc(I0, I1)`` (DIS, Farnebäck) has the same meaning with
``I0`` = centre, ``I1`` = neighbour, so no sign or axis change is needed.

pyflow (a C++ extension built from source) is not a dependency of stdvsr, so OpenCV stands in for it; which
estimator is the nearer was measured on real frames (:data:`FLOW_METHODS`).

OpenCV is imported only inside :func:`estimate_flow`, so importing the networks does not load it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

#: ``method`` names of :func:`estimate_flow`. ``"dis"`` (the default): DIS, MEDIUM preset at finest scale 0 (full LR
#: resolution: dense patches plus a variational refinement, the kind of energy pyflow minimises); ``"farneback"``:
#: Farnebäck with pyflow's pyramid (ratio 0.75 down to ~20 pixels wide). Measured on real LR frames (the table in
#: :mod:`stdvsr.models.rbpn`), DIS is the nearer to pyflow: lower pyflow objective (0.0327 vs 0.0398 per pixel),
#: lower warping error (2.72 vs 3.19 on 0–255) and end-point error on known flows (0.13 vs 0.42 LR px).
FLOW_METHODS = ("dis", "farneback")

# DIS on LR frames: the presets start at finest scale 2 (a quarter of the frame), far too coarse for 44×36–160×90
# LR video; scale 0 keeps full LR resolution, as pyflow does. Patches need frames of at least DIS_MIN pixels.
DIS_MIN = 16


def estimate_flow(center: np.ndarray, neighbour: np.ndarray, method: str = "dis") -> np.ndarray:
    """Flow ``(h, w, 2)`` float32 from ``center`` to ``neighbour`` (RGB uint8 ``(h, w, 3)``), RBPN's layout."""
    import cv2

    if method not in FLOW_METHODS:
        raise ValueError(f"unknown flow method {method!r}; use one of {', '.join(FLOW_METHODS)}")
    # both OpenCV estimators take one 8-bit channel (pyflow used the three RGB channels)
    a, b = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (center, neighbour))
    h, w = a.shape
    if method == "farneback":
        # pyflow's pyramid: ratio 0.75 down to a width of about 20 pixels
        levels = max(1, int(np.floor(np.log(20 / max(w, 20)) / np.log(0.75))) + 1)
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.75, levels, 9, 5, 5, 1.1, 0)
    ph, pw = max(0, DIS_MIN - h), max(0, DIS_MIN - w)
    if ph or pw:  # tiny frames: replicate up to the patch size, estimate, crop back
        a, b = (cv2.copyMakeBorder(x, 0, ph, 0, pw, cv2.BORDER_REPLICATE) for x in (a, b))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(0)
    return dis.calc(a, b, None)[:h, :w]


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """``(..., 3, h, w)`` in [0, 1] → ``(..., h, w, 3)`` uint8, rounded (what pyflow saw: 8-bit frames / 255)."""
    return (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def window_flows(lq: torch.Tensor, method: str = "dis") -> list[torch.Tensor]:
    """Flows of a batch of windows ``(B, N, 3, h, w)``: ``N − 1`` tensors ``(B, 2, h, w)``, one per neighbour in
    window order with the centre skipped, each from the centre frame to that neighbour (no gradient)."""
    b, n = lq.shape[:2]
    frames = to_uint8(lq)
    c = n // 2
    flows = []
    for j in (i for i in range(n) if i != c):
        per_batch = [estimate_flow(frames[k, c], frames[k, j], method) for k in range(b)]
        flows.append(torch.from_numpy(np.stack(per_batch)).permute(0, 3, 1, 2).to(lq.device, torch.float32))
    return flows


def warp(frame: torch.Tensor, flow: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """``frame`` ``(B, C, h, w)`` sampled at ``(x + u, y + v)`` (bilinear): a neighbour warped onto the centre by
    the centre → neighbour flow ``(B, 2, h, w)``."""
    b, _, h, w = frame.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype, device=flow.device),
                            torch.arange(w, dtype=flow.dtype, device=flow.device), indexing="ij")
    x = (xs + flow[:, 0]) * (2 / max(w - 1, 1)) - 1
    y = (ys + flow[:, 1]) * (2 / max(h - 1, 1)) - 1
    return F.grid_sample(frame, torch.stack([x, y], dim=-1), mode="bilinear", padding_mode=padding_mode,
                         align_corners=True)


def flows_as_list(flows: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A ``(B, N − 1, 2, h, w)`` tensor or a sequence of ``(B, 2, h, w)`` tensors → a list of the latter."""
    return list(flows.unbind(1)) if isinstance(flows, torch.Tensor) else list(flows)
