"""The live terminal view of a running loop (rich): what runs now, the best so far, the last verdicts.

The run's clock counts training only: start-up, compilation, the untimed warm-up steps and the evaluation
are not on it. It follows the run's log (loop/status.py reads it), where the harness prints its step and its
share of the budget every few seconds, and ticks on between those lines without ever running backwards.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from autoresearch.loop.ledger import Experiment
from autoresearch.loop.reporter import verdict_line
from autoresearch.loop.status import EVALUATING, FINISHED, STARTING, TRAINING, WARMING_UP, RunProgress, read_progress
from autoresearch.report.summary import clip
from autoresearch.vocabulary import IN_FLIGHT, Status

STYLES = {Status.KEEP: "green", Status.DISCARD: "dim", Status.CRASH: "red"}


class TrainingClock:
    """Seconds trained in the current run, from the progress its log shows; None before the clock starts."""

    def __init__(self, budget: float):
        self.budget = budget
        self._line: tuple | None = None  # the progress line the anchor was taken at
        self._anchor = (0.0, 0.0)  # (seconds trained at that line, when it was seen)
        self._shown = 0.0

    def read(self, progress: RunProgress | None, now: float) -> float | None:
        if progress is None or progress.phase in (STARTING, WARMING_UP):
            return None
        if progress.trained_seconds is not None:  # done: the harness's own count
            self._shown = progress.trained_seconds
            return self._shown
        line = (progress.step, progress.fraction)
        if line != self._line:
            self._line = line
            self._anchor = ((progress.fraction or 0.0) * self.budget, now)
        trained, seen = self._anchor
        self._shown = max(self._shown, min(self.budget, trained + now - seen))
        return self._shown


class LiveReporter:
    def __init__(
        self, console: Console, title: str, runs_dir: Path | None = None, clock: Callable[[], float] = time.monotonic
    ):
        """`runs_dir` is the workspace's `.autoresearch/runs`, where each run's log is (`<exp>-<run>/log.txt`)."""
        self.console = console
        self.title = title
        self.runs_dir = runs_dir
        self.clock = clock
        self.current = ("", "", "")  # experiment, what it tries, phase
        self.others: dict[str, tuple[str, str, float]] = {}  # with several workers: the others in flight
        self._since: dict[str, float] = {}  # when each experiment entered its phase
        self.started = clock()
        self.budget = 0.0
        self.best: Experiment | None = None
        self.recent: deque[Experiment] = deque(maxlen=6)
        self.counts = {Status.KEEP: 0, Status.DISCARD: 0, Status.CRASH: 0}
        self._log: Path | None = None
        self._stale: tuple[int, int] | None = None  # the log as a previous attempt left it: not this run's
        self._run_clock: TrainingClock | None = None
        self._live = Live(console=console, refresh_per_second=2, get_renderable=self._render, transient=False)

    def __enter__(self) -> LiveReporter:
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._live.__exit__(*exc)

    def resume(self, experiments: list[Experiment]) -> None:
        """Show what a workspace already holds: the best, the counts and the last verdicts (on a resume)."""
        done = [e for e in experiments if e.status not in IN_FLIGHT]
        kept = [e for e in done if e.status == Status.KEEP]
        self.best = kept[-1] if kept else None
        for exp in done:
            self.counts[exp.status] = self.counts.get(exp.status, 0) + 1
        self.recent.extend(reversed(done[-self.recent.maxlen :]))

    def phase(self, exp_id: int, what: str, text: str) -> None:
        same = self.current[0] == str(exp_id)
        if self.current[0] and not same and " on " in text:  # another worker's: the current one goes on too
            self.others[self.current[0]] = (self.current[1], self.current[2], self._since.get(self.current[0], 0.0))
        self.others.pop(str(exp_id), None)
        self._since[str(exp_id)] = self.clock()
        self.current = (str(exp_id), what or (self.current[1] if same else ""), text)
        self._run_clock = None

    def training(self, exp_id: int, run: int, budget: float) -> None:
        self.budget = budget
        self._run_clock = TrainingClock(budget)
        self._log = self.runs_dir / f"{exp_id}-{run}" / "log.txt" if self.runs_dir is not None else None
        self._stale = _signature(self._log)

    def finished(self, exp: Experiment, best: Experiment | None) -> None:
        self.others.pop(str(exp.id), None)
        self.best = best
        self.recent.appendleft(exp)
        self.counts[exp.status] = self.counts.get(exp.status, 0) + 1
        self.console.print(Text(verdict_line(exp, best), style=STYLES.get(exp.status, "")))

    def message(self, text: str) -> None:
        self.console.print(Text(text))

    def run_progress(self) -> RunProgress | None:
        """What the current run's log shows, once the run has written to it."""
        if self._log is None or self._run_clock is None:
            return None
        signature = _signature(self._log)
        if signature is None or signature == self._stale:
            return None
        self._stale = None
        return read_progress(self._log)

    def run_state(self) -> str:
        """The current run against its budget: starting up, `0:23 / 60s budget` of training, or evaluating."""
        if self._run_clock is None:
            return ""
        progress = self.run_progress()
        trained = self._run_clock.read(progress, self.clock())
        if trained is None:
            return "starting up (not counted)" if self._log is not None else f"{self.budget:g}s budget"
        text = f"{_clock(trained)} / {self.budget:g}s budget"
        if progress is not None and progress.phase in (EVALUATING, FINISHED):
            return f"trained {text}; evaluating"
        if progress is not None and progress.phase == TRAINING and progress.step is not None:
            loss = f", loss {progress.loss:.4f}" if progress.loss is not None else ""
            text += f" (step {progress.step}{loss})"
        return text

    def _render(self) -> Group:
        head = Table.grid(padding=(0, 2))
        head.add_row(Text(self.title, style="bold"), Text(f"up {_clock(self.clock() - self.started)}"))
        exp_id, what, phase = self.current
        if exp_id:
            state = self.run_state()
            line = f"exp {exp_id}: {phase}" + (f"  {state}" if state else "")
            head.add_row(Text(line), Text(clip(what, 80), style="italic"))
        for other, (other_what, other_phase, since) in sorted(self.others.items()):
            elapsed = f"  {_clock(self.clock() - since)} / {self.budget:g}s budget" if self.budget else ""
            head.add_row(Text(f"exp {other}: {other_phase}{elapsed}"), Text(clip(other_what, 80), style="italic"))
        if self.best and self.best.val_bpb is not None:
            head.add_row(
                Text(f"best val_bpb {self.best.val_bpb:.6f} (exp {self.best.id})"),
                Text(clip(self.best.description, 80)),
            )
        head.add_row(Text(", ".join(f"{n} {s}" for s, n in self.counts.items())), "")
        recent = Table(show_header=False, box=None, padding=(0, 1))
        for e in self.recent:
            bpb = f"{e.val_bpb:.6f}" if e.val_bpb is not None else "-"
            mark = "*" if e.status == Status.KEEP else " "
            recent.add_row(
                Text(f"{mark}{e.id}"),
                Text(e.status, style=STYLES.get(e.status, "")),
                bpb,
                Text(clip(e.description, 70)),
            )
        return Group(head, recent)


def _signature(path: Path | None) -> tuple[int, int] | None:
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if st is not None else None


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
