"""progress.png: every finished experiment, the running best with its noise band, and the changes that made it.

What is drawn is decided by `plot_data` (plain numbers, tested); `progress_figure` only draws it. Crashes have
no val_bpb: they are drawn in a strip of their own under the chart, never on its val_bpb axis. A value far
above the kept ones is marked on the top edge with its value written beside it, so it cannot squash the rest.

Matplotlib is imported inside the functions and drawn through its Agg canvas directly, so importing this
module costs nothing, needs no display and leaves pyplot's global backend alone.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoresearch.files import clear
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.judge import measured_noise
from autoresearch.report.summary import chain, finished, has_value, running_best, shorten, signed
from autoresearch.vocabulary import Kind, Status

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

KEPT_COLOR = "#1b7837"
DISCARD_COLOR = "#9e9e9e"
CRASH_COLOR = "#d73027"
LABEL_WIDTH = 44  # characters of a kept change's description shown next to its point
LABEL_ANGLE = 28  # degrees
REACH = 3.0  # the axis reaches this many times the kept values' spread (or the margin's width) above them


@dataclass(frozen=True)
class PlotData:
    """What progress.png shows, as numbers: (experiment id, val_bpb) pairs, ids, the axis' range."""

    kept: list[tuple[int, float]]
    discarded: list[tuple[int, float]]  # on the val_bpb axis
    beyond: list[tuple[int, float]]  # above the axis' top: a mark on the top edge with the value written
    crashed: list[int]  # in the strip under the chart, apart from the values
    no_value: list[int]  # finished without a crash but without a finite val_bpb: in the strip too
    best: list[tuple[int, float]]  # the running best after each experiment
    margin: float | None  # the judge's margin: the band drawn around the running best
    ylim: tuple[float, float] | None  # the val_bpb axis' range; None when there is no value at all


def plot_data(experiments: list[Experiment]) -> PlotData:
    """Decide what to draw: which values sit on the axis, which are beyond it, the crashes, the band."""
    done = finished(experiments)
    valued = [e for e in done if has_value(e)]
    kept = [(e.id, e.val_bpb) for e in valued if e.status == Status.KEEP]
    others = [(e.id, e.val_bpb) for e in valued if e.status != Status.KEEP]
    crashed = [e.id for e in done if not has_value(e) and e.status == Status.CRASH]
    no_value = [e.id for e in done if not has_value(e) and e.status != Status.CRASH]
    best = running_best(done)
    noise = measured_noise(experiments)
    margin = noise.margin if noise else None
    if not valued:
        return PlotData(kept, [], [], crashed, no_value, best, margin, None)
    reference = [s.value for s in chain(done)] or [v for _, v in others]
    top, bottom = max(reference), min(reference)
    band = margin or 0.0
    scale = max(top - bottom, 2 * band, abs(top) * 0.005, 1e-4)
    cutoff = top + band + REACH * scale
    shown = [(i, v) for i, v in others if v <= cutoff]
    beyond = [(i, v) for i, v in others if v > cutoff]
    values = [v for _, v in kept + shown]
    low = min([*values, *(v - band for _, v in best)])
    high = max([*values, *(v + band for _, v in best)])
    size = high - low if high > low else scale
    return PlotData(kept, shown, beyond, crashed, no_value, best, margin, (low - 0.06 * size, high + 0.3 * size))


def title_text(experiments: list[Experiment]) -> str:
    """The plot's title: baseline → best with the improvement, or what there is when there is no chain."""
    done = finished(experiments)
    steps = chain(done)
    count = f"{len(done)} experiment{'s' if len(done) != 1 else ''}"
    if not done:
        return "No experiments yet"
    if not steps:
        return f"No kept experiment with a val_bpb yet ({count})"
    first, last = steps[0], steps[-1]
    if len(steps) == 1:
        return f"Baseline val_bpb {first.value:.4f}, no improvement kept yet ({count})"
    change = last.value - first.value
    rel = f", {signed(100 * change / first.value, '.2f')}%" if first.value else ""
    return (
        f"val_bpb {first.value:.4f} → {last.value:.4f} ({signed(change)}{rel})\n"
        f"{len(steps) - 1} kept change{'s' if len(steps) != 2 else ''} in {count}"
    )


def progress_figure(experiments: list[Experiment]) -> Figure:
    """Draw the progress chart on a new figure with an Agg canvas (not registered with pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(13, 7), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    done = finished(experiments)
    data = plot_data(experiments)
    strip = bool(data.crashed or data.no_value)
    if strip:
        ax, below = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [14, 1]})
    else:
        ax, below = fig.add_subplot(), None
    ax.set_title(title_text(experiments), fontsize=13)
    if not done:
        _centre_note(ax, "Nothing to plot yet: run `autoresearch run` first")
        ax.set_xticks([])
        return fig

    (below or ax).set_xlabel("experiment #")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, color="0.92", linewidth=0.8)
    ax.set_axisbelow(True)
    ids = [e.id for e in done]
    ax.set_xlim(min(ids) - 0.8, max(ids) + max(1.5, 0.02 * (max(ids) - min(ids))))

    if data.ylim is None:
        _centre_note(ax, "No finished experiment has a val_bpb")
    else:
        ax.set_ylim(*data.ylim)
        _draw_points(ax, data)
        _draw_best(ax, data)
        _draw_labels(ax, done)
    if below is not None:
        _draw_crashes(below, data)
    handles, _ = ax.get_legend_handles_labels()
    if below is not None:
        handles += below.get_legend_handles_labels()[0]
    if handles:  # under the chart, where it hides no point
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=9, frameon=False)
    return fig


def plot_progress(experiments: list[Experiment], path: Path) -> None:
    """Write the progress chart of these experiments to path (a PNG)."""
    fig = progress_figure(experiments)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        clear(tmp)  # made anew: never what was found there
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)  # a viewer, or a kill, meets the old chart or the new one
    finally:
        tmp.unlink(missing_ok=True)


def _centre_note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", fontsize=12)
    ax.set_yticks([])


def _draw_points(ax: Axes, data: PlotData) -> None:
    if data.discarded:
        ax.scatter(
            [i for i, _ in data.discarded],
            [v for _, v in data.discarded],
            s=22,
            color=DISCARD_COLOR,
            alpha=0.55,
            linewidths=0,
            label=f"discarded ({len(data.discarded) + len(data.beyond)})",
            gid="discarded",
            zorder=2,
        )
    if data.beyond:
        edge = ax.get_xaxis_transform()  # x in data, y as a fraction of the axes
        ax.scatter(
            [i for i, _ in data.beyond],
            [0.985] * len(data.beyond),
            marker="^",
            s=30,
            color=DISCARD_COLOR,
            alpha=0.8,
            transform=edge,
            label=f"beyond the axis, value written ({len(data.beyond)})",
            gid="beyond",
            zorder=2,
        )
        for i, value in data.beyond:
            ax.annotate(
                f"{value:.4g}",
                (i, 0.985),
                xycoords=edge,
                xytext=(0, -6),
                textcoords="offset points",
                rotation=90,
                ha="center",
                va="top",
                fontsize=7.5,
                color="0.25",
                gid="beyond-value",
            )
    if data.kept:
        ax.scatter(
            [i for i, _ in data.kept],
            [v for _, v in data.kept],
            s=60,
            color=KEPT_COLOR,
            edgecolors="white",
            linewidths=1.2,
            label=f"kept ({len(data.kept)})",
            gid="kept",
            zorder=4,
        )


def _draw_crashes(ax: Axes, data: PlotData) -> None:
    """The strip under the chart: one mark per crash (and per finished experiment without a value)."""
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_ylabel("crash", rotation=0, ha="right", va="center", color=CRASH_COLOR)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if data.crashed:
        ax.scatter(
            data.crashed,
            [0.5] * len(data.crashed),
            marker="x",
            s=40,
            color=CRASH_COLOR,
            label=f"crashed ({len(data.crashed)})",
            gid="crashed",
        )
    if data.no_value:
        ax.scatter(
            data.no_value,
            [0.5] * len(data.no_value),
            marker="o",
            s=30,
            facecolors="none",
            edgecolors=CRASH_COLOR,
            label=f"no val_bpb recorded ({len(data.no_value)})",
            gid="no-value",
        )


def _draw_best(ax: Axes, data: PlotData) -> None:
    if not data.best:
        return
    xs = [x for x, _ in data.best]
    ys = [y for _, y in data.best]
    xs.append(xs[-1] + 0.5)  # run the line a little past the last experiment
    ys.append(ys[-1])
    ax.step(
        xs, ys, where="post", color=KEPT_COLOR, linewidth=1.8, alpha=0.75, label="running best", gid="best", zorder=3
    )
    if data.margin:
        ax.fill_between(
            xs,
            [y - data.margin for y in ys],
            [y + data.margin for y in ys],
            step="post",
            color=KEPT_COLOR,
            alpha=0.12,
            linewidth=0,
            label=f"running best ± margin ({data.margin:.4g})",
            gid="band",
            zorder=1,
        )


def _draw_labels(ax: Axes, done: list[Experiment]) -> None:
    """Label each kept point with its change, slanted up and to the right, nudged apart where they would touch."""
    steps = chain(done)
    if not steps:
        return
    size = 9 if len(steps) <= 12 else 7.5 if len(steps) <= 25 else 6.5
    angle = math.radians(LABEL_ANGLE)
    along, normal = (math.cos(angle), math.sin(angle)), (-math.sin(angle), math.cos(angle))
    fig = ax.get_figure()
    fig.canvas.draw()  # settle the layout so that data maps to where it will be drawn
    to_points = 72 / fig.dpi
    placed: tuple[float, float, float] | None = None  # along-start, along-end and height of the label after
    labels = []
    for step in reversed(steps):  # from the last, so that each label makes way for the one after it
        if step.previous is None:
            text = "baseline" if step.exp.kind == Kind.BASELINE else shorten(step.exp.description, LABEL_WIDTH)
        else:
            text = f"{shorten(step.exp.description, LABEL_WIDTH)} ({signed(step.delta or 0.0)})"
        px, py = (c * to_points for c in ax.transData.transform((step.exp.id, step.value)))
        ox, oy = 5.0, 7.0
        start = along[0] * (px + ox) + along[1] * (py + oy)
        height = normal[0] * (px + ox) + normal[1] * (py + oy)
        end = start + 0.55 * size * len(text)  # about the text's length, in points
        if placed and start < placed[1] and end > placed[0] and height < placed[2] + 1.4 * size:
            shift = placed[2] + 1.4 * size - height  # lift it clear of the label after, across its slant
            ox, oy, height = ox + shift * normal[0], oy + shift * normal[1], height + shift
        placed = (start, end, height)
        labels.append((text, step, (ox, oy)))
    for text, step, offset in reversed(labels):
        ax.annotate(
            text,
            (step.exp.id, step.value),
            xytext=offset,
            textcoords="offset points",
            rotation=LABEL_ANGLE,
            rotation_mode="anchor",
            ha="left",
            va="bottom",
            fontsize=size,
            color="0.15",
            parse_math=False,  # an agent's words: `$` is a dollar, not mathtext (which may not parse)
            gid="label",
            zorder=5,
        )
