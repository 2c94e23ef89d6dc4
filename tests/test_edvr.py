"""EDVR: BasicSR-identical state dict (keys and shapes, as data), parameter counts, the forward_features
contract, the residual base, presets and build_model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stdvsr.errors import StdvsrError
from stdvsr.models import build_model, list_models
from stdvsr.models.edvr import EDVR


# ----------------------------------------------------------------------------------------------------------
# The expected state dict, written out from BasicSR's definition (basicsr/archs/edvr_arch.py, arch_util.py).
# ----------------------------------------------------------------------------------------------------------


def expected_state_shapes(num_feat=64, num_frame=5, deformable_groups=8, num_extract_block=5,
                          num_reconstruct_block=10, with_tsa=True, with_predeblur=False, hr_in=False):
    nf, t, g = num_feat, num_frame, deformable_groups
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, cout, cin, k):
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        shapes[f"{name}.bias"] = (cout,)

    def resblock(name):
        conv(f"{name}.conv1", nf, nf, 3)
        conv(f"{name}.conv2", nf, nf, 3)

    def dcn_pack(name):
        shapes[f"{name}.weight"] = (nf, nf, 3, 3)
        shapes[f"{name}.bias"] = (nf,)
        conv(f"{name}.conv_offset", g * 3 * 9, nf, 3)

    if with_predeblur:
        conv("predeblur.conv_first", nf, 3, 3)
        if hr_in:
            conv("predeblur.stride_conv_hr1", nf, nf, 3)
            conv("predeblur.stride_conv_hr2", nf, nf, 3)
        conv("predeblur.stride_conv_l2", nf, nf, 3)
        conv("predeblur.stride_conv_l3", nf, nf, 3)
        for block in ["resblock_l3", "resblock_l2_1", "resblock_l2_2"] + [f"resblock_l1.{i}" for i in range(5)]:
            resblock(f"predeblur.{block}")
        conv("conv_1x1", nf, nf, 1)
    else:
        conv("conv_first", nf, 3, 3)

    for i in range(num_extract_block):
        resblock(f"feature_extraction.{i}")
    for name in ("conv_l2_1", "conv_l2_2", "conv_l3_1", "conv_l3_2"):
        conv(name, nf, nf, 3)

    for level in ("l3", "l2", "l1"):
        conv(f"pcd_align.offset_conv1.{level}", nf, 2 * nf, 3)
        conv(f"pcd_align.offset_conv2.{level}", nf, nf if level == "l3" else 2 * nf, 3)
        if level != "l3":
            conv(f"pcd_align.offset_conv3.{level}", nf, nf, 3)
            conv(f"pcd_align.feat_conv.{level}", nf, 2 * nf, 3)
        dcn_pack(f"pcd_align.dcn_pack.{level}")
    conv("pcd_align.cas_offset_conv1", nf, 2 * nf, 3)
    conv("pcd_align.cas_offset_conv2", nf, nf, 3)
    dcn_pack("pcd_align.cas_dcnpack")

    if with_tsa:
        conv("fusion.temporal_attn1", nf, nf, 3)
        conv("fusion.temporal_attn2", nf, nf, 3)
        conv("fusion.feat_fusion", nf, t * nf, 1)
        conv("fusion.spatial_attn1", nf, t * nf, 1)
        conv("fusion.spatial_attn2", nf, 2 * nf, 1)
        conv("fusion.spatial_attn3", nf, nf, 3)
        conv("fusion.spatial_attn4", nf, nf, 1)
        conv("fusion.spatial_attn5", nf, nf, 3)
        conv("fusion.spatial_attn_l1", nf, nf, 1)
        conv("fusion.spatial_attn_l2", nf, 2 * nf, 3)
        conv("fusion.spatial_attn_l3", nf, nf, 3)
        conv("fusion.spatial_attn_add1", nf, nf, 1)
        conv("fusion.spatial_attn_add2", nf, nf, 1)
    else:
        conv("fusion", nf, t * nf, 1)

    for i in range(num_reconstruct_block):
        resblock(f"reconstruction.{i}")
    conv("upconv1", 4 * nf, nf, 3)
    conv("upconv2", 64 * 4, nf, 3)  # the HR head is 64 channels whatever num_feat is
    conv("conv_hr", 64, 64, 3)
    conv("conv_last", 3, 64, 3)
    return shapes


def _count(shapes: dict) -> int:
    return sum(math.prod(s) for s in shapes.values())


def _actual_shapes(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _assert_same_table(model, expected):
    actual = _actual_shapes(model)
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    assert not missing and not unexpected, f"missing {missing[:8]} / unexpected {unexpected[:8]}"
    wrong = {k: (actual[k], expected[k]) for k in expected if actual[k] != expected[k]}
    assert not wrong, f"shape mismatches (got, want): {wrong}"
    # parameters == state dict (no stray buffers) and all trainable
    assert set(dict(model.named_parameters())) == set(expected)
    assert sum(p.numel() for p in model.parameters()) == _count(expected)


EDVR_M = dict(num_feat=64, num_frame=5, deformable_groups=8, num_extract_block=5, num_reconstruct_block=10)
EDVR_L = dict(num_feat=128, num_frame=7, deformable_groups=8, num_extract_block=5, num_reconstruct_block=40)


@pytest.mark.parametrize("preset,config", [("edvr-m", EDVR_M), ("edvr-l", EDVR_L)])
def test_state_dict_keys_and_shapes_match_basicsr(preset, config):
    expected = expected_state_shapes(**config)
    _assert_same_table(EDVR(**config), expected)
    _assert_same_table(build_model(preset), expected)


def test_state_dict_without_tsa():
    expected = expected_state_shapes(**EDVR_M, with_tsa=False)
    assert expected["fusion.weight"] == (64, 5 * 64, 1, 1)
    assert not any(k.startswith("fusion.") and k != "fusion.weight" and k != "fusion.bias" for k in expected)
    _assert_same_table(EDVR(**EDVR_M, with_tsa=False), expected)


@pytest.mark.parametrize("hr_in", [False, True])
def test_state_dict_with_predeblur(hr_in):
    expected = expected_state_shapes(**EDVR_M, with_predeblur=True, hr_in=hr_in)
    assert "conv_first.weight" not in expected
    assert ("predeblur.stride_conv_hr1.weight" in expected) == hr_in
    _assert_same_table(EDVR(**EDVR_M, with_predeblur=True, hr_in=hr_in), expected)


def test_small_config_table_uses_every_argument():
    config = dict(num_feat=16, num_frame=3, deformable_groups=2, num_extract_block=1, num_reconstruct_block=2)
    _assert_same_table(EDVR(**config), expected_state_shapes(**config))


def test_parameter_counts():
    n_m = sum(p.numel() for p in build_model("edvr-m").parameters())
    n_l = sum(p.numel() for p in build_model("edvr-l").parameters())
    # BasicSR's definition, counted from the table above: EDVR-M 3,300,131; EDVR-L (7 frames) 20,699,363
    assert _count(expected_state_shapes(**EDVR_M)) == 3_300_131
    assert _count(expected_state_shapes(**EDVR_L)) == 20_699_363
    assert round(n_m / 1e6, 3) == 3.300, n_m
    assert round(n_l / 1e6, 3) == 20.699, n_l
    assert n_m == 3_300_131
    assert n_l == 20_699_363


# ----------------------------------------------------------------------------------------------------------
# Behaviour
# ----------------------------------------------------------------------------------------------------------


def _lq(b, t, h, w, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, h, w, generator=gen)


def _perturb(model, seed=0, scale=0.01):
    """Zero-initialised parts (DCN offset branches, biases) get small noise so that gradients reach everything."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def test_edvr_s_forward_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = _perturb(build_model("edvr-s"))
    model.train()
    t = model.num_frame
    lq = _lq(2, t, 12, 20)
    out = model.forward_features(lq)
    assert out.sr.shape == (2, 3, 48, 80)
    assert out.feat_sr.shape == (2, 64, 48, 80)
    assert out.feat_lr.shape[0] == 2 and out.feat_lr.shape[2:] == (12, 20)
    for tensor in out:
        assert torch.isfinite(tensor).all()
    gen = torch.Generator().manual_seed(1)
    loss = ((out.sr - F.interpolate(lq[:, model.center_frame_idx], scale_factor=4, mode="bicubic")) ** 2).mean()
    loss = loss + (out.feat_sr * torch.randn(out.feat_sr.shape, generator=gen)).mean()
    loss = loss + (out.feat_lr * torch.randn(out.feat_lr.shape, generator=gen)).mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"no gradient for {no_grad}"
    not_finite = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not not_finite, f"non-finite gradient for {not_finite}"
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero, f"all-zero gradient for {zero} (module not connected to the output?)"


def test_edvr_m_forward_shape_small_input():
    torch.manual_seed(0)
    model = build_model("edvr-m").eval()
    assert model.scale == 4 and model.num_frame == 5 and model.center_frame_idx == 2
    with torch.no_grad():
        sr = model(_lq(1, 5, 16, 16))
    assert sr.shape == (1, 3, 64, 64)
    assert torch.isfinite(sr).all()


def test_feat_sr_is_conv_last_input_and_feat_lr_is_reconstruction_output():
    torch.manual_seed(0)
    model = _perturb(EDVR(num_feat=16, num_frame=3, deformable_groups=2, num_extract_block=1,
                          num_reconstruct_block=2)).eval()
    captured = {}
    h1 = model.conv_last.register_forward_pre_hook(lambda m, args: captured.__setitem__("conv_last_in",
                                                                                         args[0].clone()))
    h2 = model.reconstruction.register_forward_hook(lambda m, args, out: captured.__setitem__("recon_out",
                                                                                               out.clone()))
    try:
        with torch.no_grad():
            out = model.forward_features(_lq(2, 3, 8, 12))
    finally:
        h1.remove()
        h2.remove()
    assert out.feat_sr.shape == (2, 64, 32, 48)
    assert out.feat_lr.shape == (2, 16, 8, 12)
    assert torch.equal(out.feat_sr, captured["conv_last_in"])
    assert torch.equal(out.feat_lr, captured["recon_out"])
    # and sr really is conv_last(feat_sr) + the bilinear x4 centre frame
    lq = _lq(2, 3, 8, 12)
    base = F.interpolate(lq[:, 1], scale_factor=4, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.sr, model.conv_last(out.feat_sr) + base)


def test_forward_features_is_a_named_tuple():
    model = EDVR(num_feat=8, num_frame=3, deformable_groups=1, num_extract_block=1, num_reconstruct_block=1).eval()
    with torch.no_grad():
        out = model.forward_features(_lq(1, 3, 8, 8))
    assert out._fields == ("sr", "feat_sr", "feat_lr")
    sr, feat_sr, feat_lr = out
    assert sr is out.sr and feat_sr is out.feat_sr and feat_lr is out.feat_lr


@pytest.mark.parametrize("center", [None, 0])
def test_residual_base_is_bilinear_upsampled_centre_frame(center):
    torch.manual_seed(0)
    model = _perturb(EDVR(num_feat=16, num_frame=3, deformable_groups=2, num_extract_block=1,
                          num_reconstruct_block=1, center_frame_idx=center)).eval()
    idx = 1 if center is None else center
    assert model.center_frame_idx == idx
    with torch.no_grad():
        model.conv_last.weight.zero_()
        model.conv_last.bias.zero_()
        lq = _lq(2, 3, 8, 12, seed=3)
        sr = model(lq)
    want = F.interpolate(lq[:, idx], scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.equal(sr, want)
    # the other frames are not the base
    other = F.interpolate(lq[:, 2], scale_factor=4, mode="bilinear", align_corners=False)
    assert not torch.allclose(sr, other)


def test_forward_equals_forward_features_sr_and_is_deterministic():
    torch.manual_seed(0)
    model = _perturb(build_model("edvr-s")).eval()
    lq = _lq(1, model.num_frame, 8, 12, seed=5)
    with torch.no_grad():
        a = model(lq)
        b = model(lq)
        c = model.forward_features(lq).sr
    assert torch.equal(a, b)
    assert torch.equal(a, c)


def test_batch_items_are_independent():
    """Batched PCD/TSA must not mix samples: each batch item alone gives the same result."""
    torch.manual_seed(0)
    model = _perturb(EDVR(num_feat=16, num_frame=3, deformable_groups=2, num_extract_block=1,
                          num_reconstruct_block=1), scale=0.05).eval()
    lq = _lq(3, 3, 8, 8, seed=9)
    with torch.no_grad():
        together = model(lq)
        alone = torch.cat([model(lq[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_without_tsa_forward():
    torch.manual_seed(0)
    model = _perturb(EDVR(num_feat=16, num_frame=3, deformable_groups=2, num_extract_block=1,
                          num_reconstruct_block=1, with_tsa=False)).eval()
    with torch.no_grad():
        out = model.forward_features(_lq(1, 3, 8, 8))
    assert out.sr.shape == (1, 3, 32, 32)
    assert out.feat_lr.shape == (1, 16, 8, 8)
    assert torch.isfinite(out.sr).all()


def test_hr_in_variant_keeps_size():
    torch.manual_seed(0)
    model = EDVR(num_feat=16, num_frame=5, deformable_groups=2, num_extract_block=1, num_reconstruct_block=1,
                 hr_in=True, with_predeblur=True).eval()
    assert model.scale == 1
    lq = _lq(1, 5, 32, 32)
    with torch.no_grad():
        out = model.forward_features(lq)
    assert out.sr.shape == (1, 3, 32, 32)
    assert out.feat_lr.shape == (1, 16, 8, 8)  # two stride-2 convs bring HR input to LR size
    assert out.feat_sr.shape == (1, 64, 32, 32)
    assert torch.isfinite(out.sr).all()
    # residual base is the centre frame itself
    with torch.no_grad():
        model.conv_last.weight.zero_()
        model.conv_last.bias.zero_()
        assert torch.equal(model(lq), lq[:, 2])


def test_predeblur_lr_variant_forward():
    torch.manual_seed(0)
    model = EDVR(num_feat=16, num_frame=3, deformable_groups=2, num_extract_block=1, num_reconstruct_block=1,
                 with_predeblur=True).eval()
    assert model.scale == 4
    with torch.no_grad():
        sr = model(_lq(1, 3, 8, 8))
    assert sr.shape == (1, 3, 32, 32)


# ----------------------------------------------------------------------------------------------------------
# build_model / list_models
# ----------------------------------------------------------------------------------------------------------


def test_list_models_names():
    names = list_models()
    for name in ("edvr", "edvr-m", "edvr-l", "edvr-s"):
        assert name in names


def test_unknown_model_name():
    with pytest.raises(StdvsrError) as info:
        build_model("edvr-xxl")
    message = str(info.value)
    assert "edvr-xxl" in message
    assert "edvr-m" in message


def test_kwargs_override_preset():
    model = build_model("edvr-s", num_frame=5)
    assert model.num_frame == 5
    assert model.center_frame_idx == 2
    base = build_model("edvr-s")
    # everything else stays the preset's
    assert _actual_shapes(model)["conv_first.weight"] == _actual_shapes(base)["conv_first.weight"]
    plain = build_model("edvr", num_feat=16, num_frame=3, deformable_groups=2, num_extract_block=1,
                        num_reconstruct_block=1)
    assert isinstance(plain, EDVR) and plain.num_frame == 3
    assert build_model("edvr-m", with_tsa=False).state_dict()["fusion.weight"].shape == (64, 320, 1, 1)


def test_edvr_presets_match_basicsr_configs():
    m = build_model("edvr-m")
    assert (m.num_frame, m.center_frame_idx, m.scale) == (5, 2, 4)
    assert "fusion.temporal_attn1.weight" in m.state_dict()  # with TSA
    ell = build_model("edvr-l")
    assert (ell.num_frame, ell.center_frame_idx) == (7, 3)
    keys = ell.state_dict()
    assert keys["conv_first.weight"].shape == (128, 3, 3, 3)
    assert "reconstruction.39.conv2.weight" in keys and "reconstruction.40.conv1.weight" not in keys


def test_forward_windows_shares_frame_features_and_matches_per_window_forward():
    from stdvsr.data import window_indices
    from stdvsr.models import build_model

    torch.manual_seed(0)
    model = build_model("edvr", num_feat=16, num_frame=5, deformable_groups=2, num_extract_block=1,
                        num_reconstruct_block=1).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conv_offset" in name:
                p.normal_(0, 0.05)  # non-zero offsets, as a trained model has
    clip = torch.rand(2, 6, 3, 12, 16)
    windows = torch.tensor([window_indices(t, 6, 5, "replicate") for t in range(6)])
    calls = {"n": 0}
    handle = model.conv_first.register_forward_hook(lambda m, i, o: calls.__setitem__("n", calls["n"] + o.shape[0]))
    with torch.no_grad():
        out = model.forward_windows(clip, windows)
    handle.remove()
    assert calls["n"] == 2 * 6  # each frame's features extracted once, not once per window
    assert out.sr.shape == (2, 6, 3, 48, 64) and out.feat_sr.shape == (2, 6, 64, 48, 64)
    assert out.feat_lr.shape == (2, 6, 16, 12, 16)
    with torch.no_grad():
        for i in range(6):
            ref = model.forward_features(clip[:, windows[i]])
            for a, b in zip(out, ref):
                torch.testing.assert_close(a[:, i], b, rtol=1e-5, atol=1e-5)
        chunked = model.forward_windows(clip, windows, chunk=4)  # 6 windows as chunks of 4 and 2
    for a, b in zip(out, chunked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
