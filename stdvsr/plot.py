"""Training curves as pictures: a run's ``metrics.jsonl`` (``stdvsr distill``, ``stdvsr train-teacher``) drawn as
``curves.png`` — loss terms, learning rate, validation Y-PSNR next to bicubic — for one run or several overlaid,
and optionally converted to TensorBoard event files.

The rows read are the ones both stages write: ``{"step", "loss" | "loss_<term>"…, "lr", …}`` per logged step and
``{"step", "val_psnr", "bicubic_psnr"}`` per validation; rows with an ``event`` (gradient probes, the ConvLSTM
freeze, the ranks' digests) are not curves and are skipped. What the curves cannot show is shown another way:
series of few points get markers (one point is no line), NaN/inf steps a red × at the top of their panel, and
skipped garbage lines a warning; a file with no JSON row at all is refused. matplotlib is imported only when a
picture is drawn, so ``import stdvsr`` stays light.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from stdvsr.configs import PlotConfig
from stdvsr.errors import StdvsrError
from stdvsr.io import atomic_path
from stdvsr.options import check_fields

METRICS = "metrics.jsonl"
CURVES = "curves.png"
# loss terms in the order of Eq. 9 (total first), then any other ``loss_*`` key alphabetically
_TERM_ORDER = ("total", "rec", "sd", "td", "mse", "mean2", "output")
_TERM_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)), (0, (8, 3)))

Series = dict[str, dict[int, float]]  # key → {step: value}, steps ascending
FEW_POINTS = 20       # series with at most this many points are drawn with markers
NONFINITE = "non-finite"  # legend entry of the red × marking steps whose value is NaN or ±inf


@dataclass
class RunLog:
    """A ``metrics.jsonl`` as read: ``series`` (finite values), ``nonfinite`` (``{key: [step, …]}`` whose value
    was NaN or ±inf, what a diverged run logs) and ``bad_lines`` (1-based numbers of lines that are not JSON rows)."""
    path: Path
    series: Series
    nonfinite: dict[str, list[int]]
    bad_lines: list[int]
    to_teacher: bool = False  # val_psnr is agreement with the teacher (a distill run on LR footage: no GT)


def read_metrics(path: str | Path) -> RunLog:
    """Every numeric column of a ``metrics.jsonl`` as ``{key: {step: value}}``, steps ascending.

    ``event`` rows, booleans and rows without an integer step are skipped; so is a last line without its newline
    (a killed or still running run's half-written row). Other lines that are not JSON objects (garbage, binary)
    are skipped and listed in ``bad_lines``; a file with such lines and no row at all is refused. Non-finite values
    are kept apart in ``nonfinite``. A resumed run appends after its checkpoint, so the file may step back (or
    repeat a step's key): the later rows replace every earlier row from that step on — the interrupted attempt's
    tail is dropped and each step keeps its last occurrence.
    """
    path = Path(path)
    series: dict[str, dict[int, float]] = {}
    bad, rows, to_teacher = [], 0, False
    last = -1
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip() or (number == len(lines) and number > 1 and not raw.endswith(b"}")):
            continue  # blank, or the half-written last line (the file ends without a newline)
        try:
            row = json.loads(raw.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError is one
            row = None
        if not isinstance(row, dict):
            bad.append(number)
            continue
        rows += 1
        to_teacher = to_teacher or row.get("val_of") == "teacher"
        if "event" in row:
            continue
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        values = {k: float(v) for k, v in row.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if step < last or any(step in series.get(k, ()) for k in values):
            for column in series.values():
                for s in [s for s in column if s >= step]:
                    del column[s]
        last = step
        for k, v in values.items():
            series.setdefault(k, {})[step] = v
    if bad and not rows:
        raise StdvsrError(f"{path} is not a metrics log: none of its {len(bad)} line(s) is a JSON row (line {bad[0]} "
                          "is the first; a binary or foreign file?); give the metrics.jsonl a stdvsr distill or "
                          "train-teacher run writes")
    finite = {k: {s: v for s, v in sorted(c.items()) if math.isfinite(v)} for k, c in series.items()}
    nonfinite = {k: sorted(s for s, v in c.items() if not math.isfinite(v)) for k, c in series.items()}
    return RunLog(path, {k: v for k, v in finite.items() if v}, {k: v for k, v in nonfinite.items() if v}, bad,
                  to_teacher)


def _warn_about(log: RunLog) -> None:
    """Say what of ``log`` the picture cannot show as curves: skipped lines and non-finite steps."""
    from stdvsr.progress import stderr

    if log.bad_lines:
        stderr().print(f"Warning: {log.path}: skipped {len(log.bad_lines)} line(s) that are not JSON rows (first: "
                       f"line {log.bad_lines[0]})", soft_wrap=True, highlight=False)
    steps = sorted({s for c in log.nonfinite.values() for s in c})
    if steps:
        keys = ", ".join(k for k, c in log.nonfinite.items() if steps[0] in c)
        stderr().print(f"Warning: {log.path}: non-finite values (NaN/inf) at {len(steps)} step(s), first step "
                       f"{steps[0]} ({keys}); drawn as red × at the top of their panel", soft_wrap=True,
                       highlight=False)


def loss_terms(series: Series) -> dict[str, dict[int, float]]:
    """The loss columns by term name: ``loss_rec`` → ``rec`` (distill), ``loss`` → ``loss`` (train-teacher)."""
    terms = {("loss" if k == "loss" else k[len("loss_"):]): v for k, v in series.items()
             if k == "loss" or k.startswith("loss_")}
    rank = {t: i for i, t in enumerate(_TERM_ORDER)}
    return dict(sorted(terms.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def _metrics_file(run: Path) -> Path:
    if not run.is_dir():
        raise StdvsrError(f"run folder {run} does not exist; give the folder a stdvsr distill or train-teacher "
                          "run writes (its --out)")
    path = run / METRICS
    if not path.is_file():
        raise StdvsrError(f"{run} has no {METRICS}; give the folder a stdvsr distill or train-teacher run writes "
                          "(its --out; the file appears with the run's first logged step)")
    return path


def _labels(runs: list[Path], labels: list[str] | None) -> list[str]:
    if labels:
        if len(labels) != len(runs):
            raise StdvsrError(f"{len(labels)} --label for {len(runs)} RUN; give --label once per RUN, or not at all")
        return list(labels)
    names = [r.resolve().name or str(r) for r in runs]
    # two runs/<x>/student-like folders with the same name: tell them apart by their paths
    return [str(r) if names.count(n) > 1 else n for r, n in zip(runs, names)]


def load_runs(runs: list[Path], labels: list[str] | None = None, warn: bool = False) -> dict[str, RunLog]:
    """``{label: read_metrics(run/metrics.jsonl)}``; a missing folder, file or a run without rows is an error.
    ``warn``: print each run's skipped lines and non-finite steps (once per command: the picture's reading)."""
    runs = [Path(r) for r in runs]
    loaded = {}
    for run, label in zip(runs, _labels(runs, labels)):
        log = read_metrics(_metrics_file(run))
        if not log.series and not log.nonfinite:
            raise StdvsrError(f"{run / METRICS} has no logged step yet; plot it after the run's first --log-every "
                              "steps")
        loaded[label] = log
    if warn:
        for log in loaded.values():
            _warn_about(log)
    return loaded


def plot_runs(runs: list[Path], out: Path, labels: list[str] | None = None) -> Path:
    """Draw the runs' curves into the PNG ``out`` (written atomically) and return its path.

    Panels: loss terms (log y), learning rate (log y), validation Y-PSNR with each run's bicubic Y-PSNR dashed.
    One run: a colour per loss term. Several: a colour per run (``labels``, default the folder names) and a line
    style per term.
    """
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise StdvsrError(f"cannot write {out}: the curves are a PNG; give --out a name ending in .png")
    return _draw(load_runs(runs, labels, warn=True), out)


def write_run_plot(run_dir: str | Path) -> Path | None:
    """Write ``run_dir/curves.png`` from ``run_dir/metrics.jsonl``; ``None`` (and no file) when nothing is logged."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS
    if not path.is_file():
        return None
    log = read_metrics(path)
    if not log.series and not log.nonfinite:
        return None
    return plot_runs([run_dir], run_dir / CURVES)


def _positive(column: dict[int, float]) -> tuple[list[int], list[float]]:
    # a log axis cannot show 0 (L_TD of a collapsed ConvLSTM, a finished cosine schedule): leave those points out
    pairs = [(s, v) for s, v in column.items() if v > 0]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _marker(steps: list) -> dict:
    # a line through one point is invisible (a 20-step run logged once) and a few points hide among the grid lines
    return {"marker": "o", "ms": 4} if len(steps) <= FEW_POINTS else {}


def curves_figure(runs: dict[str, RunLog]):
    """The three panels of :func:`plot_runs` as a matplotlib ``Figure`` (Agg canvas), not yet saved."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(16, 4.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # Agg explicitly, without pyplot's global backend state
    ax_loss, ax_lr, ax_psnr = fig.subplots(1, 3, sharex=True)
    palette = [f"C{i}" for i in range(10)]
    single = len(runs) == 1
    terms = list(dict.fromkeys(t for log in runs.values() for t in loss_terms(log.series)))
    style = {t: _TERM_STYLES[i % len(_TERM_STYLES)] for i, t in enumerate(terms)}
    bad_steps = {ax: set() for ax in (ax_loss, ax_lr, ax_psnr)}  # non-finite values, per panel

    for n, (label, log) in enumerate(runs.items()):
        series = log.series
        colour = palette[n % len(palette)]
        for i, (term, column) in enumerate(loss_terms(series).items()):
            steps, values = _positive(column)
            if single:
                ax_loss.plot(steps, values, color=palette[i % len(palette)], lw=1.2, label=term, **_marker(steps))
            else:
                ax_loss.plot(steps, values, color=colour, ls=style[term], lw=1.2, **_marker(steps))
        if "lr" in series:
            steps, values = _positive(series["lr"])
            ax_lr.plot(steps, values, color=colour, lw=1.5, label=label, **_marker(steps))
        if "val_psnr" in series:
            col = series["val_psnr"]
            ax_psnr.plot(list(col), list(col.values()), color=colour, marker="o", ms=3, lw=1.5,
                         label="model" if single else label)
        if "bicubic_psnr" in series:
            col = series["bicubic_psnr"]
            ax_psnr.plot(list(col), list(col.values()), color=colour, ls="--", lw=1.2,
                         label="bicubic" if single else None, **_marker(list(col)))
        for key, steps in log.nonfinite.items():
            ax = (ax_loss if key == "loss" or key.startswith("loss_") else ax_lr if key == "lr" else
                  ax_psnr if key in ("val_psnr", "bicubic_psnr") else None)
            if ax is not None:
                bad_steps[ax].update(steps)
    for ax, steps in bad_steps.items():
        if steps:  # x at the step, y at the panel's top (axes coordinates): NaN has no place on the value axis
            ax.plot(sorted(steps), [0.97] * len(steps), ls="none", marker="x", ms=8, mew=2, color="red",
                    transform=ax.get_xaxis_transform(), clip_on=False, label=NONFINITE)

    ax_loss.set(title="training loss terms", xlabel="step", yscale="log")
    ax_lr.set(title="learning rate", xlabel="step", yscale="log")
    footage = [log.to_teacher for log in runs.values()]
    psnr_title = ("Y-PSNR to the teacher, held-back frames (dB)" if all(footage) else
                  "validation Y-PSNR (dB; LR-footage runs: to the teacher)" if any(footage) else "held-out Y-PSNR (dB)")
    ax_psnr.set(title=f"{psnr_title}, bicubic dashed", xlabel="step")
    if single:
        ax_loss.legend(fontsize=8)
    else:
        # colours name the runs, line styles the loss terms
        handles = [Line2D([], [], color=palette[n % len(palette)], lw=2, label=label) for n, label in enumerate(runs)]
        handles += [Line2D([], [], color="black", ls=style[t], lw=1.2, label=t) for t in terms]
        handles += [line for line in ax_loss.get_lines() if line.get_label() == NONFINITE]
        ax_loss.legend(handles=handles, fontsize=8)
        ax_lr.legend(fontsize=8)
    if ax_psnr.has_data():
        ax_psnr.legend(fontsize=8)
    else:
        ax_psnr.text(0.5, 0.5, "no validation rows\n(--val-data none, or before --val-every)", ha="center",
                     va="center", transform=ax_psnr.transAxes, color="grey")
    if single and bad_steps[ax_lr]:
        ax_lr.legend(fontsize=8)
    for ax in (ax_loss, ax_lr, ax_psnr):
        ax.grid(True, which="major", alpha=0.3)
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps (the x axis is shared)
    fig.suptitle(next(iter(runs)) if single else " vs ".join(runs), fontsize=11)
    return fig


def _draw(runs: dict[str, RunLog], out: Path) -> Path:
    fig = curves_figure(runs)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png")
    except OSError as e:
        raise StdvsrError(f"cannot write {out}: {e.strerror or e}; choose another --out") from None
    return out


def require_tensorboard():
    """torch's ``SummaryWriter``, or a :class:`StdvsrError` saying to install tensorboard (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise StdvsrError("TensorBoard export needs the tensorboard package: pip install tensorboard "
                          "(or pip install 'stdvsr[tensorboard]')") from None
    return SummaryWriter


def write_tensorboard(runs: list[Path], logdir: str | Path, labels: list[str] | None = None) -> list[Path]:
    """Convert each run's ``metrics.jsonl`` into TensorBoard event files under ``logdir/<label>`` (one folder per
    run, so ``tensorboard --logdir logdir`` overlays them); returns those folders.

    Tags: ``loss/<term>``, ``lr``, ``val/psnr``, ``val/bicubic_psnr``, and every other numeric column by its name.
    Earlier event files in ``logdir/<label>`` are replaced, so converting again does not double the curves.
    """
    SummaryWriter = require_tensorboard()
    folders = []
    for label, log in load_runs([Path(r) for r in runs], labels).items():
        series = log.series
        folder = Path(logdir) / label.replace("/", "_")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink()
            terms = {f"loss_{t}" if t != "loss" else "loss": t for t in loss_terms(series)}
            writer = SummaryWriter(str(folder))
            for key, column in series.items():
                tag = {"val_psnr": "val/psnr", "bicubic_psnr": "val/bicubic_psnr"}.get(key, key)
                tag = f"loss/{terms[key]}" if key in terms else tag
                for step, value in column.items():
                    writer.add_scalar(tag, value, step)
            writer.close()
        except OSError as e:
            raise StdvsrError(f"cannot write TensorBoard files to {folder}: {e.strerror or e}; "
                              "choose another --tensorboard folder") from None
        folders.append(folder)
    return folders


def print_runs(runs: list[Path], labels: list[str] | None, path: Path, folders: list[Path],
               tensorboard_dir: Path | None) -> None:
    """What `stdvsr plot` prints: each run's last step and loss, its last and best held-out PSNR, bicubic."""
    from rich.table import Table

    from stdvsr.progress import stdout

    console = stdout()
    table = Table(title=f"Curves written to {path}")
    for col in ("run", "last step", "last loss", "val Y-PSNR (dB)", "best (step)", "bicubic (dB)"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for label, log in load_runs(runs, labels).items():
        series = log.series
        key = "loss_total" if "loss_total" in series or "loss_total" in log.nonfinite else "loss"
        loss, bad_loss = series.get(key, {}), log.nonfinite.get(key, [])
        val, bicubic = series.get("val_psnr", {}), series.get("bicubic_psnr", {})
        best = max(val, key=val.get) if val else None
        last_loss = ("non-finite" if bad_loss and (not loss or bad_loss[-1] > max(loss)) else
                     f"{loss[max(loss)]:.4g}" if loss else "-")
        last_step = max(max(c) for c in [*series.values(), *log.nonfinite.values()])
        table.add_row(label, str(last_step), last_loss, f"{val[max(val)]:.2f}" if val else "-",
                      f"{val[best]:.2f} ({best})" if val else "-", f"{bicubic[max(bicubic)]:.2f}" if bicubic else "-")
    console.print(table)
    if folders:
        console.print(f"TensorBoard event files in {', '.join(map(str, folders))}; view them with "
                      f"tensorboard --logdir {tensorboard_dir}", soft_wrap=True, highlight=False)


def run(cfg: PlotConfig) -> tuple[Path, list[Path]]:
    """``stdvsr plot``: draw ``cfg.runs`` into ``cfg.out`` (default: RUN/curves.png for one run, ./curves.png for
    several) and, with ``cfg.tensorboard``, write their event files; returns the picture and the event folders."""
    check_fields(cfg)
    runs, labels = [Path(r) for r in cfg.runs], list(cfg.labels) or None
    out = Path(cfg.out) if cfg.out else (runs[0] / CURVES if len(runs) == 1 else Path(CURVES))
    if cfg.tensorboard is not None:
        require_tensorboard()  # before anything is written
    path = plot_runs(runs, out, labels)
    return path, write_tensorboard(runs, cfg.tensorboard, labels) if cfg.tensorboard else []
