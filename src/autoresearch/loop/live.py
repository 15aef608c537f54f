"""The live terminal view of a running loop (rich): what runs now, the best so far, the last verdicts.

The run's clock counts training only: start-up, compilation, the untimed warm-up steps and the evaluation
are not on it. It follows the run's log (loop/status.py reads it), where the harness prints its step and its
share of the budget every few seconds, and ticks on between those lines without ever running backwards.

With workers (`--gpus`, `--workers`, `--ray`) it has a line for each: its run against the budget (or idle),
what it tries, its busy fraction and its experiments per hour since the view opened (loop/activity.py defines
both); and, for several, one line for them all. The one-worker loop's view has none of this.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from autoresearch.files import signature
from autoresearch.loop.activity import Span, busy_by_worker, in_order, overall, per_hour
from autoresearch.loop.experiment import Experiment, best_of
from autoresearch.loop.reporter import verdict_line
from autoresearch.loop.status import EVALUATING, FINISHED, STARTING, TRAINING, WARMING_UP, RunProgress, read_progress
from autoresearch.report.summary import clip
from autoresearch.visible import visible
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


class RunView:
    """One run as the view follows it through its log: which it is, since when, its training clock."""

    def __init__(self, exp_id: int, run: int, what: str, log: Path | None, budget: float, since: float):
        self.exp_id, self.run, self.what, self.log, self.budget, self.since = exp_id, run, what, log, budget, since
        self.stale = signature(log)  # the log as a previous attempt left it: not this run's
        self.clock = TrainingClock(budget)

    def progress(self) -> RunProgress | None:
        """What the run's log shows, once the run has written to it."""
        if self.log is None:
            return None
        written = signature(self.log)
        if written is None or written == self.stale:
            return None
        self.stale = None
        return read_progress(self.log)

    def state(self, now: float) -> str:
        """The run against its budget: starting up, `0:23 / 60s budget` of training, or evaluating."""
        progress = self.progress()
        trained = self.clock.read(progress, now)
        if trained is None:
            return "starting up (not counted)" if self.log is not None else f"{self.budget:g}s budget"
        text = f"{_clock(trained)} / {self.budget:g}s budget"
        if progress is not None and progress.phase in (EVALUATING, FINISHED):
            return f"trained {text}; evaluating"
        if progress is not None and progress.phase == TRAINING and progress.step is not None:
            loss = f", loss {progress.loss:.4f}" if progress.loss is not None else ""
            text += f" (step {progress.step}{loss})"
        return text


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
        self.started = clock()
        self.best: Experiment | None = None
        self.recent: deque[Experiment] = deque(maxlen=6)
        self.counts = {Status.KEEP: 0, Status.DISCARD: 0, Status.CRASH: 0}
        self._run: RunView | None = None  # the one-worker loop's run
        self.workers: dict[str, RunView | None] = {}  # with workers: each one's run, None while it is idle
        self.spans: list[Span] = []  # their runs since the view opened, on its clock
        self.done: list[Experiment] = []  # the verdicts since the view opened
        self._live = Live(console=console, refresh_per_second=2, get_renderable=self._render, transient=False)

    def __enter__(self) -> LiveReporter:
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._live.__exit__(*exc)

    def resume(self, experiments: list[Experiment]) -> None:
        """Show what a workspace already holds: the best, the counts and the last verdicts (on a resume)."""
        done = [e for e in experiments if e.status not in IN_FLIGHT]
        self.best = best_of(done)
        for exp in done:
            self.counts[exp.status] = self.counts.get(exp.status, 0) + 1
        self.recent.extend(reversed(done[-self.recent.maxlen :]))

    def show_workers(self, labels: list[str]) -> None:
        """The loop's workers, each with a line from its start: one idle since then was not shown, nor, with one
        worker shown, the line for them all (`run --workers 2` looked like one worker)."""
        if len(labels) > 1:
            for label in labels:
                self.workers.setdefault(label, None)

    def phase(self, exp_id: int, what: str, text: str) -> None:
        same = self.current[0] == str(exp_id)
        self.current = (str(exp_id), what or (self.current[1] if same else ""), text)
        self._run = None

    def training(self, exp_id: int, run: int, budget: float, worker: str = "") -> None:
        log = self.runs_dir / f"{exp_id}-{run}" / "log.txt" if self.runs_dir is not None else None
        ours = self.current[0] == str(exp_id)
        view = RunView(exp_id, run, self.current[1] if ours else "", log, budget, self.clock())
        if not worker:
            self._run = view
            return
        self.workers[worker] = view
        self.spans.append(Span(worker, exp_id, run, view.since))
        if ours:  # its worker's line shows it from now on
            self.current = ("", "", "")

    def run_ended(self, exp_id: int, run: int, worker: str) -> None:
        view = self.workers.get(worker)
        if view is not None and (view.exp_id, view.run) == (exp_id, run):
            self.workers[worker] = None
        now = self.clock()
        self.spans = [
            replace(s, end=now) if (s.worker, s.exp_id, s.run, s.end) == (worker, exp_id, run, None) else s
            for s in self.spans
        ]

    def finished(self, exp: Experiment, best: Experiment | None) -> None:
        if self.current[0] == str(exp.id):  # judged: the head no longer shows it in progress (it said "evaluating")
            self.current, self._run = ("", "", ""), None
        self.best = best
        self.recent.appendleft(exp)
        self.done.append(exp)
        self.counts[exp.status] = self.counts.get(exp.status, 0) + 1
        self.console.print(Text(verdict_line(exp, best), style=STYLES.get(exp.status, "")))

    def message(self, text: str) -> None:
        self.console.print(Text(visible(text)))

    def run_state(self) -> str:
        """The one-worker loop's run against its budget (RunView.state); "" when none trains."""
        return self._run.state(self.clock()) if self._run is not None else ""

    def _render(self) -> Group:
        now = self.clock()
        head = Table.grid(padding=(0, 2))
        head.add_row(Text(self.title, style="bold"), Text(f"up {_clock(now - self.started)}"))
        exp_id, what, phase = self.current
        if exp_id:
            state = self.run_state()
            line = f"exp {exp_id}: {phase}" + (f"  {state}" if state else "")
            head.add_row(Text(line), Text(clip(what, 80), style="italic"))
        if self.best and self.best.val_bpb is not None:
            head.add_row(
                Text(f"best val_bpb {self.best.val_bpb:.6f} (exp {self.best.id})"),
                Text(clip(self.best.description, 80)),
            )
        head.add_row(Text(", ".join(f"{n} {s}" for s, n in self.counts.items())), Text(""))
        recent = Table(show_header=False, box=None, padding=(0, 1))
        for e in self.recent:
            bpb = f"{e.val_bpb:.6f}" if e.val_bpb is not None else "-"
            mark = "*" if e.status == Status.KEEP else " "
            recent.add_row(
                Text(f"{mark}{e.id}"),
                Text(e.status, style=STYLES.get(e.status, "")),
                Text(bpb),
                Text(clip(e.description, 70)),
            )
        if not self.workers:
            return Group(head, recent)
        _one_line(head, recent)
        rows = self.console.size.height - head.row_count - recent.row_count - 1  # the line the cursor is on
        return Group(head, _one_line(self._workers(now, rows)), recent)

    def _workers(self, now: float, rows: int) -> Table:
        """A line per worker: its run against the budget, what it tries, its busy fraction and its rate; in `rows`
        lines at most (64 workers filled the screen, and the terminal cut the lines for them all and the verdicts):
        those training first, then one line for the rest."""
        busy = busy_by_worker(self.spans, self.started, now, now, list(self.workers))
        total, rates = per_hour(self.done, now - self.started)
        table = Table.grid(padding=(0, 2))
        shown = labels = sorted(self.workers, key=in_order)
        if len(labels) + 1 > rows:  # each worker's line and the one for them all
            first = sorted(labels, key=lambda label: self.workers[label] is None)[: max(0, rows - 2)]  # training
            shown = [label for label in labels if label in first]
        for worker in shown:
            view = self.workers[worker]
            doing = f"exp {view.exp_id} run {view.run + 1}: {view.state(now)}" if view is not None else "idle"
            what = clip(view.what, 60) if view is not None else ""
            rate = f"busy {busy[worker]:.0%}, {rates.get(worker, 0.0):.1f}/h"
            table.add_row(Text(worker), Text(doing), Text(what, style="italic"), Text(rate))
        if hidden := [self.workers[label] for label in labels if label not in shown]:
            idle = sum(view is None for view in hidden)
            table.add_row(Text(f"{len(hidden)} more"), Text(f"{len(hidden) - idle} training, {idle} idle"))
        if len(self.workers) > 1:
            table.add_row(
                Text(f"{len(self.workers)} workers"), Text(f"busy {overall(busy):.0%}, {total:.1f} experiments/h")
            )
        return table


def _one_line(*tables: Table) -> Table:
    """Each row of `tables` on one line, cut with an ellipsis where it is wider than the terminal: the rows the
    workers' table is given are counted as lines (a terminal of 80 columns wrapped each worker's line in three, and
    64 workers' view filled 75 lines of its 30, the totals and the verdicts cut: red team, helper 151); returns the
    first."""
    for table in tables:
        for column in table.columns:  # each cell cut, not its column: the widest columns give way first
            for cell in column.cells:
                if isinstance(cell, Text):  # (every cell of these tables)
                    cell.no_wrap, cell.overflow = True, "ellipsis"
    return tables[0]


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
