"""The two standard video super-resolution degradations, HR frames -> LR frames, batched in torch.

Both functions take float frames in [0, 1] shaped ``(..., C, H, W)`` (any number of leading dims, e.g.
``(3, H, W)``, ``(T, 3, H, W)`` or ``(B, T, 3, H, W)``), work on any device, compute in the input's float dtype
(float64 included) and return ``(..., C, H // scale, W // scale)`` in that dtype on that device. Nothing is
rounded or clamped: quantise the LR frames yourself if you want them as 8-bit images.

BD — blur then decimate (the degradation of the STDVSR paper, as in DUF / Vid4 "BD" benchmarks):
    1. Gaussian kernel of ``kernel_size`` x ``kernel_size`` taps (13 x 13 by default) with
       ``sigma = 0.4 * scale`` (1.6 for x4), taps at ``-(size // 2) .. size // 2``, normalised to sum 1
       (identical to ``scipy.ndimage.gaussian_filter`` applied to a centred delta);
    2. reflect-pad the HR frame by ``kernel_size // 2 + 2 * scale`` pixels on each side (torch
       ``F.pad(mode="reflect")`` = numpy ``np.pad(mode="reflect")`` = scipy ``mode="mirror"``: the edge pixel
       is not repeated);
    3. depthwise correlation with the kernel at stride ``scale``;
    4. drop 2 LR pixels from each side.
    The result is the blurred HR frame sampled at HR pixels ``(scale * i, scale * j)`` ("phase 0": LR pixel
    (0, 0) sits on HR pixel (0, 0), not on the centre of the first scale x scale block).

BI — MATLAB ``imresize(img, 1 / scale, 'bicubic')`` with its default antialiasing, on float input:
    cubic kernel with ``a = -0.5`` widened by ``scale`` (``k(x / scale) / scale``, support ``4 * scale``
    input pixels); output pixel ``x`` (1-based) is centred on input coordinate
    ``u = x * scale + 0.5 * (1 - scale)`` (1-based), i.e. on the centre of its scale x scale block;
    indices outside the frame are mirrored symmetrically (edge pixel repeated: index -1 -> 0, H -> H - 1);
    the weights of every output pixel are normalised to sum 1. It is applied as two weight matrices,
    ``(H_out x H_in) @ frame @ (W_out x W_in)^T`` — height first, as MATLAB does for equal scales.

Frame sizes must be multiples of ``scale``; otherwise a :class:`~stdvsr.errors.StdvsrError` says so, unless
``mod_crop=True``, which first crops the HR frames to the largest multiple of ``scale`` (keeping the top-left
corner, i.e. dropping the last rows and columns).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from stdvsr.errors import StdvsrError

__all__ = ["gaussian_kernel2d", "bd_downsample", "bi_downsample", "bd_sigma"]


def bd_sigma(scale: int) -> float:
    """Standard deviation (in HR pixels) of the BD blur for ``scale``: ``0.4 * scale``."""
    return 0.4 * scale


def gaussian_kernel2d(size: int = 13, sigma: float = 1.6, *, dtype: torch.dtype = torch.float64,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised ``size`` x ``size`` Gaussian: outer product of a 1-D Gaussian with taps at
    ``-(size // 2) .. size // 2`` normalised to sum 1 (so the 2-D kernel sums to 1 too).

    For odd ``size`` this equals ``scipy.ndimage.gaussian_filter`` applied to a centred ``size`` x ``size``
    delta (with a truncate wide enough to cover the window). The kernel is computed in float64 and then cast
    to ``dtype`` on ``device``.
    """
    if not _is_int(size) or size < 1 or size % 2 == 0:
        raise StdvsrError(f"Gaussian kernel size must be a positive odd integer, got {size!r}; use e.g. 13")
    if not (isinstance(sigma, (int, float, np.floating, np.integer)) and math.isfinite(sigma) and sigma > 0):
        raise StdvsrError(f"Gaussian sigma must be a positive number, got {sigma!r}")
    half = int(size) // 2
    x = torch.arange(-half, half + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    g = g / g.sum()
    return torch.outer(g, g).to(dtype=dtype, device=device)


def bd_downsample(hr: torch.Tensor, scale: int = 4, kernel_size: int = 13, mod_crop: bool = False) -> torch.Tensor:
    """BD degradation: Gaussian blur (sigma ``0.4 * scale``) then take every ``scale``-th pixel (phase 0).

    ``hr`` is ``(..., C, H, W)`` float in [0, 1]; returns ``(..., C, H // scale, W // scale)``, same dtype and
    device. See the module docstring for the exact recipe (reflect pad ``kernel_size // 2 + 2 * scale``,
    strided depthwise correlation, crop 2 LR pixels per side).
    """
    _check_scale(scale)
    if not _is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
        raise StdvsrError(f"BD kernel_size must be a positive odd integer, got {kernel_size!r}; "
                          "the paper's BD degradation uses 13")
    scale, kernel_size = int(scale), int(kernel_size)
    hr = _prepare(hr, scale, mod_crop, "bd_downsample")
    *lead, c, h, w = hr.shape
    pad = kernel_size // 2 + 2 * scale
    if h <= pad or w <= pad:
        smallest = (pad // scale + 1) * scale
        raise StdvsrError(f"HR frame of {h}x{w} is too small for BD x{scale} downsampling: the reflect padding of "
                          f"{pad} pixels needs height and width of at least {pad + 1} "
                          f"(at least {smallest} as a multiple of {scale}); use larger frames or crops")
    x = hr.reshape(math.prod(lead), c, h, w)          # prod(()) == 1; works for empty batches too
    kernel = gaussian_kernel2d(kernel_size, bd_sigma(scale), dtype=hr.dtype, device=hr.device)
    weight = kernel.expand(c, 1, kernel_size, kernel_size).contiguous()
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, weight, stride=scale, groups=c)
    x = x[..., 2:-2, 2:-2]
    return x.reshape(*lead, c, h // scale, w // scale)


def bi_downsample(hr: torch.Tensor, scale: int = 4, mod_crop: bool = False) -> torch.Tensor:
    """BI degradation: MATLAB ``imresize(hr, 1/scale, 'bicubic')`` (antialiased, float, no rounding).

    ``hr`` is ``(..., C, H, W)`` float in [0, 1]; returns ``(..., C, H // scale, W // scale)``, same dtype and
    device. The weight matrices are built in float64 and cast to the input dtype.
    """
    _check_scale(scale)
    scale = int(scale)
    hr = _prepare(hr, scale, mod_crop, "bi_downsample")
    h, w = hr.shape[-2:]
    wh = torch.from_numpy(matlab_bicubic_matrix(h, scale)).to(dtype=hr.dtype, device=hr.device)
    ww = torch.from_numpy(matlab_bicubic_matrix(w, scale)).to(dtype=hr.dtype, device=hr.device)
    return torch.matmul(torch.matmul(wh, hr), ww.transpose(0, 1))


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def matlab_bicubic_matrix(in_length: int, scale: int) -> np.ndarray:
    """``(in_length // scale, in_length)`` float64 matrix of MATLAB's antialiased bicubic downscaling by ``scale``.

    Row ``i`` holds the normalised weights of output pixel ``i`` over the input pixels, with MATLAB's symmetric
    mirroring of out-of-range taps folded in (mirrored taps add onto the pixel they mirror).
    """
    out_length = in_length // scale
    width = 4.0 * scale                                       # kernel width 4, widened for antialiasing
    x = np.arange(1, out_length + 1, dtype=np.float64)        # 1-based output indices
    u = x * scale + 0.5 * (1.0 - scale)                       # 1-based input coordinate of each output centre
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]    # 1-based candidate input indices
    weights = _cubic((u[:, None] - idx) / scale) / scale
    weights = weights / weights.sum(axis=1, keepdims=True)
    # MATLAB mirror: aux = [1..n, n..1], index -> aux(mod(index - 1, 2n) + 1); here 0-based.
    period = 2 * in_length
    m = np.mod(idx.astype(np.int64) - 1, period)
    src = np.where(m < in_length, m, period - 1 - m)
    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.repeat(np.arange(out_length), taps)
    np.add.at(matrix, (rows, src.ravel()), weights.ravel())
    return matrix


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_scale(scale) -> None:
    if not _is_int(scale) or scale < 1:
        raise StdvsrError(f"scale must be a positive integer, got {scale!r}; the paper uses 4")


def _prepare(hr, scale: int, mod_crop: bool, name: str) -> torch.Tensor:
    """Validate layout/dtype and apply (or demand) the mod-crop; returns the frames to downsample."""
    if not isinstance(hr, torch.Tensor):
        raise StdvsrError(f"{name} takes a torch tensor shaped (..., C, H, W), got {type(hr).__name__}; "
                          "convert with torch.from_numpy(frames).permute(..., 2, 0, 1) and scale to [0, 1]")
    if not hr.is_floating_point():
        raise StdvsrError(f"{name} takes float frames in [0, 1], got a {hr.dtype} tensor; "
                          "convert with hr.float() / 255 (or .double() / 255)")
    if hr.dim() < 3:
        raise StdvsrError(f"{name} takes frames shaped (..., C, H, W), got shape {tuple(hr.shape)}")
    *_, c, h, w = hr.shape
    if w in (1, 3) and c not in (1, 3):
        raise StdvsrError(f"{name} got shape {tuple(hr.shape)}, which looks like channels-last (H, W, C); "
                          "pass channels-first frames (..., C, H, W), e.g. via .permute(..., 2, 0, 1)")
    if h % scale or w % scale:
        h2, w2 = h - h % scale, w - w % scale
        if not mod_crop:
            raise StdvsrError(f"HR frame size {h}x{w} (HxW) is not divisible by scale {scale}; pass mod_crop=True "
                              f"to crop it to {h2}x{w2} (top-left corner kept), or crop the frames to multiples "
                              f"of {scale} yourself")
        hr = hr[..., :h2, :w2]
        h, w = h2, w2
    if h == 0 or w == 0:
        raise StdvsrError(f"HR frame of shape {tuple(hr.shape)} is smaller than one x{scale} LR pixel; "
                          f"frames must be at least {scale}x{scale}")
    return hr
