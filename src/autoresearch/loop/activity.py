"""What each worker did and when, and the numbers `status`, the live view and `report` derive from it.

The driver records every training run in its experiment's ledger row (`spans`: the worker, the run's index,
when the worker was handed the run and when its outcome came back, as time.time()). Defined here, once:

- a worker's **busy fraction** over a window is the part of the window during which it had a run: start-up,
  compilation and scoring included (the GPU is the run's all that time), the driver's and the agent's work
  between two runs not. Several workers: the mean of theirs, i.e. busy GPU-seconds over GPU-seconds.
- **experiments per hour**: the verdicts within a window over its hours, each experiment counted for the
  worker of its last run (a rejected proposal counts in the total, for no worker).

`status`'s busy fractions take the window since the running loop started (its `loop.json`), the live view since it
opened; `report`, and `status`'s rates, from the first experiment's start to the last verdict (`rated`: one window for
both), less the time no loop ran (each loop's start, end and workers are kept in `sessions.jsonl`; one killed
outright ends at its last run or verdict). A run still training counts up to now where the loop is alive; a run the
loop died during has no known end and counts nowhere.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import stat
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from autoresearch.files import read_regular, write_text_atomic
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.settings import BASELINE_SEEDS_MAX
from autoresearch.vocabulary import IN_FLIGHT

SESSION_NAME = "loop.json"  # under .autoresearch/: the running loop's workers and when it started
HISTORY_NAME = "sessions.jsonl"  # under .autoresearch/: each loop's start, end (null: killed) and workers, a line each


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


def as_of(experiments: list[Experiment], when: float) -> list[Experiment]:
    """The rows as the loop held them at `when` (time.time()): those with a verdict by then (at `when` too), each with
    the values of its runs that had ended by then. With several workers verdicts come in any order, and a kept change
    measured again gains runs after its verdict (loop/confirmation.py): what a verdict was judged with is this, not the
    rows before it. A run ends when its worker reports it (`with_end`), its value joins its row moments later; a value
    whose run has no recorded end (a ledger from before spans, or rebuilt) counts."""
    rows = []
    for exp in experiments:
        if exp.finished_at is None or exp.finished_at > when:
            continue
        ended: dict[int, float] = {}
        for span in spans_of(exp):
            if span.end is not None:  # a run the loop was killed during trained again: its last end gave the value
                ended[span.run] = max(span.end, ended.get(span.run, span.end))
        try:
            pairs = zip(exp.run_values, exp.run_indices, strict=True)  # run_indices is as long as the values
            runs = [(v, i) for v, i in pairs if ended.get(i, -math.inf) < when]
        except (TypeError, ValueError):  # a broken record: as it is (judge.run_values reads it as no runs)
            rows.append(exp)
            continue
        values, seeds = [v for v, _ in runs], [i for _, i in runs]
        rows.append(replace(exp, runs=json.dumps(values), seeds=json.dumps(seeds)))
    return rows


def busy_fraction(spans: Iterable[Span], start: float, end: float, now: float | None = None) -> float:
    """The part of [start, end] covered by one worker's spans (a worker trains one run at a time). An open
    span lasts until `now` where the loop is alive (None: it is not, and the span counts nowhere)."""
    return min(1.0, busy_seconds(spans, start, end, now) / (end - start)) if end > start else 0.0


def busy_seconds(spans: Iterable[Span], start: float, end: float, now: float | None = None) -> float:
    """The seconds of [start, end] one worker's spans cover (as `busy_fraction` counts them)."""
    busy = 0.0
    for span in spans:
        stop = span.end if span.end is not None else now
        if stop is not None:
            busy += max(0.0, min(stop, end) - max(span.start, start))
    return busy


def in_order(worker: str) -> list:
    """A worker's label as workers are listed: its numbers as numbers (`cpu 9` before `cpu 10`). Decimal digits alone
    (a regex's digits), and their first 18: `isdigit` took a label's `²` for a number, and int() refuses it, and
    5,000 digits (labels written by hand)."""
    return [int(part[:18]) if part.isdecimal() else part for part in re.split(r"(\d+)", worker)]


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


def per_hour(
    finished: list[Experiment], seconds: float, own: dict[str, float] | None = None
) -> tuple[float, dict[str, float]]:
    """Experiments per hour of these verdicts over `seconds`: in total, and for each worker named, over its `own`
    seconds where given (the time the loops it was a worker of ran: `running`)."""
    if seconds <= 0:
        return 0.0, {}
    counts, own = Counter(e.worker for e in finished if e.worker), own or {}
    return len(finished) * 3600 / seconds, {w: n * 3600 / (own.get(w) or seconds) for w, n in sorted(counts.items())}


@dataclass(frozen=True)
class Rated:
    """What `status` and `report` rate: the verdicts, and the workers that ran them."""

    done: list[Experiment]  # the experiments with a verdict
    start: float  # the first of them started
    end: float  # the last verdict: with several workers not the last row's, verdicts come in any order
    workers: list[str]  # every worker a run of any experiment or a verdict names
    spans: list[Span]  # every experiment's runs on workers


def rated(experiments: list[Experiment]) -> Rated | None:
    """The verdicts of `experiments` to rate, and their span; None before the first verdict."""
    done = [e for e in experiments if e.status not in IN_FLIGHT and e.finished_at is not None]
    if not done:
        return None
    spans = [s for e in experiments for s in spans_of(e)]
    workers = sorted({s.worker for s in spans} | {e.worker for e in done if e.worker}, key=in_order)
    return Rated(done, min(e.started_at for e in done), max(e.finished_at for e in done), workers, spans)


# -- the running loop's workers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    pid: int
    started: float  # time.time()
    workers: list[str]  # their labels: "gpu 0", "cpu 1", "ray 3"
    submissions: bool = True  # whether it takes what `submit` queues (a `try` or a one-worker `run` does not)
    asking: bool = True  # whether an agent proposes (the loop `submit` starts only waits for submissions)
    placement: tuple[str, ...] | None = None  # its options of where and how runs train, as given; None: unsaid


def start_session(
    state: Path,
    workers: list[str],
    started: float,
    submissions: bool = True,
    asking: bool = True,
    placement: list[str] | None = None,
) -> None:
    """Tell `status` which workers the loop runs with, since when, and whether an agent proposes; `submit` whether the
    loop takes its request; a hint how to start it again (`placement`: the CLI's). A session a killed loop left goes
    into the history first, with no end."""
    if (left := _recorded(state)) is not None and not _running(left):
        _remember(state, left, None)
    path = state / SESSION_NAME
    record = {"pid": os.getpid(), "started": started, "workers": workers, "submissions": submissions, "asking": asking}
    if placement is not None:
        record["placement"] = placement
    write_text_atomic(path, json.dumps(record), path.with_name(f".{path.name}.tmp"))


@contextmanager
def session(
    state: Path, workers: list[str], submissions: bool = True, placement: list[str] | None = None
) -> Iterator[None]:
    start_session(state, workers, time.time(), submissions, placement=placement)
    try:
        yield
    finally:
        end_session(state)


def end_session(state: Path) -> None:
    if (session := _recorded(state)) is not None:
        _remember(state, session, time.time())
    (state / SESSION_NAME).unlink(missing_ok=True)


def read_session(state: Path) -> Session | None:
    """The running loop's session; None when there is none, or the loop that wrote it is gone (killed)."""
    session = _recorded(state)
    return session if session is not None and _running(session) else None


def _running(session: Session) -> bool:
    """Whether the loop that wrote `session` still runs (no pid of a loop's, 0, -1 or past the kernel's, written by
    hand: no loop; os.kill(0 or -1) asked of this process's group, or of every process)."""
    if session.pid <= 0:
        return False
    try:
        os.kill(session.pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _recorded(state: Path) -> Session | None:
    """The session loop.json holds, whether or not its loop still runs; None where it holds none."""
    try:
        data = json.loads(read_regular(state / SESSION_NAME, 1 << 16))  # never waits on a FIFO put there
        workers, submissions = [str(w) for w in data["workers"]], data.get("submissions", True) is not False
        asking = data.get("asking", True) is not False
        return Session(int(data["pid"]), float(data["started"]), workers, submissions, asking, _placement(data))
    except (OSError, ValueError, KeyError, TypeError, OverflowError):  # a pid of 1e999, a start of 10**400: by hand
        return None


_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)


def _remember(state: Path, session: Session, ended: float | None) -> None:
    """Add a loop's session to the history; nothing where it cannot be written (it only informs the numbers), nor
    where something else than a file lies there: a link is not followed (a line appended to the file it names), a FIFO
    not waited on (the loop would hang at its start or end)."""
    record = {"started": session.started, "ended": ended, "workers": session.workers}
    if session.placement is not None:
        record["placement"] = list(session.placement)
    line = json.dumps(record)
    with contextlib.suppress(OSError):
        fd = os.open(state / HISTORY_NAME, _APPEND, 0o600)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Period:
    """A time a loop ran, and its workers (a `try`'s: none, one run at a time)."""

    start: float
    end: float
    workers: tuple[str, ...]
    placement: tuple[str, ...] | None = None  # the options it was started with (Session's)


def periods(state: Path, experiments: list[Experiment], now: float | None = None) -> list[Period]:
    """Every time a loop ran in the workspace, oldest first, the running one's up to `now`. A loop killed outright
    recorded no end: its last run's start or end, or its last verdict, ends it. Empty for a workspace whose loops
    kept no history (older than it): the numbers then span the time between the loops too."""
    found = []
    try:
        lines = read_regular(state / HISTORY_NAME, 1 << 24).splitlines()
    except (OSError, ValueError):
        lines = []
    for line in lines:
        try:
            data = json.loads(line)
            ended = None if data["ended"] is None else float(data["ended"])
            found.append((float(data["started"]), ended, tuple(str(w) for w in data["workers"]), _placement(data)))
        except (ValueError, KeyError, TypeError, OverflowError):
            continue  # a line cut short by a full disk, or not the loop's (a start of 10**400)
    if (last := _recorded(state)) is not None:  # running now, or killed and not yet in the history
        ended = (time.time() if now is None else now) if _running(last) else None
        found.append((last.started, ended, tuple(last.workers), last.placement))
    # One loop once, with its end where any record has it: a loop killed after it wrote its history's line, before it
    # removed loop.json, is in both (and the next start adds it again, with no end), and was counted twice
    once: dict[tuple, tuple] = {}
    for start, end, workers, placement in found:
        if (seen := once.get((start, workers))) is None or seen[1] is None:
            once[start, workers] = (start, end, workers, placement)
    found = sorted(once.values(), key=lambda period: period[0])
    times = [t for e in experiments for t in (e.started_at, e.finished_at) if t] + [
        t for e in experiments for s in spans_of(e) for t in (s.start, s.end) if t is not None
    ]
    made = []
    for i, (start, end, workers, placement) in enumerate(found):
        if end is None:
            before = found[i + 1][0] if i + 1 < len(found) else float("inf")
            end = max((t for t in times if start <= t < before), default=start)
        made.append(Period(start, end, workers, placement))
    return made


def _placement(data: dict) -> tuple[str, ...] | None:
    """The options a session's record says its loop was started with; None where it says none, or not as words."""
    placement = data.get("placement")
    words = isinstance(placement, list) and all(isinstance(word, str) for word in placement)
    return tuple(placement) if words else None  # (a JSON null was the word "None": helper 145)


UNKNOWN_WORKERS = "(with the --gpus or --workers it had)"  # where no loop said which
# The labels a loop gives its workers (workers.py): `gpu 0`, `gpu GPU-<uuid>` or `gpu MIG-<uuid>`, `cpu 1`, `ray 2`,
# `local`. Only these are named in a hint a person or an agent runs as it reads.
_WORKER = re.compile(r"gpu (\d{1,4}|(GPU|MIG)-[0-9A-Za-z/-]{1,80})|(cpu|ray) \d{1,4}|local")
# The options a loop records of where and how its runs train (cli's `placement`), and the values they may take in a
# hint: `--gpus all`, `--workers 2`, `--timeout 500`, `--accelerator H100`, `--ray 10.0.0.1:6379` (or none),
# `--baseline-runs 5`
_PLACEMENT = {"--gpus", "--workers", "--timeout", "--accelerator", "--ray", "--baseline-runs"}
_PLACED = re.compile(r"[A-Za-z0-9][A-Za-z0-9.,:/_\[\]+-]{0,199}")  # `+`: a timeout of 1e+20
# Counts (the seeds as `run` takes them: cli/commands.py, check_baseline_runs), and seconds as Python writes a float
# (the others' values: `_PLACED`)
_VALUES = {
    "--workers": re.compile(r"[1-9]\d{0,3}"),
    "--baseline-runs": re.compile(f"[2-{BASELINE_SEEDS_MAX}]"),
    "--timeout": re.compile(r"\d[\d.e+-]{0,30}"),
}


def resume_options(state: Path) -> str | None:
    """The options of `run` that give the workers the latest loop in the workspace had, to finish what it left in
    flight: `--gpus 0,1`, `--workers 2`, `--ray`, "" for the one worker of a plain `run`; None where no loop said.
    A `try` has no workers, and leaves nothing in flight: the loop before it is the one (red team: after a `try`, and
    in its own refusal of what a loop with --workers 3 had left, the hint named a plain `run`, refused for its share
    of the cores)."""
    if not (found := [period for period in periods(state, []) if period.workers]):
        return None
    workers, placement = found[-1].workers, found[-1].placement
    if (given := said_options(placement)) is not None:  # as given: a Ray cluster's address, a GPU type, a timeout
        return given
    if not all(_WORKER.fullmatch(w) for w in workers):  # no label of a loop's (a file written by hand): not said
        return None
    if gpus := [w.removeprefix("gpu ") for w in workers if w.startswith("gpu ")]:
        return f"--gpus {','.join(gpus)}"
    if any(w.startswith("ray ") for w in workers):
        return "--ray"
    cpus = sum(w.startswith("cpu ") for w in workers)
    return f"--workers {cpus}" if cpus else ""


def said_options(placement: tuple[str, ...] | list[str] | None) -> str | None:
    """`placement`'s words quoted for a command to run, where they are options a loop records that `run` takes
    (`_said`); None where they are not (a record written by hand: red team, `submit`'s note named `--timeout 60;touch
    x` as recorded)."""
    if placement is None or not _said(tuple(placement)):
        return None
    return " ".join(shlex.quote(word) for word in placement)


def _said(placement: tuple[str, ...]) -> bool:
    """Whether `placement` is options a loop records, each followed by a value of the kind it takes (--ray's may be
    left out), to be shown as a command to run."""
    words = list(placement)
    if len(words) > 10:
        return False
    while words:
        option = words.pop(0)
        if option not in _PLACEMENT:
            return False
        if words and words[0] not in _PLACEMENT:
            if not _VALUES.get(option, _PLACED).fullmatch(words.pop(0)):
                return False
        elif option != "--ray":
            return False
    # Nor what `run` refuses (red team: a hand-written record's hint was a command refused, `--gpus 0 --ray`)
    given = set(placement) & _PLACEMENT
    if {"--gpus", "--workers"} <= given:  # refused by `run` too (red team: a record of both, written by hand)
        return False
    return not given & {"--gpus", "--workers"} if "--ray" in given else "--accelerator" not in given


def run_command(state: Path, *options: str) -> str:
    """`autoresearch run` with `options` and the latest loop's workers (`resume_options`), as a hint names it."""
    given = resume_options(state)
    words = ["autoresearch run", *options, *([given] if given else [])]
    said = f"`{' '.join(words)}`"
    return said if given is not None else f"{said} {UNKNOWN_WORKERS}"


@dataclass(frozen=True)
class Running:
    """How long loops ran within a window: in all, their workers' time together (a loop without workers, a `try`,
    counted as one), and each worker's own."""

    seconds: float
    worker_seconds: float
    by_worker: dict[str, float]
    at_once: int  # the most workers one loop had (a one-worker loop's "local" beside two-worker loops': 2, of 3 names)


def running(found: list[Period], start: float, end: float, workers: list[str]) -> Running:
    """How long the loops of `found` ran within [start, end], `workers` (those the numbers are of) among theirs. Where
    no loop kept a history, or none of some of `workers`' loops did: the whole window, N workers having N x it."""
    if not found or not set(workers) <= {w for period in found for w in period.workers}:
        wall = end - start
        return Running(wall, wall * max(1, len(workers)), dict.fromkeys(workers, wall), max(1, len(workers)))
    seconds, capacity, by_worker, at_once = 0.0, 0.0, Counter(), 1
    for period in found:
        within = max(0.0, min(period.end, end) - max(period.start, start))
        seconds += within
        capacity += within * max(1, len(period.workers))
        for worker in period.workers:
            by_worker[worker] += within
        if within > 0:
            at_once = max(at_once, len(period.workers))
    return Running(seconds, capacity, dict(by_worker), at_once)
