"""PSNR / SSIM with the conventions of published VSR tables (BasicSR, i.e. MATLAB), and per-video aggregation.

Conventions (all of them matter at the 0.01 dB level):

* Frames are compared as 8-bit images: a network output is clamped to [0, 1], scaled by 255 and rounded
  (:func:`tensor_to_uint8`), exactly what a saved PNG of it would hold.
* ``crop_border`` pixels are removed from every side of both frames first (VSR papers usually crop ``scale``
  pixels or none; say which you used).
* With ``y_channel=True`` (the default, as in the paper's tables) frames are converted to the Y channel of
  ITU-R BT.601 YCbCr in MATLAB's ``rgb2ycbcr`` convention, ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``
  for R, G, B in 0..255 — kept as float64, not rounded. Otherwise the three RGB channels are used.
* PSNR: ``10 log10(255^2 / MSE)`` over all remaining pixels (and channels), in float64. Identical frames give
  ``inf``.
* SSIM: Wang et al. / MATLAB ``ssim_index``: 11 x 11 Gaussian window with sigma 1.5, ``C1 = (0.01 * 255)^2``,
  ``C2 = (0.03 * 255)^2``, local statistics only where the window fits inside the frame ('valid' — 5 pixels
  are lost on each side), mean of the SSIM map; for RGB the mean of the three per-channel SSIMs.

Aggregation (:class:`VideoMetrics`): a metric is averaged over the frames of each clip first, then the clip
means are averaged with equal weight per clip — how Vid4 / REDS4 / UDM10 tables are computed. A 40-frame clip
therefore counts as much as a 4-frame one.
"""

from __future__ import annotations

import math
from typing import Iterable

import cv2
import numpy as np
import torch

from stdvsr.errors import StdvsrError

__all__ = ["rgb_to_y", "psnr", "ssim", "tensor_to_uint8", "VideoMetrics", "METRICS"]

#: Metric names :class:`VideoMetrics` knows.
METRICS = ("psnr", "ssim")

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64)
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2
_SSIM_SIZE = 11
_SSIM_SIGMA = 1.5


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Y (BT.601, MATLAB ``rgb2ycbcr``) of an ``H x W x 3`` RGB image in 0..255 (uint8 or float), float64 ``H x W``.

    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``; no rounding, so values lie in [16, 235].
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise StdvsrError(f"rgb_to_y takes an H x W x 3 RGB image, got shape {img.shape}")
    return img.astype(np.float64) @ _Y_WEIGHTS / 255.0 + 16.0


def _prepare_pair(img: np.ndarray, img2: np.ndarray, crop_border: int, y_channel: bool, name: str) -> tuple:
    """Check two uint8 HWC RGB frames, crop them and convert to float64 (Y as H x W x 1, or RGB)."""
    for a in (img, img2):
        if not isinstance(a, np.ndarray):
            raise StdvsrError(f"{name} takes numpy uint8 H x W x 3 RGB frames, got {type(a).__name__}; "
                              "convert tensors with stdvsr.metrics.tensor_to_uint8")
        if a.dtype != np.uint8:
            raise StdvsrError(f"{name} takes uint8 frames (0..255), got dtype {a.dtype}; "
                              "quantise float output with stdvsr.metrics.tensor_to_uint8 first")
        if a.ndim != 3 or a.shape[2] != 3:
            raise StdvsrError(f"{name} takes H x W x 3 RGB frames, got shape {a.shape}")
    if img.shape != img2.shape:
        raise StdvsrError(f"{name}: frame shapes differ, {img.shape} vs {img2.shape}; the SR output and the "
                          "ground truth must have the same size (crop the GT to a multiple of the scale first)")
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
        raise StdvsrError(f"crop_border must be a non-negative integer, got {crop_border!r}")
    h, w = img.shape[:2]
    if 2 * crop_border >= min(h, w):
        raise StdvsrError(f"crop_border={crop_border} removes the whole {h}x{w} frame; use a smaller crop_border")
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        return rgb_to_y(img)[..., None], rgb_to_y(img2)[..., None]
    return img.astype(np.float64), img2.astype(np.float64)


def psnr(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, y_channel: bool = True) -> float:
    """PSNR in dB between two uint8 ``H x W x 3`` RGB frames (see the module docstring); ``inf`` if identical."""
    a, b = _prepare_pair(img, img2, crop_border, y_channel, "psnr")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(255.0 ** 2 / mse)


def _ssim_window() -> np.ndarray:
    g = cv2.getGaussianKernel(_SSIM_SIZE, _SSIM_SIGMA).astype(np.float64)
    return g @ g.T


def _ssim_plane(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM map of two float64 planes in 0..255 with 'valid' 11 x 11 Gaussian windows."""
    window = _ssim_window()
    r = _SSIM_SIZE // 2

    def local_mean(x: np.ndarray) -> np.ndarray:
        # filter2D is a correlation (window is symmetric anyway); the border mode only touches the
        # r-pixel rim that is cut away, so what remains is the 'valid' part.
        return cv2.filter2D(x, -1, window)[r:-r, r:-r]

    mu_a, mu_b = local_mean(a), local_mean(b)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = local_mean(a * a) - mu_aa
    var_b = local_mean(b * b) - mu_bb
    cov = local_mean(a * b) - mu_ab
    numerator = (2 * mu_ab + _SSIM_C1) * (2 * cov + _SSIM_C2)
    denominator = (mu_aa + mu_bb + _SSIM_C1) * (var_a + var_b + _SSIM_C2)
    ssim_map = numerator / denominator
    return float(ssim_map.mean())


def ssim(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, y_channel: bool = True) -> float:
    """SSIM between two uint8 ``H x W x 3`` RGB frames (see the module docstring); 1.0 if identical.

    After cropping, frames must be at least 11 x 11 (the SSIM window) so that the 'valid' map is not empty.
    """
    a, b = _prepare_pair(img, img2, crop_border, y_channel, "ssim")
    if min(a.shape[:2]) < _SSIM_SIZE:
        raise StdvsrError(f"ssim needs frames of at least {_SSIM_SIZE}x{_SSIM_SIZE} after cropping, got "
                          f"{a.shape[0]}x{a.shape[1]} (crop_border={crop_border}); use a smaller crop_border")
    return float(np.mean([_ssim_plane(a[..., c], b[..., c]) for c in range(a.shape[2])]))


def tensor_to_uint8(t: torch.Tensor) -> np.ndarray:
    """A ``(3, H, W)`` (or ``(1, 3, H, W)``) float RGB tensor in [0, 1] as the ``H x W x 3`` uint8 array a PNG
    of it would hold.

    Clamps to [0, 1], multiplies by 255 and rounds half to even (``torch.round``), in float32 — or float64 for
    float64 input; half/bfloat16 are upcast to float32 first. Works for tensors on any device.
    """
    if not isinstance(t, torch.Tensor):
        raise StdvsrError(f"tensor_to_uint8 takes a torch tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise StdvsrError(f"tensor_to_uint8 takes a float tensor in [0, 1], got dtype {t.dtype}")
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise StdvsrError(f"tensor_to_uint8 takes a (3, H, W) RGB tensor (or (1, 3, H, W)), got shape "
                          f"{tuple(t.shape)}; index a single frame out of a batch or clip first")
    t = t.detach().to("cpu")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    if torch.isnan(t).any():
        raise StdvsrError("the frame to quantise contains NaN values; the model output is broken "
                          "(check the checkpoint and the input range)")
    return torch.round(t.clamp(0.0, 1.0) * 255.0).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _as_uint8_frame(x, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return tensor_to_uint8(x)
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8:
            raise StdvsrError(f"{what} given as a numpy array must be uint8 H x W x 3, got dtype {x.dtype}; "
                              "pass float frames as (3, H, W) torch tensors in [0, 1] instead")
        return x
    raise StdvsrError(f"{what} must be a (3, H, W) float torch tensor or an H x W x 3 uint8 numpy array, "
                      f"got {type(x).__name__}")


class VideoMetrics:
    """Collects PSNR/SSIM per frame and reports per-clip means and the mean over clips.

    Protocol (as in Vid4 tables): each metric is averaged over the frames of a clip, then the clip means are
    averaged with equal weight per clip. :meth:`summary` is therefore the mean of :meth:`clip_rows`, not the
    mean over all frames.

    A frame whose SR output equals the ground truth has infinite PSNR; that ``inf`` propagates unchanged into its
    clip mean and the summary (a real model never produces it, so it is reported rather than hidden).

    >>> vm = VideoMetrics(crop_border=4)
    >>> vm.add("calendar", 0, sr_tensor, gt_uint8)        # doctest: +SKIP
    >>> vm.summary()["psnr"]                             # doctest: +SKIP
    """

    def __init__(self, crop_border: int = 0, y_channel: bool = True, metrics: Iterable[str] = METRICS):
        metrics = tuple(metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise StdvsrError(f"unknown metric(s) {unknown or metrics!r}; choose from {', '.join(METRICS)}")
        if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
            raise StdvsrError(f"crop_border must be a non-negative integer, got {crop_border!r}")
        self.crop_border = int(crop_border)
        self.y_channel = bool(y_channel)
        self.metrics = tuple(dict.fromkeys(metrics))
        self._clips: dict[str, dict] = {}     # clip -> {frame: {metric: value}}, insertion ordered

    def add(self, clip: str, frame, sr, gt) -> dict:
        """Score one frame; ``sr`` / ``gt`` are (3, H, W) float tensors in [0, 1] or H x W x 3 uint8 arrays.

        Returns the frame's ``{metric: value}``. Adding the same (clip, frame) twice is an error.
        """
        frames = self._clips.setdefault(str(clip), {})
        if frame in frames:
            raise StdvsrError(f"frame {frame!r} of clip {clip!r} was already scored; each frame counts once")
        a = _as_uint8_frame(sr, f"SR frame {frame!r} of clip {clip!r}")
        b = _as_uint8_frame(gt, f"GT frame {frame!r} of clip {clip!r}")
        if a.shape != b.shape:
            raise StdvsrError(f"clip {clip!r} frame {frame!r}: SR shape {a.shape} differs from GT shape {b.shape}; "
                              "crop the GT to a multiple of the scale (mod-crop) before scoring")
        funcs = {"psnr": psnr, "ssim": ssim}
        values = {m: funcs[m](a, b, self.crop_border, self.y_channel) for m in self.metrics}
        frames[frame] = values
        return dict(values)

    def __len__(self) -> int:
        return sum(len(f) for f in self._clips.values())

    def frame_rows(self) -> list[dict]:
        """One dict ``{clip, frame, <metrics>}`` per scored frame, in the order they were added per clip."""
        return [{"clip": clip, "frame": frame, **values}
                for clip, frames in self._clips.items() for frame, values in frames.items()]

    def clip_rows(self) -> list[dict]:
        """One dict ``{clip, frames, <metric means>}`` per clip (clips in the order first seen)."""
        rows = []
        for clip, frames in self._clips.items():
            if not frames:
                continue
            row = {"clip": clip, "frames": len(frames)}
            for m in self.metrics:
                row[m] = float(np.mean([v[m] for v in frames.values()]))
            rows.append(row)
        return rows

    def summary(self) -> dict:
        """``{<metric>: mean over clip means, clips, frames, crop_border, y_channel}``; metrics are NaN if empty."""
        rows = self.clip_rows()
        out: dict = {}
        for m in self.metrics:
            out[m] = float(np.mean([r[m] for r in rows])) if rows else float("nan")
        out.update(clips=len(rows), frames=len(self), crop_border=self.crop_border, y_channel=self.y_channel)
        return out
