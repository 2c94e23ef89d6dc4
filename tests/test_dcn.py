"""Modulated deformable convolution (DCNv2) in pure PyTorch, checked against a slow loop written here.

Conventions under test (torchvision.ops.deform_conv2d's): offset channel ``g*2*K + 2*k`` is the row (dy)
offset and ``g*2*K + 2*k + 1`` the column (dx) offset of kernel point ``k`` (row-major over kh, kw) in
deformable group ``g``; mask channel ``g*K + k``; each of the four bilinear corners outside the image
contributes zero.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stdvsr.models.dcn import DCNv2Pack, modulated_deform_conv2d


# ----------------------------------------------------------------------------------------------------------
# Independent reference: direct loops, hand-written bilinear sampling with per-corner zero padding.
# ----------------------------------------------------------------------------------------------------------


def _bilinear_zero_pad(img: np.ndarray, y: float, x: float) -> np.ndarray:
    """Sample ``img`` (C, H, W) at real position (y, x); corners outside the image count as zero."""
    _, height, width = img.shape
    y0 = math.floor(y)
    x0 = math.floor(x)
    ly = y - y0
    lx = x - x0
    out = np.zeros(img.shape[0], dtype=np.float64)
    for yy, wy in ((y0, 1.0 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1.0 - lx), (x0 + 1, lx)):
            if 0 <= yy < height and 0 <= xx < width:
                out += wy * wx * img[:, yy, xx]
    return out


def _reference_mdcn(x, offset, mask, weight, bias, stride, padding, dilation, groups):
    x = x.detach().numpy()
    offset = offset.detach().numpy()
    mask = mask.detach().numpy()
    weight = weight.detach().numpy()
    batch, channels, _, _ = x.shape
    cout, _, kh, kw = weight.shape
    n_points = kh * kw
    ho, wo = offset.shape[2], offset.shape[3]
    cpg = channels // groups
    out = np.zeros((batch, cout, ho, wo), dtype=np.float64)
    for b in range(batch):
        for i in range(ho):
            for j in range(wo):
                # columns[c, ki, kj]: the modulated sample feeding weight[:, c, ki, kj]
                columns = np.zeros((channels, kh, kw), dtype=np.float64)
                for g in range(groups):
                    for ki in range(kh):
                        for kj in range(kw):
                            k = ki * kw + kj
                            dy = offset[b, g * 2 * n_points + 2 * k, i, j]
                            dx = offset[b, g * 2 * n_points + 2 * k + 1, i, j]
                            m = mask[b, g * n_points + k, i, j]
                            py = i * stride - padding + ki * dilation + dy
                            px = j * stride - padding + kj * dilation + dx
                            sample = _bilinear_zero_pad(x[b, g * cpg:(g + 1) * cpg], py, px)
                            columns[g * cpg:(g + 1) * cpg, ki, kj] = m * sample
                out[b, :, i, j] = np.einsum("ockl,ckl->o", weight, columns)
    if bias is not None:
        out += bias.detach().numpy()[None, :, None, None]
    return torch.from_numpy(out)


def _out_size(size, k, stride, padding, dilation):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _random_case(gen, batch, channels, height, width, groups, cout, k, stride, padding, dilation, fractional=False):
    ho = _out_size(height, k, stride, padding, dilation)
    wo = _out_size(width, k, stride, padding, dilation)
    n_points = k * k
    x = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    weight = torch.randn(cout, channels // groups * groups, k, k, generator=gen, dtype=torch.float64)
    bias = torch.randn(cout, generator=gen, dtype=torch.float64)
    shape = (batch, 2 * groups * n_points, ho, wo)
    if fractional:
        # integer part in [-2, 2] plus a fraction well away from 0 and 1: never on a grid line (gradcheck-safe)
        offset = torch.randint(-2, 3, shape, generator=gen).double()
        offset = offset + 0.2 + 0.6 * torch.rand(shape, generator=gen, dtype=torch.float64)
    else:
        # real-valued offsets up to ~3 px, a third of them snapped to integers (exact-grid samples)
        offset = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * 3.2
        snap = torch.rand(shape, generator=gen) < 0.33
        offset = torch.where(snap, offset.round(), offset)
    mask = torch.rand(batch, groups * n_points, ho, wo, generator=gen, dtype=torch.float64)
    return x, offset, mask, weight, bias


CASES = [
    # stride, padding, dilation
    pytest.param(1, 1, 1, id="s1-p1-d1"),
    pytest.param(2, 1, 1, id="s2-p1-d1"),
    pytest.param(1, 2, 2, id="s1-p2-d2"),
    pytest.param(2, 0, 2, id="s2-p0-d2"),
]


@pytest.mark.parametrize("stride,padding,dilation", CASES)
def test_matches_slow_reference_loop(stride, padding, dilation):
    gen = torch.Generator().manual_seed(1000 + 10 * stride + padding + 100 * dilation)
    x, offset, mask, weight, bias = _random_case(gen, 2, 4, 5, 6, 2, 3, 3, stride, padding, dilation)
    # the case really exercises integer positions and samples that fall (partly) outside the image
    assert (offset == offset.round()).any()
    got = modulated_deform_conv2d(x, offset, mask, weight, bias, stride=stride, padding=padding,
                                  dilation=dilation, deformable_groups=2)
    want = _reference_mdcn(x, offset, mask, weight, bias, stride, padding, dilation, 2)
    assert got.shape == want.shape
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_matches_reference_without_bias_single_group_and_far_outside_samples():
    gen = torch.Generator().manual_seed(7)
    x, offset, mask, weight, _ = _random_case(gen, 1, 3, 4, 5, 1, 2, 3, 1, 1, 1)
    # kernel point 0 lands far above the image, kernel point 1 far to the right
    offset[:, 0] = -9.0
    offset[:, 3] = 7.5
    # centre kernel point (k=4 sits at (i, j) itself): dy = -(i+1), dx = W - j -> exactly row -1 / column W
    rows = torch.arange(4, dtype=torch.float64).view(4, 1)
    cols = torch.arange(5, dtype=torch.float64).view(1, 5)
    offset[:, 8] = -(rows + 1)
    offset[:, 9] = 5 - cols
    # kernel point 5: exactly one row up and on the last column (inside; pure integer sample)
    offset[:, 10] = -1.0
    got = modulated_deform_conv2d(x, offset, mask, weight, None, stride=1, padding=1, dilation=1,
                                  deformable_groups=1)
    want = _reference_mdcn(x, offset, mask, weight, None, 1, 1, 1, 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_each_deformable_group_uses_its_own_offsets_and_mask():
    """Group g's offset/mask only touch input channels of group g (channel split into G equal slices)."""
    gen = torch.Generator().manual_seed(3)
    x, offset, mask, weight, bias = _random_case(gen, 1, 6, 5, 5, 3, 2, 3, 1, 1, 1)
    base = modulated_deform_conv2d(x, offset, mask, weight, bias, padding=1, deformable_groups=3)
    k2 = 9
    # perturb group 1's offsets and mask: output changes, but equals the result with group-1 input zeroed
    # plus group-1-only contribution computed separately
    offset2 = offset.clone()
    offset2[:, 2 * k2:4 * k2] += 0.77
    mask2 = mask.clone()
    mask2[:, k2:2 * k2] = mask2[:, k2:2 * k2].flip(1)
    changed = modulated_deform_conv2d(x, offset2, mask2, weight, bias, padding=1, deformable_groups=3)
    assert not torch.allclose(base, changed)
    x_no_g1 = x.clone()
    x_no_g1[:, 2:4] = 0
    a = modulated_deform_conv2d(x_no_g1, offset, mask, weight, bias, padding=1, deformable_groups=3)
    b = modulated_deform_conv2d(x_no_g1, offset2, mask2, weight, bias, padding=1, deformable_groups=3)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_backward_gradcheck():
    gen = torch.Generator().manual_seed(11)
    x, offset, mask, weight, bias = _random_case(gen, 1, 4, 4, 4, 2, 2, 3, 1, 1, 1, fractional=True)
    inputs = tuple(t.clone().requires_grad_(True) for t in (x, offset, mask, weight, bias))

    def fn(x_, offset_, mask_, weight_, bias_):
        return modulated_deform_conv2d(x_, offset_, mask_, weight_, bias_, stride=1, padding=1, dilation=1,
                                       deformable_groups=2)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_backward_gradcheck_strided_dilated():
    gen = torch.Generator().manual_seed(12)
    x, offset, mask, weight, bias = _random_case(gen, 2, 2, 5, 5, 1, 2, 3, 2, 2, 2, fractional=True)
    inputs = tuple(t.clone().requires_grad_(True) for t in (x, offset, mask, weight, bias))

    def fn(x_, offset_, mask_, weight_, bias_):
        return modulated_deform_conv2d(x_, offset_, mask_, weight_, bias_, stride=2, padding=2, dilation=2,
                                       deformable_groups=1)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("stride,padding,dilation", CASES)
def test_zero_offset_unit_mask_is_plain_conv2d(stride, padding, dilation):
    gen = torch.Generator().manual_seed(5)
    groups = 2
    x = torch.randn(2, 4, 7, 6, generator=gen, dtype=torch.float64)
    weight = torch.randn(3, 4, 3, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(3, generator=gen, dtype=torch.float64)
    ho = _out_size(7, 3, stride, padding, dilation)
    wo = _out_size(6, 3, stride, padding, dilation)
    offset = torch.zeros(2, 2 * groups * 9, ho, wo, dtype=torch.float64)
    mask = torch.ones(2, groups * 9, ho, wo, dtype=torch.float64)
    got = modulated_deform_conv2d(x, offset, mask, weight, bias, stride=stride, padding=padding,
                                  dilation=dilation, deformable_groups=groups)
    want = F.conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # and without bias
    got_nb = modulated_deform_conv2d(x, offset, mask, weight, None, stride=stride, padding=padding,
                                     dilation=dilation, deformable_groups=groups)
    torch.testing.assert_close(got_nb, F.conv2d(x, weight, None, stride=stride, padding=padding,
                                                dilation=dilation), rtol=0, atol=1e-12)


def test_float32_matches_float64():
    gen = torch.Generator().manual_seed(21)
    x, offset, mask, weight, bias = _random_case(gen, 2, 8, 9, 7, 4, 5, 3, 1, 1, 1)
    got32 = modulated_deform_conv2d(x.float(), offset.float(), mask.float(), weight.float(), bias.float(),
                                    padding=1, deformable_groups=4)
    got64 = modulated_deform_conv2d(x, offset, mask, weight, bias, padding=1, deformable_groups=4)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), got64, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# DCNv2Pack
# ----------------------------------------------------------------------------------------------------------


def _pack(in_ch, out_ch, groups, **kw):
    torch.manual_seed(0)
    return DCNv2Pack(in_ch, out_ch, 3, padding=1, deformable_groups=groups, **kw).double()


def test_pack_parameters_and_zero_init():
    pack = DCNv2Pack(16, 8, 3, padding=1, deformable_groups=4)
    assert pack.weight.shape == (8, 16, 3, 3)
    assert pack.bias.shape == (8,)
    assert isinstance(pack.conv_offset, torch.nn.Conv2d)
    assert pack.conv_offset.weight.shape == (4 * 3 * 9, 16, 3, 3)
    assert pack.conv_offset.bias.shape == (4 * 3 * 9,)
    assert torch.count_nonzero(pack.conv_offset.weight) == 0
    assert torch.count_nonzero(pack.conv_offset.bias) == 0
    assert set(dict(pack.named_parameters())) == {"weight", "bias", "conv_offset.weight", "conv_offset.bias"}
    # defaults: 8 deformable groups
    assert DCNv2Pack(8, 8).conv_offset.out_channels == 8 * 27


def test_pack_zero_offset_is_half_conv_plus_bias():
    gen = torch.Generator().manual_seed(1)
    pack = _pack(8, 6, 2)
    with torch.no_grad():
        pack.bias.copy_(torch.randn(6, generator=gen, dtype=torch.float64))
    x = torch.randn(2, 8, 5, 7, generator=gen, dtype=torch.float64)
    feat = torch.randn(2, 8, 5, 7, generator=gen, dtype=torch.float64)
    got = pack(x, feat)
    want = 0.5 * F.conv2d(x, pack.weight, None, padding=1) + pack.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def _shift(x, dy, dx):
    """out[..., i, j] = x[..., i + dy, j + dx], zero where that falls outside (apply to the padded input)."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    src_i = slice(max(dy, 0), h + min(dy, 0))
    dst_i = slice(max(-dy, 0), h + min(-dy, 0))
    src_j = slice(max(dx, 0), w + min(dx, 0))
    dst_j = slice(max(-dx, 0), w + min(-dx, 0))
    out[..., dst_i, dst_j] = x[..., src_i, src_j]
    return out


def test_pack_offset_layout_dx_one_everywhere():
    """conv_offset output = (o1, o2, mask logits); offset = cat(o1, o2) in interleaved (dy, dx) pairs."""
    gen = torch.Generator().manual_seed(2)
    groups, k2 = 2, 9
    pack = _pack(4, 3, groups)
    with torch.no_grad():
        b = torch.zeros(groups * 3 * k2, dtype=torch.float64)
        b[1:2 * groups * k2:2] = 1.0  # every dx = 1, every dy = 0
        b[2 * groups * k2:] = 40.0  # mask = sigmoid(40) == 1 - 4e-18
        pack.conv_offset.bias.copy_(b)
        pack.bias.copy_(torch.randn(3, generator=gen, dtype=torch.float64))
    x = torch.randn(1, 4, 5, 6, generator=gen, dtype=torch.float64)
    feat = torch.randn(1, 4, 5, 6, generator=gen, dtype=torch.float64)
    got = pack(x, feat)
    # deformable sampling happens on the zero-padded plane: pad first, shift, then an unpadded conv
    want = F.conv2d(_shift(F.pad(x, (1, 1, 1, 1)), 0, 1), pack.weight, pack.bias, padding=0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_pack_offset_layout_per_group_dy_and_dx():
    """Group 0 samples one row down (dy=+1), group 1 one column left (dx=-1)."""
    gen = torch.Generator().manual_seed(4)
    groups, k2 = 2, 9
    pack = _pack(4, 3, groups)
    with torch.no_grad():
        b = torch.zeros(groups * 3 * k2, dtype=torch.float64)
        b[0:2 * k2:2] = 1.0  # group 0: dy = +1
        b[2 * k2 + 1:4 * k2:2] = -1.0  # group 1: dx = -1
        b[2 * groups * k2:] = 40.0
        pack.conv_offset.bias.copy_(b)
    x = torch.randn(2, 4, 6, 5, generator=gen, dtype=torch.float64)
    got = pack(x, torch.zeros_like(x))
    xp = F.pad(x, (1, 1, 1, 1))
    shifted = torch.cat([_shift(xp[:, :2], 1, 0), _shift(xp[:, 2:], 0, -1)], dim=1)
    want = F.conv2d(shifted, pack.weight, pack.bias, padding=0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_pack_mask_layout_group_major_kernel_point_minor():
    """Mask channel g*K + k: a very negative logit there switches off exactly kernel point k of group g."""
    gen = torch.Generator().manual_seed(6)
    groups, k2 = 2, 9
    pack = _pack(4, 3, groups)
    g, ki, kj = 1, 0, 2
    with torch.no_grad():
        b = torch.full((groups * 3 * k2,), 0.0, dtype=torch.float64)
        b[2 * groups * k2:] = 40.0
        b[2 * groups * k2 + g * k2 + ki * 3 + kj] = -80.0
        pack.conv_offset.bias.copy_(b)
    x = torch.randn(1, 4, 5, 5, generator=gen, dtype=torch.float64)
    got = pack(x, x)
    w = pack.weight.detach().clone()
    w[:, 2 * g:2 * g + 2, ki, kj] = 0
    want = F.conv2d(x, w, pack.bias, padding=1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_pack_offsets_come_from_feat_through_conv_offset():
    gen = torch.Generator().manual_seed(8)
    pack = _pack(4, 3, 2)
    with torch.no_grad():
        pack.conv_offset.weight.copy_(0.3 * torch.randn(pack.conv_offset.weight.shape, generator=gen,
                                                         dtype=torch.float64))
        pack.conv_offset.bias.copy_(0.3 * torch.randn(pack.conv_offset.bias.shape, generator=gen,
                                                       dtype=torch.float64))
    x = torch.randn(1, 4, 5, 6, generator=gen, dtype=torch.float64)
    feat = torch.randn(1, 4, 5, 6, generator=gen, dtype=torch.float64)
    out = pack.conv_offset(feat)
    o1, o2, m = torch.chunk(out, 3, dim=1)
    want = _reference_mdcn(x, torch.cat([o1, o2], 1), torch.sigmoid(m), pack.weight, pack.bias, 1, 1, 1, 2)
    torch.testing.assert_close(pack(x, feat), want, rtol=0, atol=1e-10)


def test_against_torchvision_if_available():
    try:
        import torchvision.ops  # noqa: F401
    except Exception as exc:  # missing, or built for another torch
        pytest.skip(f"torchvision.ops not importable: {type(exc).__name__}: {exc}")
    from torchvision.ops import deform_conv2d

    gen = torch.Generator().manual_seed(9)
    for stride, padding, dilation in ((1, 1, 1), (2, 1, 1), (1, 2, 2)):
        x, offset, mask, weight, bias = _random_case(gen, 2, 4, 6, 7, 2, 3, 3, stride, padding, dilation)
        got = modulated_deform_conv2d(x, offset, mask, weight, bias, stride=stride, padding=padding,
                                      dilation=dilation, deformable_groups=2)
        want = deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation,
                             mask=mask)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
