"""What each worker did and when, and the numbers `status`, the live view and `report` derive from it.

The driver records every training run in its experiment's ledger row (`spans`: the worker, the run's index,
when the worker was handed the run and when its outcome came back, as time.time()). Defined here, once:

- a worker's **busy fraction** over a window is the part of the window during which it had a run: start-up,
  compilation and scoring included (the GPU is the run's all that time), the driver's and the agent's work
  between two runs not. Several workers: the mean of theirs, i.e. busy GPU-seconds over GPU-seconds.
- **experiments per hour**: the verdicts within a window over its hours, each experiment counted for the
  worker of its last run (a rejected proposal counts in the total, for no worker).

`status` takes the window since the running loop started (its `loop.json`), the live view since it opened,
`report` from the first experiment's start to the last verdict. A run still training counts up to now where
the loop is alive; a run the loop died during has no known end and counts nowhere.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from autoresearch.files import read_regular, write_text_atomic
from autoresearch.loop.ledger import Experiment

SESSION_NAME = "loop.json"  # under .autoresearch/: the running loop's workers and when it started


@dataclass(frozen=True)
class Span:
    """One training run on one worker."""

    worker: str
    exp_id: int
    run: int  # the run's index (it trained with SEED + run)
    start: float
    end: float | None = None  # None while it trains, or where the loop died during it


def spans_of(exp: Experiment) -> list[Span]:
    return [Span(s["worker"], exp.id, s["run"], s["start"], s["end"]) for s in json.loads(exp.spans)]


def with_start(exp: Experiment, run: int, worker: str, at: float) -> str:
    """`exp.spans` with run `run` started on `worker` at `at`."""
    return json.dumps([*json.loads(exp.spans), {"worker": worker, "run": run, "start": at, "end": None}])


def with_end(exp: Experiment, run: int, at: float) -> str:
    """`exp.spans` with the open span of run `run` ended at `at`."""
    spans = json.loads(exp.spans)
    for span in spans:
        if span["run"] == run and span["end"] is None:
            span["end"] = at
    return json.dumps(spans)


def left_open(exp: Experiment) -> bool:
    """Whether a run of `exp` has no end recorded: it trains now, or the loop died during it."""
    return any(s["end"] is None for s in json.loads(exp.spans))


def without_open(exp: Experiment) -> str:
    """`exp.spans` less the runs a dead loop left open: when they ended is not known."""
    return json.dumps([s for s in json.loads(exp.spans) if s["end"] is not None])


def busy_fraction(spans: Iterable[Span], start: float, end: float, now: float | None = None) -> float:
    """The part of [start, end] covered by one worker's spans (a worker trains one run at a time). An open
    span lasts until `now` where the loop is alive (None: it is not, and the span counts nowhere)."""
    if end <= start:
        return 0.0
    busy = 0.0
    for span in spans:
        stop = span.end if span.end is not None else now
        if stop is not None:
            busy += max(0.0, min(stop, end) - max(span.start, start))
    return min(1.0, busy / (end - start))


def busy_by_worker(
    spans: Iterable[Span], start: float, end: float, now: float | None = None, workers: list[str] | None = None
) -> dict[str, float]:
    """The busy fraction of each of `workers` (default: every worker a span names), by name."""
    spans = list(spans)
    names = workers if workers is not None else sorted({s.worker for s in spans})
    return {w: busy_fraction([s for s in spans if s.worker == w], start, end, now) for w in names}


def overall(busy: dict[str, float]) -> float:
    """The busy fraction of several workers together: the mean of theirs."""
    return sum(busy.values()) / len(busy) if busy else 0.0


def per_hour(finished: list[Experiment], seconds: float) -> tuple[float, dict[str, float]]:
    """Experiments per hour of these verdicts over `seconds`: in total, and for each worker named."""
    if seconds <= 0:
        return 0.0, {}
    counts = Counter(e.worker for e in finished if e.worker)
    return len(finished) * 3600 / seconds, {w: n * 3600 / seconds for w, n in sorted(counts.items())}


# -- the running loop's workers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    pid: int
    started: float  # time.time()
    workers: list[str]  # their labels: "gpu 0", "cpu 1", "ray 3"
    submissions: bool = True  # whether it takes what `submit` queues (a `try` or a one-worker `run` does not)
    asking: bool = True  # whether an agent proposes (the loop `submit` starts only waits for submissions)


def start_session(
    state: Path, workers: list[str], started: float, submissions: bool = True, asking: bool = True
) -> None:
    """Tell `status` which workers the loop runs with, since when, and whether an agent proposes; `submit` whether the
    loop takes its request."""
    path = state / SESSION_NAME
    record = {"pid": os.getpid(), "started": started, "workers": workers, "submissions": submissions, "asking": asking}
    write_text_atomic(path, json.dumps(record), path.with_name(f".{path.name}.tmp"))


@contextmanager
def session(state: Path, workers: list[str], submissions: bool = True) -> Iterator[None]:
    start_session(state, workers, time.time(), submissions)
    try:
        yield
    finally:
        end_session(state)


def end_session(state: Path) -> None:
    (state / SESSION_NAME).unlink(missing_ok=True)


def read_session(state: Path) -> Session | None:
    """The running loop's session; None when there is none, or the loop that wrote it is gone (killed)."""
    try:
        data = json.loads(read_regular(state / SESSION_NAME, 1 << 16))  # never waits on a FIFO put there
        workers, submissions = [str(w) for w in data["workers"]], data.get("submissions", True) is not False
        asking = data.get("asking", True) is not False
        session = Session(int(data["pid"]), float(data["started"]), workers, submissions, asking)
        os.kill(session.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return session
