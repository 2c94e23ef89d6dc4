"""The fast step (stdvsr.perf): ``--precision auto`` follows the CPU's bf16 arithmetic, every student is the same
function channels-last and trains in bf16 (finite, every parameter gets a gradient, close to fp32), a distill run
in fp32 channels-last has the contiguous run's losses, and a checkpoint written before the settings existed resumes
in fp32 contiguous, as it ran."""

from __future__ import annotations

import copy

import pytest
import torch

from stdvsr import perf
from stdvsr.distill import run
from stdvsr.models import build_model
from stdvsr.names import student_names
from tests.test_models import _perturb
from tests.test_distill import caches, config, data_root, losses_of, teacher  # noqa: F401  (module fixtures)

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags,resolved", [({"avx512f", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16"),
                                            ({"avx512f", "avx2"}, "fp32"), (set(), "fp32")])
def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_arithmetic(monkeypatch, flags, resolved):
    monkeypatch.setattr(perf, "cpu_flags", lambda: frozenset(flags))
    assert perf.resolve_precision("auto", CPU) == resolved
    assert perf.resolve_precision("fp32", CPU) == "fp32" and perf.resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ValueError, match="fp16"):
        perf.resolve_precision("fp16", CPU)


def test_cpu_flags_are_read_from_linux_cpuinfo():
    from pathlib import Path

    flags = perf.cpu_flags()
    assert isinstance(flags, frozenset)
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    if any(line.startswith("flags") for line in lines):  # Linux x86: every x86-64 CPU reports sse2
        assert "sse2" in flags
    else:  # no flags line (aarch64 says "Features", other systems have no cpuinfo): auto falls back to fp32
        assert flags == frozenset()


@pytest.mark.parametrize("scale,shape", [(2, (3, 64, 5, 7)), (2, (2, 16, 4, 4)), (4, (2, 48, 3, 5)),
                                         (3, (1, 18, 2, 3))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pixel_shuffle_is_torchs_to_the_bit_forwards_and_backwards(scale, shape, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = perf.pixel_shuffle(ours, scale), torch.nn.functional.pixel_shuffle(ref, scale)
    assert out.grad_fn is not None and type(out.grad_fn).__name__ == "_PixelShuffleBackward"  # the fast path ran
    assert torch.equal(out, expected) and out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn(out.shape, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    out.backward(grad)
    expected.backward(grad)
    assert torch.equal(ours.grad, ref.grad) and ours.grad.is_contiguous(memory_format=torch.channels_last)
    # the gradient as pixel_unshuffle defines it, written out:
    # grad_x[b, c·s² + i·s + j, y, x] = grad[b, c, s·y+i, s·x+j]
    b, c, h, w = shape
    spelled = grad.float().reshape(b, c // scale ** 2, h, scale, w, scale).permute(0, 1, 3, 5, 2, 4).reshape(shape)
    assert torch.equal(ours.grad.float(), spelled)


def test_pixel_shuffle_takes_torchs_own_op_where_the_fast_backward_does_not_apply():
    contiguous = torch.randn(2, 16, 3, 3, requires_grad=True)
    assert type(perf.pixel_shuffle(contiguous, 2).grad_fn).__name__ == "PixelShuffleBackward0"
    cl = torch.randn(2, 16, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.no_grad():
        assert torch.equal(perf.pixel_shuffle(cl, 2), torch.nn.functional.pixel_shuffle(cl, 2))
    # a gradient arriving contiguous (not channels-last) is unshuffled by torch's op
    out = perf.pixel_shuffle(cl, 2)
    grad = torch.randn(out.shape)
    out.backward(grad)
    assert torch.equal(cl.grad, torch.nn.functional.pixel_unshuffle(grad, 2))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # jit.trace: what export tracing sees
def test_the_pixel_shuffle_module_keeps_checkpoints_and_exports_unchanged():
    module = perf.PixelShuffle(2)
    assert isinstance(module, torch.nn.PixelShuffle) and module.state_dict() == {}
    x = torch.randn(1, 8, 2, 2)
    traced = torch.jit.trace(module, x.contiguous(memory_format=torch.channels_last).requires_grad_())
    assert "pixel_shuffle" in str(traced.graph) and "PythonOp" not in str(traced.graph)


def _lq(model, b=2, h=16, w=16):
    return torch.rand(b, model.num_frame, 3, h, w, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", student_names())
def test_every_student_is_the_same_function_channels_last(name):
    torch.manual_seed(0)
    model = _perturb(build_model(name)).train()
    fast = perf.channels_last(copy.deepcopy(model))
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in fast.parameters() if p.dim() == 4)
    lq = _lq(model)
    ref, out = model.forward_features(lq), fast.forward_features(lq)
    for a, b in zip(ref, out):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    gt = torch.rand_like(ref.sr)
    (ref.sr - gt).square().mean().backward()  # smooth: an L1 kink would turn 1e-7 into a gradient sign
    (out.sr - gt).square().mean().backward()
    # summed in another order: fp32 rounding, which deep networks' ReLUs amplify
    ga = torch.cat([p.grad.flatten() for p in model.parameters()])
    gb = torch.cat([q.grad.flatten() for q in fast.parameters()])
    assert (gb - ga).norm() <= 1e-3 * ga.norm()  # a layout bug is O(1); VDSR's 20 ReLUs give 2e-4
    for (n, p), q in zip(model.named_parameters(), fast.parameters()):
        assert (q.grad - p.grad).norm() <= 1e-2 * p.grad.norm() + 1e-12, n


@pytest.mark.parametrize("name", student_names())
def test_every_student_trains_in_bf16_close_to_fp32(name):
    torch.manual_seed(0)
    model = perf.channels_last(_perturb(build_model(name)).train())  # zero-initialised flow heads pass gradient
    lq = _lq(model)
    with torch.no_grad():
        ref = model(lq)
    with perf.autocast(CPU, "bf16"):
        out = model.forward_features(lq)
    sr = out.sr.float()
    assert torch.isfinite(sr).all() and sr.shape == ref.shape
    # bf16 keeps 8 bits of mantissa: the output is within ~1e-3 of fp32's on [0, 1] images (VDSR's 20 layers of
    # randomly perturbed weights: 2e-2 at worst)
    assert (sr - ref).abs().mean() < 5e-3 and (sr - ref).abs().max() < 5e-2
    (sr - torch.rand_like(sr)).abs().mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, n
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


def test_a_fp32_channels_last_run_has_the_contiguous_runs_losses(caches, tmp_path):  # noqa: F811
    kw = dict(kd="std", steps=3, precision="fp32")
    plain = run(config(caches["trunk"], tmp_path / "contiguous", channels_last=False, **kw), show_progress=False)
    fast = run(config(caches["trunk"], tmp_path / "cl", channels_last=True, **kw), show_progress=False)
    assert plain["precision"] == fast["precision"] == "fp32"
    a, b = losses_of(tmp_path / "contiguous"), losses_of(tmp_path / "cl")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert y[k] == pytest.approx(x[k], rel=1e-4, abs=1e-7), k


def test_a_bf16_run_records_its_precision_and_stays_near_fp32(caches, tmp_path):  # noqa: F811
    kw = dict(kd="std", steps=2)
    a = run(config(caches["trunk"], tmp_path / "fp32", precision="fp32", **kw), show_progress=False)
    b = run(config(caches["trunk"], tmp_path / "bf16", precision="bf16", **kw), show_progress=False)
    assert (a["precision"], b["precision"]) == ("fp32", "bf16")
    first_a, first_b = losses_of(tmp_path / "fp32")[0], losses_of(tmp_path / "bf16")[0]
    assert first_b["loss_rec"] == pytest.approx(first_a["loss_rec"], rel=2e-2)
    assert first_b["loss_rec"] != first_a["loss_rec"]  # the bf16 run really ran in bf16


def test_a_checkpoint_from_before_the_settings_resumes_in_fp32_contiguous(caches, tmp_path):  # noqa: F811
    kw = dict(kd="std", steps=4, ckpt_every=2)
    straight = run(config(caches["trunk"], tmp_path / "straight", precision="fp32", channels_last=False, **kw),
                   show_progress=False)
    assert straight["precision"] == "fp32"
    old = tmp_path / "old"
    run(config(caches["trunk"], old, precision="fp32", channels_last=False, **kw), show_progress=False)
    (old / "checkpoints" / "step_0000004.pth").unlink()
    path = old / "checkpoints" / "step_0000002.pth"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["precision"], ckpt["config"]["channels_last"]  # as main wrote it before they existed
    torch.save(ckpt, path)
    (old / "student.pth").unlink()
    # resumed with today's defaults (auto, channels-last) not given on the command line
    resumed = run(config(caches["trunk"], old, **kw), resume="auto", explicit=set(), show_progress=False)
    assert resumed["precision"] == "fp32" and resumed["resumed_from"] == 2
    assert losses_of(old) == losses_of(tmp_path / "straight")


def test_distill_says_when_auto_chose_bf16(caches, tmp_path, monkeypatch):  # noqa: F811
    from click.testing import CliRunner

    from stdvsr.cli import cli

    def distill(out, *extra):
        return CliRunner().invoke(cli, ["distill", "--student", "fastdvdnet-quarter", "--cache", str(caches["trunk"]),
                                        "--out", str(out), "--clip-frames", "3", "--patch-size", "32", "--steps", "1",
                                        "--warmup-steps", "0", "--val-data", "none", "--device", "cpu", "--workers",
                                        "0", "--td-hidden", "4", *extra])

    monkeypatch.setattr(perf, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    said = distill(tmp_path / "auto")
    assert said.exit_code == 0, said.output
    assert "--precision auto: bf16 autocast on this CPU" in said.output
    quiet = distill(tmp_path / "fp32", "--precision", "fp32")
    assert quiet.exit_code == 0 and "bf16" not in quiet.output
    monkeypatch.setattr(perf, "cpu_flags", lambda: frozenset({"avx2"}))
    old_cpu = distill(tmp_path / "avx2")
    assert old_cpu.exit_code == 0 and "bf16" not in old_cpu.output


def test_bad_speed_flags_are_refused_in_one_line(tmp_path):
    from click.testing import CliRunner

    from stdvsr.cli import cli

    for flag, value, match in (("--precision", "fp16", "'fp16' is not one of 'auto', 'fp32', 'bf16'"),
                               ("--cache-ram-mb", "-1", "-1 is not in the range x>=0"),
                               ("--probe-every", "-5", "-5 is not in the range x>=0")):
        result = CliRunner().invoke(cli, ["distill", "--out", str(tmp_path / "run"), flag, value])
        assert result.exit_code == 2 and match in result.output, (flag, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # refused before anything was written
