"""BD / BI degradations against independent numpy/scipy references, on real video frames."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from stdvsr.degradations import bd_downsample, bi_downsample, gaussian_kernel2d
from stdvsr.errors import StdvsrError


def to_chw(frames: list[np.ndarray] | np.ndarray, dtype=torch.float64) -> torch.Tensor:
    """uint8 HWC frame(s) -> float (..., 3, H, W) in [0, 1]."""
    arr = np.stack(frames) if isinstance(frames, list) else frames[None]
    t = torch.from_numpy(arr).permute(0, 3, 1, 2).to(dtype) / 255
    return t if isinstance(frames, list) else t[0]


# --------------------------------------------------------------------------------------------------------------
# Independent references (numpy / scipy only; nothing from stdvsr)
# --------------------------------------------------------------------------------------------------------------

def ref_kernel(size: int = 13, sigma: float = 1.6, truncate: float = 4.0) -> np.ndarray:
    """DUF's kernel: scipy's Gaussian filter applied to a centred delta (scipy's default truncate, 4 sigma)."""
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    return ndi.gaussian_filter(delta, sigma, truncate=truncate)


def ref_bd_plane(plane: np.ndarray, scale: int = 4, size: int = 13) -> np.ndarray:
    """BD on one H x W float64 plane: reflect pad, full correlation, stride, crop 2."""
    sigma = 0.4 * scale
    # x4: scipy's default 4-sigma truncation is exactly the 13-tap window; for smaller sigma make scipy keep
    # every tap of the window (stdvsr's kernel is the full-window Gaussian)
    k = ref_kernel(size, sigma, truncate=max(4.0, (size // 2) / sigma))
    pad = size // 2 + 2 * scale
    padded = np.pad(plane, pad, mode="reflect")
    corr = ndi.correlate(padded, k, mode="constant")     # centred correlation, same size as `padded`
    r = size // 2
    valid = corr[r:padded.shape[0] - r, r:padded.shape[1] - r]   # positions where the kernel fits
    strided = valid[::scale, ::scale]
    return strided[2:-2, 2:-2]


def ref_bd(hr: np.ndarray, scale: int = 4) -> np.ndarray:
    """BD on (..., C, H, W) float64 numpy, plane by plane."""
    flat = hr.reshape(-1, *hr.shape[-2:])
    out = np.stack([ref_bd_plane(p, scale) for p in flat])
    return out.reshape(*hr.shape[:-2], *out.shape[-2:])


def matlab_cubic(x: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax ** 3 - 2.5 * ax ** 2 + 1
    if ax <= 2:
        return -0.5 * ax ** 3 + 2.5 * ax ** 2 - 4 * ax + 2
    return 0.0


def matlab_contributions(in_len: int, scale: int) -> list[list[tuple[int, float]]]:
    """MATLAB imresize's contributions() for 1/scale with antialiasing, one output pixel at a time (0-based idx)."""
    out_len = math.ceil(in_len / scale)
    kernel_width = 4.0 * scale
    aux = list(range(1, in_len + 1)) + list(range(in_len, 0, -1))   # MATLAB's symmetric index map
    result = []
    for x in range(1, out_len + 1):
        u = x / (1 / scale) + 0.5 * (1 - 1 / (1 / scale))
        left = math.floor(u - kernel_width / 2)
        taps = math.ceil(kernel_width) + 2
        idx = [left + p for p in range(taps)]
        w = [(1 / scale) * matlab_cubic((1 / scale) * (u - j)) for j in idx]
        total = sum(w)
        result.append([(aux[(j - 1) % len(aux)] - 1, wj / total) for j, wj in zip(idx, w)])
    return result


def ref_imresize_plane(plane: np.ndarray, scale: int) -> np.ndarray:
    """imresize(plane, 1/scale, 'bicubic') on one float plane: rows first, then columns, pixel by pixel."""
    rows = matlab_contributions(plane.shape[0], scale)
    tmp = np.zeros((len(rows), plane.shape[1]))
    for i, contrib in enumerate(rows):
        for j, w in contrib:
            tmp[i] += w * plane[j]
    cols = matlab_contributions(plane.shape[1], scale)
    out = np.zeros((len(rows), len(cols)))
    for i, contrib in enumerate(cols):
        for j, w in contrib:
            out[:, i] += w * tmp[:, j]
    return out


def ref_bi(hr: np.ndarray, scale: int = 4) -> np.ndarray:
    flat = hr.reshape(-1, *hr.shape[-2:])
    out = np.stack([ref_imresize_plane(p, scale) for p in flat])
    return out.reshape(*hr.shape[:-2], *out.shape[-2:])


# --------------------------------------------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------------------------------------------

def test_gaussian_kernel_matches_scipy_delta():
    # DUF's exact recipe: 13 x 13 delta, scipy's default truncate (4 sigma -> radius 6 = the window's half width)
    assert np.abs(gaussian_kernel2d(13, 1.6).numpy() - ref_kernel(13, 1.6)).max() < 1e-15
    for size, sigma in [(13, 0.8), (9, 1.2), (21, 3.2), (3, 5.0)]:
        delta = np.zeros((size, size))
        delta[size // 2, size // 2] = 1
        ref = ndi.gaussian_filter(delta, sigma, truncate=(size // 2) / sigma)   # radius = half width
        ours = gaussian_kernel2d(size, sigma).numpy()
        assert ours.shape == (size, size)
        assert abs(ours.sum() - 1) < 1e-14
        assert np.abs(ours - ref).max() < 1e-15


def test_gaussian_kernel_dtype_and_bad_args():
    assert gaussian_kernel2d(dtype=torch.float32).dtype == torch.float32
    for bad in (12, 0, -3, 2.5):
        with pytest.raises(StdvsrError, match="odd"):
            gaussian_kernel2d(bad, 1.6)
    with pytest.raises(StdvsrError, match="sigma"):
        gaussian_kernel2d(13, 0.0)


# --------------------------------------------------------------------------------------------------------------
# BD
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("clip", ["carphone", "bikes"])
def test_bd_matches_scipy_reference_float64(clip, carphone_frames, bikes_frames):
    frames = {"carphone": carphone_frames[:3], "bikes": bikes_frames[:2]}[clip]
    hr = to_chw(frames)                                     # (T, 3, H, W) float64
    lr = bd_downsample(hr)
    ref = ref_bd(hr.numpy())
    t, _, h, w = hr.shape
    assert lr.shape == (t, 3, h // 4, w // 4) == ref.shape
    assert lr.dtype == torch.float64
    assert np.abs(lr.numpy() - ref).max() < 1e-10


def test_bd_float32_close_to_float64_reference(bikes_frames):
    hr64 = to_chw(bikes_frames[:2])
    lr32 = bd_downsample(hr64.float())
    assert lr32.dtype == torch.float32
    assert np.abs(lr32.double().numpy() - ref_bd(hr64.numpy())).max() < 1e-5


def test_bd_leading_dims(carphone_frames):
    clip = to_chw(carphone_frames[:4])                      # (4, 3, 144, 176)
    single = bd_downsample(clip[0])
    assert single.shape == (3, 36, 44)
    per_clip = bd_downsample(clip)
    assert per_clip.shape == (4, 3, 36, 44)
    batch = torch.stack([clip, clip.flip(0)])               # (2, 4, 3, 144, 176)
    per_batch = bd_downsample(batch)
    assert per_batch.shape == (2, 4, 3, 36, 44)
    assert (per_clip[0] - single).abs().max() < 1e-14
    assert (per_batch[0] - per_clip).abs().max() < 1e-14
    assert (per_batch[1] - per_clip.flip(0)).abs().max() < 1e-14


def test_bd_phase_zero(carphone_frames):
    """LR(i, j) is the blurred HR frame at HR pixel (4i, 4j), everywhere (not the block centre 4i + 1.5)."""
    hr = to_chw(carphone_frames[0])
    lr = bd_downsample(hr).numpy()
    hr_np = hr.numpy()
    # scipy 'mirror' == numpy/torch 'reflect' (edge pixel not repeated); truncate gives radius 6 -> 13 taps
    blurred = np.stack([ndi.gaussian_filter(p, 1.6, truncate=6 / 1.6, mode="mirror") for p in hr_np])
    assert np.abs(lr - blurred[:, ::4, ::4]).max() < 1e-10
    # an interior pixel, spelled out
    i, j = 17, 23
    assert abs(lr[1, i, j] - blurred[1, 4 * i, 4 * j]) < 1e-12
    # a different phase is clearly not what we produce
    assert np.abs(lr - blurred[:, 2::4, 2::4]).max() > 0.05


def test_bd_scale2(carphone_frames):
    hr = to_chw(carphone_frames[0])
    lr = bd_downsample(hr, scale=2)
    assert lr.shape == (3, 72, 88)
    assert np.abs(lr.numpy() - ref_bd(hr.numpy(), scale=2)).max() < 1e-10


def test_bd_constant_stays_constant():
    hr = torch.full((3, 32, 48), 0.37, dtype=torch.float64)
    assert torch.allclose(bd_downsample(hr), torch.full((3, 8, 12), 0.37, dtype=torch.float64), atol=1e-14)


# --------------------------------------------------------------------------------------------------------------
# BI
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("clip", ["carphone", "bikes"])
def test_bi_matches_loop_reference_float64(clip, carphone_frames, bikes_frames):
    frame = {"carphone": carphone_frames[2], "bikes": bikes_frames[1]}[clip]
    hr = to_chw(frame)
    lr = bi_downsample(hr)
    ref = ref_bi(hr.numpy())
    assert lr.shape == (3, hr.shape[1] // 4, hr.shape[2] // 4) == ref.shape
    assert lr.dtype == torch.float64
    assert np.abs(lr.numpy() - ref).max() < 1e-10


def test_bi_scales_2_and_3(carphone_frames):
    hr = to_chw(carphone_frames[0])
    lr = bi_downsample(hr, scale=2)
    assert np.abs(lr.numpy() - ref_bi(hr.numpy(), 2)).max() < 1e-10
    lr = bi_downsample(hr, scale=3, mod_crop=True)                 # 176 is not a multiple of 3
    assert lr.shape == (3, 48, 58)
    assert np.abs(lr.numpy() - ref_bi(hr[:, :, :174].numpy(), 3)).max() < 1e-10


def test_bi_float32_and_leading_dims(carphone_frames):
    clip64 = to_chw(carphone_frames[:3])
    lr64 = bi_downsample(clip64)
    lr32 = bi_downsample(clip64.float())
    assert lr32.dtype == torch.float32
    assert (lr32.double() - lr64).abs().max() < 1e-5
    batch = bi_downsample(torch.stack([clip64, clip64]))
    assert batch.shape == (2, 3, 3, 36, 44)
    assert torch.allclose(batch[1], lr64, atol=1e-14)
    assert torch.allclose(bi_downsample(clip64[1]), lr64[1], atol=1e-14)


def test_bi_constant_and_ramp():
    const = torch.full((3, 40, 56), 0.6, dtype=torch.float64)
    assert (bi_downsample(const) - 0.6).abs().max() < 1e-14
    # Linear ramp along x (value = 0-based column index): output column j sits at input column 4j + 1.5
    ramp = torch.arange(64, dtype=torch.float64).expand(3, 32, 64).clone()
    lr = bi_downsample(ramp)
    expected = 4 * torch.arange(16, dtype=torch.float64) + 1.5
    interior = slice(2, -2)           # away from the mirrored borders
    assert (lr[..., interior] - expected[interior]).abs().max() < 1e-12
    # rows of the ramp are constant, so every row is the same
    assert (lr - lr[:, :1, :]).abs().max() < 1e-12


def test_bi_interior_agrees_with_pillow(carphone_frames):
    """Pillow's antialiased bicubic uses the same kernel and centres; only its border handling differs."""
    Image = pytest.importorskip("PIL.Image")
    plane = carphone_frames[0][..., 1].astype(np.float32) / 255
    ours = bi_downsample(torch.from_numpy(plane.astype(np.float64))[None])[0].numpy()
    pil = np.asarray(Image.fromarray(plane, mode="F").resize((44, 36), Image.Resampling.BICUBIC))
    interior = (slice(3, -3), slice(3, -3))
    assert np.abs(ours[interior] - pil[interior]).max() < 1e-5


# --------------------------------------------------------------------------------------------------------------
# Errors, dtype, device
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [bd_downsample, bi_downsample])
def test_non_divisible_size_raises_and_mod_crop(fn, carphone_frames):
    hr = to_chw(carphone_frames[0])[:, :143, :175]
    with pytest.raises(StdvsrError) as info:
        fn(hr, scale=4)
    msg = str(info.value)
    assert "143x175" in msg and "scale 4" in msg and "mod_crop=True" in msg
    cropped = fn(hr, scale=4, mod_crop=True)
    assert cropped.shape == (3, 35, 43)
    assert torch.equal(cropped, fn(hr[:, :140, :172].contiguous(), scale=4))


@pytest.mark.parametrize("fn", [bd_downsample, bi_downsample])
def test_divisible_frames_unchanged_by_mod_crop(fn, carphone_frames):
    hr = to_chw(carphone_frames[0])
    assert torch.equal(fn(hr, mod_crop=True), fn(hr))


def test_bd_too_small_frame_raises():
    with pytest.raises(StdvsrError, match=r"at least 15.*at least 16"):
        bd_downsample(torch.rand(3, 12, 64, dtype=torch.float64))
    assert bd_downsample(torch.rand(3, 16, 16, dtype=torch.float64)).shape == (3, 4, 4)


def test_smaller_than_one_lr_pixel_raises():
    with pytest.raises(StdvsrError, match="smaller than one"):
        bi_downsample(torch.rand(3, 3, 40), mod_crop=True)


@pytest.mark.parametrize("fn", [bd_downsample, bi_downsample])
def test_bad_inputs_raise(fn):
    with pytest.raises(StdvsrError, match="float"):
        fn(torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(StdvsrError, match="channels-last"):
        fn(torch.zeros(32, 32, 3))
    with pytest.raises(StdvsrError, match="scale"):
        fn(torch.zeros(3, 32, 32), scale=0)
    with pytest.raises(StdvsrError, match="torch tensor"):
        fn(np.zeros((3, 32, 32)))


@pytest.mark.parametrize("fn", [bd_downsample, bi_downsample])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_preserved(fn, dtype, carphone_frames):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    hr = to_chw(carphone_frames[:2], dtype=dtype)
    cpu_out = fn(hr)
    for device in devices:
        out = fn(hr.to(device))
        assert out.dtype == dtype
        assert out.device.type == device
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        assert (out.cpu() - cpu_out).abs().max() < tol
