"""Numbers derived from the ledger that both the plot and the Markdown report show.

The improving chain is the sequence of kept experiments with a value, in order: the baseline first,
then each kept change, which became the new best when it was kept. "Best" is the head of that chain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autoresearch.loop.ledger import CRASH, KEEP, RUNNING, Experiment


@dataclass(frozen=True)
class Step:
    """One link of the improving chain: a kept experiment and the best it replaced (None for the first)."""

    exp: Experiment
    previous: float | None

    @property
    def value(self) -> float:
        assert self.exp.val_bpb is not None  # the chain holds only experiments with a value
        return self.exp.val_bpb

    @property
    def delta(self) -> float | None:
        """The change of val_bpb against the previous best (negative is better)."""
        return None if self.previous is None else self.value - self.previous

    @property
    def relative(self) -> float | None:
        return None if self.previous is None or self.previous == 0 else self.value / self.previous - 1


def finished(experiments: list[Experiment]) -> list[Experiment]:
    """The experiments with a verdict (everything but the one still running), in order."""
    return [e for e in experiments if e.status != RUNNING]


def has_value(exp: Experiment) -> bool:
    """Whether the experiment has a val_bpb to show: it did not crash and its value is a finite number."""
    return exp.status != CRASH and isinstance(exp.val_bpb, (int, float)) and math.isfinite(exp.val_bpb)


def chain(experiments: list[Experiment]) -> list[Step]:
    """The kept experiments with a value, in order, each with the best it replaced."""
    steps: list[Step] = []
    for exp in sorted(experiments, key=lambda e: e.id):
        if exp.status == KEEP and has_value(exp):
            steps.append(Step(exp, steps[-1].value if steps else None))
    return steps


def running_best(experiments: list[Experiment]) -> list[tuple[int, float]]:
    """(experiment id, best val_bpb after it) for each finished experiment from the first kept one on."""
    series: list[tuple[int, float]] = []
    best: float | None = None
    for exp in sorted(finished(experiments), key=lambda e: e.id):
        if exp.status == KEEP and has_value(exp):
            best = exp.val_bpb
        if best is not None:
            series.append((exp.id, best))
    return series


def shorten(text: str, width: int = 48) -> str:
    """The first line of text with whitespace collapsed, cut to width characters with an ellipsis."""
    line = " ".join(first_line(text).split())
    return line if len(line) <= width else line[: width - 1].rstrip() + "…"


def first_line(text: str, last: bool = False) -> str:
    """The first (or with last, the last) non-blank line of text, stripped; "" when there is none."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if last else lines[0]) if lines else ""


def signed(value: float, spec: str = ".4f") -> str:
    """A number with an explicit sign, using a true minus sign: +0.0012, −0.0034."""
    return format(value, "+" + spec).replace("-", "−")
