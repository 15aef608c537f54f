"""What the browser view shows of a workspace, as JSON: the words and numbers of `status`, `show` and the report,
asked of the same functions, so that the page and the terminal never disagree.

Every text in it (a description, a reason, a diff, a run's log) may be a run's or an agent's: the page puts each
into the document as text, never as markup (static/app.js)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from autoresearch.errors import AutoresearchError
from autoresearch.files import signature
from autoresearch.loop.experiment import Experiment, best_of
from autoresearch.loop.ledger import ledger_path, verified_rows
from autoresearch.loop.status import status_text
from autoresearch.report.compare import show_text
from autoresearch.report.plot import progress_figure, title_text
from autoresearch.report.summary import best_before, finished, first_line, status_word
from autoresearch.visible import visible, visible_line
from autoresearch.workspace.workspace import Workspace

FRESH_S = 0.5  # a snapshot is made again at most this often, however many pages ask
REREAD_S = 10.0  # the ledger is read again at least this often, changed or not


class Night:
    """A workspace as the pages see it: one snapshot shared by every page for FRESH_S, and the chart drawn once for
    each set of finished experiments."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self._lock = threading.Lock()
        self._made = -math.inf
        self._snapshot: dict[str, Any] = {}
        self._experiments: list[Experiment] = []
        self._chart: tuple[str, bytes] | None = None
        self._drawing = threading.Lock()  # one chart drawn at a time: two pages asking at once draw it once
        self._ledger_signature: list[tuple[int, int, int] | None] = []
        self._rows_read: list[Experiment] = []
        self._read_at = -math.inf

    def snapshot(self) -> dict[str, Any]:
        """The night now: {"running", "title", "status", "experiments", "chart"}, or {"error"} where the ledger
        cannot be read as the loop wrote it (the page says so, and what to do)."""
        with self._lock:
            if time.monotonic() - self._made >= FRESH_S:
                self._snapshot, self._experiments = self._read()
                self._made = time.monotonic()
            return self._snapshot

    def experiment(self, exp_id: int) -> str:
        """One experiment as `autoresearch show` prints it; AutoresearchError where there is no such one."""
        return show_text(self.ws.git, self._latest(), exp_id, stopped=not self.ws.is_locked())

    def chart(self) -> bytes:
        """The progress chart of `report`, as SVG, for the experiments of the latest snapshot."""
        experiments = self._latest()
        key = chart_key(experiments)
        with self._drawing:
            if self._chart is None or self._chart[0] != key:
                svg = io.BytesIO()
                progress_figure(experiments).savefig(svg, format="svg")
                self._chart = (key, svg.getvalue())
            return self._chart[1]

    def _latest(self) -> list[Experiment]:
        """The experiments of the latest snapshot (none where it was an error)."""
        self.snapshot()
        with self._lock:
            return self._experiments

    def _rows(self) -> list[Experiment]:
        """The ledger's rows, read and checked again only where its files changed (a night of 2,000 took 0.5 s a read,
        twice a second while a run's clock ticks)."""
        path = ledger_path(self.ws.root)
        found = [signature(Path(f"{path}{suffix}")) for suffix in ("", "-wal")]
        # and at least every REREAD_S: two writes in one tick of the file clock, of one size, look alike
        if found != self._ledger_signature or found[0] is None or time.monotonic() - self._read_at > REREAD_S:
            self._rows_read = verified_rows(self.ws.root)
            self._ledger_signature, self._read_at = found, time.monotonic()
        return self._rows_read

    def _read(self) -> tuple[dict[str, Any], list[Experiment]]:
        try:
            experiments = self._rows()
            status = status_text(self.ws, experiments)
        except AutoresearchError as exc:
            said = f"{exc}; {exc.hint}" if exc.hint else str(exc)
            return {"error": visible(said), "running": self.ws.is_locked()}, []
        except (OSError, sqlite3.Error) as exc:  # a disk gone, a file another hand made unreadable: said, then again
            return {"error": visible(f"cannot read the workspace now: {exc}"), "running": self.ws.is_locked()}, []
        running = self.ws.is_locked()
        return {
            "workspace": str(self.ws.root),
            "running": running,
            "title": title_text(experiments),
            "status": visible(status),
            "experiments": rows(experiments, stopped=not running),
            "chart": chart_key(experiments),
        }, experiments


def rows(experiments: list[Experiment], stopped: bool) -> list[dict[str, Any]]:
    """Each experiment as a row of the page's table, newest first."""
    before = best_before(experiments)
    best = best_of(experiments)
    table = []
    for exp in reversed(experiments):
        value = _number(exp.val_bpb)
        against = before.get(exp.id)
        table.append(
            {
                "id": exp.id,
                "status": status_word(exp.status, stopped),
                "val_bpb": value,
                "delta": None if value is None or against is None or exp.id == experiments[0].id else value - against,
                "best": exp is best,
                "worker": visible_line(exp.worker),
                "description": visible_line(exp.description),
                "reason": visible_line(first_line(exp.reason)),
            }
        )
    return table


def chart_key(experiments: list[Experiment]) -> str:
    """Changes whenever what the chart draws does: the finished experiments, their values and descriptions."""
    drawn = [(e.id, str(e.status), e.val_bpb, e.runs, e.description) for e in finished(experiments)]
    return hashlib.sha256(json.dumps(drawn, default=str).encode()).hexdigest()[:16]


def _number(value: float | None) -> float | None:
    """A value JSON can carry: NaN and infinities (a diverged run) are no number to show."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None
