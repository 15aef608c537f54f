"""progress.png: every finished experiment, the running best, and the changes that made it.

Matplotlib is imported inside the functions and drawn through its Agg canvas directly, so importing this
module costs nothing, needs no display and leaves pyplot's global backend alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from autoresearch.loop.ledger import CRASH, KEEP, Experiment
from autoresearch.report.summary import chain, finished, has_value, running_best, shorten, signed

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

KEPT_COLOR = "#1b7837"
DISCARD_COLOR = "#9e9e9e"
CRASH_COLOR = "#d73027"
LABEL_WIDTH = 44  # characters of a kept change's description shown next to its point
LABEL_ANGLE = 28  # degrees


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
    ax = fig.add_subplot()
    ax.set_title(title_text(experiments), fontsize=13)
    done = finished(experiments)
    if not done:
        _centre_note(ax, "Nothing to plot yet: run `autoresearch run` first")
        ax.set_xticks([])
        return fig

    ax.set_xlabel("experiment #")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, color="0.92", linewidth=0.8)
    ax.set_axisbelow(True)
    ids = [e.id for e in done]
    ax.set_xlim(min(ids) - 0.8, max(ids) + max(1.5, 0.02 * (max(ids) - min(ids))))

    cutoff = _value_range(ax, done)
    _draw_points(ax, done, cutoff)
    _draw_best(ax, done)
    ax.legend(loc="upper right", fontsize=9, framealpha=0.9)
    _draw_labels(ax, done)
    return fig


def plot_progress(experiments: list[Experiment], path: Path) -> None:
    """Write the progress chart of these experiments to path (a PNG)."""
    fig = progress_figure(experiments)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


def _centre_note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", fontsize=12)
    ax.set_yticks([])


def _value_range(ax: Axes, done: list[Experiment]) -> float | None:
    """Set the y range to the values worth seeing and return the cutoff above which a value is off the chart.

    The chart spans the kept values and everything near them; a run that blew up (further above the highest
    kept value than the whole chain spans) would squash the rest, so it is marked on the top edge instead.
    """
    values = [e.val_bpb for e in done if has_value(e)]
    if not values:
        _centre_note(ax, "No finished experiment has a val_bpb")
        return None
    kept = [s.value for s in chain(done)] or values
    low, top = min(values), max(kept)
    span = max(top - low, abs(top) * 0.005, 1e-4)
    cutoff = top + span
    high = max(v for v in values if v <= cutoff)
    size = high - low if high > low else span
    ax.set_ylim(low - 0.12 * size, high + 0.3 * size)  # room below for the crashes, above for the labels
    return cutoff


def _draw_points(ax: Axes, done: list[Experiment], cutoff: float | None) -> None:
    kept = [e for e in done if e.status == KEEP and has_value(e)]
    others = [e for e in done if e.status != KEEP and has_value(e)]
    crashed = [e for e in done if not has_value(e)]
    edge = ax.get_xaxis_transform()  # x in data, y as a fraction of the axes
    shown = [e for e in others if cutoff is None or e.val_bpb <= cutoff]
    over = [e for e in others if cutoff is not None and e.val_bpb > cutoff]
    if shown:
        ax.scatter(
            [e.id for e in shown],
            [e.val_bpb for e in shown],
            s=22,
            color=DISCARD_COLOR,
            alpha=0.45,
            linewidths=0,
            label=f"discarded ({len(others)})",
            gid="discarded",
            zorder=2,
        )
    if over:
        ax.scatter(
            [e.id for e in over],
            [0.985] * len(over),
            marker="^",
            s=30,
            color=DISCARD_COLOR,
            alpha=0.7,
            transform=edge,
            label=f"off the top ({len(over)})",
            gid="over",
            zorder=2,
        )
    if kept:
        ax.scatter(
            [e.id for e in kept],
            [e.val_bpb for e in kept],
            s=60,
            color=KEPT_COLOR,
            edgecolors="white",
            linewidths=1.2,
            label=f"kept ({len(kept)})",
            gid="kept",
            zorder=4,
        )
    if crashed:
        name = "crashed" if all(e.status == CRASH for e in crashed) else "crashed or no value"
        ax.scatter(
            [e.id for e in crashed],
            [0.03] * len(crashed),
            marker="x",
            s=40,
            color=CRASH_COLOR,
            transform=edge,
            label=f"{name} ({len(crashed)})",
            gid="crashed",
            zorder=4,
        )


def _draw_best(ax: Axes, done: list[Experiment]) -> None:
    series = running_best(done)
    if not series:
        return
    xs = [x for x, _ in series]
    ys = [y for _, y in series]
    xs.append(xs[-1] + 0.5)  # run the line a little past the last experiment
    ys.append(ys[-1])
    ax.step(
        xs, ys, where="post", color=KEPT_COLOR, linewidth=1.8, alpha=0.75, label="running best", gid="best", zorder=3
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
            text = "baseline" if step.exp.kind == "baseline" else shorten(step.exp.description, LABEL_WIDTH)
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
            gid="label",
            zorder=5,
        )
