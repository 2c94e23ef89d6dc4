"""The :class:`Distiller`: the student and what trains with it (the 1×1 adapter, the shared ConvLSTM), whose
forward is the loss of Eq. 9; and the gradient probe of the first distillation steps."""

from __future__ import annotations

import time

import torch
from torch import nn

from stdvsr.configs import DistillConfig
from stdvsr.distill.plan import distilled_feature, term_weights, uses
from stdvsr.distill.targets import Targets
from stdvsr.losses import ConvLSTM, charbonnier, kd_mean2, kd_mse, output_kd, sd_loss, td_loss
from stdvsr.perf import autocast


class Distiller(nn.Module):
    """The student and what trains with it — the 1×1 adapter and the shared ConvLSTM — and the loss of Eq. 9.

    ``forward`` returns the loss terms; it is the module DDP wraps, so gradients of the student, the adapter
    and the ConvLSTM are all synchronised. Teacher targets never require grad.

    ``adapter="fit"``: the adapter has no bias and is set, at the first distillation step, to the least-squares map
    from the student's features to the teacher's on that batch (summed over ranks), so L_TD / KD-MSE start from
    the student as it is instead of from a random offset that the student would first rewrite its features to
    cancel (the measured switch-on shock: λ2·L_TD ≈ 17× L_rec at the first step with PyTorch's default init).
    """

    def __init__(self, student: nn.Module, cfg: DistillConfig, teacher_channels: int, student_channels: int,
                 footage: bool = False, precision: str = "fp32"):
        super().__init__()
        self.student = student
        self.precision = precision  # resolved (stdvsr.perf): the networks' forward passes run in it, the losses fp32
        # LR footage (no ground truth): L_rec's target is the teacher's SR, so output KD is not a term of its own
        self.terms = uses(cfg) - ({"output"} if footage else set())
        self.weights = term_weights(cfg)
        self.feature = distilled_feature(cfg)
        self.cfg = cfg
        matches_features = bool(self.terms & {"td", "mse"})
        self.adapter = (nn.Conv2d(student_channels, teacher_channels, 1, bias=cfg.adapter == "default")
                        if matches_features and student_channels != teacher_channels else None)
        if self.adapter is not None and cfg.adapter == "fit":
            self.register_buffer("adapter_fitted", torch.zeros((), dtype=torch.bool))
        self.convlstm = (ConvLSTM(teacher_channels, cfg.td_hidden, forget_bias=cfg.td_forget_bias)
                         if "td" in self.terms else None)
        self.probe_feat = None  # with probe=True: the student's F (B·N, C, H, W) and N of the last forward, for
                                # where each term's gradient lands
        self.student_done = 0.0  # perf_counter() when the last forward's student pass ended (the step-time split)

    @torch.no_grad()
    def fit_adapter(self, feat: torch.Tensor, target: torch.Tensor, ridge: float = 1e-4) -> None:
        """Least squares ``W = argmin ‖W·f_s − f_t‖² + ridge·tr(XᵀX)/C·‖W‖²`` over every pixel of the batch."""
        x = feat.transpose(-3, -1).reshape(-1, feat.shape[-3]).double()
        y = target.transpose(-3, -1).reshape(-1, target.shape[-3]).double()
        xtx, xty = x.T @ x, x.T @ y
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(xtx)
            torch.distributed.all_reduce(xty)
        reg = ridge * xtx.diagonal().mean().clamp_min(1e-12)
        w = torch.linalg.solve(xtx + reg * torch.eye(xtx.shape[0], dtype=xtx.dtype, device=xtx.device), xty)
        self.adapter.weight.copy_(w.T.reshape(self.adapter.weight.shape).to(self.adapter.weight.dtype))
        self.adapter_fitted.fill_(True)

    def forward(self, windows: torch.Tensor, gt: torch.Tensor | None, targets: Targets, kd_weight: float,
                probe: bool = False) -> dict:
        """Loss terms for a batch; ``kd_weight`` multiplies every distillation term (0: L_rec only, warm-up).
        ``gt`` None (LR footage): L_rec is the Charbonnier distance to the teacher's SR, ``targets["sr"]``."""
        b, n = windows.shape[:2]
        with autocast(windows.device, self.precision):
            out = self.student.forward_features(windows.flatten(0, 1))
        self.student_done = now(out.sr.device)
        sr = out.sr.float().view(b, n, *out.sr.shape[1:])
        losses = {"rec": charbonnier(sr, gt if gt is not None else targets["sr"])}
        if not (kd_weight > 0 and self.terms):
            losses["total"] = losses["rec"]
            return losses
        cfg = self.cfg
        raw = out.feat_sr if self.feature == "sr" else out.feat_lr  # in the student's graph: the probe's point
        f = raw.float()
        feat = f.view(b, n, *f.shape[1:])
        if probe:
            self.probe_feat = (raw, n)
        t_feat = targets.get("feat")
        if self.adapter is not None and hasattr(self, "adapter_fitted") and not self.adapter_fitted:
            self.fit_adapter(feat, t_feat)
        with autocast(windows.device, self.precision):
            adapted = self.adapter(feat.flatten(0, 1)).view(b, n, -1, *feat.shape[-2:]).float() \
                if self.adapter is not None else feat
        if "sd" in self.terms:
            if t_feat is not None:
                losses["sd"] = sd_loss(feat, t_feat, cfg.attention, cfg.sd_norm)
            else:  # cached attention maps (Σ_c F², the default mapping)
                losses["sd"] = sd_loss(feat, targets["attention"].unsqueeze(2).sqrt(), cfg.attention, cfg.sd_norm)
        if "td" in self.terms:
            # contiguous: the ConvLSTM's convolutions measured slower channels-last (stdvsr.perf)
            with autocast(windows.device, self.precision):
                cell_s, _ = self.convlstm(adapted.contiguous())
                cell_t, _ = self.convlstm(t_feat)
            losses["td"] = td_loss(cell_s.float(), cell_t.float())
        if "mse" in self.terms:
            losses["mse"] = kd_mse(adapted, t_feat)
        if "mean2" in self.terms:
            losses["mean2"] = kd_mean2(feat, t_feat)
        if "output" in self.terms:
            losses["output"] = output_kd(sr, targets["sr"])
        total = losses["rec"]
        for name in self.terms:
            total = total + kd_weight * self.weights[name] * losses[name]
        losses["total"] = total
        return losses


def gradient_probe(distiller: Distiller, losses: dict, kd_weight: float) -> dict:
    """Where each weighted loss term pushes the student (the mechanism, not the score): the L2 norm of its gradient
    on the student's parameters, its ratio to L_rec's, their cosine, the share that lands in the reconstruction
    head (``head`` + ``conv_last``), and the share of its gradient on the student's F (per frame of the clip)."""
    names = [k for k in losses if k not in ("total",)]
    params = [(n, p) for n, p in distiller.student.named_parameters() if p.requires_grad]
    grads = {}
    for k in names:
        weight = 1.0 if k == "rec" else kd_weight * distiller.weights[k]
        outs = [weight * losses[k]]
        inputs = [p for _, p in params]
        feat, n = distiller.probe_feat or (None, 0)
        if feat is not None:
            inputs = inputs + [feat]
        g = torch.autograd.grad(outs, inputs, retain_graph=True, allow_unused=True)
        flat = torch.cat([(gi if gi is not None else torch.zeros_like(p)).flatten()
                          for gi, (_, p) in zip(g, params)])
        head = sum(float((gi if gi is not None else torch.zeros_like(p)).pow(2).sum())
                   for gi, (n, p) in zip(g, params) if n.startswith(("head.", "conv_last.")))
        frames = None
        if feat is not None and g[-1] is not None:
            per = g[-1].float().pow(2).reshape(-1, n, g[-1][0].numel()).sum(dim=(0, 2))
            frames = [round(float(v), 4) for v in per / per.sum().clamp_min(1e-30)]
        grads[k] = (flat, head, frames)
    rec = grads["rec"][0]
    out = {}
    for k, (flat, head, frames) in grads.items():
        norm = float(flat.norm())
        out[k] = {"grad_norm": norm, "ratio_to_rec": norm / max(float(rec.norm()), 1e-30),
                  "cos_rec": float(torch.nn.functional.cosine_similarity(flat, rec, dim=0)),
                  "head_share": head / max(norm ** 2, 1e-30), "frame_share": frames}
    return out


def student_channels(student: nn.Module, feature: str, lq_size: int = 16) -> tuple[int, int]:
    """(F^SR channels, F^LR channels) of a student, by a tiny forward pass."""
    with torch.no_grad():
        x = torch.zeros(1, student.num_frame, 3, lq_size, lq_size, device=next(student.parameters()).device)
        f = student.forward_features(x)
    return f.feat_sr.shape[1], f.feat_lr.shape[1]


def now(device: torch.device) -> float:
    """``time.perf_counter()`` once the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
