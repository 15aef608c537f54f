"""`autoresearch wait`: the verdicts of submitted experiments, each printed once.

Each submitted experiment leaves an empty `.autoresearch/unreported/<id>` (`mark_unreported`), removed when `wait`
prints its verdict (`reported`): `wait` with no ids waits for those, so that a verdict judged while the agent did
something else is never lost to it.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from autoresearch.errors import AutoresearchError
from autoresearch.loop.activity import UNKNOWN_WORKERS, periods, read_session
from autoresearch.loop.experiment import Experiment
from autoresearch.orphans import alive

UNREPORTED_DIR = "unreported"  # an empty file per submitted experiment whose verdict no `wait` has printed
# The line `submit` writes into driver.log (appended to by each background loop) before it starts one there: an error
# above it is an earlier loop's.
LOG_TAIL = 1 << 20  # how much of driver.log's end is read for the error the loop stopped with
LOOP_STARTED = "=== a loop started by `submit`"
# How much later than driver.log's last write a loop that started after it must have ended to count (`last_error`): the
# background loop's own session ends before it writes its error, yet a filesystem's time may lag the clock
LATER_S = 5.0


def mark_unreported(state: Path, exp_id: int) -> None:
    directory = state / UNREPORTED_DIR
    directory.mkdir(parents=True, exist_ok=True)
    (directory / str(exp_id)).touch()


def unreported(state: Path) -> list[int]:
    """Submitted experiments whose verdict no `wait` has printed yet, oldest first."""
    directory = state / UNREPORTED_DIR
    found = [p.name for p in directory.iterdir()] if directory.is_dir() else []
    # the names the loop writes; not any other file left there ("²" is a digit to isdigit, and int() refuses it)
    return sorted(int(n) for n in found if re.fullmatch(r"[1-9][0-9]{0,17}", n))


def reported(state: Path, exp_id: int) -> None:
    (state / UNREPORTED_DIR / str(exp_id)).unlink(missing_ok=True)


START_WAIT_S = 30.0  # how long `wait` takes an `autoresearch run` started beside it for a loop about to start
EXIT_WAIT_S = 30.0  # how long `wait` gives a loop that let go of the workspace to end (and write why it stopped)


def loop_running(is_locked: Callable[[], bool], state: Path) -> Callable[[], bool]:
    """Whether the loop working in the workspace (`is_locked`, its private `state`) still runs. Once it has let go of
    the workspace, only after its process (seen running earlier) has ended, within EXIT_WAIT_S: it writes the error it
    stopped with after that (BROKE, fixed: `wait` found no error in its log yet, and did not repeat it)."""
    seen: list[psutil.Process] = []
    asked = time.monotonic()

    def running() -> bool:
        if (session := read_session(state)) is not None and session.pid not in [p.pid for p in seen]:
            with contextlib.suppress(psutil.Error):
                seen.append(psutil.Process(session.pid))  # with its start time: is_running() is this very process
        if is_locked():
            return True
        if time.monotonic() - asked < START_WAIT_S and beside("run"):
            return True  # `run --agent queue & wait`: that loop takes the workspace a few seconds after it starts
        deadline = time.monotonic() + EXIT_WAIT_S
        while any(map(alive, seen)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return False

    return running


def beside(command: str) -> bool:
    """Whether an `autoresearch <command>` runs beside this process: below its parent (`submit -m x & wait`, from one
    shell), where it may still be starting, before it takes the workspace or its request's lock."""
    parent = os.getppid()
    if parent <= 1:  # started by init (a daemon's): the whole machine's processes are no siblings of its
        return False
    try:
        below = psutil.Process(parent).children(recursive=True)
    except psutil.Error:
        return False
    for process in below:
        with contextlib.suppress(psutil.Error):
            if process.pid != os.getpid() and _runs(process.cmdline(), command):
                return True
    return False


def _runs(argv: list[str], command: str) -> bool:
    """Whether `argv` runs `autoresearch <command>` (its script, or `python -m autoresearch`)."""
    return any(word == command and Path(before).name == "autoresearch" for before, word in itertools.pairwise(argv))


RESUME = f"`autoresearch run --agent queue` {UNKNOWN_WORKERS}"  # what finishes them, where it is not known


class WaitError(AutoresearchError):
    pass


def wait_for(
    ledger_of,
    ids: list[int],
    driver_alive,
    poll: float = 1.0,
    log: Path | None = None,
    judged: Callable[[Experiment], None] | None = None,
    resume: str | None = None,
) -> list[Experiment]:
    """Block until every experiment in `ids` has its verdict; `ledger_of()` opens the ledger to read,
    `driver_alive()` says whether a loop still runs to give them one, and `log` is the background loop's, whose
    error is repeated if it stopped on one. `judged(exp)` is called for each as soon as it has its verdict (before
    a WaitError for the others). `resume` is the command that finishes them, for the hint where no loop runs."""
    told: set[int] = set()
    while True:
        ledger = ledger_of()
        try:
            rows = {i: ledger.get(i) for i in ids}
        finally:
            ledger.close()
        if missing := [i for i, e in rows.items() if e is None]:
            raise WaitError(f"no experiment {', '.join(map(str, missing))} in the ledger")
        for i, e in rows.items():
            if e.status.final and i not in told:
                told.add(i)
                if judged is not None:
                    judged(e)
        if all(e.status.final for e in rows.values()):
            return [rows[i] for i in ids]
        if not driver_alive():
            waiting = [str(i) for i, e in rows.items() if not e.status.final]
            which = f"experiment {waiting[0]} is" if len(waiting) == 1 else f"experiments {', '.join(waiting)} are"
            stopped = last_error(log) if log else None
            raise WaitError(
                f"{which} in flight but no loop is running" + (f"; it stopped with {stopped}" if stopped else ""),
                hint=f"{resume or RESUME} finishes them" + (", once what stopped it is dealt with" if stopped else ""),
            )
        time.sleep(poll)


def log_tail(log: Path) -> str:
    """The last LOG_TAIL bytes of the log, as text; OSError where it is no regular file (a FIFO there would be waited
    on for ever)."""
    fd = os.open(log, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(log))
        with open(fd, "rb", closefd=False) as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL))
            return f.read().decode(errors="replace")
    finally:
        os.close(fd)


def last_error(log: Path) -> str | None:
    """The error the latest background loop stopped with: its `error: ...` line and hint, where they end its log (not
    an earlier loop's, above the line `submit` wrote before starting the latest), nor where a loop started after the
    log's last word (a `run --agent queue` of yours stopped by Ctrl-C: `wait` named the background loop's refusal
    before it as what stopped the loop)."""
    try:
        text, written = log_tail(log), os.stat(log).st_mtime
    except OSError:
        return None
    # Not a `try`'s; nor one recorded as starting later than now (the clock was ahead then, or a line written by hand:
    # it set aside every error until the clock caught up), nor one that ended within LATER_S of the log's time (the
    # loop's own session, where the log's time keeps whole seconds or an NFS server's clock is behind: red team)
    now = time.time()
    if any(written < p.start <= now and p.end > written + LATER_S and p.workers for p in periods(log.parent, [])):
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith(LOOP_STARTED)]
    lines = lines[starts[-1] + 1 :][-4:] if starts else lines[-4:]
    starts = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    return " ".join(line.strip() for line in lines[starts[-1] :]) if starts else None
