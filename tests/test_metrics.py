"""PSNR / SSIM / quantisation / per-video aggregation against independent references, on real frames."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from scipy.signal import convolve2d
from skimage.metrics import structural_similarity

from stdvsr.errors import StdvsrError
from stdvsr.metrics import VideoMetrics, psnr, rgb_to_y, ssim, tensor_to_uint8


# --------------------------------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------------------------------

def ref_y(img: np.ndarray) -> np.ndarray:
    """MATLAB rgb2ycbcr's Y, written out per channel."""
    r, g, b = (img[..., c].astype(np.float64) / 255.0 for c in range(3))
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def ref_psnr(a: np.ndarray, b: np.ndarray, crop: int = 0, y: bool = True) -> float:
    if crop:
        a, b = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    if y:
        a, b = ref_y(a), ref_y(b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = np.sum(diff * diff) / diff.size
    return 10.0 * math.log10(255.0 * 255.0 / mse)


def ref_ssim_plane_convolve(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. SSIM with a 'valid' 11x11 Gaussian (sigma 1.5) window, via scipy.signal.convolve2d."""
    x = np.arange(11) - 5.0
    g = np.exp(-(x ** 2) / (2 * 1.5 ** 2))
    g /= g.sum()
    win = np.outer(g, g)
    f = lambda img: convolve2d(img, win, mode="valid")  # noqa: E731  (window is symmetric)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = f(a), f(b)
    s_aa = f(a * a) - mu_a ** 2
    s_bb = f(b * b) - mu_b ** 2
    s_ab = f(a * b) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return float(m.mean())


def ref_ssim_skimage(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=255))


def jpeg(img: np.ndarray, quality: int = 30) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def blur(img: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(img, (5, 5), 1.2)


@pytest.fixture(scope="module")
def pairs(carphone_frames, bikes_frames):
    """(GT, degraded) pairs of real frames: JPEG-compressed and blurred versions of themselves."""
    return [(carphone_frames[0], jpeg(carphone_frames[0])), (carphone_frames[5], blur(carphone_frames[5])),
            (bikes_frames[1], jpeg(bikes_frames[1], 60))]


# --------------------------------------------------------------------------------------------------------------
# Y, PSNR, SSIM
# --------------------------------------------------------------------------------------------------------------

def test_rgb_to_y(carphone_frames):
    f = carphone_frames[3]
    y = rgb_to_y(f)
    assert y.dtype == np.float64 and y.shape == f.shape[:2]
    assert np.abs(y - ref_y(f)).max() < 1e-12
    assert np.abs(rgb_to_y(f.astype(np.float64)) - y).max() == 0           # float 0..255 input too
    assert rgb_to_y(np.zeros((1, 1, 3), np.uint8))[0, 0] == pytest.approx(16.0, abs=1e-12)
    assert rgb_to_y(np.full((1, 1, 3), 255, np.uint8))[0, 0] == pytest.approx(235.0, abs=1e-12)


@pytest.mark.parametrize("crop", [0, 4])
@pytest.mark.parametrize("y", [True, False])
def test_psnr_matches_formula(pairs, crop, y):
    for gt, deg in pairs:
        ours = psnr(deg, gt, crop_border=crop, y_channel=y)
        ref = ref_psnr(deg, gt, crop, y)
        assert 20 < ours < 50
        assert abs(ours - ref) < 1e-10
        assert psnr(gt, deg, crop, y) == pytest.approx(ours, abs=1e-12)   # symmetric


def test_psnr_crop_changes_result(pairs):
    gt, deg = pairs[0]
    assert psnr(deg, gt, 0) != psnr(deg, gt, 4)
    assert psnr(deg, gt, 0, y_channel=True) != psnr(deg, gt, 0, y_channel=False)


@pytest.mark.parametrize("crop", [0, 4])
def test_ssim_y_matches_skimage_and_convolve(pairs, crop):
    for gt, deg in pairs:
        ours = ssim(deg, gt, crop_border=crop)
        g, d = (x[crop:-crop, crop:-crop] if crop else x for x in (gt, deg))
        ya, yb = ref_y(d), ref_y(g)
        assert 0.5 < ours < 1.0
        assert abs(ours - ref_ssim_skimage(ya, yb)) < 1e-12
        assert abs(ours - ref_ssim_plane_convolve(ya, yb)) < 1e-12


def test_ssim_rgb_is_mean_of_channels(pairs):
    gt, deg = pairs[1]
    ours = ssim(deg, gt, crop_border=4, y_channel=False)
    g, d = gt[4:-4, 4:-4].astype(np.float64), deg[4:-4, 4:-4].astype(np.float64)
    ref = np.mean([ref_ssim_plane_convolve(d[..., c], g[..., c]) for c in range(3)])
    sk = np.mean([ref_ssim_skimage(d[..., c], g[..., c]) for c in range(3)])
    assert abs(ours - ref) < 1e-12
    assert abs(ours - sk) < 1e-12


def test_identical_frames(carphone_frames):
    f = carphone_frames[2]
    assert psnr(f, f.copy()) == float("inf")
    assert psnr(f, f.copy(), 4, y_channel=False) == float("inf")
    assert ssim(f, f.copy()) == pytest.approx(1.0, abs=1e-12)
    assert ssim(f, f.copy(), 4, y_channel=False) == pytest.approx(1.0, abs=1e-12)


def test_shape_mismatch_and_bad_inputs(carphone_frames, bikes_frames):
    a, b = carphone_frames[0], bikes_frames[0]
    for fn in (psnr, ssim):
        with pytest.raises(StdvsrError) as info:
            fn(a, b)
        assert "(144, 176, 3)" in str(info.value) and "(272, 640, 3)" in str(info.value)
        with pytest.raises(StdvsrError, match="uint8"):
            fn(a.astype(np.float32), a.astype(np.float32))
        with pytest.raises(StdvsrError, match="crop_border"):
            fn(a, a, crop_border=72)
    with pytest.raises(StdvsrError, match="11x11"):
        ssim(a, a, crop_border=67)


# --------------------------------------------------------------------------------------------------------------
# Quantisation
# --------------------------------------------------------------------------------------------------------------

def test_tensor_to_uint8_rounding_and_clamping():
    vals = torch.tensor([-0.1, 0.0, 0.49 / 255, 0.51 / 255, 100.49 / 255, 100.51 / 255, 254.6 / 255, 1.0, 1.2],
                        dtype=torch.float64)
    expected = np.array([0, 0, 0, 1, 100, 101, 255, 255, 255], dtype=np.uint8)
    t = vals.expand(3, 1, -1).clone()                  # (3, 1, 9)
    out = tensor_to_uint8(t)
    assert out.dtype == np.uint8 and out.shape == (1, 9, 3)
    for c in range(3):
        assert np.array_equal(out[0, :, c], expected)
    assert np.array_equal(tensor_to_uint8(t.float()), out)
    assert np.array_equal(tensor_to_uint8(t[None]), out)            # leading batch dim of 1
    # exact halves ((k + 0.5) / 255 * 255 == k + 0.5 for these k in both dtypes) round half to even
    for dtype in (torch.float32, torch.float64):
        halves = torch.tensor([0.5, 1.5, 2.5, 3.5, 128.5, 253.5], dtype=dtype) / 255
        assert torch.equal(halves * 255, torch.tensor([0.5, 1.5, 2.5, 3.5, 128.5, 253.5], dtype=dtype))
        got = tensor_to_uint8(halves.expand(3, 1, -1).clone())[0, :, 0]
        assert got.tolist() == [0, 2, 2, 4, 128, 254]


def test_tensor_to_uint8_round_trips_real_frames(carphone_frames):
    f = carphone_frames[4]
    for dtype in (torch.float32, torch.float64):
        t = torch.from_numpy(f).permute(2, 0, 1).to(dtype) / 255
        assert np.array_equal(tensor_to_uint8(t), f)
    # channel order: channel 0 of the tensor is channel 0 (R) of the HWC array
    t = torch.zeros(3, 2, 2)
    t[0] = 1.0
    assert tensor_to_uint8(t)[..., 0].min() == 255 and tensor_to_uint8(t)[..., 1:].max() == 0


def test_tensor_to_uint8_bad_inputs():
    with pytest.raises(StdvsrError, match=r"\(3, H, W\)"):
        tensor_to_uint8(torch.zeros(8, 8, 3))
    with pytest.raises(StdvsrError, match="float"):
        tensor_to_uint8(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(StdvsrError, match="NaN"):
        tensor_to_uint8(torch.full((3, 2, 2), float("nan")))


# --------------------------------------------------------------------------------------------------------------
# VideoMetrics
# --------------------------------------------------------------------------------------------------------------

def test_video_metrics_aggregation(carphone_frames, bikes_frames):
    crop = 4
    vm = VideoMetrics(crop_border=crop)
    # clip A: three carphone frames given as float tensors (quantised inside); clip B: one bikes frame as uint8
    expected_a = {"psnr": [], "ssim": []}
    for i, q in zip(range(3), (20, 40, 70)):
        gt = carphone_frames[i]
        deg = jpeg(gt, q)
        sr = torch.from_numpy(deg).permute(2, 0, 1).double() / 255
        vm.add("carphone", i, sr, gt)
        expected_a["psnr"].append(ref_psnr(deg, gt, crop))
        g, d = gt[crop:-crop, crop:-crop], deg[crop:-crop, crop:-crop]
        expected_a["ssim"].append(ref_ssim_skimage(ref_y(d), ref_y(g)))
    gt_b = bikes_frames[0]
    deg_b = blur(gt_b)
    vm.add("bikes", "frame_0040", deg_b, gt_b)
    g, d = gt_b[crop:-crop, crop:-crop], deg_b[crop:-crop, crop:-crop]
    expected_b = {"psnr": ref_psnr(deg_b, gt_b, crop), "ssim": ref_ssim_skimage(ref_y(d), ref_y(g))}

    frames = vm.frame_rows()
    assert [(r["clip"], r["frame"]) for r in frames] == [("carphone", 0), ("carphone", 1), ("carphone", 2),
                                                        ("bikes", "frame_0040")]
    for r, p in zip(frames[:3], expected_a["psnr"]):
        assert abs(r["psnr"] - p) < 1e-10

    clips = vm.clip_rows()
    assert [(r["clip"], r["frames"]) for r in clips] == [("carphone", 3), ("bikes", 1)]
    mean_a = {m: sum(v) / 3 for m, v in expected_a.items()}
    for m in ("psnr", "ssim"):
        assert abs(clips[0][m] - mean_a[m]) < 1e-12
        assert abs(clips[1][m] - expected_b[m]) < 1e-12

    s = vm.summary()
    assert s["clips"] == 2 and s["frames"] == 4 and s["crop_border"] == crop and s["y_channel"] is True
    for m in ("psnr", "ssim"):
        by_clip = (mean_a[m] + expected_b[m]) / 2
        by_frame = (sum(expected_a[m]) + expected_b[m]) / 4
        assert abs(s[m] - by_clip) < 1e-12
        assert abs(by_clip - by_frame) > 1e-3          # the protocol actually matters on this data
    assert len(vm) == 4


def test_video_metrics_options_and_errors(carphone_frames, bikes_frames):
    f = carphone_frames[0]
    vm = VideoMetrics(metrics=["psnr"], y_channel=False)
    vm.add("c", 0, f, f)                                 # identical -> inf, and it propagates
    vm.add("c", 1, jpeg(carphone_frames[1]), carphone_frames[1])
    assert set(vm.frame_rows()[0]) == {"clip", "frame", "psnr"}
    assert vm.clip_rows()[0]["psnr"] == float("inf")
    assert vm.summary()["psnr"] == float("inf") and "ssim" not in vm.summary()
    with pytest.raises(StdvsrError, match="already scored"):
        vm.add("c", 0, f, f)
    with pytest.raises(StdvsrError) as info:
        vm.add("c", 2, f, bikes_frames[0])
    assert "(144, 176, 3)" in str(info.value) and "(272, 640, 3)" in str(info.value)
    with pytest.raises(StdvsrError, match="uint8"):
        vm.add("c", 3, f.astype(np.float32), f)
    with pytest.raises(StdvsrError, match="unknown metric"):
        VideoMetrics(metrics=("psnr", "lpips"))
    empty = VideoMetrics().summary()
    assert empty["clips"] == 0 and empty["frames"] == 0 and math.isnan(empty["psnr"])
