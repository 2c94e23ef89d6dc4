"""How far is a flipped/rotated cached target from the teacher's output on the flipped/rotated input?

``stdvsr distill --augment approx`` applies one dihedral transform to the student's input and to the cached
targets alike. That is exact only if the teacher is equivariant. This script measures, for each of the 7
transforms T on real LR windows from a cache: the relative L2 error of T⁻¹(teacher(T(x))) against teacher(x) for
F^SR, for the attention map Σ_c F², and the PSNR between the two SR outputs (borders of ``--border`` HR pixels
excluded). Usage::

    python pipelines/studies/augment_gap.py --cache cache/demo-edvr.zarr            # the demo teacher on the demo cache
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

from stdvsr.cache.reader import CacheReader
from stdvsr.data import dihedral, dihedral_inverse
from stdvsr.metrics import psnr, tensor_to_uint8
from stdvsr.models import DEMO_TEACHER, load_model

NAMES = {1: "flip W", 2: "flip H", 3: "rotate 180", 4: "transpose", 5: "rotate 90", 6: "rotate 270",
         7: "anti-transpose"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="a teacher cache (its LR input is used)")
    ap.add_argument("--weights", default=str(DEMO_TEACHER), help="teacher checkpoint (stdvsr format)")
    ap.add_argument("--samples", type=int, default=3, help="windows, spread over the cache's clips")
    ap.add_argument("--size", type=int, default=64, help="LR crop size (square, a multiple of 4)")
    ap.add_argument("--border", type=int, default=16, help="HR pixels excluded at each edge")
    args = ap.parse_args()

    reader = CacheReader(args.cache)
    teacher, _ = load_model(args.weights)
    n = teacher.num_frame
    rows = {t: [] for t in NAMES}
    c = slice(args.border, -args.border)
    with torch.no_grad():
        for k in range(args.samples):
            clip = reader.clips[k % len(reader.clips)]
            start = (clip["frames"] - n) * (k // len(reader.clips) + 1) // (args.samples // len(reader.clips) + 2)
            lq = reader.read_lq(clip["index"], range(start, start + n), (0, 0, args.size, args.size))
            base = teacher.forward_features(lq[None])
            att0 = base.feat_sr.pow(2).sum(1)[..., c, c]
            for t in NAMES:
                f = teacher.forward_features(dihedral(lq, t)[None])
                fs, sr = dihedral_inverse(f.feat_sr, t), dihedral_inverse(f.sr, t)
                feat_err = float((fs - base.feat_sr)[..., c, c].norm() / base.feat_sr[..., c, c].norm())
                att_err = float((fs.pow(2).sum(1)[..., c, c] - att0).norm() / att0.norm())
                sr_psnr = psnr(tensor_to_uint8(sr[0][..., c, c]), tensor_to_uint8(base.sr[0][..., c, c]))
                rows[t].append((feat_err, att_err, sr_psnr))

    table = Table(title=f"Teacher {args.weights}: transformed target vs target of the transformed input "
                        f"({args.samples} windows, LR {args.size}², border {args.border})")
    for col in ("transform", "F^SR rel. L2", "attention rel. L2", "SR PSNR (dB)"):
        table.add_column(col, justify="left" if col == "transform" else "right")
    for t, vals in rows.items():
        mean = [sum(v[i] for v in vals) / len(vals) for i in range(3)]
        table.add_row(NAMES[t], f"{mean[0]:.3f}", f"{mean[1]:.3f}", f"{mean[2]:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
