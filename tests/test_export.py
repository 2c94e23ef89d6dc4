"""stdvsr export: every student round-trips through ONNX and TorchScript (fixed and dynamic shapes), checked here
independently of the export's own check; EDVR, overwrites, bad sizes and a missing onnxruntime are refused."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from stdvsr.cli import cli
from stdvsr.errors import StdvsrError
from stdvsr.export import ExportConfig, run
from stdvsr.models import STUDENTS, build_model, load_model, save_random

TOL = 1e-4
CASES = [*STUDENTS, "fastdvdnet-quarter"]  # every student architecture and one width preset


def save_checkpoint(folder: Path, name: str) -> Path:
    """A stdvsr checkpoint as `stdvsr distill` writes it, with random weights (seed 0)."""
    return save_random(name, folder / f"{name}.pth")


def exported_runner(path: Path, fmt: str):
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["lq"] and [o.name for o in session.get_outputs()] == ["sr"]
        return lambda lq: torch.from_numpy(session.run(["sr"], {"lq": lq.numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "torch.jit.load is deprecated" (torch ≥ 2.9)
        return torch.jit.load(str(path))


def needs(fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="onnx is not installed: pip install 'stdvsr[export]'")
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'stdvsr[export]'")


def run_cli(*args: str):
    return CliRunner().invoke(cli, ["export", *args])


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", CASES)
def test_round_trip_matches_pytorch(tmp_path, recwarn, name, fmt):
    needs(fmt)
    ckpt = save_checkpoint(tmp_path, name)
    model, _ = load_model(ckpt)
    t = model.num_frame
    gen = torch.Generator().manual_seed(123)  # not the export's check inputs (seed 0)

    fixed = run(ExportConfig(model=str(ckpt), format=fmt, lq_size="16x24"))
    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    assert fixed["path"] == str(tmp_path / f"{name}{suffix}") and fixed["bytes"] == Path(fixed["path"]).stat().st_size
    assert [(c["batch"], c["lq_size"]) for c in fixed["checks"]] == [(1, [16, 24])]
    lq = torch.rand(1, t, 3, 16, 24, generator=gen)
    with torch.no_grad():
        ref, got = model(lq), exported_runner(Path(fixed["path"]), fmt)(lq)
    assert got.shape == (1, 3, 64, 96)
    assert (got - ref).abs().max() < TOL

    dynamic = run(ExportConfig(model=str(ckpt), format=fmt, lq_size="16x24", dynamic=True,
                               out=str(tmp_path / f"dynamic{suffix}")))
    assert [(c["batch"], c["lq_size"]) for c in dynamic["checks"]] == [(1, [16, 24]), (2, [20, 32])]
    assert dynamic["max_abs_diff"] < TOL
    lq = torch.rand(2, t, 3, 12, 28, generator=gen)
    with torch.no_grad():
        ref, got = model(lq), exported_runner(Path(dynamic["path"]), fmt)(lq)
    assert got.shape == (2, 3, 48, 112)
    assert (got - ref).abs().max() < TOL
    # the tracer's warnings (the models' shape checks become constants) are expected and must not reach the user
    assert not [w for w in recwarn if issubclass(w.category, (torch.jit.TracerWarning, DeprecationWarning))]


def test_cli_prints_the_differences(tmp_path):
    needs("onnx")
    ckpt = save_checkpoint(tmp_path, "vdsr")
    result = run_cli("--model", str(ckpt), "--lq-size", "16x24", "--dynamic")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "vdsr.onnx").is_file()
    rows = [line.split() for line in result.stdout.splitlines() if "×" in line and "e-" in line]
    assert [r[1:4:2] for r in rows] == [["1", "16×24"], ["2", "20×32"]]  # batch, LR size; then the difference
    assert all(float(r[5]) < TOL for r in rows)
    assert f"wrote {tmp_path / 'vdsr.onnx'} (ONNX opset 17, " in result.stdout


def test_edvr_is_refused(tmp_path):
    path = tmp_path / "teacher.pth"
    torch.save({"model": {"name": "edvr-s", "kwargs": {}}, "params": build_model("edvr-s").state_dict()}, path)
    result = run_cli("--model", str(path), "--format", "torchscript", "--lq-size", "16x24")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) == 1
    for fragment in ("EDVR", "deformable convolution", "DCNv2", "student"):
        assert fragment in result.stderr
    assert not list(tmp_path.glob("teacher.*.pt"))


def test_refuses_to_overwrite_without_force(tmp_path):
    ckpt = save_checkpoint(tmp_path, "vdsr")
    out = tmp_path / "vdsr.pt"
    out.write_bytes(b"keep me")
    result = run_cli("--model", str(ckpt), "--format", "torchscript", "--lq-size", "16x24", "--out", str(out))
    assert result.exit_code == 1 and "already exists" in result.stderr and "--force" in result.stderr
    assert out.read_bytes() == b"keep me"
    result = run_cli("--model", str(ckpt), "--format", "torchscript", "--lq-size", "16x24", "--out", str(out),
                     "--force")
    assert result.exit_code == 0, result.output
    assert exported_runner(out, "torchscript")(torch.rand(1, 1, 3, 16, 24)).shape == (1, 3, 64, 96)


@pytest.mark.parametrize("size, fragment", [("15x24", "multiples of 4"), ("16x22", "multiples of 4"),
                                            ("16", "is not HxW"), ("0x16", "must be positive")])
def test_bad_lq_size_is_refused(tmp_path, size, fragment):
    ckpt = save_checkpoint(tmp_path, "vdsr")
    result = run_cli("--model", str(ckpt), "--format", "torchscript", "--lq-size", size)
    assert result.exit_code == 1 and fragment in result.stderr and "--lq-size" in result.stderr
    assert "Traceback" not in result.output


def test_failed_check_writes_nothing(tmp_path):
    ckpt = save_checkpoint(tmp_path, "vdsr")
    with pytest.raises(StdvsrError, match="differs from PyTorch.*nothing was written"):
        run(ExportConfig(model=str(ckpt), format="torchscript", lq_size="16x24", tolerance=-1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vdsr.pth"]  # not even the temporary file


def test_missing_onnxruntime_names_the_extra(tmp_path, monkeypatch):
    ckpt = save_checkpoint(tmp_path, "vdsr")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    result = run_cli("--model", str(ckpt), "--lq-size", "16x24")
    assert result.exit_code == 1 and "pip install 'stdvsr[export]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_vespcn_needs_opset_16(tmp_path):
    needs("onnx")
    ckpt = save_checkpoint(tmp_path, "vespcn")
    result = run_cli("--model", str(ckpt), "--lq-size", "16x24", "--opset", "15")
    assert result.exit_code == 1 and "opset 16" in result.stderr and result.stdout == ""


def test_checkpoint_without_model_name_is_refused(tmp_path):
    path = tmp_path / "raw.pth"
    torch.save(build_model("vdsr").state_dict(), path)
    result = run_cli("--model", str(path), "--format", "torchscript", "--lq-size", "16x24")
    assert result.exit_code == 1 and "not a stdvsr checkpoint" in result.stderr


@pytest.mark.parametrize("name, multiple", [("fastdvdnet-quarter", 4), ("vespcn", 4), ("vdsr", 1), ("vsrnet", 1)])
def test_dynamic_export_states_the_size_it_takes(tmp_path, name, multiple):
    """Dynamic FastDVDnet / VESPCN files take LR sizes that are multiples of 4 only (the graph has no check: ONNX
    Runtime fails at 37×45), and export says so; VDSR and VSRNet take any size."""
    needs("onnx")
    ckpt = save_checkpoint(tmp_path, name)
    result = run_cli("--model", str(ckpt), "--lq-size", "16x24", "--dynamic")
    assert result.exit_code == 0, result.output
    reminder = "feed it LR heights and widths that are multiples of 4"
    assert (reminder in result.stdout) == (multiple == 4)
    model, _ = load_model(ckpt)
    runner = exported_runner(tmp_path / f"{name}.onnx", "onnx")
    odd = torch.rand(1, model.num_frame, 3, 37, 45)
    if multiple == 1:
        assert runner(odd).shape == (1, 3, 148, 180)
    else:
        with pytest.raises(Exception, match="broadcast"):
            runner(odd)
        assert runner(torch.rand(1, model.num_frame, 3, 36, 44)).shape == (1, 3, 144, 176)


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seed_outside_numpys_range_is_refused_naming_the_flag(tmp_path, seed):
    """--seed -1 crashed with an internal error (numpy's generator takes 0..2**32-1)."""
    ckpt = save_checkpoint(tmp_path, "vdsr")
    for extra in ((), ("--quantize", "int8", "--calibrate", "demo")):
        result = run_cli("--model", str(ckpt), "--seed", seed, *extra)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "Invalid value for '--seed'" in result.stderr and "0<=x<=4294967295" in result.stderr
    with pytest.raises(StdvsrError, match=r"--seed .* must be ≥ 0 and ≤ 4294967295"):
        run(ExportConfig(model=str(ckpt), format="torchscript", lq_size="16x24", seed=int(seed)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vdsr.pth"]
