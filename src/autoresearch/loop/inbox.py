"""`autoresearch submit` and `wait`: a coding agent queues train.py files for a running loop, which judges them.

The loop (the driver) is the only writer of the ledger, so `submit` does not write it: it drops a request
(description, train.py, the best it was made from) in `.autoresearch/inbox/` and waits for the driver's
reply, the experiment's id (or why it was refused), which comes within a second or two. The driver
records the request as a queued experiment before it replies and removes it only after: a driver killed
in between finds the request again on its next start and answers it with the row it had written.
`wait` reads the ledger until the experiments have their verdicts.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from autoresearch.agents.base import Proposal, Usage
from autoresearch.errors import AutoresearchError
from autoresearch.loop import guard
from autoresearch.loop.asking import one_line
from autoresearch.loop.ledger import Experiment
from autoresearch.vocabulary import Kind, Status

INBOX_DIR = "inbox"
SUBMITTER = "submit"  # the ledger's agent for submitted experiments


@dataclass(frozen=True)
class Submitter:
    """The `agent` a submitted experiment's row names."""

    name: str = SUBMITTER
    model: str = ""


class Inbox:
    def __init__(self, state: Path):
        self.dir = state / INBOX_DIR

    # -- the submitter's side -------------------------------------------------------------------------

    def put(self, description: str, source: str, base: str) -> Path:
        """Drop a request; the path its reply will have."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}-{os.getpid()}-{secrets.token_hex(3)}"
        request = {"description": description, "source": source, "base": base}
        _write_atomic(self.dir / f"{name}.json", json.dumps(request))
        return self.dir / f"{name}.reply"

    @staticmethod
    def reply(path: Path, timeout: float) -> dict | None:
        """The driver's reply to a request ({"id": N} or {"error": why}); None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                answer = json.loads(path.read_text())
                path.unlink(missing_ok=True)
                return answer
            except (OSError, ValueError):
                time.sleep(0.1)
        return None

    # -- the driver's side ------------------------------------------------------------------------

    def pending(self) -> bool:
        return self.dir.is_dir() and any(self.dir.glob("*.json"))

    def take(self, loop) -> list[Experiment]:
        """Record every request as a queued experiment (or refuse it), answer it, remove it; the queued ones."""
        queued = []
        for request in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            try:
                data = json.loads(request.read_text())
                fields = [data["description"], data["source"], data["base"]]
                if not all(isinstance(f, str) for f in fields):
                    raise TypeError("its description, train.py and base must be text")
                answer, exp = self._record(loop, *fields)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                answer, exp = {"error": f"the request could not be read ({exc})"}, None
            _write_atomic(request.with_suffix(".reply"), json.dumps(answer))
            request.unlink(missing_ok=True)
            if exp is not None and not exp.status.final:
                queued.append(exp)
        return queued

    def _record(self, loop, description: str, source: str, base: str) -> tuple[dict, Experiment | None]:
        rows = loop.ledger.all()
        recorded = one_line(description)  # as the row holds it
        for e in rows:  # already recorded by a driver killed before it answered
            if e.agent == SUBMITTER and e.parent == base and e.source == source and e.description == recorded:
                return {"id": e.id}, e
        kept = next((e for e in rows if e.commit == base and e.status == Status.KEEP), None)
        if kept is None:
            return {"error": f"train.py was made from {base[:7]}, which is not a kept experiment"}, None
        why = guard.rejection(kept.source, source) or loop.duplicate_of(source, base)
        if why:
            return {"error": f"rejected before running: {why}"}, None
        exp = loop.record(Proposal(description, source, Usage()), SUBMITTER, "", base=kept, status=Status.QUEUED)
        loop.reporter.message(f"exp {exp.id} submitted: {exp.description}")
        return {"id": exp.id}, exp


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class WaitError(AutoresearchError):
    pass


def wait_for(ledger_of, ids: list[int], driver_alive, poll: float = 1.0, log: Path | None = None) -> list[Experiment]:
    """Block until every experiment in `ids` has its verdict; `ledger_of()` opens the ledger to read,
    `driver_alive()` says whether a loop still runs to give them one, and `log` is the background loop's, whose
    error is repeated if it stopped on one."""
    while True:
        ledger = ledger_of()
        try:
            rows = {i: ledger.get(i) for i in ids}
        finally:
            ledger.close()
        if missing := [i for i, e in rows.items() if e is None]:
            raise WaitError(f"no experiment {', '.join(map(str, missing))} in the ledger")
        if all(e.status.final for e in rows.values()):
            return [rows[i] for i in ids]
        if not driver_alive():
            waiting = ", ".join(str(i) for i, e in rows.items() if not e.status.final)
            stopped = last_error(log) if log else None
            raise WaitError(
                f"experiments {waiting} are in flight but no loop is running"
                + (f"; it stopped with {stopped}" if stopped else ""),
                hint="`autoresearch run --agent queue` (with your --gpus or --workers) finishes them"
                + (", once what stopped it is dealt with" if stopped else ""),
            )
        time.sleep(poll)


def last_error(log: Path) -> str | None:
    """The error a background loop stopped with: its `error: ...` line and hint, where they end its log."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-4:]
    except OSError:
        return None
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    return " ".join(line.strip() for line in lines[starts[-1] :]) if starts else None


def in_flight_ids(ledger) -> list[int]:
    """What `wait` with no ids waits for: every experiment queued or running."""
    return [e.id for e in ledger.in_flight() if e.kind != Kind.PROPOSAL]
