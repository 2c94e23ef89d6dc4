"""Does SD transfer the teacher's spatial attention? Feature scale and attention-map agreement, teacher vs students.

For the same training crops (drawn from the cache exactly as ``stdvsr distill`` draws them), prints per student
checkpoint the mean |F^SR| of teacher and student, the mean attention map M = Σ_c F² of each, and the Pearson
correlation between the student's and the teacher's maps (averaged over crops and frames).

    python pipelines/studies/attention_similarity.py runs/ablations/fastdvdnet-quarter_kd-none_seed0/student.pth \
        runs/ablations/fastdvdnet-quarter_kd-std_seed0/student.pth --cache cache/demo-4clips-edvr.zarr
"""

from __future__ import annotations

import argparse

import torch

from stdvsr.cache import CacheReader
from stdvsr.distill import DistillDataset, cached_targets
from stdvsr.losses import attention_map
from stdvsr.models import load_model
from stdvsr.progress import stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("students", nargs="+", help="student.pth files")
    ap.add_argument("--cache", default="cache/demo-4clips-edvr.zarr")
    ap.add_argument("--samples", type=int, default=8, help="training crops (7-frame clips) to compare on")
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=5, help="seed of the crops (not a training seed)")
    args = ap.parse_args()
    reader = CacheReader(args.cache)
    head = reader.head()
    out = stdout()
    for path in args.students:
        student = load_model(path)[0].eval()
        data = DistillDataset(reader, 7, student.num_frame, args.patch_size, ["trunk"], seed=args.seed)
        rows = []
        with torch.no_grad():
            for i in range(args.samples):
                batch = {k: v.unsqueeze(0) if torch.is_tensor(v) else v for k, v in data[(0, i)].items()}
                teacher = cached_targets(batch, head, {"feat"}, "sr", "cpu")["feat"][0]
                feat = student.forward_features(batch["windows"][0]).feat_sr
                m_t, m_s = attention_map(teacher, "sum2"), attention_map(feat, "sum2")
                corr = torch.stack([torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
                                    for a, b in zip(m_t, m_s)]).mean()
                rows.append([teacher.abs().mean(), feat.abs().mean(), m_t.mean(), m_s.mean(), corr])
        t_abs, s_abs, t_m, s_m, corr = torch.tensor(rows).mean(0).tolist()
        out.print(f"{path}: mean |F^SR| teacher {t_abs:.4f} student {s_abs:.4f}; mean M teacher {t_m:.4f} "
                  f"student {s_m:.4f}; corr(M_S, M_T) {corr:.3f}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
