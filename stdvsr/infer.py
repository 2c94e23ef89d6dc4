"""Running a multi-frame network over whole clips: sliding windows with the clip's padding mode, frame sizes padded
to what the network accepts, batched windows."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from stdvsr.data import window_indices


#: What every student's LR height and width are padded to (FastDVDnet halves twice, VESPCN's flow works at ¼).
MULTIPLE = 4


def padded_size(h: int, w: int, multiple: int = MULTIPLE) -> tuple[int, int]:
    """``(h, w)`` rounded up to multiples of ``multiple`` — the LR size a network is run at."""
    return h + (-h) % multiple, w + (-w) % multiple


def pad_bottom_right(lq: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``lq`` ``(..., 3, h0, w0)`` replicate-padded on the bottom and right to ``(..., 3, h, w)``; the network's output
    is cropped back to ``s·h0 × s·w0``. The one padding rule of inference (evaluate, upscale, export, quantize)."""
    h0, w0 = lq.shape[-2:]
    if (h0, w0) == (h, w):
        return lq
    flat = F.pad(lq.reshape(-1, *lq.shape[-3:]), (0, w - w0, 0, h - h0), mode="replicate")
    return flat.reshape(*lq.shape[:-2], h, w)


def pad_to_multiple(lq: torch.Tensor, multiple: int = MULTIPLE) -> torch.Tensor:
    """``lq`` replicate-padded on the bottom and right to sizes that are multiples of ``multiple``: how the teacher
    runs over whole frames for the cache and for ``distill --online-teacher`` (EDVR's pyramid needs multiples of 4),
    as :func:`upscale_frames` runs every network."""
    return pad_bottom_right(lq, *padded_size(*lq.shape[-2:], multiple))


@torch.no_grad()
def upscale_frames(model: nn.Module, lq: torch.Tensor, frames: Sequence[int] | None = None,
                   padding: str = "replicate", batch_size: int = 4, multiple: int = MULTIPLE) -> torch.Tensor:
    """SR of frames ``frames`` (default: all) of one clip ``lq`` ``(T, 3, h, w)`` → ``(len(frames), 3, s·h, s·w)``.

    Each output frame t comes from the ``model.num_frame`` window centred on t (``padding`` beyond the clip's ends).
    LR frames whose size is not a multiple of ``multiple`` are replicate-padded on the bottom/right and the output
    cropped back, so any frame size works. Runs on the model's device; returns CPU float32 clamped to [0, 1].
    """
    device = next(model.parameters()).device
    t, _, h, w = lq.shape
    frames = list(range(t)) if frames is None else list(frames)
    lq = pad_bottom_right(lq, *padded_size(h, w, multiple))
    scale = model.scale
    out = []
    for i in range(0, len(frames), batch_size):
        chunk = frames[i:i + batch_size]
        index = torch.tensor([window_indices(f, t, model.num_frame, padding) for f in chunk])
        sr = model(lq[index].to(device))
        out.append(sr[..., : h * scale, : w * scale].clamp_(0, 1).float().cpu())
    return torch.cat(out)
