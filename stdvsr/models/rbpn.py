"""RBPN (Haris, Shakhnarovich & Ukita, "Recurrent Back-Projection Network for Video Super-Resolution", CVPR 2019).

The STD paper's second teacher (Table 5: "minor adjustments to the last convolutional layer of RBPN"). This is the
network of the official code (github.com/alterzero/RBPN-PyTorch: ``rbpn.py``, ``dbpns.py``, ``base_networks.py``)
with **its constructor arguments and state-dict keys**, so its checkpoints (a plain state dict, from
``nn.DataParallel`` with a ``module.`` prefix) load with ``strict=True`` through
``load_model(path, arch="rbpn")``, which reads the configuration off the tensor shapes (:func:`infer_config`).

For a window of ``N`` LR frames centred on frame ``c`` (each ``(h, w)``, in [0, 1]) and a flow per neighbour:
``feat0`` (3×3 conv + PReLU, ``base_filter`` channels) on the centre frame gives the first LR state; ``feat1`` on
``cat(centre, neighbour, flow)`` (8 channels) gives each neighbour's LR feature. Then one **projection** per
neighbour, in window order: the single-image branch ``DBPN`` (a 1×1 conv to ``feat`` channels, up/down
back-projection blocks — 8×8 (de)convs of stride 4 at ×4 — and a 1×1 conv over the up-blocks' outputs, newest
first) lifts the state to HR (``h0``); the multi-image branch ``res_feat1`` (residual blocks at ``base_filter``,
then a deconv to HR) lifts the neighbour feature (``h1``); ``H = h0 + res_feat2(h0 − h1)`` is that step's HR map,
and ``res_feat3`` (residual blocks, then a strided conv back to LR) makes the next state. Every activation is a
PReLU (one slope each; a residual block uses its one PReLU twice). ``output`` (3×3 conv) maps the concatenation
of the ``N − 1`` HR maps to RGB; there is no residual base (the official ``--residual`` is off by default).
``num_stages`` is the number of up-blocks in ``DBPN`` (the official code builds 3 whatever it is given; other
values here give ``num_stages`` up- and ``num_stages − 1`` down-blocks, official keys at 3).

**Inputs, as the official data pipeline makes them** (``dataset.py``, ``data.py``, ``eval.py``): RGB tensors in
[0, 1] (``ToTensor``; no mean subtraction), LR frames from PIL bicubic ×1/4 (BI; the STD paper's EDVR teacher uses
BD), the output unclamped (``eval.py`` clamps to [0, 1] when saving). Neighbours (``load_img_future``, the default
``future_frame=True``) are frames ``t−k … t−1, t+1 … t+k`` in time order — this network's window order with the
centre skipped, so no reordering happens inside. (The past-only mode, ``future_frame=False``, orders neighbours
nearest first and has no centred window; its checkpoints are not supported.) At a clip's ends the official test
set substitutes the **centre frame** for a missing neighbour; stdvsr windows use their padding mode instead
(replicate by default), so the first and last ``k`` frames of a clip differ from the official outputs.

**Flow** (``dataset.get_flow``): ``pyflow.coarse2fine_flow(centre, neighbour)`` on the LR RGB frames as float64 in
[0, 1] (uint8 / 255), stacked as ``(u, v)`` — channel 0 horizontal, channel 1 vertical, in LR pixels, from the
centre to the neighbour (``centre(y, x) ≈ neighbour(y + v, x + u)``); cast to float32 by ``main.py``.
``model(lq, flows=flows)`` takes them in that layout: a list of ``N − 1`` ``(B, 2, h, w)`` tensors (or one
``(B, N − 1, 2, h, w)`` tensor) in window order, centre skipped — then ``model(lq, flows)`` equals the official
``forward(lq[:, c], [lq[:, j] for j ≠ c], flows)``. Without ``flows`` the network computes them with OpenCV
(:mod:`stdvsr.models.flow`; ``flow_method``), from 8-bit grey frames, without gradient — so only the call with
``flows`` is a pure torch graph (traceable, exportable). pyflow (a C++ extension) is not a dependency of stdvsr
and could not be run here, so its stand-in was chosen by measurement (408 centre/neighbour pairs at distances
1–3 of BD and BI ×4 LR frames of carphone, bikes and bigbuckbunny, 44×36 to 160×90; one thread):

=========================================  ==============  =============  =================  ===========
estimator                                  pyflow energy   warping error  EPE, known flow    ms / pair
=========================================  ==============  =============  =================  ===========
no flow (zeros)                            0.0542          4.52           1.80               —
Farnebäck, OpenCV defaults                 0.0414          3.40           0.46               1.2
Farnebäck, pyflow's pyramid (0.75, w 9)    0.0398          3.19           0.42               2.4
DIS ultrafast preset (finest scale 2)      0.0411          3.42           0.42               0.3
**DIS medium preset, finest scale 0**      **0.0327**      **2.72**       **0.13**           2.8
=========================================  ==============  =============  =================  ===========

"pyflow energy" is the objective pyflow's parameters describe (Ce Liu's coarse-to-fine flow: Charbonnier colour
constancy on [0, 1] RGB plus alpha = 0.012 × Charbonnier smoothness of the flow gradient, ε = 1e-3; per pixel, lower
is nearer pyflow's optimum); "warping error" is the mean |centre − warped neighbour| on the 0–255 scale over pixels
whose flow stays inside the frame; "EPE, known flow" is the end-point error (LR pixels) on 136 cases: 68 real LR
frames, each moved by a smooth known flow of amplitude 1 and of 3 pixels. DIS at full LR resolution (dense patches +
a variational refinement, the same kind of energy pyflow minimises) wins every accuracy column; it and the pyramid
Farnebäck disagree by 0.57 px on average. So ``flow_method="dis"`` is the default; its remaining difference to
pyflow (grey instead of RGB data term, other smoothness weight) is not measurable here.

**F^SR and the paper's adjustment.** The official ``output`` conv already reads an HR feature map: the
``(N − 1)·feat`` channels (384 for the official 7 frames and 64 features) of the concatenated projections, which
is F^SR of this network as published (``sr_feat=None``; ``conv_last`` is then ``output.conv``). That map is 6× as
wide as EDVR's 64-channel F^SR, which the students' feature heads, the 1×1 adapter and the shared ConvLSTM of TD
are sized for. The paper says only "we make minor adjustments to the last convolutional layer of RBPN to make it
suitable for our STD scheme" (with Table 5). Our reading: ``output``
becomes a 3×3 conv + PReLU from the concatenation to ``sr_feat`` (64) channels, and a new ``conv_last`` (3×3)
makes RGB — ``sr_feat=64`` gives F^SR of EDVR's width; such a network is trained (or fine-tuned) as a teacher,
since official weights have no ``conv_last``. F^LR is the LR state after the last projection
(``res_feat3`` of the last HR map, ``base_filter`` channels), which the official loop computes and discards.

**The cache.** EDVR's cache stores its 64-channel LR trunk and re-runs a small head (2 pixel shuffles, 3 convs)
to rebuild F^SR. RBPN has no such split: its HR maps are made inside every projection, so the only LR tensors
that determine F^SR are each projection's two inputs (the state and the neighbour feature, ``2·(N−1)·base_filter``
= 3,072 LR channels), and rebuilding F^SR from them re-runs ``DBPN``, ``res_feat1``, ``res_feat2`` and ``output``:
72 % of the network's 147 M multiply-adds per LR pixel (measured with hooks on the official configuration).
Per frame at Vimeo90K's 112×64 LR, fp16: that LR "trunk" 44.0 MB; F^SR of the official RBPN (384 channels)
88.1 MB, of ``sr_feat=64`` 14.7 MB (as EDVR's F^SR tier); F^LR 3.7 MB; SR 0.69 MB; the attention map 0.23 MB —
against EDVR's trunk, 0.92 MB. So an RBPN cache stores F^SR (or the attention map and SR) directly, never a trunk.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn

from stdvsr.models.common import Features
from stdvsr.models.flow import FLOW_METHODS, flows_as_list, window_flows

#: scale → (kernel, stride, padding) of the back-projection (de)convs, as in the official code.
PROJECTION_KERNELS = {2: (6, 2, 2), 4: (8, 4, 2), 8: (12, 8, 2)}


class ConvBlock(nn.Module):
    """conv, then PReLU unless ``activation`` is False (keys ``conv``, ``act``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, activation: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding)
        self.act = nn.PReLU() if activation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x if self.act is None else self.act(x)


class DeconvBlock(nn.Module):
    """Transposed conv, then PReLU (keys ``deconv``, ``act``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(cin, cout, kernel, stride, padding)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.deconv(x))


class ResnetBlock(nn.Module):
    """act(x + conv2(act(conv1(x)))) with one PReLU used twice (keys ``conv1``, ``conv2``, ``act``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.act(self.conv1(x))) + x)


class UpBlock(nn.Module):
    """Up-projection (DBPN): ``h0 = up(x)``, back down, and the up-projected LR error corrects ``h0``."""

    def __init__(self, channels: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.up_conv1 = DeconvBlock(channels, channels, kernel, stride, padding)
        self.up_conv2 = ConvBlock(channels, channels, kernel, stride, padding)
        self.up_conv3 = DeconvBlock(channels, channels, kernel, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.up_conv1(x)
        return self.up_conv3(self.up_conv2(h0) - x) + h0


class DownBlock(nn.Module):
    """Down-projection (DBPN): ``l0 = down(x)``, back up, and the down-projected HR error corrects ``l0``."""

    def __init__(self, channels: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.down_conv1 = ConvBlock(channels, channels, kernel, stride, padding)
        self.down_conv2 = DeconvBlock(channels, channels, kernel, stride, padding)
        self.down_conv3 = ConvBlock(channels, channels, kernel, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l0 = self.down_conv1(x)
        return self.down_conv3(self.down_conv2(l0) - x) + l0


class DBPNS(nn.Module):
    """RBPN's single-image branch (``dbpns.Net``): LR state ``base_filter`` → HR map ``feat`` channels."""

    def __init__(self, base_filter: int, feat: int, num_stages: int, scale: int):
        super().__init__()
        kernel = PROJECTION_KERNELS[scale]
        self.num_stages = num_stages
        self.feat1 = ConvBlock(base_filter, feat, 1, 1, 0)
        for i in range(1, num_stages + 1):  # creation order up1, down1, up2, down2, up3 as the official code
            setattr(self, f"up{i}", UpBlock(feat, *kernel))
            if i < num_stages:
                setattr(self, f"down{i}", DownBlock(feat, *kernel))
        self.output = ConvBlock(num_stages * feat, feat, 1, 1, 0, activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up1(self.feat1(x))
        ups = [h]
        for i in range(2, self.num_stages + 1):
            h = getattr(self, f"up{i}")(getattr(self, f"down{i - 1}")(h))
            ups.append(h)
        return self.output(torch.cat(ups[::-1], dim=1))  # newest first: cat(h3, h2, h1)


class RBPN(nn.Module):
    """RBPN ×``scale_factor`` video SR. Arguments and defaults as the official ``main.py`` / ``eval.py``
    (``base_filter=256, feat=64, num_stages=3, n_resblock=5, nFrames=7``), plus ``sr_feat`` (the STD adjustment
    of the last conv, see the module docstring) and ``flow_method`` (the OpenCV estimator used when no flows are
    given).

    ``forward(lq, flows=None)``: ``lq`` is ``(B, nFrames, 3, h, w)`` in [0, 1] (any ``h``, ``w``); returns the
    centre frame's ``(B, 3, s·h, s·w)`` reconstruction.
    """

    def __init__(self, num_channels: int = 3, base_filter: int = 256, feat: int = 64, num_stages: int = 3,
                 n_resblock: int = 5, nFrames: int = 7, scale_factor: int = 4, sr_feat: int | None = None,
                 flow_method: str = "dis"):
        super().__init__()
        if scale_factor not in PROJECTION_KERNELS:
            raise ValueError(f"RBPN supports scale factors {sorted(PROJECTION_KERNELS)}, got {scale_factor}")
        if nFrames < 3 or nFrames % 2 == 0:
            raise ValueError(f"RBPN needs an odd window of at least 3 frames (centre ± k), got nFrames={nFrames}")
        if num_stages < 1 or n_resblock < 0:
            raise ValueError(f"bad RBPN depth: num_stages={num_stages}, n_resblock={n_resblock}")
        if flow_method not in FLOW_METHODS:
            raise ValueError(f"unknown flow_method {flow_method!r}; use one of {', '.join(FLOW_METHODS)}")
        self.num_frame, self.scale, self.num_channels = nFrames, scale_factor, num_channels
        self.center_frame_idx = nFrames // 2
        self.sr_feat, self.flow_method = sr_feat, flow_method
        kernel = PROJECTION_KERNELS[scale_factor]

        self.feat0 = ConvBlock(num_channels, base_filter, 3, 1, 1)
        self.feat1 = ConvBlock(2 * num_channels + 2, base_filter, 3, 1, 1)  # centre, neighbour, flow
        self.DBPN = DBPNS(base_filter, feat, num_stages, scale_factor)
        self.res_feat1 = nn.Sequential(*(ResnetBlock(base_filter) for _ in range(n_resblock)),
                                       DeconvBlock(base_filter, feat, *kernel))
        self.res_feat2 = nn.Sequential(*(ResnetBlock(feat) for _ in range(n_resblock)),
                                       ConvBlock(feat, feat, 3, 1, 1))
        self.res_feat3 = nn.Sequential(*(ResnetBlock(feat) for _ in range(n_resblock)),
                                       ConvBlock(feat, base_filter, *kernel))
        if sr_feat is None:
            self.output = ConvBlock((nFrames - 1) * feat, num_channels, 3, 1, 1, activation=False)
        else:
            self.output = ConvBlock((nFrames - 1) * feat, sr_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(sr_feat, num_channels, 3, 1, 1)

        # as the official code: Kaiming-normal weights, zero biases, for convs and transposed convs alike
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def conv_last(self) -> nn.Conv2d:
        """The conv that makes RGB from F^SR: the official ``output.conv``, or with ``sr_feat`` the added conv."""
        added = self._modules.get("conv_last")
        return self.output.conv if added is None else added

    # ------------------------------------------------------------------------------------------------ stages
    def _inputs(self, lq: torch.Tensor, flows) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Centre frame, neighbours (window order, centre skipped) and their flows (given, or computed)."""
        if lq.dim() != 5 or lq.shape[1] != self.num_frame or lq.shape[2] != self.num_channels:
            raise ValueError(f"RBPN expects (B, {self.num_frame}, {self.num_channels}, h, w) input, "
                             f"got {tuple(lq.shape)}")
        c = self.center_frame_idx
        neighbours = [lq[:, j] for j in range(self.num_frame) if j != c]
        flows = window_flows(lq, self.flow_method) if flows is None else flows_as_list(flows)
        b, _, _, h, w = lq.shape
        if len(flows) != len(neighbours) or any(tuple(f.shape) != (b, 2, h, w) for f in flows):
            raise ValueError(f"RBPN needs {len(neighbours)} flows of shape ({b}, 2, {h}, {w}) (one per neighbour, "
                             f"centre skipped), got {[tuple(f.shape) for f in flows]}")
        return lq[:, c], neighbours, [f.to(lq.dtype) for f in flows]

    def project(self, center: torch.Tensor, neighbours: Sequence[torch.Tensor], flows: Sequence[torch.Tensor],
                final_state: bool = False) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The recurrent projections: the ``N − 1`` HR maps ``H_j`` (window order) and, with ``final_state``,
        the LR state after the last one (F^LR). The neighbour branch (``feat1``, ``res_feat1``) does not depend
        on the recurrence, so it runs for all neighbours as one batch (the same arithmetic as the official loop)."""
        m, b = len(neighbours), center.shape[0]
        pairs = torch.cat([torch.cat((center, nbr, flow), dim=1) for nbr, flow in zip(neighbours, flows)])
        h1 = self.res_feat1(self.feat1(pairs)).split(b)
        state = self.feat0(center)
        maps = []
        for j in range(m):
            h0 = self.DBPN(state)
            maps.append(h0 + self.res_feat2(h0 - h1[j]))
            if j < m - 1 or final_state:
                state = self.res_feat3(maps[-1])
        return maps, (state if final_state else None)

    def reconstruct(self, maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """HR maps → ``(F^SR, SR)``: F^SR is what enters :attr:`conv_last`."""
        feat = torch.cat(list(maps), dim=1)
        if self.sr_feat is None:
            return feat, self.output(feat)
        feat_sr = self.output(feat)
        return feat_sr, self.conv_last(feat_sr)

    # ----------------------------------------------------------------------------------------- the contract
    def forward_features(self, lq: torch.Tensor, flows=None) -> Features:
        center, neighbours, flows = self._inputs(lq, flows)
        maps, feat_lr = self.project(center, neighbours, flows, final_state=True)
        feat_sr, sr = self.reconstruct(maps)
        return Features(sr, feat_sr, feat_lr)

    def forward(self, lq: torch.Tensor, flows=None) -> torch.Tensor:
        center, neighbours, flows = self._inputs(lq, flows)
        return self.reconstruct(self.project(center, neighbours, flows)[0])[1]

    def forward_windows(self, frames: torch.Tensor, windows: torch.Tensor, chunk: int = 1) -> Features:
        """All windows of a clip (as :meth:`EDVR.forward_windows`): ``frames`` ``(B, N, 3, h, w)``, ``windows``
        ``(W, nFrames)`` frame indices; returns Features with leading dims ``(B, W)``. Flows are computed per
        window (no per-frame work is shared: every window has its own centre)."""
        outs = [features for _, features in self.iter_windows(frames, windows, chunk)]
        return Features(*(torch.cat(parts, dim=1) for parts in zip(*outs)))

    def iter_windows(self, frames: torch.Tensor, windows: torch.Tensor,
                     chunk: int = 1) -> Iterator[tuple[range, Features]]:
        """:meth:`forward_windows` one chunk of windows at a time: yields ``(window positions, Features)``."""
        b = frames.shape[0]
        if windows.dim() != 2 or windows.shape[1] != self.num_frame:
            raise ValueError(f"windows must be (W, {self.num_frame}) frame indices, got {tuple(windows.shape)}")
        for start in range(0, len(windows), chunk):
            part = windows[start:start + chunk]
            out = self.forward_features(frames[:, part].flatten(0, 1))
            yield range(start, start + len(part)), Features(*(x.view(b, len(part), *x.shape[1:]) for x in out))


# ------------------------------------------------------------------------------------------- checkpoints
def infer_config(state: dict) -> dict:
    """Constructor arguments of the RBPN whose state dict (official keys, ``module.`` already stripped) this is,
    read off the tensor shapes; raises ValueError naming what is missing when it is not an RBPN state dict."""
    need = ("feat0.conv.weight", "feat1.conv.weight", "DBPN.feat1.conv.weight", "DBPN.output.conv.weight",
            "DBPN.up1.up_conv1.deconv.weight", "output.conv.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"not an RBPN state dict: no {', '.join(missing[:3])}")
    base_filter, num_channels = state["feat0.conv.weight"].shape[:2]
    feat = state["DBPN.feat1.conv.weight"].shape[0]
    kernel = state["DBPN.up1.up_conv1.deconv.weight"].shape[-1]
    scales = {k: s for s, (k, _, _) in PROJECTION_KERNELS.items()}
    if kernel not in scales:
        raise ValueError(f"RBPN projection kernel {kernel} matches no scale factor")
    n_resblock = sum(1 for k in state if k.startswith("res_feat1.") and k.endswith(".conv1.weight"))
    has_last = "conv_last.weight" in state
    config = {"num_channels": int(num_channels), "base_filter": int(base_filter), "feat": int(feat),
              "num_stages": int(state["DBPN.output.conv.weight"].shape[1] // feat), "n_resblock": n_resblock,
              "nFrames": int(state["output.conv.weight"].shape[1] // feat + 1), "scale_factor": scales[kernel]}
    if has_last:
        config["sr_feat"] = int(state["conv_last.weight"].shape[1])
    return config
