"""The networks: an explicit name → class dict, presets, and checkpoint loading that users' weights survive.

Every network follows one contract (docs/ARCHITECTURE.md): ``forward(lq) -> sr`` for deployment, and
``forward_features(lq) -> Features(sr, feat_sr, feat_lr)`` for training; it carries ``scale`` and ``num_frame``.

Checkpoints (:func:`load_weights`) may be a raw state dict, BasicSR's ``{'params': …}`` / ``{'params_ema': …}``,
DataParallel's ``module.`` prefix, stdvsr's own checkpoints (which also record the model name and arguments, see
:func:`load_model`), or EDVR weights with the pre-2020 xinntao/EDVR key names. Files are always read with
``torch.load(weights_only=True)``: a file that needs pickled code to load is refused.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn

from stdvsr.errors import StdvsrError
from stdvsr.names import PRESETS, STUDENTS  # the registry's names live in stdvsr.names (torch-free)
from stdvsr.models.common import Features
from stdvsr.models.edvr import EDVR
from stdvsr.models.fastdvdnet import FastDVDnet
from stdvsr.models.rbpn import RBPN, infer_config as rbpn_config
from stdvsr.models.vdsr import VDSR
from stdvsr.models.vespcn import VESPCN
from stdvsr.models.vsrnet import VSRNet

__all__ = ["Features", "MODELS", "STUDENTS", "PRESETS", "DEMO_TEACHER", "DEMO_TEACHERS", "build_model", "list_models",
           "load_weights", "load_model", "checkpoint_spec", "read_checkpoint", "model_spec", "feature_channels"]

#: The shipped demo teacher: edvr-s trained on the demo training clips (BD ×4) by pipelines/train_demo_teacher.sh.
DEMO_TEACHER = Path(__file__).resolve().parent.parent / "weights" / "edvr_s_demo.pth"
#: The shipped demo teacher of each teacher network (rbpn: rbpn-s by the same script and recipe, ``rbpn`` argument).
DEMO_TEACHERS = {"edvr": DEMO_TEACHER, "rbpn": DEMO_TEACHER.with_name("rbpn_s_demo.pth")}

MODELS: dict[str, type[nn.Module]] = {
    "edvr": EDVR,
    "rbpn": RBPN,
    "fastdvdnet": FastDVDnet,
    "vsrnet": VSRNet,
    "vespcn": VESPCN,
    "vdsr": VDSR,
}


def list_models() -> list[str]:
    """Architecture names and preset names that :func:`build_model` accepts (``rbpn`` is both)."""
    return sorted(MODELS) + sorted(p for p in PRESETS if p not in MODELS)


def model_spec(name: str, **kwargs) -> tuple[str, dict]:
    """Resolve a model or preset name to ``(architecture, full constructor arguments)``."""
    if name in PRESETS:
        arch, preset, _ = PRESETS[name]
        return arch, {**preset, **kwargs}
    if name in MODELS:
        return name, dict(kwargs)
    raise StdvsrError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")


def size_multiple(name: str) -> int:
    """What the LR height and width of a network's input must be a multiple of (a class's ``size_multiple``; 1 if
    any size works). PyTorch checks it at run time; a traced / exported graph cannot."""
    return getattr(MODELS[model_spec(name)[0]], "size_multiple", 1)


def build_model(name: str, **kwargs) -> nn.Module:
    """A fresh network by architecture or preset name; ``kwargs`` override the preset's arguments."""
    arch, args = model_spec(name, **kwargs)
    try:
        return MODELS[arch](**args)
    except (TypeError, ValueError) as e:
        raise StdvsrError(f"bad arguments for model {name!r}: {e}") from None


def feature_channels(model: nn.Module) -> dict[str, int]:
    """A teacher's channels at F^SR (what enters ``conv_last``) and F^LR (EDVR: the trunk, input of ``upconv1``;
    RBPN: the LR state after the last projection, ``base_filter``), keyed ``sr`` / ``lr`` as ``--feature``."""
    lr = model.feat0.conv.out_channels if isinstance(model, RBPN) else model.upconv1.in_channels
    return {"sr": model.conv_last.in_channels, "lr": lr}


# ------------------------------------------------------------------------------------------------ checkpoints
def read_checkpoint(path: str | Path, flag: str = "--weights/--resume") -> dict:
    """``torch.load(path, weights_only=True)`` with one-line errors for missing, truncated and unsafe files;
    ``flag`` is the option the path came from, named when the file does not exist."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise StdvsrError(f"checkpoint {path} does not exist; check the path given to {flag}")
    if _is_onnx(path):
        raise StdvsrError(f"{path} is an ONNX export (a graph for ONNX Runtime, e.g. from stdvsr export), which "
                          f"{flag} cannot read: stdvsr loads PyTorch checkpoints; pass the .pth checkpoint it was "
                          "exported from (e.g. runs/distill/student.pth)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise StdvsrError(f"checkpoint {path} cannot be loaded safely: it needs pickled code to run "
                          f"({_unpickler_reason(e)}); re-save it as a plain state dict "
                          "(torch.save(model.state_dict(), path)) from a trusted environment") from None
    except Exception as e:  # zip/pickle/storage errors of every kind: the file is not a complete checkpoint
        detail = (str(e).splitlines() or ["no message"])[0][:160]  # e.g. an empty file: EOFError()
        raise StdvsrError(f"checkpoint {path} is truncated or not a PyTorch file ({type(e).__name__}: "
                          f"{detail}); re-download or re-create it") from None
    if not isinstance(obj, dict):
        raise StdvsrError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _is_onnx(path: Path) -> bool:
    """An ONNX file: a protobuf ``ModelProto`` starts with field 1 (``ir_version``, a small varint: bytes 0x08,
    1..31), where PyTorch files start with a zip header (``PK``) or a pickle (0x80); a ``*.onnx`` name counts too
    unless the bytes are PyTorch's."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return False
    return path.suffix.lower() == ".onnx" or (len(head) == 2 and head[0] == 0x08 and 0 < head[1] < 32)


def _unpickler_reason(error: Exception) -> str:
    """The line of torch's long weights-only message that says what was refused (e.g. ``Unsupported global:
    GLOBAL __main__.Net``), without its terminal colour codes."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    found = [line for line in lines if "Unsupported global" in line or "Unsupported operand" in line]
    reason = found[0] if found else next((line for line in lines if line), "no message")
    return reason.split("WeightsUnpickler error: ")[-1].split(" was not an allowed global")[0].split(". ")[0][:200]


# Pre-2020 xinntao/EDVR (mmsr) names → BasicSR names, applied in order to each key.
_LEGACY_EDVR_KEYS = [
    (r"^pre_deblur\.conv_first_1\.", "predeblur.conv_first."),
    (r"^pre_deblur\.conv_first_2\.", "predeblur.stride_conv_hr1."),
    (r"^pre_deblur\.conv_first_3\.", "predeblur.stride_conv_hr2."),
    (r"^pre_deblur\.conv_first\.", "predeblur.conv_first."),
    (r"^pre_deblur\.deblur_L([23])_conv\.", r"predeblur.stride_conv_l\1."),
    (r"^pre_deblur\.RB_L3_1\.", "predeblur.resblock_l3."),
    (r"^pre_deblur\.RB_L2_([12])\.", r"predeblur.resblock_l2_\1."),
    (r"^pre_deblur\.RB_L1_(\d)\.", lambda m: f"predeblur.resblock_l1.{int(m.group(1)) - 1}."),
    (r"^fea_L([23])_conv([12])\.", r"conv_l\1_\2."),
    (r"^pcd_align\.L(\d)_offset_conv(\d)\.", r"pcd_align.offset_conv\2.l\1."),
    (r"^pcd_align\.L(\d)_dcnpack\.conv_offset_mask\.", r"pcd_align.dcn_pack.l\1.conv_offset."),
    (r"^pcd_align\.L(\d)_dcnpack\.", r"pcd_align.dcn_pack.l\1."),
    (r"^pcd_align\.L(\d)_fea_conv\.", r"pcd_align.feat_conv.l\1."),
    (r"^pcd_align\.cas_dcnpack\.conv_offset_mask\.", "pcd_align.cas_dcnpack.conv_offset."),
    # the two temporal-attention convs swapped names between the code bases
    (r"^tsa_fusion\.tAtt_2\.", "fusion.temporal_attn1."),
    (r"^tsa_fusion\.tAtt_1\.", "fusion.temporal_attn2."),
    (r"^tsa_fusion\.fea_fusion\.", "fusion.feat_fusion."),
    (r"^tsa_fusion\.sAtt_add_(\d)\.", r"fusion.spatial_attn_add\1."),
    (r"^tsa_fusion\.sAtt_L(\d)\.", r"fusion.spatial_attn_l\1."),
    (r"^tsa_fusion\.sAtt_(\d)\.", r"fusion.spatial_attn\1."),
    (r"^tsa_fusion\.", "fusion."),  # EDVR without TSA: a single 1×1 conv
    (r"^recon_trunk\.", "reconstruction."),
    (r"^HRconv\.", "conv_hr."),
]
def _is_legacy_edvr(state: dict) -> bool:
    """True if any key has a pre-2020 name (no BasicSR key matches these patterns)."""
    return any(re.match(pattern, k) for k in state for pattern, _ in _LEGACY_EDVR_KEYS)


def _rename_legacy_edvr(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        for pattern, repl in _LEGACY_EDVR_KEYS:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def _state_dict_of(obj: dict, path: Path, key: str | None) -> tuple[dict, str]:
    """Pick the weights out of a checkpoint: ``params_ema`` if present (unless ``key`` says), else ``params``."""
    if key is not None:
        if key not in obj:
            raise StdvsrError(f"checkpoint {path} has no {key!r} entry (it has: {', '.join(map(str, obj))[:200]})")
        return obj[key], key
    for candidate in ("params_ema", "params", "state_dict"):
        if isinstance(obj.get(candidate), dict):
            return obj[candidate], candidate
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, "state dict"
    raise StdvsrError(f"checkpoint {path} holds no recognisable weights (keys: {', '.join(map(str, obj))[:200]}); "
                      "expected a state dict, {'params': …} or {'params_ema': …}")


def load_weights(model: nn.Module, path: str | Path, key: str | None = None,
                 flag: str = "--weights/--resume") -> dict:
    """Load weights into ``model`` (strictly: every key, every shape) from any supported checkpoint format.

    ``key`` chooses the entry of a BasicSR/stdvsr checkpoint (``"params"`` or ``"params_ema"``); by default
    ``params_ema`` is used when present, else ``params``. Returns ``{"key": …, "renamed_legacy": bool}``. On a
    mismatch, the error lists the first missing and unexpected keys and the shapes that differ. ``flag``: see
    :func:`read_checkpoint`.
    """
    path = Path(path).expanduser()
    state, used = _state_dict_of(read_checkpoint(path, flag), path, key)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    legacy = isinstance(model, EDVR) and _is_legacy_edvr(state)
    if legacy:
        state = _rename_legacy_edvr(state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {'; '.join(shapes[:3])})")
        raise StdvsrError(f"weights in {path} ({used}) do not fit {type(model).__name__}: {'; '.join(parts)}; "
                          "check the model flags (e.g. --arch, --preset, --num-feat, --num-frame) match the checkpoint")
    model.load_state_dict(state, strict=True)
    return {"key": used, "renamed_legacy": legacy}


def load_model(path: str | Path, key: str | None = None, arch: str | None = None,
               flag: str = "--weights/--resume") -> tuple[nn.Module, dict]:
    """Build and load a network from a stdvsr checkpoint, which records its model name and arguments, or with
    ``arch`` (a :func:`build_model` name, e.g. ``edvr-m``) from weights that do not: a raw state dict, BasicSR's
    ``{'params': …}`` / ``{'params_ema': …}``. A checkpoint that records its model is built as recorded whatever
    ``arch`` says. ``flag``: the option ``path`` came from, named in the errors.

    Returns ``(model, checkpoint)``; the model is in eval mode on the CPU.
    """
    path = Path(path).expanduser()
    ckpt = read_checkpoint(path, flag)
    name, kwargs = checkpoint_spec(ckpt, path, key, arch)
    if name is None:
        raise StdvsrError(f"{path} is not a stdvsr checkpoint (no model name inside: a raw state dict or a BasicSR "
                          f"checkpoint); name its architecture with --arch, one of {', '.join(list_models())} "
                          "(e.g. --arch edvr-m for BasicSR's EDVR-M)")
    model = build_model(name, **kwargs)
    load_weights(model, path, key, flag)
    return model.eval(), ckpt


def checkpoint_spec(ckpt: dict, path: Path, key: str | None = None,
                    arch: str | None = None) -> tuple[str | None, dict]:
    """``(name, kwargs)`` of the network a checkpoint (read by :func:`read_checkpoint`) holds: as recorded by stdvsr,
    else ``arch`` — for RBPN with the configuration read off the tensor shapes —, else ``(None, {})``."""
    spec = ckpt.get("model")
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        return spec["name"], dict(spec.get("kwargs", {}))
    if arch is None:
        return None, {}
    if arch not in list_models():
        raise StdvsrError(f"--arch {arch!r} is not a model name; use one of {', '.join(list_models())}")
    if model_spec(arch)[0] == "rbpn":  # official RBPN weights: the configuration is in the tensor shapes
        return arch, _rbpn_kwargs(ckpt, path, key, arch)
    return arch, {}


def _rbpn_kwargs(ckpt: dict, path: Path, key: str | None, arch: str) -> dict:
    """RBPN's constructor arguments read off a checkpoint's shapes (frames, base filters, features, residual
    blocks, stages, scale; ``sr_feat`` if it has the STD ``conv_last``), or a one-line refusal."""
    state, _ = _state_dict_of(ckpt, path, key)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    try:  # sr_feat stated either way, so a preset's own (rbpn-s: 64) never survives for weights without conv_last
        return {"sr_feat": None, **rbpn_config(state)}
    except ValueError as e:
        found = ", ".join(list(state)[:3])
        raise StdvsrError(f"--arch {arch}: {path} does not hold RBPN weights ({e}; its first keys: {found}); "
                          "pass the matching --arch (e.g. edvr-m for BasicSR's EDVR-M)") from None


def save_random(name: str, path: str | Path, seed: int = 0) -> Path:
    """A seeded, untrained ``name`` saved as ``stdvsr distill`` saves a student, for checking export and
    deployment paths without training. Parameters that start at zero (VESPCN's flow outputs, biases) get small
    random values (N(0, 0.02)), so that no branch is the identity."""
    torch.manual_seed(seed)
    model = build_model(name)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    path = Path(path)
    torch.save({"model": {"name": name, "kwargs": {}}, "params": model.state_dict()}, path)
    return path
