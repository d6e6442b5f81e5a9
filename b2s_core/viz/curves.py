"""Learning curves of training runs: one PNG, four panels, several runs overlaid.

Steps: (1) read each run folder's ``metrics.jsonl`` (written by :class:`b2s_core.train.logging.MetricsLog`:
'train' records every ``log_every_steps`` steps with ``loss`` and ``lr``, 'val' records after each
validation with ``binary_iou`` and ``miou`` in percent); (2) draw the panels

* train loss: an exponential moving average (``smoothing``, debiased like TensorBoard's) over the
  raw values, which stay drawn faint behind it;
* learning rate;
* validation binary IoU (the binary decoder; pre-training and fine-tuning runs);
* validation mIoU (fine-tuning runs with semantic validation data);

against the optimizer step, one colour per run, named in one legend by its folder name; a panel no
run has data for says so in its middle; (3) write the PNG atomically.

Drawn with matplotlib, already a dependency of b2s (pyproject.toml; ``b2s_core.binary.preview``),
through its object API and the Agg canvas: no pyplot state, no display, no new package. Axes with
round ticks, anti-aliased lines and legends are what matplotlib exists for; a second plotting engine
on PIL would be more code to keep right for the same picture.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from b2s_core.output_paths import atomic_path
from b2s_core.viz.voxels import VisualizeError

if TYPE_CHECKING:  # types only: matplotlib itself is imported where it draws (start-up time)
    from matplotlib.axes import Axes
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

METRICS_FILE = "metrics.jsonl"
DEFAULT_SMOOTHING = 0.6  # EMA weight of the previous value: a trend over ~5 log records, still following warm-up
SIZE = (1100, 760)  # width, height in pixels at DPI
DPI = 100
LINE_WIDTH = (3.6, 1.6)  # points: the first run's lines, the last run's (drawn on top)
RAW_ALPHA = 0.25  # the unsmoothed loss behind its average: visible, never mistaken for a run of its own


@dataclass(frozen=True)
class Panel:
    key: str  # the metric's name in the 'kind' records
    kind: str  # 'train' or 'val'
    title: str
    ylabel: str
    empty: str  # said in the middle of the panel when no run has this metric
    smoothed: bool = False


PANELS = (
    Panel("loss", "train", "train loss", "loss", "no train records in these runs", smoothed=True),
    Panel("lr", "train", "learning rate", "learning rate", "no learning-rate records in these runs"),
    Panel("binary_iou", "val", "validation binary IoU", "IoU (%)",
          "no validation binary IoU in these runs\n(train with --val-data to get one)"),
    Panel("miou", "val", "validation mIoU", "mIoU (%)",
          "no validation mIoU in these runs\n(fine-tuning with semantic --val-data has one;\n"
          "binary pre-training has none)"),
)


@dataclass(frozen=True)
class RunMetrics:
    """One run's records, the last one per step kept (a resumed run logs a step again), in step order."""

    name: str  # legend label: the run folder's name
    path: Path  # its metrics.jsonl
    records: dict[str, list[dict]]  # kind ('train' / 'val') -> records

    def series(self, kind: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Steps (N,) int64 and values (N,) float64 of ``key`` in the ``kind`` records; missing or
        non-finite values (a diverged loss) are left out."""
        pairs = [(int(r["step"]), float(r[key])) for r in self.records.get(kind, [])
                 if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and math.isfinite(r[key])]
        steps = np.array([p[0] for p in pairs], dtype=np.int64)
        values = np.array([p[1] for p in pairs], dtype=np.float64)
        return steps, values


@dataclass
class CurvesPicture:
    image: np.ndarray  # (H, W, 3) uint8
    # panel key -> (row0, row1, col0, col1) of its plot area, end exclusive
    plot_boxes: dict[str, tuple[int, int, int, int]]
    colors: dict[str, tuple[int, int, int]]  # run name -> its RGB line colour
    empty: list[str] = field(default_factory=list)  # keys of the panels no run has data for
    warnings: list[str] = field(default_factory=list)  # runs with nothing to draw


# -- (1) reading -------------------------------------------------------------------------------------
def metrics_path(run: str | os.PathLike) -> Path:
    """A run folder (or its metrics.jsonl) -> the metrics.jsonl to read; VisualizeError when there is none."""
    path = Path(run)
    if path.is_file() and path.suffix == ".jsonl":
        return path
    if path.is_dir():
        if (path / METRICS_FILE).is_file():
            return path / METRICS_FILE
        raise VisualizeError(f"{path}: no {METRICS_FILE} in this folder; give the --out folder of a "
                             "b2s pretrain / finetune run")
    if path.exists():
        raise VisualizeError(f"{path}: not a training run folder (give the folder that holds {METRICS_FILE})")
    raise VisualizeError(f"{path}: no such run folder")


def read_run(run: str | os.PathLike, name: str | None = None) -> RunMetrics:
    """The 'train' and 'val' records of one run (folder or metrics.jsonl), named ``name`` or by its folder."""
    path = metrics_path(run)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        raise VisualizeError(f"{path}: not a text file of JSON records") from None
    by_step: dict[str, dict[int, dict]] = {"train": {}, "val": {}}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):  # no newline after it: a running job is writing this record now
                break
            raise VisualizeError(f"{path}: line {number} is not a JSON record ({err.msg})") from None
        if not isinstance(record, dict):
            raise VisualizeError(f"{path}: line {number} is not a JSON record (an object)")
        kind = record.get("kind")
        if kind not in by_step:
            continue  # 'info' and other kinds carry no curve
        try:
            step = int(record["step"])
        except (KeyError, TypeError, ValueError):
            raise VisualizeError(f"{path}: line {number}: a '{kind}' record without a whole-number 'step'") from None
        by_step[kind][step] = record
    records = {kind: [steps[s] for s in sorted(steps)] for kind, steps in by_step.items()}
    return RunMetrics(name or path.parent.name, path, records)


def read_runs(runs: Sequence[str | os.PathLike]) -> list[RunMetrics]:
    """Every run, named by its folder; runs whose folders share a name get their parent's name too."""
    paths = [metrics_path(run) for run in runs]
    folders = [p.parent.name or str(p.parent) for p in paths]
    names = [f"{p.parent.parent.name}/{p.parent.name}" if folders.count(folders[k]) > 1 else folders[k]
             for k, p in enumerate(paths)]
    # still alike: the whole path
    names = [str(p.parent) if names.count(names[k]) > 1 else names[k] for k, p in enumerate(paths)]
    return [read_run(path, name) for path, name in zip(paths, names)]


# -- (2) drawing -------------------------------------------------------------------------------------
def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """(N,) -> (N,) exponential moving average, ``s_t = weight * s_(t-1) + (1 - weight) * x_t``,
    divided by ``1 - weight^t`` so that the first values are not pulled towards 0."""
    out = np.empty(len(values), dtype=np.float64)
    running = 0.0
    for t, value in enumerate(values, start=1):
        running = weight * running + (1.0 - weight) * float(value)
        out[t - 1] = running / (1.0 - weight**t) if weight > 0 else running
    return out


def run_colors(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct line colours (matplotlib's tab10, then tab20 for more runs), RGB 0..255."""
    from matplotlib import colormaps

    table = colormaps["tab10" if count <= 10 else "tab20"].colors
    return [tuple(int(round(255 * c)) for c in table[k % len(table)]) for k in range(count)]


def draw_curves(runs: Sequence[RunMetrics], *, smoothing: float = DEFAULT_SMOOTHING, title: str | None = None,
                size: tuple[int, int] = SIZE) -> CurvesPicture:
    """The four panels of ``runs`` -> a :class:`CurvesPicture` of ``size`` (width, height) pixels."""
    if not 0.0 <= smoothing < 1.0:
        raise VisualizeError(f"smoothing must be in [0, 1), got {smoothing}")
    # matplotlib imported here, not at the top: it costs every b2s command its start-up time
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = size
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2).ravel()
    colors = dict(zip((run.name for run in runs), run_colors(len(runs))))
    picture = CurvesPicture(image=np.zeros((0, 0, 3), np.uint8), plot_boxes={}, colors=colors)
    for run in runs:
        if not run.records["train"] and not run.records["val"]:
            picture.warnings.append(f"{run.path}: no train or validation records yet")

    # Runs often share a curve (one learning-rate schedule): each later run is drawn thinner on top
    # of the earlier ones, which stay visible as a rim around it.
    widths = np.linspace(LINE_WIDTH[0], LINE_WIDTH[1], len(runs)) if len(runs) > 1 else [LINE_WIDTH[1]]
    handles: dict[str, Line2D] = {}  # run name -> its first line, for the legend
    for ax, panel in zip(axes, PANELS):
        drawn = _plot_panel(ax, panel, runs, widths, colors, smoothing, handles)
        _label_panel(ax, panel, drawn, smoothing)
        if not drawn:
            picture.empty.append(panel.key)

    top = _heading_and_legend(figure, canvas, title, handles, height)
    figure.tight_layout(rect=(0, 0, 1, top), pad=0.6)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())  # (H, W, 4)
    picture.image = np.ascontiguousarray(rgba[..., :3])
    rows_total = picture.image.shape[0]
    for ax, panel in zip(axes, PANELS):
        picture.plot_boxes[panel.key] = _plot_box(ax, rows_total)
    return picture


def _plot_panel(ax: Axes, panel: Panel, runs: Sequence[RunMetrics], widths: Sequence[float],
                colors: dict[str, tuple[int, int, int]], smoothing: float, handles: dict[str, Line2D]) -> bool:
    """Draw each run's ``panel`` series on ``ax`` (the smoothed loss over its faint raw values), adding
    each run's first line to ``handles``; whether any run had data."""
    drawn = False
    for run, width in zip(runs, widths):
        steps, values = run.series(panel.kind, panel.key)
        if len(steps) == 0:
            continue
        color = tuple(c / 255 for c in colors[run.name])
        if panel.smoothed:
            ax.plot(steps, values, color=color, alpha=RAW_ALPHA, linewidth=1.0)
            values = smooth(values, smoothing)
        style = dict(marker="o", markersize=3.5) if panel.kind == "val" else {}
        (line,) = ax.plot(steps, values, color=color, linewidth=width, label=run.name, **style)
        handles.setdefault(run.name, line)
        drawn = True
    return drawn


def _label_panel(ax: Axes, panel: Panel, drawn: bool, smoothing: float) -> None:
    """Title, axis labels and grid of a drawn panel; an empty one says why in its middle instead."""
    from matplotlib.ticker import MaxNLocator  # start-up time, as in draw_curves

    ax.set_title(panel.title + (f" (smoothed {smoothing:g}; raw faint)" if panel.smoothed and drawn else ""),
                 fontsize=10)
    if not drawn:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.5, 0.5, panel.empty, transform=ax.transAxes, ha="center", va="center", color="0.4", fontsize=10)
        return
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True, steps=[1, 2, 2.5, 5, 10]))
    ax.grid(alpha=0.3)
    if panel.key == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))


def _heading_and_legend(figure: Figure, canvas: FigureCanvasAgg, title: str | None, handles: dict[str, Line2D],
                        height: int) -> float:
    """Place the title and one legend for the four panels above them, as many rows as the runs need;
    the top of the room left for the panels, as a fraction of the figure's height, measured once drawn."""
    top = 1.0
    if title:
        # figure.text, not suptitle: tight_layout would reserve the suptitle's room a second time
        heading = figure.text(0.5, 0.995, title, fontsize=12, ha="center", va="top")
        top = heading.get_window_extent(canvas.get_renderer()).y0 / height
    if handles:
        legend = figure.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(len(handles), 4),
                               fontsize=9, bbox_to_anchor=(0.5, top), frameon=False)
        top = legend.get_window_extent(canvas.get_renderer()).y0 / height
    return top


def _plot_box(ax: Axes, rows_total: int) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1), end exclusive, of the pixels inside ``ax``'s frame line in the image."""
    box = ax.get_window_extent()  # display pixels, origin bottom left
    return (rows_total - int(math.floor(box.y1)) + 1, rows_total - int(math.ceil(box.y0)) - 1,
            int(math.ceil(box.x0)) + 1, int(math.floor(box.x1)) - 1)


# -- (3) writing -------------------------------------------------------------------------------------
def write_curves(runs: Sequence[RunMetrics], out: str | os.PathLike, *, smoothing: float = DEFAULT_SMOOTHING,
                 title: str | None = None) -> CurvesPicture:
    """Draw ``runs`` and write the PNG to ``out`` (temporary file + rename: never half a picture)."""
    picture = draw_curves(runs, smoothing=smoothing, title=title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as temp:
        Image.fromarray(picture.image).save(temp, format="PNG")
    return picture
