"""Writes the RBPN fixtures of tests/test_rbpn.py by running the *official* RBPN code once.

    python tests/data/rbpn/make_reference.py /path/to/RBPN-PyTorch

``/path/to/RBPN-PyTorch`` holds the official ``rbpn.py``, ``dbpns.py`` and ``base_networks.py``
(github.com/alterzero/RBPN-PyTorch; used unmodified). Their ``from torchvision.transforms import *`` is the only
import they need beyond torch; a stub module stands in when torchvision is not installed (nothing from it is used).

Outputs, next to this script:
* ``official_keys.json``: the official ``state_dict()`` key → shape, at the tiny configuration below and at the
  official one of ``main.py`` / ``eval.py`` (``base_filter=256, feat=64, num_stages=3, n_resblock=5, nFrames=7``);
* ``reference.pt``: at the tiny configuration, a seeded state dict (official keys, every bias and PReLU slope
  moved off its initial value so that each one matters), the official forward's inputs — the centre frame ``x``,
  the ``neighbours`` (frames t−2, t−1, t+1, t+2, as ``load_img_future`` orders them) and random ``flows`` in the
  official layout — and its output.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TINY = dict(num_channels=3, base_filter=8, feat=8, num_stages=3, n_resblock=1, nFrames=5, scale_factor=4)
OFFICIAL = dict(num_channels=3, base_filter=256, feat=64, num_stages=3, n_resblock=5, nFrames=7, scale_factor=4)
B, H, W = 2, 9, 11  # odd sizes on purpose


def official_net(repo: Path):
    try:
        import torchvision.transforms  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torchvision")
        stub.transforms = types.ModuleType("torchvision.transforms")
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = stub, stub.transforms
    sys.path.insert(0, str(repo))
    from rbpn import Net  # the official class

    return Net


def main(repo: Path) -> None:
    Net = official_net(repo)
    shapes = {name: {k: list(v.shape) for k, v in Net(**cfg).state_dict().items()}
              for name, cfg in (("tiny", TINY), ("official", OFFICIAL))}
    lines = [f'  "{name}": {{\n' + ",\n".join(f'   "{k}": {json.dumps(v)}' for k, v in keys.items()) + "\n  }"
             for name, keys in shapes.items()]
    configs = json.dumps({"tiny": TINY, "official": OFFICIAL})
    (HERE / "official_keys.json").write_text(f'{{\n "configs": {configs},\n "shapes": {{\n'
                                             + ",\n".join(lines) + "\n }\n}\n")

    torch.manual_seed(0)
    net = Net(**TINY).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".bias") or name.endswith("act.weight"):
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    n = TINY["nFrames"]
    frames = torch.rand(B, n, 3, H, W, generator=gen)
    c = n // 2
    x = frames[:, c]
    neighbours = [frames[:, j] for j in range(n) if j != c]
    flows = [2 * torch.randn(B, 2, H, W, generator=gen) for _ in neighbours]
    with torch.no_grad():
        out = net(x, neighbours, flows)
    torch.save({"config": TINY, "state_dict": {k: v.clone() for k, v in net.state_dict().items()},
                "frames": frames, "flows": torch.stack(flows, 1), "output": out,
                "torch": str(torch.__version__)}, HERE / "reference.pt")
    print(f"output {tuple(out.shape)}, mean {out.mean():.6f}; wrote {HERE / 'reference.pt'}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]).expanduser().resolve())
