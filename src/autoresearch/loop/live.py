"""The live terminal view of a running loop (rich): what runs now, the best so far, the last verdicts."""

from __future__ import annotations

import time
from collections import deque

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from autoresearch.loop.ledger import KEEP, Experiment
from autoresearch.loop.reporter import verdict_line

STYLES = {"keep": "green", "discard": "dim", "crash": "red"}


class LiveReporter:
    def __init__(self, console: Console, title: str):
        self.console = console
        self.title = title
        self.current = ("", "", "")  # experiment, what it tries, phase
        self.started = time.monotonic()
        self.run_started: float | None = None
        self.budget = 0.0
        self.best: Experiment | None = None
        self.recent: deque[Experiment] = deque(maxlen=6)
        self.counts = {"keep": 0, "discard": 0, "crash": 0}
        self._live = Live(console=console, refresh_per_second=2, get_renderable=self._render, transient=False)

    def __enter__(self) -> LiveReporter:
        self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._live.__exit__(*exc)

    def phase(self, exp_id: int, what: str, text: str) -> None:
        same = self.current[0] == str(exp_id)
        self.current = (str(exp_id), what or (self.current[1] if same else ""), text)
        self.run_started = None

    def training(self, exp_id: int, run: int, budget: float) -> None:
        self.run_started, self.budget = time.monotonic(), budget

    def finished(self, exp: Experiment, best: Experiment | None) -> None:
        self.best = best
        self.recent.appendleft(exp)
        self.counts[exp.status] = self.counts.get(exp.status, 0) + 1
        self.console.print(Text(verdict_line(exp, best), style=STYLES.get(exp.status, "")))

    def message(self, text: str) -> None:
        self.console.print(text)

    def _render(self) -> Group:
        head = Table.grid(padding=(0, 2))
        head.add_row(Text(self.title, style="bold"), f"up {_clock(time.monotonic() - self.started)}")
        exp_id, what, phase = self.current
        if exp_id:
            clock = ""
            if self.run_started is not None:
                clock = f"  {_clock(time.monotonic() - self.run_started)} / {self.budget:g}s budget"
            head.add_row(f"exp {exp_id}: {phase}{clock}", Text(what[:80], style="italic"))
        if self.best and self.best.val_bpb is not None:
            head.add_row(f"best val_bpb {self.best.val_bpb:.6f} (exp {self.best.id})", self.best.description[:80])
        head.add_row(", ".join(f"{n} {s}" for s, n in self.counts.items()), "")
        recent = Table(show_header=False, box=None, padding=(0, 1))
        for e in self.recent:
            bpb = f"{e.val_bpb:.6f}" if e.val_bpb is not None else "-"
            mark = "*" if e.status == KEEP else " "
            recent.add_row(f"{mark}{e.id}", Text(e.status, style=STYLES.get(e.status, "")), bpb, e.description[:70])
        return Group(head, recent)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
