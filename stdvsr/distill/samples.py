"""Stage two's training samples: clips of ``clip_frames`` frames at one HR crop, read from the cache with every
frame's student window, and the batches of each rank in an order fixed by (seed, step)."""

from __future__ import annotations

import numpy as np
import torch

from stdvsr.cache.reader import CacheReader, draw_crop
from stdvsr.data import window_indices
from stdvsr.distill.plan import held_back
from stdvsr.errors import StdvsrError
from stdvsr.training import StepBatches


class DistillDataset(torch.utils.data.Dataset):
    """Samples of ``clip_frames`` consecutive frames of a cached clip at a random HR crop of ``patch_size``.

    Item ``(epoch, i)`` depends on ``(seed, epoch, i)`` only. It holds ``windows`` ``(N, student_frames, 3, p/s,
    p/s)`` — every frame's student window, padded at the clip's ends with the cache's padding mode — ``gt``
    ``(N, 3, p, p)``, the cached ``tiers`` for the crop (see :meth:`CacheReader.read`), and ``transform`` (the
    dihedral augmentation to apply, 0 = none). With ``teacher_frames`` it also holds the whole LR frames the
    teacher's windows need (``teacher_lq``, ``teacher_index``) for the online teacher. ``holdout``: the share of
    each clip's last frames left out (:func:`~stdvsr.distill.plan.held_back`; LR footage, whose validation they are).
    """

    def __init__(self, reader: CacheReader, clip_frames: int, student_frames: int, patch_size: int,
                 tiers: list[str], seed: int, augment: str = "none", teacher_frames: int | None = None,
                 holdout: float = 0.0):
        self.reader, self.n, self.student_frames = reader, clip_frames, student_frames
        self.patch_size, self.tiers, self.seed, self.augment = patch_size, tiers, seed, augment
        self.teacher_frames = teacher_frames
        self.padding = reader.fingerprint["padding"]
        s = reader.scale
        for c in reader.clips:
            H, W = reader.groups[c["group"]]["hr_size"]
            if patch_size > min(H, W):
                raise StdvsrError(f"--patch-size {patch_size} is larger than the {W}×{H} frames of clip {c['name']}")
        assert patch_size % s == 0
        # LR footage: a clip's last frames (holdout) are validation's, never a training target
        self.items = [(c["index"], t) for c in reader.clips
                      for t in range(c["frames"] - held_back(c["frames"], holdout) - clip_frames + 1)]

    def __len__(self) -> int:
        return len(self.items)

    def _context(self, length: int, start: int, frames: int) -> tuple[range, torch.Tensor]:
        """The frames the windows of ``start … start+N-1`` read, and each window's indices into them."""
        index = [window_indices(t, length, frames, self.padding) for t in range(start, start + self.n)]
        lo, hi = min(map(min, index)), max(map(max, index)) + 1
        return range(lo, hi), torch.tensor(index) - lo

    def __getitem__(self, key) -> dict:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        index, start = self.items[i]
        clip = self.reader.clips[index]
        # the same crop CacheDataset draws for this key; then the augmentation from the same stream
        top, left, rng = draw_crop(self.reader, index, self.patch_size, np.random.default_rng([self.seed, epoch, i]))
        s, p = self.reader.scale, self.patch_size
        transform = int(rng.integers(0, 8)) if self.augment == "approx" else 0
        # the student's windows are read below (with their context), so the plain LR crop is not read here
        item = self.reader.read(index, range(start, start + self.n), (top, left, p, p), self.tiers, lq=False)
        context, local = self._context(clip["frames"], start, self.student_frames)
        lq = self.reader.read_lq(index, context, (top // s, left // s, p // s, p // s))
        item["windows"] = lq[local]
        item["transform"] = transform
        if self.teacher_frames:
            context, local = self._context(clip["frames"], start, self.teacher_frames)
            item["teacher_lq"] = self.reader.read_lq(index, context)
            item["teacher_index"] = local
        return item


def collate(items: list[dict]) -> dict:
    """Stack the tensors of a batch; every other value (clip name, index, frames, box, transform) becomes a list
    of the items' values, tuples transposed as ``default_collate`` does (``box`` is ``[tops, lefts]``), but of
    plain Python numbers: a DataLoader worker sends each tensor through a shared-memory segment of its own, and
    eight tiny tensors cost the step more than the frames do (the main process's wait for a warm batch, measured:
    4.3 → 2.1 ms on a quiet machine, 8.0–9.4 → 4.1–4.4 ms under load). The online teacher's whole frames stay a
    list (clips differ in size)."""
    keep = {"teacher_lq", "teacher_index"}
    out = {}
    for key, first in items[0].items():
        values = [it[key] for it in items]
        if key in keep:
            out[key] = values
        elif isinstance(first, torch.Tensor):
            out[key] = torch.utils.data.default_collate(values)
        elif isinstance(first, tuple):
            out[key] = [list(column) for column in zip(*values)]
        else:
            out[key] = values
    return out


class RankBatches(torch.utils.data.Sampler):
    """Rank r's slice of every global batch of :class:`StepBatches` (``batch_size`` per rank)."""

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int, rank: int, world: int):
        self.inner = StepBatches(num_items, batch_size * world, seed, start_step)
        self.rank, self.batch_size = rank, batch_size

    def __iter__(self):
        for batch in self.inner:
            yield batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def __len__(self) -> int:
        return len(self.inner)
