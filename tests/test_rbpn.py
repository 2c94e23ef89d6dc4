"""RBPN: the official state-dict keys (as data), strict loading of official-format checkpoints with the configuration
read off their shapes, numerical parity with the official forward (a reference computed once by the official code:
tests/data/rbpn/make_reference.py), the flow layout and OpenCV flows on real frames, the STD variant (``sr_feat``)
and the model contract at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stdvsr.data import degrade, to_tensor
from stdvsr.errors import StdvsrError
from stdvsr.models import build_model, load_model
from stdvsr.models.common import Features
from stdvsr.models.flow import FLOW_METHODS, estimate_flow, window_flows, warp
from stdvsr.models.rbpn import RBPN, infer_config

DATA = Path(__file__).parent / "data" / "rbpn"
TINY = dict(base_filter=8, feat=8, n_resblock=1)


@pytest.fixture(scope="module")
def official() -> dict:
    return json.loads((DATA / "official_keys.json").read_text())


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(DATA / "reference.pt", weights_only=True)


def _lq(b: int, t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, t, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------
# Keys and checkpoints
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", ["tiny", "official"])
def test_state_dict_is_the_official_one(official, config):
    """Same keys, same order, same shapes as the official Net at the tiny and the published configuration."""
    model = RBPN(**official["configs"][config])
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(official["shapes"][config])
    assert ours == official["shapes"][config]
    if config == "official":
        assert sum(p.numel() for p in model.parameters()) == 12_771_943


@pytest.mark.parametrize("config", ["tiny", "official"])
def test_config_is_read_off_the_shapes(official, config):
    state = {k: torch.empty(shape, device="meta") for k, shape in official["shapes"][config].items()}
    assert infer_config(state) == official["configs"][config]


@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_checkpoint_loads_strictly_and_matches_the_official_forward(tmp_path, reference, prefix):
    """A plain state dict as the official main.py saves it (DataParallel: ``module.``) loads by its key names with
    ``--arch rbpn`` and no other flag, and computes the official output on the official inputs."""
    path = tmp_path / "RBPN_4x.pth"
    torch.save({prefix + k: v for k, v in reference["state_dict"].items()}, path)
    model, _ = load_model(path, arch="rbpn")
    assert isinstance(model, RBPN)
    assert infer_config(model.state_dict()) == reference["config"]
    assert (model.num_frame, model.scale, model.sr_feat) == (5, 4, None)
    with torch.no_grad():
        out = model(reference["frames"], flows=reference["flows"])
        listed = model(reference["frames"], flows=list(reference["flows"].unbind(1)))
        features = model.forward_features(reference["frames"], flows=reference["flows"])
    torch.testing.assert_close(out, reference["output"], rtol=0, atol=1e-5)
    torch.testing.assert_close(listed, out, rtol=0, atol=0)
    torch.testing.assert_close(features.sr, out, rtol=0, atol=1e-6)


def test_flows_and_neighbours_are_used_in_window_order(reference):
    """The reference's neighbours were frames t−2, t−1, t+1, t+2 (official ``load_img_future``): reordering them or
    their flows changes the output, so parity above pins the order."""
    model = RBPN(**reference["config"]).eval()
    model.load_state_dict(reference["state_dict"], strict=True)
    frames, flows = reference["frames"], reference["flows"]
    with torch.no_grad():
        swapped_flows = model(frames, flows=flows.flip(1))
        swapped_frames = model(frames[:, [4, 3, 2, 1, 0]], flows=flows)
    for out in (swapped_flows, swapped_frames):
        assert (out - reference["output"]).abs().max() > 1e-2


def test_load_model_refuses_weights_of_another_network(tmp_path):
    path = tmp_path / "edvr.pth"
    torch.save({"params": build_model("edvr-s").state_dict()}, path)
    with pytest.raises(StdvsrError, match="does not hold RBPN weights") as refused:
        load_model(path, arch="rbpn")
    message = str(refused.value)
    assert "--arch rbpn" in message and "conv_first" in message and "\n" not in message


def test_loaded_rbpn_with_missing_key_names_it(tmp_path, reference):
    state = dict(reference["state_dict"])
    del state["res_feat2.0.conv2.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(StdvsrError, match="res_feat2.0.conv2.weight"):
        load_model(path, arch="rbpn")


# ----------------------------------------------------------------------------------------------------------
# F^SR: the official map and the STD adjustment of the last conv
# ----------------------------------------------------------------------------------------------------------


def test_official_feat_sr_is_the_concatenation_entering_the_last_conv():
    torch.manual_seed(0)
    model = build_model("rbpn", nFrames=5, **TINY).eval()
    assert model.conv_last is model.output.conv and "conv_last.weight" not in model.state_dict()
    captured = {}
    model.conv_last.register_forward_pre_hook(lambda m, args: captured.__setitem__("in", args[0]))
    lq = _lq(1, 5, 6, 7)
    flows = torch.randn(1, 4, 2, 6, 7)
    with torch.no_grad():
        out = model.forward_features(lq, flows=flows)
    assert out.feat_sr.shape == (1, 4 * 8, 24, 28) and torch.equal(out.feat_sr, captured["in"])
    assert out.feat_lr.shape == (1, 8, 6, 7)  # the LR state after the last projection (base_filter channels)


def test_sr_feat_variant_round_trips_through_load_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("rbpn", nFrames=3, sr_feat=16, **TINY).eval()
    assert model.conv_last is not model.output.conv and model.conv_last.in_channels == 16
    assert {"conv_last.weight", "output.act.weight"} <= set(model.state_dict())
    lq, flows = _lq(2, 3, 5, 6), torch.randn(2, 2, 2, 5, 6)
    with torch.no_grad():
        out = model.forward_features(lq, flows=flows)
    assert out.feat_sr.shape == (2, 16, 20, 24) and out.sr.shape == (2, 3, 20, 24)
    path = tmp_path / "rbpn_std.pth"
    torch.save(model.state_dict(), path)
    loaded, _ = load_model(path, arch="rbpn")
    assert loaded.sr_feat == 16 and loaded.num_frame == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded(lq, flows=flows), out.sr, rtol=0, atol=0)


@pytest.mark.parametrize("sr_feat", [None, 16])
def test_contract_and_gradients_at_a_tiny_size(sr_feat):
    """The sweep of tests/test_models.py at the STD variant too: shapes, finite, every parameter gets a gradient,
    forward(lq) == forward_features(lq).sr with flows computed inside."""
    torch.manual_seed(0)
    model = build_model("rbpn", nFrames=3, sr_feat=sr_feat, **TINY).train()
    lq = _lq(2, 3, 8, 10)
    out = model.forward_features(lq)
    assert isinstance(out, Features) and out.sr.shape == (2, 3, 32, 40)
    assert out.feat_sr.shape[1] == model.conv_last.in_channels == (sr_feat or 16)
    (out.sr.mean() + out.feat_sr.mean() + out.feat_lr.mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"
    with torch.no_grad():
        torch.testing.assert_close(model(lq), out.sr.detach(), rtol=0, atol=1e-6)


def test_forward_windows_equals_each_window():
    from stdvsr.data import window_indices

    torch.manual_seed(0)
    model = build_model("rbpn", nFrames=3, **TINY).eval()
    clip = _lq(1, 4, 16, 16)
    windows = torch.tensor([window_indices(t, 4, 3, "replicate") for t in range(4)])
    with torch.no_grad():
        out = model.forward_windows(clip, windows, chunk=3)
        assert out.sr.shape == (1, 4, 3, 64, 64) and out.feat_sr.shape == (1, 4, 16, 64, 64)
        for i in range(4):
            ref = model.forward_features(clip[:, windows[i]])
            for a, b in zip(out, ref):
                torch.testing.assert_close(a[:, i], b, rtol=1e-5, atol=1e-6)


def test_input_checks():
    model = build_model("rbpn", nFrames=3, **TINY).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="3"):
        model(_lq(1, 5, 6, 6))
    with torch.no_grad(), pytest.raises(ValueError, match="2 flows"):
        model(_lq(1, 3, 6, 6), flows=[torch.zeros(1, 2, 6, 6)])
    with pytest.raises(StdvsrError, match="odd"):
        build_model("rbpn", nFrames=6)
    with pytest.raises(StdvsrError, match="flow_method"):
        build_model("rbpn", flow_method="pyflow")


# ----------------------------------------------------------------------------------------------------------
# Flow
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", FLOW_METHODS)
def test_flow_layout_is_centre_to_neighbour_u_then_v(carphone_frames, method):
    """A neighbour whose content sits 2 pixels further right: centre(y, x) = neighbour(y, x + 2), so u = +2, v = 0
    (pyflow's ``coarse2fine_flow(centre, neighbour)`` layout)."""
    centre = carphone_frames[0]
    neighbour = np.roll(centre, 2, axis=1)
    flow = estimate_flow(centre, neighbour, method)[8:-8, 8:-8]
    assert flow.shape[-1] == 2 and flow.dtype == np.float32
    assert abs(np.median(flow[..., 0]) - 2) < 0.05 and abs(np.median(flow[..., 1])) < 0.05
    warped = warp(to_tensor([neighbour]), torch.from_numpy(estimate_flow(centre, neighbour, method))[None]
                  .permute(0, 3, 1, 2))
    assert (warped[0] - to_tensor([centre])[0]).abs()[..., 8:-8, 8:-8].mean() < 0.01


@pytest.mark.parametrize("method", FLOW_METHODS)
def test_flows_on_real_lr_frames_bring_neighbours_closer(carphone_frames, bikes_frames, method):
    """On BD ×4 LR windows of real video (carphone 5 frames, 36×44; bikes 3 frames, 68×160), every neighbour warped
    by its computed flow is closer to the centre frame than the neighbour itself."""
    for frames, n in ((carphone_frames[:5], 5), (bikes_frames[:3], 3)):
        lq = degrade(to_tensor(frames), "bd", 4).clamp(0, 1)[None]
        flows = window_flows(lq, method)
        assert len(flows) == n - 1
        centre = lq[:, n // 2]
        for flow, j in zip(flows, [j for j in range(n) if j != n // 2]):
            assert flow.shape == (1, 2, *lq.shape[-2:]) and flow.dtype == torch.float32
            assert torch.isfinite(flow).all()
            before = (lq[:, j] - centre).abs().mean()
            after = (warp(lq[:, j], flow) - centre).abs().mean()
            assert after < before, (method, j, float(before), float(after))


def test_without_flows_the_model_computes_them_with_its_flow_method(carphone_frames):
    lq = degrade(to_tensor(carphone_frames[:3]), "bd", 4).clamp(0, 1)[None]
    torch.manual_seed(0)
    for method in FLOW_METHODS:
        model = build_model("rbpn", nFrames=3, flow_method=method, **TINY).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(lq), model(lq, flows=window_flows(lq, method)), rtol=0, atol=0)
    with torch.no_grad():  # and the flows matter
        assert (model(lq) - model(lq, flows=torch.zeros(1, 2, 2, *lq.shape[-2:]))).abs().max() > 1e-4


def test_tiny_frames_get_a_flow():
    """DIS needs patches of 8+ pixels: smaller frames are replicate-padded for it, and cropped back."""
    frames = (torch.rand(1, 3, 3, 5, 6, generator=torch.Generator().manual_seed(0)))
    flows = window_flows(frames, "dis")
    assert [tuple(f.shape) for f in flows] == [(1, 2, 5, 6)] * 2 and all(torch.isfinite(f).all() for f in flows)
