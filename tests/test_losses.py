"""The Space-Time Distillation losses, checked against values worked out by hand on tiny tensors.

Every expected number below is either written out explicitly (with the arithmetic in a comment) or computed with
plain Python / numpy loops that share no code with :mod:`stdvsr.losses`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from stdvsr.losses import (ConvLSTM, attention_map, charbonnier, kd_mean2, kd_mse, mean2_map, output_kd, sd_loss,
                           td_loss)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# A 2-channel 2×2 feature map with negative entries (so |·| matters for "sum").
FEAT = [[[1.0, -2.0], [3.0, 0.0]],
        [[-1.0, 2.0], [0.5, -4.0]]]


# --------------------------------------------------------------------------------------------------- attention_map

def test_attention_map_sum2_hand_values():
    """sum2 = Σ_c F_c²: [[1+1, 4+4], [9+0.25, 0+16]]."""
    assert_close(attention_map(t(FEAT), "sum2"), t([[2.0, 8.0], [9.25, 16.0]]))


def test_attention_map_sum2_is_default():
    """The paper's choice (Eq. 4) is the default mapping."""
    assert_close(attention_map(t(FEAT)), t([[2.0, 8.0], [9.25, 16.0]]))


def test_attention_map_sum_uses_abs():
    """sum = Σ_c |F_c|: [[1+1, 2+2], [3+0.5, 0+4]] (a plain signed sum would give [[0, 0], [3.5, -4]])."""
    assert_close(attention_map(t(FEAT), "sum"), t([[2.0, 4.0], [3.5, 4.0]]))


def test_attention_map_max2_hand_values():
    """max2 = max_c F_c²: [[max(1,1), max(4,4)], [max(9,0.25), max(0,16)]]."""
    assert_close(attention_map(t(FEAT), "max2"), t([[1.0, 4.0], [9.0, 16.0]]))


@pytest.mark.parametrize("mapping", ["sum2", "sum", "max2"])
def test_attention_map_keeps_leading_dims(mapping):
    """A (B, N, C, H, W) input maps to (B, N, H, W), each entry matching a by-hand loop over channels."""
    rng = np.random.default_rng(0)
    feat = rng.standard_normal((2, 3, 4, 3, 5)).astype(np.float32)
    expected = np.zeros((2, 3, 3, 5), dtype=np.float64)
    for b in range(2):
        for n in range(3):
            for y in range(3):
                for x in range(5):
                    vals = [float(feat[b, n, c, y, x]) for c in range(4)]
                    if mapping == "sum2":
                        expected[b, n, y, x] = sum(v * v for v in vals)
                    elif mapping == "sum":
                        expected[b, n, y, x] = sum(abs(v) for v in vals)
                    else:
                        expected[b, n, y, x] = max(v * v for v in vals)
    out = attention_map(torch.from_numpy(feat), mapping)
    assert out.shape == (2, 3, 3, 5)
    assert_close(out, torch.from_numpy(expected).float())


def test_attention_map_unknown_mapping_raises():
    with pytest.raises(ValueError, match="unknown attention mapping"):
        attention_map(t(FEAT), "mean")


# ---------------------------------------------------------------------------------------------------------- sd_loss

# Two frames (B=1, N=2) of 1×2 maps; the student has 2 channels, the teacher 1.
STUDENT_SEQ = [[[[[1.0, 2.0]], [[0.0, 1.0]]],      # frame 0: sum2 map [1+0, 4+1]  = [1, 5]
                [[[2.0, 0.0]], [[-1.0, 3.0]]]]]    # frame 1: sum2 map [4+1, 0+9]  = [5, 9]
TEACHER_SEQ = [[[[[1.0, 2.0]]],                    # frame 0: sum2 map [1, 4]
                [[[3.0, -1.0]]]]]                  # frame 1: sum2 map [9, 1]


def test_sd_loss_is_mean_over_frames_of_per_frame_mse():
    """Frame 0: ((1-1)² + (5-4)²)/2 = 0.5; frame 1: ((5-9)² + (9-1)²)/2 = 40; mean over frames = 20.25."""
    s, te = t(STUDENT_SEQ), t(TEACHER_SEQ)
    assert s.shape == (1, 2, 2, 1, 2) and te.shape == (1, 2, 1, 1, 2)  # different channel counts
    assert sd_loss(s, te).item() == pytest.approx(20.25)


def test_sd_loss_per_frame_loop_random():
    """On random (B, N) sequences with C_S ≠ C_T, sd_loss equals a numpy loop: mean_t mean_{b,h,w} (M^S − M^T)²."""
    rng = np.random.default_rng(1)
    s = rng.standard_normal((2, 3, 4, 3, 3)).astype(np.float32)
    te = rng.standard_normal((2, 3, 6, 3, 3)).astype(np.float32)
    per_frame = []
    for n in range(3):
        total, count = 0.0, 0
        for b in range(2):
            for y in range(3):
                for x in range(3):
                    ms = sum(float(s[b, n, c, y, x]) ** 2 for c in range(4))
                    mt = sum(float(te[b, n, c, y, x]) ** 2 for c in range(6))
                    total += (ms - mt) ** 2
                    count += 1
        per_frame.append(total / count)
    expected = sum(per_frame) / len(per_frame)
    assert sd_loss(torch.from_numpy(s), torch.from_numpy(te)).item() == pytest.approx(expected, rel=1e-5)


def test_sd_loss_l2_norm_hand_value():
    """norm="l2": student map [3, 4] → [0.6, 0.8]; teacher map [1, 1] → [1/√2, 1/√2];
    ((0.6 − a)² + (0.8 − a)²)/2 with a = 1/√2 is (2 − 1.4·√2)/2 = 1 − 0.7·√2 ≈ 0.0100505."""
    s = t([[[[3.0, -4.0]]]])                       # (1, C=1, 1, 2); "sum" map [3, 4]
    te = t([[[[1.0, 0.0]], [[0.0, -1.0]]]])        # (1, C=2, 1, 2); "sum" map [1, 1]
    assert sd_loss(s, te, mapping="sum", norm="l2").item() == pytest.approx(1 - 0.7 * math.sqrt(2), rel=1e-5)


def test_sd_loss_l2_norm_two_frames_loop():
    """norm="l2" normalises each frame's map separately (over H·W only), checked against a by-hand loop."""
    s, te = t(STUDENT_SEQ), t(TEACHER_SEQ)
    maps_s = [[1.0, 5.0], [5.0, 9.0]]
    maps_t = [[1.0, 4.0], [9.0, 1.0]]
    per_frame = []
    for ms, mt in zip(maps_s, maps_t):
        ns, nt = math.sqrt(sum(v * v for v in ms)), math.sqrt(sum(v * v for v in mt))
        per_frame.append(sum((a / ns - b / nt) ** 2 for a, b in zip(ms, mt)) / len(ms))
    expected = sum(per_frame) / 2
    assert sd_loss(s, te, norm="l2").item() == pytest.approx(expected, rel=1e-5)


def test_sd_loss_l2_norm_scale_invariant():
    """With norm="l2" scaling the student features leaves the loss unchanged; without it the loss changes."""
    s, te = t(STUDENT_SEQ), t(TEACHER_SEQ)
    assert sd_loss(3 * s, te, norm="l2").item() == pytest.approx(sd_loss(s, te, norm="l2").item(), rel=1e-5)
    assert sd_loss(3 * s, te).item() != pytest.approx(sd_loss(s, te).item())


def test_sd_loss_l2_norm_zero_map_is_finite():
    """An all-zero map does not produce NaN under norm="l2" (the norm is clamped away from 0)."""
    loss = sd_loss(torch.zeros(1, 2, 2, 2), t([[[[1.0, 0.0], [0.0, 0.0]]]]), norm="l2")
    # Student map normalises to 0, teacher to [1, 0, 0, 0]: (1² + 0 + 0 + 0)/4 = 0.25.
    assert loss.item() == pytest.approx(0.25)


def test_sd_loss_bad_norm_raises():
    with pytest.raises(ValueError, match="unknown SD normalisation"):
        sd_loss(t(STUDENT_SEQ), t(TEACHER_SEQ), norm="l1")


def test_sd_loss_bad_mapping_raises():
    with pytest.raises(ValueError):
        sd_loss(t(STUDENT_SEQ), t(TEACHER_SEQ), mapping="bogus")


@pytest.mark.parametrize("mapping", ["sum2", "sum", "max2"])
@pytest.mark.parametrize("norm", ["none", "l2"])
def test_sd_loss_zero_when_student_equals_teacher(mapping, norm):
    feat = torch.randn(2, 3, 4, 5, 5, generator=torch.Generator().manual_seed(2))
    assert sd_loss(feat, feat.clone(), mapping=mapping, norm=norm).item() == 0.0


# ---------------------------------------------------------------------------------------------------------- ConvLSTM

def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _scalar_convlstm(xs, wx, wh, b):
    """By-hand ConvLSTM, 1 input and 1 hidden channel, 1×1 kernel: gate k = wx[k]·x + wh[k]·h + b[k] (i, f, o, g)."""
    c = h = 0.0
    for x in xs:
        pre = [wx[k] * x + wh[k] * h + b[k] for k in range(4)]
        i, f, o, g = _sigmoid(pre[0]), _sigmoid(pre[1]), _sigmoid(pre[2]), math.tanh(pre[3])
        c = f * c + i * g
        h = o * math.tanh(c)
    return c, h


WX = [0.5, -0.3, 0.8, 1.2]   # input weights of gates i, f, o, g
WH = [0.4, 0.7, -0.6, 0.9]   # hidden weights of gates i, f, o, g
BIAS = [0.1, 0.2, -0.1, 0.05]


def _hand_set_lstm() -> ConvLSTM:
    lstm = ConvLSTM(1, 1, kernel_size=1)
    with torch.no_grad():
        # Input channels of the gate conv are cat(x, h): column 0 is x, column 1 is h.
        lstm.gates.weight.copy_(t([[[[wx]], [[wh]]] for wx, wh in zip(WX, WH)]))
        lstm.gates.bias.copy_(t(BIAS))
    return lstm


def test_convlstm_one_step_explicit():
    """One step, x = 1: i = σ(0.6), f = σ(0.1), o = σ(0.7), g = tanh(1.25); c = i·g, h = o·tanh(c)."""
    c_exp = _sigmoid(0.6) * math.tanh(1.25)            # ≈ 0.645656 · 0.848284 ≈ 0.547701
    h_exp = _sigmoid(0.7) * math.tanh(c_exp)           # ≈ 0.668188 · 0.498826 ≈ 0.333309
    assert c_exp == pytest.approx(0.5477, abs=1e-4) and h_exp == pytest.approx(0.3333, abs=1e-4)
    c, h = _hand_set_lstm()(t([[[[[1.0]]]]]))
    assert c.item() == pytest.approx(c_exp, rel=1e-5)
    assert h.item() == pytest.approx(h_exp, rel=1e-5)


@pytest.mark.parametrize("xs", [[1.0, -2.0], [0.5, -1.5, 2.0]])
def test_convlstm_matches_scalar_recurrence(xs):
    """Final (c, h) of a 2- and a 3-step sequence equal the by-hand scalar recurrence."""
    c_exp, h_exp = _scalar_convlstm(xs, WX, WH, BIAS)
    seq = t(xs).view(1, len(xs), 1, 1, 1)
    c, h = _hand_set_lstm()(seq)
    assert c.item() == pytest.approx(c_exp, rel=1e-5)
    assert h.item() == pytest.approx(h_exp, rel=1e-5)


def test_convlstm_pixels_and_batch_independent_with_1x1_kernel():
    """With a 1×1 kernel every pixel of every clip runs its own scalar recurrence."""
    seqs = [[[1.0, -2.0, 0.3], [0.0, 0.7, -0.4]],      # clip 0: pixel (0,0), pixel (0,1) over 3 frames
            [[2.0, 2.0, 2.0], [-1.0, 0.5, 1.5]]]       # clip 1
    seq = t(seqs).permute(0, 2, 1).reshape(2, 3, 1, 1, 2)   # (B, N, C=1, H=1, W=2)
    c, h = _hand_set_lstm()(seq)
    assert c.shape == h.shape == (2, 1, 1, 2)
    for b in range(2):
        for x in range(2):
            c_exp, h_exp = _scalar_convlstm(seqs[b][x], WX, WH, BIAS)
            assert c[b, 0, 0, x].item() == pytest.approx(c_exp, rel=1e-5)
            assert h[b, 0, 0, x].item() == pytest.approx(h_exp, rel=1e-5)


def test_convlstm_zero_weights_collapse_cell_to_zero():
    """All-zero weights and biases: i = f = o = ½, g = tanh(0) = 0, so c stays exactly 0 (the collapse point)."""
    lstm = ConvLSTM(3, 4, kernel_size=3)
    with torch.no_grad():
        lstm.gates.weight.zero_()
        lstm.gates.bias.zero_()
    seq = torch.randn(2, 4, 3, 5, 6, generator=torch.Generator().manual_seed(3))
    c, h = lstm(seq)
    assert torch.equal(c, torch.zeros(2, 4, 5, 6))
    assert torch.equal(h, torch.zeros(2, 4, 5, 6))


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_convlstm_output_shapes(kernel_size):
    """(B, N, C, H, W) → cell and hidden of shape (B, hidden, H, W) for any odd kernel."""
    torch.manual_seed(0)
    lstm = ConvLSTM(3, 7, kernel_size=kernel_size)
    c, h = lstm(torch.randn(2, 4, 3, 5, 6))
    assert c.shape == (2, 7, 5, 6) and h.shape == (2, 7, 5, 6)


def test_convlstm_frame_order_matters():
    """The cell encodes temporal order: the reversed sequence gives a different cell."""
    torch.manual_seed(0)
    lstm = ConvLSTM(2, 3, kernel_size=3)
    seq = torch.randn(1, 4, 2, 5, 5)
    c_fwd, _ = lstm(seq)
    c_rev, _ = lstm(seq.flip(1))
    assert (c_fwd - c_rev).abs().max().item() > 1e-3
    # Also on the hand-set scalar cell: [1, -2] and [-2, 1] differ by hand, and in the module.
    lstm1 = _hand_set_lstm()
    assert _scalar_convlstm([1.0, -2.0], WX, WH, BIAS)[0] != pytest.approx(_scalar_convlstm([-2.0, 1.0], WX, WH,
                                                                                              BIAS)[0])
    assert lstm1(t([1.0, -2.0]).view(1, 2, 1, 1, 1))[0].item() == pytest.approx(
        _scalar_convlstm([1.0, -2.0], WX, WH, BIAS)[0], rel=1e-5)
    assert lstm1(t([-2.0, 1.0]).view(1, 2, 1, 1, 1))[0].item() == pytest.approx(
        _scalar_convlstm([-2.0, 1.0], WX, WH, BIAS)[0], rel=1e-5)


# ---------------------------------------------------------------------------------------------- td_loss / kd_mse

def test_td_loss_hand_value():
    """Cells differ by [[1, -2], [0, 3]]: (1 + 4 + 0 + 9)/4 = 3.5."""
    cs = t([[[[1.0, 0.0], [2.0, 5.0]]]])
    ct = t([[[[0.0, 2.0], [2.0, 2.0]]]])
    assert td_loss(cs, ct).item() == pytest.approx(3.5)
    assert td_loss(cs, cs.clone()).item() == 0.0


def test_kd_mse_hand_value():
    """Features (2 channels) differ by [1, -1, 0.5, 0, 2, -3, 0, 0]: (1 + 1 + 0.25 + 0 + 4 + 9 + 0 + 0)/8 = 1.90625."""
    fs = t(FEAT)
    diff = t([[[1.0, -1.0], [0.5, 0.0]], [[2.0, -3.0], [0.0, 0.0]]])
    assert kd_mse(fs, fs - diff).item() == pytest.approx(1.90625)
    assert kd_mse(fs, fs.clone()).item() == 0.0


# ------------------------------------------------------------------------------------------ mean2_map / kd_mean2

def test_mean2_map_hand_values():
    """(mean_c F_c)²: means [[0, 0], [1.75, -2]] → [[0, 0], [3.0625, 4]] (not Σ F² / C)."""
    assert_close(mean2_map(t(FEAT)), t([[0.0, 0.0], [3.0625, 4.0]]))


def test_mean2_map_keeps_leading_dims():
    """(B, N, C, H, W) → (B, N, H, W), checked against a numpy loop."""
    rng = np.random.default_rng(4)
    feat = rng.standard_normal((2, 3, 5, 2, 4)).astype(np.float32)
    expected = np.zeros((2, 3, 2, 4))
    for idx in np.ndindex(2, 3, 2, 4):
        b, n, y, x = idx
        expected[idx] = (sum(float(feat[b, n, c, y, x]) for c in range(5)) / 5) ** 2
    out = mean2_map(torch.from_numpy(feat))
    assert out.shape == (2, 3, 2, 4)
    assert_close(out, torch.from_numpy(expected).float())


def test_kd_mean2_hand_value():
    """Student M²_mean [[0, 0], [3.0625, 4]]; teacher (1 channel) [[1, 1], [2, -2]] → [[1, 1], [4, 4]];
    squared differences 1 + 1 + 0.87890625 + 0 → /4 = 0.7197265625."""
    te = t([[[1.0, 1.0], [2.0, -2.0]]])
    assert kd_mean2(t(FEAT), te).item() == pytest.approx(0.7197265625)


# -------------------------------------------------------------------------------------- output_kd / charbonnier

@pytest.mark.parametrize("fn", [charbonnier, output_kd])
def test_charbonnier_identical_inputs_give_eps(fn):
    """d = 0 everywhere: sqrt(0 + ε²) = ε = 1e-6 by default."""
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    assert fn(x, x.clone()).item() == pytest.approx(1e-6, rel=1e-4)


@pytest.mark.parametrize("fn", [charbonnier, output_kd])
def test_charbonnier_hand_value_default_eps(fn):
    """d = [3, -4, 0, 1]: sqrt(d² + 1e-12) ≈ [3, 4, 1e-6, 1]; mean ≈ 2.00000025."""
    a = t([[3.0, -4.0], [0.0, 1.0]])
    b = torch.zeros(2, 2)
    assert fn(a, b).item() == pytest.approx((3 + 4 + 1e-6 + 1) / 4, rel=1e-6)


@pytest.mark.parametrize("fn", [charbonnier, output_kd])
def test_charbonnier_hand_value_custom_eps(fn):
    """ε = 0.5, d = [0, 1.2]: sqrt(0.25) = 0.5, sqrt(1.44 + 0.25) = 1.3; mean 0.9."""
    assert fn(t([1.0, 2.2]), t([1.0, 1.0]), 0.5).item() == pytest.approx(0.9)


def test_output_kd_is_symmetric():
    """Charbonnier depends on |d| only, so swapping student and teacher gives the same loss."""
    a, b = t([0.1, 0.9, -0.3]), t([0.4, 0.2, 0.0])
    assert output_kd(a, b).item() == pytest.approx(output_kd(b, a).item())


# ---------------------------------------------------------------------------------------------------------- gradients

def test_sd_loss_gradient_flows_to_student_only():
    """Backward through sd_loss reaches the student features and leaves a no-grad teacher untouched."""
    torch.manual_seed(0)
    s = torch.randn(1, 2, 3, 4, 4, requires_grad=True)
    te = torch.randn(1, 2, 5, 4, 4)
    sd_loss(s, te).backward()
    assert s.grad is not None and s.grad.abs().sum().item() > 0
    assert te.grad is None and not te.requires_grad


def test_sd_loss_gradient_hand_value():
    """One pixel, student F = [1, 2] (map 5), teacher map 4: L = (5 − 4)², dL/dF_c = 2·(5 − 4)·2F_c = [4, 8]."""
    s = t([[[1.0]], [[2.0]]]).requires_grad_()
    te = t([[[2.0]]])
    loss = sd_loss(s, te)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert_close(s.grad, t([[[4.0]], [[8.0]]]))


def test_td_loss_gives_every_convlstm_parameter_a_gradient():
    """A shared ConvLSTM encoding random student and teacher sequences: td_loss reaches all its weights and biases."""
    torch.manual_seed(0)
    lstm = ConvLSTM(3, 4, kernel_size=3)
    seq_s = torch.randn(2, 3, 3, 6, 6, requires_grad=True)
    seq_t = torch.randn(2, 3, 3, 6, 6)
    cell_s, _ = lstm(seq_s)
    cell_t, _ = lstm(seq_t)
    td_loss(cell_s, cell_t).backward()
    for name, p in lstm.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum().item() > 0, name
        assert torch.count_nonzero(p.grad).item() == p.numel(), name
    assert seq_s.grad is not None and seq_s.grad.abs().sum().item() > 0
