"""EDVR forward time per window on this machine, pure-PyTorch DCN vs torchvision's kernel, measured side by side.

    .venv/bin/python pipelines/bench/bench_edvr.py [--lq 64x64] [--frames 7] [--repeats 5] [--device cpu]

torchvision's kernel is timed only where ``torchvision.ops`` imports (PyPI's torchvision needs the torch build it
was made for); the script says so otherwise. Both paths run the same weights on the same input, and the largest
output difference between them is printed next to the timings.
"""

from __future__ import annotations

import argparse
import os
import torch

from stdvsr.models import build_model
from stdvsr.models.dcn import _torchvision_op
from stdvsr.profile import parse_size, time_forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lq", default="64x64", help="LR frame size HxW")
    ap.add_argument("--frames", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--presets", default="edvr-m,edvr-s")
    args = ap.parse_args()
    h, w = parse_size(args.lq, "--lq")
    device = torch.device(args.device)
    backends = ["torch"] + (["torchvision"] if _torchvision_op() is not None else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, LR {h}x{w}, "
          f"{args.frames}-frame window, median of {args.repeats}")
    if len(backends) == 1:
        print("torchvision.ops does not import here: timing the pure-PyTorch DCN only")
    for preset in args.presets.split(","):
        torch.manual_seed(0)
        model = build_model(preset, num_frame=args.frames).to(device).eval()
        with torch.no_grad():  # random offsets/masks, as a trained model has (conv_offset starts at zero)
            for name, p in model.named_parameters():
                if "conv_offset" in name:
                    p.normal_(0, 0.01)
        lq = torch.rand(1, args.frames, 3, h, w, device=device)
        results = {}
        for backend in backends:
            os.environ["STDVSR_DCN"] = backend
            seconds = time_forward(model, lq, args.repeats, warmup=1)
            with torch.no_grad():
                results[backend] = (seconds, model(lq))
        params = sum(p.numel() for p in model.parameters()) / 1e6
        line = f"{preset:7s} ({params:.3f}M params): " + ", ".join(
            f"{b} {t * 1e3:8.1f} ms/window" for b, (t, _) in results.items())
        if len(results) == 2:
            (t_pure, out_pure), (t_tv, out_tv) = results["torch"], results["torchvision"]
            line += (f"  | torchvision / pure = {t_tv / t_pure:.2f}"
                     f"  max |diff| = {(out_pure - out_tv).abs().max().item():.2e}")
        print(line)


if __name__ == "__main__":
    main()
