"""`autoresearch submit` and `wait`: a coding agent queues train.py files for a running loop, which judges them.

The loop (the driver) is the only writer of the ledger, so `submit` does not write it: it drops a request
(description, train.py, the best it was made from) in `.autoresearch/inbox/` and waits for the driver's
reply, the experiment's id (or why it was refused). The driver looks at the inbox whenever it waits for a
run (every POLL_S) and records every request as a queued experiment at once, whether or not a worker is
free: the reply comes within a second while the loop runs, and the experiment trains when a worker frees.

Who has a request is settled by one atomic rename. The driver takes it by renaming `<name>.json` to
`<name>.taken`; `submit` withdraws it by deleting `<name>.json`. Exactly one of the two succeeds: a
`submit` that gives up (no loop runs, or the one running does not answer) and withdraws it has queued
nothing, and no driver can take it later; one that finds it taken waits for the reply, which comes
within milliseconds. The driver records the row, then replies, then removes `<name>.taken`: a driver
killed in between finds it again on its next start and answers it with the row it had written (a
`submit` that finds the driver gone meanwhile settles it under the workspace's lock, reading the ledger).

A `submit` holds an flock on `<name>.lock` while it waits: a request whose `submit` was killed is dropped
unrecorded, and a reply nobody will read is removed with that lock file. Each submitted experiment is marked
unreported until `wait` prints its verdict (loop/waiting.py); the change a `submit` took out of train.py waits
in `.autoresearch/submitting/` until it is queued (loop/held_edits.py).

A win kept while the agent edits train.py for its next `submit` moves the branch and leaves the edit alone
(Git.advance): the edit was made from the best before. The driver notes that best (`note_moved`), and
`submit` sends the edit as made from it: judged against it, then merged onto the new best, never a change of
the new best that undoes the win just kept.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autoresearch.agents.base import Proposal, Usage
from autoresearch.errors import AutoresearchError
from autoresearch.files import clear, flock_held, read_regular, write_text_atomic
from autoresearch.loop import guard
from autoresearch.loop.asking import one_line
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.waiting import last_error, mark_unreported
from autoresearch.vocabulary import Kind, Status
from autoresearch.workspace.workspace import TrainPyUnreadable

try:
    import fcntl
except ImportError:  # Windows: no flock; a request is then never taken for one whose `submit` has gone
    fcntl = None

INBOX_DIR = "inbox"
SUBMITTER = "submit"  # the ledger's agent for submitted experiments
TAKE_TIMEOUT_S = 60.0  # how long `submit` waits for a running loop to take its request before it withdraws it
RESUBMIT_HINT = "change train.py (it holds your change again) and submit it"  # after a refusal
EDIT_BASE = "edit-base.json"  # the best an edit left in train.py by a keep was made from (`note_moved`)
# A request carries train.py as JSON text, each byte 6 at worst (\u0000), and a killed submit's held change two of
# them: far more than a train.py a proposal may be (workspace.MAX_TRAIN_PY_BYTES) is no request of `submit`'s, and
# is read no further (a planted file of gigabytes would fill the loop's memory).
REQUEST_LIMIT = 32 << 20
REPLY_LIMIT = 1 << 16
# A `submit` locks each file it makes within microseconds, under a temporary name (`.<name>...tmp`), then names it: one
# unheld and older than this is a killed `submit`'s, which nothing else would ever remove.
STALE_TMP_S = 10.0


@dataclass(frozen=True)
class Submitter:
    """The `agent` a submitted experiment's row names."""

    name: str = SUBMITTER
    model: str = ""


class SubmitError(AutoresearchError):
    """The submission was not queued: it was refused, or withdrawn before any loop took it."""


class Submission:
    """One request in the inbox, seen from the `submit` that made it (which holds its lock while it lives)."""

    def __init__(self, directory: Path, name: str, lock_fd: int | None):
        self.dir, self.name, self.lock_fd = directory, name, lock_fd
        self.settled = False  # answered or withdrawn: no driver looks at its lock file again

    def path(self, suffix: str) -> Path:
        return self.dir / f"{self.name}{suffix}"

    @property
    def request(self) -> Path:
        return self.path(".json")

    @property
    def taken(self) -> Path:
        return self.path(".taken")

    @property
    def reply_path(self) -> Path:
        return self.path(".reply")

    def answer(self, check: Callable[[int], bool] | None = None) -> dict | None:
        """The driver's reply ({"id": N} or {"error": why}) if it has come; read once. The inbox is within an agent's
        reach, which can see the lock file of a `submit` and write its reply first: `check(N)` says whether the
        ledger has experiment N as this request's (the driver records the row before it replies); a reply that
        fails it, or is no reply at all, is removed and waited past."""
        try:
            answer = json.loads(read_regular(self.reply_path, REPLY_LIMIT))
        except (OSError, ValueError):  # not yet (written whole, by a rename); or no file: the reply replaces it
            return None
        clear(self.reply_path)
        if not _is_reply(answer) or ("id" in answer and check is not None and not check(answer["id"])):
            return None
        self.settled = True
        return answer

    def withdraw(self) -> bool:
        """Take the request back: True if no driver had taken it (then none ever will), False if one had."""
        try:
            self.request.unlink()
        except FileNotFoundError:
            return False
        self.settled = True
        return True

    def settle(self, ws, check: Callable[[int], bool] | None = None) -> dict | None:
        """With the driver gone after it took the request: under the workspace's lock (no driver starts
        meanwhile), its id if it had recorded it (a later start trains it), else withdrawn ({"error": ...}).
        None if a loop has started meanwhile (it answers)."""
        lock = ws.lock()
        try:
            lock.__enter__()
        except AutoresearchError:  # another loop holds the workspace now
            return None
        try:
            if (answer := self.answer(check)) is not None:
                return answer
            try:
                data = json.loads(read_regular(self.taken, REQUEST_LIMIT))
            except (OSError, ValueError):
                return {"error": "the loop stopped while it took the submission, and its request is gone"}
            ledger = Ledger(ws.root)
            try:
                exp = recorded(ledger.all(), data["description"], data["source"], data["base"])
            finally:
                ledger.close()
            self.taken.unlink(missing_ok=True)  # the row, if any, is in flight: any start trains it
            self.settled = True
            if exp is None:
                return {"error": "the loop stopped before it recorded the submission (withdrawn: nothing was queued)"}
            mark_unreported(ws.state, exp.id)
            return {"id": exp.id}
        finally:
            lock.__exit__(None, None, None)

    def close(self) -> None:
        """Done with it (answered, refused, or given up: Ctrl-C): withdrawn if no driver has taken it. Its lock
        file goes (before the lock) unless a driver took it and has not answered: then it stays, unheld, so that
        the driver drops the request if it has not recorded it, and its reply goes with it (Inbox._sweep)."""
        if self.settled or self.withdraw():
            self.path(".lock").unlink(missing_ok=True)
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


class Inbox:
    def __init__(self, state: Path):
        self.state = state
        self.dir = state / INBOX_DIR

    # -- the submitter's side -------------------------------------------------------------------------

    def put(self, description: str, source: str, base: str) -> Submission:
        """Drop a request, held by this process (an flock on its lock file) until it is closed or this process
        ends."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}-{os.getpid()}-{secrets.token_hex(3)}"
        lock_fd = None
        if fcntl is not None:  # locked before it has its name: no driver ever sees it unlocked while we live
            tmp = self.dir / f".{name}.lock.tmp"
            lock_fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            tmp.replace(self.dir / f"{name}.lock")
        request = {"description": description, "source": source, "base": base}
        write_text_atomic(self.dir / f"{name}.json", json.dumps(request))
        return Submission(self.dir, name, lock_fd)

    def submitting(self) -> bool:
        """Whether a `submit` waits now for its request to be taken and answered (it holds its lock file)."""
        return fcntl is not None and self.dir.is_dir() and any(map(flock_held, self.dir.glob("*.lock")))

    # -- the driver's side ------------------------------------------------------------------------

    def pending(self) -> bool:
        """Whether a request waits to be taken (or to be answered, left taken by a driver killed meanwhile)."""
        return self.dir.is_dir() and any(p.suffix in (".json", ".taken") for p in self.dir.iterdir())

    def take(self, loop) -> list[Experiment]:
        """Take every request: record it as a queued experiment (or refuse it), answer it, remove it; the queued
        ones. First those a driver killed while it took them left, then the new ones, oldest first."""
        if not self.dir.is_dir():
            return []
        self._sweep()
        queued = []
        for taken in sorted(self.dir.glob("*.taken")):
            queued += self._take(loop, taken, resumed=True)
        for request in sorted(self.dir.glob("*.json")):
            taken = request.with_suffix(".taken")
            try:
                request.rename(taken)  # taken: from here its `submit` cannot withdraw it
            except FileNotFoundError:
                continue  # withdrawn meanwhile
            queued += self._take(loop, taken, resumed=False)
        return queued

    def _take(self, loop, taken: Path, resumed: bool) -> list[Experiment]:
        answer, exp = self._answer(loop, taken, resumed)
        if answer is not None:
            clear(taken.with_suffix(".reply"))  # a folder put there first would stop the write
            write_text_atomic(taken.with_suffix(".reply"), json.dumps(answer))
        clear(taken)  # last: a kill before it leaves the request to answer on the next start (a folder too)
        return [exp] if exp is not None and not exp.status.final else []

    def _answer(self, loop, taken: Path, resumed: bool) -> tuple[dict | None, Experiment | None]:
        """The reply to a taken request (None: nobody to give it to) and the experiment it made, if any."""
        alive = self._submitter_alive(taken)
        try:
            data = json.loads(read_regular(taken, REQUEST_LIMIT))
            fields = [data["description"], data["source"], data["base"]]
            if not all(isinstance(f, str) for f in fields):
                raise TypeError("its description, train.py and base must be text")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return ({"error": f"the request could not be read ({exc})"} if alive else None), None
        if resumed and (exp := recorded(loop.ledger.all(), *fields)) is not None:  # before the kill
            mark_unreported(self.state, exp.id)
            return ({"id": exp.id} if alive else None), exp
        if not alive:  # its `submit` was killed while the request waited: nobody learns of it, so it is not run
            clear(taken.with_suffix(".lock"))
            loop.reporter.message(f"dropped a submission whose `submit` has gone: {one_line(fields[0])}")
            return None, None
        return self._record(loop, *fields)

    def _record(self, loop, description: str, source: str, base: str) -> tuple[dict, Experiment | None]:
        rows = loop.ledger.all()
        # Made from a kept experiment, or from the baseline being measured (then judged once it is)
        made_from = next(
            (
                e
                for e in rows
                if e.commit == base and (e.status == Status.KEEP or (e.kind == Kind.BASELINE and not e.status.final))
            ),
            None,
        )
        if made_from is None:
            return {"error": f"train.py was made from {base[:7]}, which is not a kept experiment"}, None
        why = guard.rejection(made_from.source, source) or loop.duplicate_of(source, base)
        if why:
            return {"error": f"rejected before running: {why}"}, None
        exp = loop.record(Proposal(description, source, Usage()), SUBMITTER, "", base=made_from, status=Status.QUEUED)
        mark_unreported(self.state, exp.id)  # after the row: a kill before it leaves the request, answered later
        loop.reporter.message(f"exp {exp.id} submitted: {exp.description}")
        return {"id": exp.id}, exp

    def _submitter_alive(self, request: Path) -> bool:
        """Whether the `submit` of a request still waits: it holds the lock on its lock file. A request with no lock
        file held is nobody's: one written by hand, or planted by an agent during its turn (the loop's own files are
        not the turn's to check) to be trained after it, outside any turn; it is dropped."""
        return fcntl is None or flock_held(request.with_suffix(".lock"))

    def _sweep(self) -> None:
        """What `submit`s killed left: their lock files, and the replies that came after they had gone (a `submit`
        removes its reply before its lock file, so a reply beside an unheld lock file is nobody's)."""
        if fcntl is None:
            return
        clear_stale_tmp(self.dir, ".*.lock.tmp")
        for lock in self.dir.glob("*.lock"):  # a FIFO or link planted there is no `submit`'s: never held
            if flock_held(lock) or any(os.path.lexists(lock.with_suffix(s)) for s in (".json", ".taken")):
                continue  # alive; or its request is still to take (and drop, with the lock file)
            clear(lock.with_suffix(".reply"))
            clear(lock)
        for reply in self.dir.glob("*.reply"):  # one beside no lock file at all: nobody's (planted)
            if not os.path.lexists(reply.with_suffix(".lock")):
                clear(reply)


def clear_stale_tmp(directory: Path, pattern: str) -> None:
    """Remove the temporary files a `submit` killed between making one and naming it left in `directory`: plain files
    no process holds an flock on, made more than STALE_TMP_S ago (a live `submit` holds its own within
    microseconds)."""
    now = time.time()
    for tmp in directory.glob(pattern):
        try:
            made = tmp.lstat()
            if stat.S_ISREG(made.st_mode) and now - made.st_mtime > STALE_TMP_S and not flock_held(tmp):
                tmp.unlink()
        except OSError:  # gone meanwhile
            continue


def _is_reply(answer) -> bool:
    """Whether `answer` is a reply the driver writes: an experiment's id, or why the request was refused."""
    if not isinstance(answer, dict) or len(answer) != 1:
        return False
    if "id" in answer:
        return type(answer["id"]) is int and answer["id"] > 0
    return isinstance(answer.get("error"), str)


def is_submitted(ws, exp_id: int, description: str, source: str, base: str) -> bool:
    """Whether the ledger has experiment `exp_id` as the submission of this train.py, made from `base`."""
    if not (ws.state / "ledger.sqlite").exists():
        return False
    ledger = Ledger(ws.root)
    try:
        exp = ledger.get(exp_id)
    finally:
        ledger.close()
    return exp is not None and is_submission(exp, description, source, base)


def is_submission(exp: Experiment, description: str, source: str, base: str | None = None) -> bool:
    """Whether `exp` is the row the driver wrote for a `submit` of this train.py and description (the row holds it on
    one line), made from `base` where it is given."""
    return (
        exp.agent == SUBMITTER
        and (exp.source, exp.description) == (source, one_line(description))
        and base in (None, exp.parent)
    )


def recorded(rows: list[Experiment], description: str, source: str, base: str) -> Experiment | None:
    """The queued or running row a driver killed after it took a request, and before it replied, had written for
    it."""
    return next((e for e in rows if not e.status.final and is_submission(e, description, source, base)), None)


def send(ws, description: str, source: str, base: str, start: Callable[[], object] | None = None,
         timeout: float | None = None, poll: float = 0.05) -> int:  # fmt: skip
    """`submit`: queue `source` with the loop running in workspace `ws` (if none runs, `start()` starts one in the
    background and returns its Popen); the experiment's id, within a second or two while the loop runs. A
    SubmitError if it was refused, or if no loop took it (none runs, or the one running did not take it within
    `timeout` seconds, default TAKE_TIMEOUT_S): withdrawn then, so that nothing of it is ever trained."""
    timeout = TAKE_TIMEOUT_S if timeout is None else timeout
    base = edit_base(ws.state, base)
    submission = Inbox(ws.state).put(description, source, base)
    started, probed = None, (-1.0, False)

    def check(exp_id: int) -> bool:
        return is_submitted(ws, exp_id, description, source, base)

    def alive() -> bool:
        """Our background loop runs (starting, or holding the lock), or another holds the workspace's lock. While
        one does, the lock is probed at most once a second, and not while ours runs: a probe holds it for an
        instant, and a loop starting in that instant would stop ("another autoresearch process is working")."""
        nonlocal probed
        if started is not None and started.poll() is None:
            return True
        if not probed[1] or time.monotonic() - probed[0] >= 1.0:
            probed = (time.monotonic(), ws.is_locked())
        return probed[1]

    try:
        since = time.monotonic()
        while (answer := submission.answer(check)) is None:
            running = alive()
            if not running and started is None and start is not None:  # none runs (or the one running just ended)
                started, since = start(), time.monotonic()
                continue
            refusing = running and started is None and not takes_submissions(ws.state)
            if running and not refusing and time.monotonic() - since < timeout:
                time.sleep(poll)
                continue
            if submission.withdraw():  # no loop had taken it: not queued, and no loop ever will take it
                raise SubmitError(*_not_taken(ws, running, timeout, refusing))
            if not running:  # taken, then the loop stopped: was the row written?
                answer = submission.settle(ws, check)
                if answer is not None:
                    break
            time.sleep(poll)  # taken by the running loop: its reply comes at once
        if "error" in answer:
            raise SubmitError(answer["error"], hint=RESUBMIT_HINT)
        (ws.state / EDIT_BASE).unlink(missing_ok=True)  # train.py is the best's again: a new edit is made from it
        return int(answer["id"])
    finally:
        submission.close()


def takes_submissions(state: Path) -> bool:
    """False while the loop running says it takes none (a `try`, a one-worker `run`); True otherwise (one that
    takes them, or one still starting, before it says which)."""
    from autoresearch.loop.activity import read_session

    session = read_session(state)
    return session is None or session.submissions


def _not_taken(ws, alive: bool, timeout: float, refusing: bool = False) -> tuple[str, str]:
    log = ws.state / "driver.log"
    if refusing:
        return (
            "the loop running in this workspace takes no submissions: it is a `try` or a one-worker `autoresearch run`",
            "nothing was queued and train.py holds your change again; stop that loop and submit again (submit then "
            "starts one that takes them), or start it with --workers or --gpus",
        )
    if alive:
        return (
            f"the loop running in this workspace did not take the submission within {timeout:.0f}s",
            f"nothing was queued and train.py holds your change again; submit it once the loop answers (see {log})",
        )
    stopped = last_error(log)
    return (
        "no loop is running to take the submission" + (f"; the loop stopped with {stopped}" if stopped else ""),
        f"nothing was queued and train.py holds your change again; see {log}",
    )


def note_moved(ws, before: str) -> None:
    """The driver moved the branch from `before` to a new best. An edit in train.py is left as it is (the next
    submission's), and it was made from `before`, or from the older best noted when the branch moved under it
    before: `submit` sends it as made from there (a stale base, judged against it and merged onto the best), not
    as a change of the new best that would undo the change just kept."""
    path = ws.state / EDIT_BASE
    try:
        edited = ws.read_train_py() != ws.committed_train_py()
    except TrainPyUnreadable:  # deleted (or a FIFO left) by the agent at work: Git.advance put the best's back
        edited = False
    if not edited:
        path.unlink(missing_ok=True)
        return
    write_text_atomic(path, json.dumps({"base": edit_base(ws.state, before), "head": ws.git.head()}))


def edit_base(state: Path, head: str) -> str:
    """What the edit in train.py was made from, where the branch is at `head`: the best noted by `note_moved`
    while the branch has not moved since, else `head`."""
    try:
        noted = json.loads(read_regular(state / EDIT_BASE, REPLY_LIMIT))  # a FIFO there would wedge the loop
        return noted["base"] if noted["head"] == head and isinstance(noted["base"], str) else head
    except (OSError, ValueError, KeyError, TypeError):
        return head
