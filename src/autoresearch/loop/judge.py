"""Keep or discard, knowing the noise.

The baseline is trained several times with different seeds; the spread of its val_bpb is the noise.
A change is kept when it beats the best by more than `margin = 2 x noise`. A win of less than twice
the margin is marginal: the change is trained once more (another seed) and kept only if the mean of its
runs still beats the best by the margin. A change that removes more lines than it adds is kept when it
is no worse than the best within the margin: simpler code at equal val_bpb.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from autoresearch.vocabulary import Status

MIN_NOISE = 5e-4  # never trust a spread smaller than this: two baseline runs can agree by chance


@dataclass(frozen=True)
class Verdict:
    decision: Status  # KEEP, DISCARD or RERUN
    reason: str


def noise_of(baseline_runs: list[float]) -> float:
    spread = statistics.stdev(baseline_runs) if len(baseline_runs) > 1 else 0.0
    return max(spread, MIN_NOISE)


def margin_of(noise: float) -> float:
    """How much a change must beat the best by to be kept."""
    return 2 * noise


def judge(best: float, runs: list[float], noise: float, lines_added: int, lines_removed: int) -> Verdict:
    """The verdict on a change whose runs gave `runs`, against the current best."""
    margin = margin_of(noise)
    value = statistics.fmean(runs)
    gain = best - value
    shown = f"{value:.6f} vs best {best:.6f} ({-gain:+.6f}; margin {margin:.6f}"
    shown += f", mean of {len(runs)} runs)" if len(runs) > 1 else ")"
    if gain > 2 * margin or (len(runs) > 1 and gain > margin):
        return Verdict(Status.KEEP, f"better: {shown}")
    if gain > margin:
        return Verdict(Status.RERUN, f"marginal win, run again: {shown}")
    if gain > -margin and lines_removed > lines_added:
        return Verdict(Status.KEEP, f"simpler at equal val_bpb: {shown}, {lines_removed - lines_added} lines fewer")
    return Verdict(Status.DISCARD, f"not better by more than the noise: {shown}")
