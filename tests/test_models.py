"""The students and the model registry: every registered network and preset honours the model contract
(shapes, F^SR = input of conv_last, gradients reach every parameter), FastDVDnet's width multiplier and
parameter count, VSRNet's symmetric weight sharing, VDSR's bicubic residual, VESPCN's warp and motion losses."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from stdvsr.errors import StdvsrError
from stdvsr.models import MODELS, PRESETS, STUDENTS, build_model, list_models
from stdvsr.models.common import Features
from stdvsr.models.vespcn import warp

H, W = 16, 20  # LR test size (multiples of 4)
FORWARD_ONLY = {"edvr-l", "edvr-m"}  # forward checks here; their backward pass is tested at batch 1 below
# networks whose default size is too slow for this sweep on a CPU (RBPN: ~1 min) are checked at a tiny size
SWEEP_KWARGS = {"rbpn": dict(base_filter=8, feat=8, n_resblock=1)}


def _perturb(model: torch.nn.Module, scale: float = 0.01, seed: int = 1) -> torch.nn.Module:
    """Add a little noise to every parameter, so zero-initialised branches (DCN offsets, flow heads) pass gradient."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def _lq(b: int, t: int, h: int = H, w: int = W, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(b, t, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------
# 1. The contract, for every registered name
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_model_contract(name):
    torch.manual_seed(0)
    model = _perturb(build_model(name, **SWEEP_KWARGS.get(name, {})))
    assert model.scale == 4
    assert isinstance(model.num_frame, int) and model.num_frame >= 1

    if name in FORWARD_ONLY:
        model.eval()
        lq = _lq(1, model.num_frame, 8, 12)
        with torch.no_grad():
            sr = model(lq)
        assert sr.shape == (1, 3, 32, 48)
        assert torch.isfinite(sr).all()
        return

    model.train()
    lq = _lq(2, model.num_frame)
    captured = {}
    handle = model.conv_last.register_forward_pre_hook(
        lambda m, args: captured.__setitem__("in", args[0].detach().clone()))
    try:
        out = model.forward_features(lq)
    finally:
        handle.remove()
    assert isinstance(out, Features)
    sr, feat_sr, feat_lr = out
    assert sr.shape == (2, 3, 4 * H, 4 * W)
    for tensor in out:
        assert torch.isfinite(tensor).all()
    # F^SR is exactly the tensor that enters conv_last (same values; nothing modified it in place afterwards)
    assert torch.equal(feat_sr, captured["in"])
    assert feat_sr.dim() == 4 and feat_sr.shape[0] == 2 and feat_sr.shape[2:] == (4 * H, 4 * W)
    assert feat_sr.shape[1] == model.conv_last.in_channels
    assert feat_lr.dim() == 4 and feat_lr.shape[0] == 2
    # forward(lq) is forward_features(lq).sr
    with torch.no_grad():
        torch.testing.assert_close(model(lq), sr.detach(), rtol=0, atol=1e-6)

    (sr.mean() + feat_sr.mean() + feat_lr.mean()).backward()
    params = dict(model.named_parameters())
    no_grad = [n for n, p in params.items() if p.grad is None]
    assert not no_grad, f"no gradient for {no_grad}"
    not_finite = [n for n, p in params.items() if not torch.isfinite(p.grad).all()]
    assert not not_finite, f"non-finite gradient for {not_finite}"
    zero = [n for n, p in params.items() if not p.grad.abs().sum() > 0]
    # (with this seed and perturbation none is identically zero for any model; allow a tiny slack)
    assert len(zero) <= 0.02 * len(params), f"identically-zero gradient for {zero}"


# ----------------------------------------------------------------------------------------------------------
# 2. FastDVDnet: width multiplier and an independent parameter count
# ----------------------------------------------------------------------------------------------------------

# Channel counts per width, written out from the docstring (per-frame 30, U-Net 32/64/128, F^LR/F^SR 64), scaled
# and rounded (30 × 1/4 = 7.5 rounds to 8).
_FASTDVD_CHANNELS = {1.0: (30, 32, 64, 128, 64), 0.5: (15, 16, 32, 64, 32), 0.25: (8, 8, 16, 32, 16)}


def _conv(cin: int, cout: int, k: int = 3, groups: int = 1) -> int:
    return cout * (cin // groups) * k * k + cout


def expected_fastdvdnet_params(width: float) -> int:
    per_frame, c0, c1, c2, feat = _FASTDVD_CHANNELS[width]

    def den_block(out_ch: int) -> int:
        n = _conv(9, 3 * per_frame, groups=3) + _conv(3 * per_frame, c0)                # input block
        n += _conv(c0, c1) + 2 * _conv(c1, c1)                                          # down 0 (stride 2)
        n += _conv(c1, c2) + 2 * _conv(c2, c2)                                          # down 1 (stride 2)
        n += 2 * _conv(c2, c2) + _conv(c2, 4 * c1)                                      # up 2 (pixel shuffle)
        n += 2 * _conv(c1, c1) + _conv(c1, 4 * c0)                                      # up 1 (pixel shuffle)
        n += _conv(c0, c0) + _conv(c0, out_ch)                                          # output block
        return n

    stage1 = den_block(3)         # refines each triplet to one RGB frame
    stage2 = den_block(feat)      # F^LR
    head = _conv(feat, 4 * feat) + _conv(feat, 4 * feat) + _conv(feat, feat)  # upconv1, upconv2, conv_hr
    return stage1 + stage2 + head + _conv(feat, 3)                              # conv_last


@pytest.mark.parametrize("width, preset, feat", [(1.0, "fastdvdnet", 64), (0.5, "fastdvdnet-half", 32),
                                                 (0.25, "fastdvdnet-quarter", 16)])
def test_fastdvdnet_width(width, preset, feat):
    model = build_model("fastdvdnet", width=width)
    assert _params(model) == expected_fastdvdnet_params(width)
    assert _params(build_model(preset)) == _params(model)
    assert model.conv_last.in_channels == feat
    with torch.no_grad():
        out = model.eval().forward_features(_lq(1, 7, 8, 8))
    assert out.feat_sr.shape == (1, feat, 32, 32)
    assert out.feat_lr.shape == (1, feat, 8, 8)


def test_fastdvdnet_head_feat_widens_only_the_reconstruction_head():
    narrow, wide = build_model("fastdvdnet-quarter"), build_model("fastdvdnet-quarter-h64")
    head = lambda c_in, c: _conv(c_in, 4 * c) + _conv(c, 4 * c) + _conv(c, c) + _conv(c, 3)  # noqa: E731
    assert _params(wide) - _params(narrow) == head(16, 64) - head(16, 16)
    with torch.no_grad():
        out = wide.eval().forward_features(_lq(1, 7, 8, 8))
    assert out.feat_sr.shape == (1, 64, 32, 32) and out.feat_lr.shape == (1, 16, 8, 8)
    assert out.sr.shape == (1, 3, 32, 32)


def test_fastdvdnet_width_half_has_about_a_quarter_of_the_parameters():
    ratio = _params(build_model("fastdvdnet")) / _params(build_model("fastdvdnet-half"))
    assert 3.5 < ratio < 4.5


# ----------------------------------------------------------------------------------------------------------
# 3. VSRNet: symmetric weight sharing of the first layer
# ----------------------------------------------------------------------------------------------------------


def test_vsrnet_symmetric_weight_sharing():
    torch.manual_seed(0)
    model = build_model("vsrnet").double().eval()
    t = model.num_frame
    assert t == 7 and len(model.conv1) == 4
    assert model.distance == [3, 2, 1, 0, 1, 2, 3]
    lq = _lq(1, t, 6, 7, dtype=torch.float64)
    flipped = lq.flip(1)
    # Frames i and 6-i go through the same conv1 module, so flipping the window just reverses the order of the
    # 7 per-frame feature blocks that conv2 sees. conv2 (a generic 448 → 32 conv) is not symmetric, so the
    # plain flip changes the output ...
    with torch.no_grad():
        out, out_flipped = model(lq), model(flipped)
    assert not torch.allclose(out, out_flipped)
    # ... but with conv2's input blocks reversed as well, it is exactly the same network on the flipped window.
    mirrored = copy.deepcopy(model)
    with torch.no_grad():
        w = mirrored.conv2.weight
        blocks = w.view(w.shape[0], t, -1, *w.shape[2:]).flip(1)
        mirrored.conv2.weight.copy_(blocks.reshape(w.shape))
        torch.testing.assert_close(mirrored(flipped), out, rtol=1e-10, atol=1e-10)
    # and with a symmetric conv2 (block i == block 6-i) the network is invariant to the flip
    with torch.no_grad():
        w = model.conv2.weight.view(model.conv2.weight.shape[0], t, -1, *model.conv2.weight.shape[2:])
        w.copy_((w + w.flip(1)) / 2)
        torch.testing.assert_close(model(flipped), model(lq), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------------------
# 4. VDSR: one frame, global residual on the bicubic upsampling
# ----------------------------------------------------------------------------------------------------------


def test_vdsr_is_bicubic_plus_residual():
    torch.manual_seed(0)
    model = build_model("vdsr").eval()
    assert model.num_frame == 1 and model.scale == 4
    with torch.no_grad():
        model.conv_last.weight.zero_()
        model.conv_last.bias.zero_()
        lq = _lq(2, 1, 8, 12)
        expected = F.interpolate(lq[:, 0], scale_factor=4, mode="bicubic", align_corners=False)
        torch.testing.assert_close(model(lq), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        model(_lq(1, 3, 8, 8))


# ----------------------------------------------------------------------------------------------------------
# 5. VESPCN: the warp and the motion-compensation losses
# ----------------------------------------------------------------------------------------------------------


def test_vespcn_warp_zero_flow_is_identity():
    image = torch.rand(2, 3, 9, 13, generator=torch.Generator().manual_seed(0))
    out = warp(image, torch.zeros(2, 2, 9, 13))
    torch.testing.assert_close(out, image, rtol=0, atol=1e-6)


def test_vespcn_warp_one_pixel_shift():
    h, w = 9, 13
    image = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    flow = torch.zeros(1, 2, h, w)
    flow[:, 0] = 2 / w  # +1 pixel in x: output pixel j samples input pixel j + 1
    out = warp(image, flow)
    torch.testing.assert_close(out[..., :-1], image[..., 1:], rtol=0, atol=1e-5)
    flow = torch.zeros(1, 2, h, w)
    flow[:, 1] = -2 / h  # -1 pixel in y
    out = warp(image, flow)
    torch.testing.assert_close(out[..., 1:, :], image[..., :-1, :], rtol=0, atol=1e-5)


def test_vespcn_motion_losses_at_init_and_their_gradients():
    torch.manual_seed(0)
    model = build_model("vespcn")
    lq = _lq(2, 3, 8, 12)
    losses = model.motion_losses(lq)
    expected = (((lq[:, 0] - lq[:, 1]) ** 2).mean() + ((lq[:, 2] - lq[:, 1]) ** 2).mean()) / 2
    torch.testing.assert_close(losses["warp"], expected, rtol=1e-6, atol=1e-7)
    assert losses["smooth"].item() == 0

    _perturb(model)
    losses = model.motion_losses(lq)
    assert all(torch.isfinite(v) for v in losses.values())
    (losses["warp"] + 0.01 * losses["smooth"]).backward()
    motion = dict(model.motion.named_parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in motion.values())
    zero = [n for n, p in motion.items() if not p.grad.abs().sum() > 0]
    assert not zero, f"motion parameters without gradient: {zero}"
    # the losses touch only the motion network
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("motion."))


# ----------------------------------------------------------------------------------------------------------
# 6. Input checks
# ----------------------------------------------------------------------------------------------------------


def test_fastdvdnet_input_checks():
    model = build_model("fastdvdnet-quarter").eval()
    with torch.no_grad():
        with pytest.raises(ValueError, match="7"):
            model(_lq(1, 5, 8, 8))
        with pytest.raises(ValueError, match="multiples of 4"):
            model(_lq(1, 7, 10, 8))
        with pytest.raises(ValueError, match="multiples of 4"):
            model(_lq(1, 7, 8, 6))
    with pytest.raises(StdvsrError, match="fastdvdnet"):
        build_model("fastdvdnet", num_frame=5)


def test_vespcn_input_checks():
    model = build_model("vespcn").eval()
    with torch.no_grad():
        with pytest.raises(ValueError):
            model(_lq(1, 5, 8, 8))
        with pytest.raises(ValueError):
            model(_lq(1, 3, 8, 10))


# ----------------------------------------------------------------------------------------------------------
# 7. Registry
# ----------------------------------------------------------------------------------------------------------


def test_students_are_registered():
    assert STUDENTS == ("fastdvdnet", "vsrnet", "vespcn", "vdsr")
    assert all(name in MODELS for name in STUDENTS)
    assert set(list_models()) == set(MODELS) | set(PRESETS)
    for name in STUDENTS:
        model = build_model(name)
        assert isinstance(model, MODELS[name]) and model.scale == 4


@pytest.mark.parametrize("name", list(STUDENTS))
def test_students_trace_for_deployment(name):
    """The deployable path has no side outputs or Python-side branching on data: a TorchScript trace reproduces it
    on a new input of another size (ONNX/TorchScript export itself is `stdvsr export`'s job)."""
    torch.manual_seed(0)
    model = build_model(name).eval()
    lq = torch.rand(1, model.num_frame, 3, 16, 20)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic are expected
        traced = torch.jit.trace(model, lq)
        other = torch.rand(1, model.num_frame, 3, 12, 24)
        assert torch.allclose(traced(other), model(other), atol=1e-5)


@pytest.mark.parametrize("name", sorted(FORWARD_ONLY))
def test_big_presets_get_gradients_everywhere(name):
    """EDVR-M and EDVR-L: one backward pass at batch 1 and a tiny LR size reaches every parameter."""
    torch.manual_seed(0)
    model = _perturb(build_model(name)).train()
    out = model.forward_features(_lq(1, model.num_frame, 8, 12))
    (out.sr.mean() + out.feat_sr.mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing}"


def _onnx_file(path) -> "Path":
    """A real (tiny) ONNX model: one Identity node, as any ONNX exporter writes it (a protobuf ModelProto)."""
    onnx = pytest.importorskip("onnx", reason="onnx is not installed: pip install 'stdvsr[export]'")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("lq", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("sr", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["lq"], ["sr"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, producer_name="pytorch"), str(path))
    return path


def test_an_onnx_file_is_named_as_an_onnx_export_not_as_unsafe_pickle(tmp_path):
    """An .onnx passed as --model said "needs pickled code"; recognised by its bytes too, whatever its name."""
    from stdvsr.models import load_model, read_checkpoint, save_random

    onnx_path = _onnx_file(tmp_path / "student.onnx")
    renamed = tmp_path / "student_onnx.pth"
    renamed.write_bytes(onnx_path.read_bytes())
    for path in (onnx_path, renamed):
        with pytest.raises(StdvsrError, match="is an ONNX export") as refused:
            load_model(path, flag="--model")
        assert "--model cannot read" in str(refused.value) and ".pth checkpoint it was exported from" \
            in str(refused.value) and "pickled" not in str(refused.value)
    # a PyTorch checkpoint given an .onnx name is still read as what its bytes are
    misnamed = save_random("vsrnet", tmp_path / "vsrnet.onnx")
    assert read_checkpoint(misnamed)["model"]["name"] == "vsrnet"


@pytest.mark.parametrize("command", [
    ["evaluate", "--set", "FRAMES"],
    ["upscale", "IN", "OUT"],
    ["export"],
    ["export", "--quantize", "int8", "--calibrate", "FRAMES"],
])
def test_onnx_as_model_is_one_line_in_every_command(tmp_path, command):
    from click.testing import CliRunner

    from stdvsr.cli import cli
    from stdvsr.io import write_image
    from tests.helpers import write_video

    onnx_path = _onnx_file(tmp_path / "student.onnx")
    frames = [torch.randint(0, 256, (32, 48, 3), dtype=torch.uint8).numpy() for _ in range(2)]
    write_video(tmp_path / "in.mp4", frames)
    for i, frame in enumerate(frames):
        write_image(tmp_path / "frames" / f"{i:08d}.png", frame)
    names = {"IN": str(tmp_path / "in.mp4"), "OUT": str(tmp_path / "out.mp4"),
             "FRAMES": f"folder:{tmp_path / 'frames'}"}
    args = [names.get(a, a) for a in command]
    result = CliRunner().invoke(cli, [*args, "--model", str(onnx_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "is an ONNX export" in lines[-1] and "--model" in lines[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "in.mp4", "student.onnx"]
