"""Numbers derived from the ledger that both the plot and the Markdown report show.

The improving chain is the sequence of kept experiments with a value, in order: the baseline first,
then each kept change, which became the new best when it was kept. "Best" is the head of that chain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autoresearch.loop import activity
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.judge import BETTER, SIMPLER_BUT, SIMPLER_KEPT, Noise, measured_noise, run_values
from autoresearch.visible import visible_line
from autoresearch.vocabulary import IN_FLIGHT, Kind, Status


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


def status_word(status: Status, stopped: bool) -> str:
    """A status as the report, `show` and `diff` name it; `stopped`: no loop runs now, so a running experiment is
    interrupted (as `status` says: the next start trains it again)."""
    return "interrupted" if stopped and status == Status.RUNNING else str(status)


def finished(experiments: list[Experiment]) -> list[Experiment]:
    """The experiments with a verdict (everything but the one still running), in order."""
    return [e for e in experiments if e.status not in IN_FLIGHT]


def has_value(exp: Experiment) -> bool:
    """Whether the experiment has a val_bpb to show: it did not crash and its value is a finite number."""
    return exp.status != Status.CRASH and isinstance(exp.val_bpb, (int, float)) and math.isfinite(exp.val_bpb)


def chain(experiments: list[Experiment]) -> list[Step]:
    """The kept experiments with a value, in order, each with the best it replaced."""
    steps: list[Step] = []
    for exp in sorted(experiments, key=lambda e: e.id):
        if exp.status == Status.KEEP and has_value(exp):
            steps.append(Step(exp, steps[-1].value if steps else None))
    return steps


def running_best(experiments: list[Experiment]) -> list[tuple[int, float]]:
    """(experiment id, best val_bpb after it) for each finished experiment from the first kept one on."""
    series: list[tuple[int, float]] = []
    best: float | None = None
    for exp in sorted(finished(experiments), key=lambda e: e.id):
        if exp.status == Status.KEEP and has_value(exp):
            best = exp.val_bpb
        if best is not None:
            series.append((exp.id, best))
    return series


def shorten(text: str, width: int = 48) -> str:
    """The first line of text with whitespace collapsed, cut to width characters with an ellipsis."""
    return clip(first_line(text), width)


def clip(text: str, width: int) -> str:
    """Text on one line (whitespace collapsed), at most width characters: cut at a word boundary, with an
    ellipsis, so that a number or a name is never cut in two (only a single word longer than the space is); what a
    terminal would act on spelled out (visible: a description rebuilt from a results.tsv edited by hand)."""
    line = visible_line(text)
    if len(line) <= width:
        return line
    room = line[: width - 1]
    cut = room.rfind(" ")
    if cut >= width // 3:  # a word boundary not too far back; else the first word is long: cut it
        room = room[:cut]
    return room.rstrip(" ,;:-(") + "…"


def first_line(text: str, last: bool = False) -> str:
    """The first (or with last, the last) non-blank line of text, stripped; "" when there is none."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if last else lines[0]) if lines else ""


def signed(value: float, spec: str = ".4f") -> str:
    """A number with an explicit sign, using a true minus sign: +0.0012, −0.0034."""
    return format(value, "+" + spec).replace("-", "−")


# -- the noise, the margin, and why each experiment went the way it did ------------------------------


def noise_before(experiments: list[Experiment], exp: Experiment) -> Noise | None:
    """The noise `exp` was judged with: measured by the runs that had ended by its verdict (it grows with the night;
    with several workers, verdicts after its own and a kept change's runs measured again later are not in it)."""
    return noises_before(experiments, [exp])[exp.id]


def noises_before(experiments: list[Experiment], of: list[Experiment] | None = None) -> dict[int, Noise | None]:
    """`noise_before` of each experiment `of` (default: all), by id. The rows that measure the noise are picked out
    once, and the noise is measured once for each set of their runs (most verdicts see the same as the one before)."""
    # What measured_noise reads: the baseline's row, and those of more than one run (as of a verdict a row has no more
    # runs than now); a single run, most of a night's, measures no noise.
    measuring = [e for e in experiments if e.kind == Kind.BASELINE or len(run_values(e)) > 1]
    measured: dict[tuple, Noise | None] = {}
    noises: dict[int, Noise | None] = {}
    for exp in experiments if of is None else of:
        if exp.finished_at is None:
            noises[exp.id] = None
            continue
        # A verdict at the very time of its own goes before it where its id does: a ledger rebuilt from git has its
        # times to the second, and the baseline's last seed may end within the second of the next experiment's commit.
        tied = {e.id for e in measuring if e.finished_at == exp.finished_at and e.id >= exp.id}
        rows = activity.as_of([e for e in measuring if e.id not in tied], exp.finished_at)
        key = tuple((e.id, e.runs) for e in rows)  # all that differs between them: a row is one row, its runs fewer
        if key not in measured:
            measured[key] = measured_noise(rows)
        noises[exp.id] = measured[key]
    return noises


def best_before(experiments: list[Experiment]) -> dict[int, float]:
    """For each experiment, the best val_bpb it was judged against: that of the kept experiment it was made from
    (with several workers, one trained beside a change kept meanwhile is judged against its own base, an older
    best), else that of the last kept one before it."""
    kept = {e.commit: e.val_bpb for e in experiments if e.status == Status.KEEP and has_value(e) and e.commit}
    best: float | None = None
    before: dict[int, float] = {}
    for exp in sorted(experiments, key=lambda e: e.id):
        if (base := kept.get(exp.parent)) is not None or best is not None:
            before[exp.id] = base if base is not None else best
        if exp.status == Status.KEEP and has_value(exp):
            best = exp.val_bpb
    return before


def explain(exp: Experiment, best: float | None, noise: Noise | None, stopped: bool = False) -> str:
    """Why the experiment was kept, discarded or crashed, in words, against the best before it; `stopped`: no loop
    runs now, so an experiment in flight was interrupted (as `status` says)."""
    if exp.status in IN_FLIGHT:
        return "interrupted: trained again on the next start" if stopped else str(exp.status)
    if exp.status == Status.CRASH:
        why = first_line(exp.reason) or first_line(exp.log_tail, last=True) or "no reason recorded"
        return why if exp.kind == Kind.PROPOSAL else f"crash: {why}"
    runs = len(run_values(exp))
    mean = f" (mean of {runs} runs)" if runs > 1 else ""
    if exp.kind == Kind.BASELINE and exp.status == Status.KEEP:
        seeds = f"{runs} seeds; their spread is the noise" if runs > 1 else "1 seed"
        return f"baseline: the mean of {seeds}"
    if not has_value(exp) or best is None or noise is None or exp.status not in (Status.KEEP, Status.DISCARD):
        return first_line(exp.reason) or exp.status
    gain = best - exp.val_bpb
    margin = f"the margin {noise.margin:.6f}"
    if exp.status == Status.KEEP and gain > noise.margin:
        return f"{gain:.6f} better than the best {best:.6f}{mean}, beyond {margin}"
    if exp.status == Status.KEEP and exp.reason.startswith(BETTER):  # on a lucky run: measured again, it is not
        now = f"{signed(-gain, '.6f')} against the best {best:.6f}{mean}"
        return f"kept as better when judged; now {now}, within {margin}"
    if exp.status == Status.KEEP:
        return f"{SIMPLER_KEPT}: {signed(-gain, '.6f')} against the best {best:.6f}{mean}, within {margin}"
    if exp.reason.startswith(SIMPLER_BUT):  # within the margin of the best, not of the lowest val_bpb kept
        return first_line(exp.reason)
    if gain > noise.margin:  # a win on a stale base, merged onto the best (or in conflict with it)
        why = first_line(exp.reason)
        return f"{gain:.6f} better than the best {best:.6f}{mean}, beyond {margin}, yet discarded: {why}"
    if gain > 0:
        return f"{gain:.6f} better than the best {best:.6f}{mean} but inside {margin}"
    if gain == 0:
        return f"equal to the best {best:.6f}{mean}"
    return f"worse: {-gain:.6f} above the best {best:.6f}{mean}"
