"""The losses of Space-Time Distillation (Xiao et al., CVPR 2021, §3) and the baselines it is compared with, as
pure functions of tensors, plus the ConvLSTM that TD encodes feature sequences with.

Shapes: a feature map is ``(..., C, H, W)``; leading dims are free (``(B, N)`` for N frames of B clips).
``L_d``, "the L2-norm distance" of Eq. 5 and 7, is taken as the *mean* squared difference (PyTorch's
``mse_loss``, what the attention-transfer code the paper builds on computes), so the weights λ1 = 1, λ2 = 100 keep
their meaning whatever the patch size or batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from stdvsr.names import MAPPINGS, SD_NORMS

__all__ = ["charbonnier", "attention_map", "sd_loss", "ConvLSTM", "td_loss", "kd_mse", "mean2_map", "kd_mean2",
           "output_kd", "MAPPINGS", "SD_NORMS"]


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Charbonnier loss ``mean(sqrt((pred − target)² + ε²))`` (L_rec of the paper, ε = 1e-6).

    BasicSR writes the same loss as ``sqrt(d² + eps)`` with ``eps = 1e-12`` = ε².
    """
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()


def attention_map(feat: torch.Tensor, mapping: str = "sum2") -> torch.Tensor:
    """Spatial attention map ``(..., H, W)`` of a feature map ``(..., C, H, W)`` (Eq. 1–3).

    ``sum``: Σ_c |F_c| (Eq. 1); ``sum2``: Σ_c |F_c|² (Eq. 2, the paper's choice, Eq. 4); ``max2``: max_c |F_c|² (Eq. 3).
    """
    if mapping == "sum2":
        return feat.pow(2).sum(-3)
    if mapping == "sum":
        return feat.abs().sum(-3)
    if mapping == "max2":
        return feat.pow(2).amax(-3)
    raise ValueError(f"unknown attention mapping {mapping!r}; use one of {', '.join(MAPPINGS)}")


def _l2_normalise(m: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each map ``(..., H, W)`` divided by its L2 norm over H·W (attention transfer's normalisation)."""
    flat = m.flatten(-2)
    return (flat / flat.norm(dim=-1, keepdim=True).clamp_min(eps)).view_as(m)


def sd_loss(feat_s: torch.Tensor, feat_t: torch.Tensor, mapping: str = "sum2", norm: str = "none") -> torch.Tensor:
    """L_SD (Eq. 5): the mean over frames of L_d(M^S_t, M^T_t), M = ``attention_map(F^SR, mapping)`` (Eq. 4).

    The channel counts of student and teacher may differ (the map sums or maxes over channels). ``norm="l2"``
    divides every map by its L2 norm first (attention transfer, Zagoruyko & Komodakis 2017); the paper does not.
    Every frame has the same size, so the mean over frames of per-frame means is the mean over everything.
    """
    if norm not in SD_NORMS:
        raise ValueError(f"unknown SD normalisation {norm!r}; use one of {', '.join(SD_NORMS)}")
    m_s, m_t = attention_map(feat_s, mapping), attention_map(feat_t, mapping)
    if norm == "l2":
        m_s, m_t = _l2_normalise(m_s), _l2_normalise(m_t)
    return F.mse_loss(m_s, m_t)


class ConvLSTM(nn.Module):
    """One ConvLSTM cell (Shi et al. 2015) unrolled over a sequence; TD's encoder (Eq. 6).

    The four gates come from one convolution over ``cat(x_t, h_{t-1})``: i, f, o = σ(·), g = tanh(·);
    ``c_t = f ⊙ c_{t-1} + i ⊙ g``, ``h_t = o ⊙ tanh(c_t)``; zero initial state. :meth:`forward` returns the final
    memory cell C (the paper's "temporal memory cell") and hidden state. ``forget_bias`` sets the forget gate's
    initial bias (None: PyTorch's default init, as the paper's description implies).
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3,
                 forget_bias: float | None = None):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(in_channels + hidden_channels, 4 * hidden_channels, kernel_size, 1, kernel_size // 2)
        if forget_bias is not None:
            # a positive forget bias keeps early frames in the cell (σ(1) ≈ 0.73 per step instead of ≈ 0.5), so the
            # final cell is less dominated by the last frame (Jozefowicz et al. 2015 recommend 1)
            with torch.no_grad():
                self.gates.bias[hidden_channels:2 * hidden_channels].fill_(forget_bias)

    def forward(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``seq`` ``(B, N, C, H, W)`` in temporal order → ``(c_N, h_N)``, each ``(B, hidden, H, W)``."""
        b, _, _, h, w = seq.shape
        hidden = seq.new_zeros(b, self.hidden_channels, h, w)
        cell = seq.new_zeros(b, self.hidden_channels, h, w)
        for t in range(seq.shape[1]):
            i, f, o, g = self.gates(torch.cat([seq[:, t], hidden], 1)).chunk(4, 1)
            cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
            hidden = torch.sigmoid(o) * torch.tanh(cell)
        return cell, hidden


def td_loss(cell_s: torch.Tensor, cell_t: torch.Tensor) -> torch.Tensor:
    """L_TD (Eq. 7): L_d between the student's and the teacher's temporal memory cells C^SR."""
    return F.mse_loss(cell_s, cell_t)


def kd_mse(feat_s: torch.Tensor, feat_t: torch.Tensor) -> torch.Tensor:
    """KD-MSE baseline: the mean squared difference of the feature maps themselves (same channels: use an adapter)."""
    return F.mse_loss(feat_s, feat_t)


def mean2_map(feat: torch.Tensor) -> torch.Tensor:
    """Gao et al.'s statistical map M²_mean: the channel mean, squared — ``(mean_c F_c)²`` ``(..., H, W)``."""
    return feat.mean(-3).pow(2)


def kd_mean2(feat_s: torch.Tensor, feat_t: torch.Tensor) -> torch.Tensor:
    """KD-M²_mean baseline (Gao et al., ACCV 2018): L_d between the M²_mean maps (computed on F^LR in the paper)."""
    return F.mse_loss(mean2_map(feat_s), mean2_map(feat_t))


def output_kd(sr_s: torch.Tensor, sr_t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Output-only KD: the Charbonnier distance of the student's SR frames to the teacher's."""
    return charbonnier(sr_s, sr_t, eps)
