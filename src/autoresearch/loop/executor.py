"""Running one training run: a refereed run in its own process group, a hard timeout, the evaluator's result.

The `Executor` protocol is what the loop depends on; `LocalExecutor` runs on this machine. Each run is
an evaluator process (`python -m autoresearch.evaluator.referee`, trusted) that starts train.py
confined, serves its data, owns its clock and scores what it hands over; the loop only reads the
result file the evaluator writes, in a place the experiment cannot reach. Evaluators are forked from
a fork server (evaluator/zygote.py) that has imported torch and its compiler once (loop/evaluator_process.py), and
the next run's evaluator and experiment are started while the current one trains, so a run starts at once. Executors
for a cluster plug in behind the same interface: a `run(spec) -> Outcome` that may block, one run at a
time per executor (the scheduler gives each worker its own, pinned to its device by `env`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from autoresearch import switches
from autoresearch.config.apparatus import CONFIG_NAME, Apparatus, prepare_again_hint
from autoresearch.data.shards import REPAIR_HINT
from autoresearch.errors import ConfigError
from autoresearch.evaluator import memory, run_group
from autoresearch.evaluator.compile_cache import MAX_STAGED_BYTES, STAGED
from autoresearch.evaluator.confined import FORK_ENV
from autoresearch.evaluator.result import PROGRESS_NAME, ForgedResult, Result
from autoresearch.files import clear, make_folder, remove_tree, write_text_atomic
from autoresearch.loop.clock import SIGNAL_CHECK_S
from autoresearch.loop.evaluator_process import (
    LOG_TAIL_CHARS,
    STOP_WAIT_S,
    UNSEEN,
    ForkedProcess,
    ForkFailed,
    ForkRefused,
    ForkServer,
    NewProcess,
    Referee,
)
from autoresearch.orphans import marked, reap, write_pid_file
from autoresearch.vocabulary import RunEnd
from autoresearch.workspace.disk import ROOM, DiskFullError, nearly_full

PREWARM_ENV = switches.PREWARM
EXPERIMENT_CRASHED = 3  # the evaluator's exit code when the experiment crashed (evaluator/referee.py)
# Its exit code when it could not set a run up (no config, damaged or missing data: an error of ours, printed as
# "error: ..." and "  hint: ..." before train.py was given a line to run): no fault of the experiment's.
SETUP_FAILED = 2
# Its exit code when the disk filled, not by the run's own files (evaluator/referee.py): the loop stops (DiskFullError)
# and the experiment, still in flight, is trained again on the next start.
DISK_FULL = 4
# How the evaluator's reason for a result it would not score begins where a train shard did not match its hash
TRAIN_SHARD_DAMAGED = ("a train shard is corrupt (", "a train shard cannot be read (")
# The signals a process gets for what it did itself (a fault, an abort), not from outside: an evaluator dies of one as
# it runs the graph a train.py handed over (SIGFPE: an integer division of the least int64 by -1, which the operator
# list allows), and a run lost so was tried again, a draw the train.py chose after seeing its loss (red team).
FAULTS = frozenset({signal.SIGSEGV, signal.SIGFPE, signal.SIGILL, signal.SIGABRT, signal.SIGSYS, signal.SIGTRAP})


@dataclass(frozen=True)
class RunSpec:
    directory: Path  # where train.py and autoresearch.json are
    run_dir: Path  # where this run's log and result file go
    timeout: float  # seconds before the whole process group is killed
    fingerprint: str  # the harness fingerprint the result must carry
    train_py: Path | None = None  # the file to train, if not `directory / "train.py"` (a worker's worktree)
    # What to train, where the loop knows it (a worker's job): a coding agent's turn overlaps the other workers'
    # runs, and could rewrite their worktree's train.py before their evaluator has read it.
    code: bytes | None = None

    @property
    def source(self) -> Path:
        return self.train_py or self.directory / "train.py"

    def source_bytes(self) -> bytes:
        """train.py's bytes as this run trains them: `code`, or the file's now."""
        return self.code if self.code is not None else self.source.read_bytes()


@dataclass(frozen=True)
class Outcome:
    status: RunEnd
    result: Result | None
    reason: str
    log_tail: str
    seconds: float
    hint: str = ""  # what to do about it, where the loop's own hint would not fit (a Ray node refusing a run)

    @property
    def val_bpb(self) -> float | None:
        return self.result.val_bpb if self.status == RunEnd.OK and self.result else None

    @property
    def late(self) -> bool:
        """Invalid for its time (Result.late)."""
        return self.status == RunEnd.INVALID and self.result is not None and self.result.late


class Executor(Protocol):
    def run(self, spec: RunSpec) -> Outcome:
        """Train train.py in `spec.directory` once and report what happened."""

    def close(self) -> None:
        """Stop whatever was started ahead for a next run."""

    def stop(self) -> None:
        """Kill the run in progress, if any (from another thread): its `run` then returns or raises."""


class RunStopped(Exception):
    """stop() came while the run's evaluator was being made (the fork server still starting up): it never ran."""


class ForkAhead(threading.Thread):
    """The next run's evaluator, forked beside the wait for the current run's end: a fork waits up to 60 s for the
    server's answer (ForkServer.fork), which held back the current run's hard timeout as long when it came first."""

    def __init__(self, server: ForkServer, directory: Path):
        super().__init__(name="autoresearch-fork-ahead", daemon=True)
        self.server, self.directory = server, directory
        self.made: ForkedProcess | None = None
        self.failed: Exception | None = None  # why it made none (a full disk, say): raised where it is waited for

    def run(self) -> None:
        try:
            self.made = self.server.fork(self.directory)
        except Exception as exc:  # not lost in this thread: LocalExecutor._take says it, as the fork of its own would
            self.failed = exc


class LocalExecutor:
    """Runs each training run through an evaluator process on this machine."""

    measures_here = True  # its runs' setups are this machine's, told before they start (Comparison.check_share)

    def __init__(self, python: str = sys.executable, prewarm: bool | None = None, env: Mapping[str, str] | None = None):
        """`env`: set for this executor's evaluators and experiments (a worker's CUDA_VISIBLE_DEVICES, its
        OMP_NUM_THREADS), over the loop's own environment."""
        self.python = python
        self.device_env = dict(env or {})
        self.env = marked({**os.environ, **self.device_env})  # a later start kills what a killed loop left (`reap`)
        self.prewarm = not switches.switched(PREWARM_ENV) if prewarm is None else prewarm
        self._warm: Referee | None = None
        self._ahead: ForkAhead | None = None  # the next run's evaluator, being forked while a run trains
        self._current: Referee | None = None  # the run in progress, for stop()
        # Set by stop(), from the driver's thread: a run whose evaluator is still being made has none to kill yet.
        self._stopped = threading.Event()
        forking = not switches.switched(FORK_ENV) and sys.platform.startswith("linux")
        self._server = ForkServer(python, self.env, self._stopped) if forking else None
        self.fork_failure: str | None = None  # why evaluators are no longer forked, if they are not

    def run(self, spec: RunSpec) -> Outcome:
        # The run's folder lies in the workspace's private state, within an agent's reach, and its name is known
        # ahead: what is found in the place of the folder or its files (a FIFO would wedge the write) goes first.
        make_folder(spec.run_dir, spec.run_dir.parent.parent)
        result_path, log_path = spec.run_dir / "result.json", spec.run_dir / "log.txt"
        for path in (result_path, log_path, spec.run_dir / PROGRESS_NAME):
            clear(path)
        write_text_atomic(log_path, "")
        referee = self._current = self._take(spec.directory)
        try:  # from the moment it is taken: a pid file not written (a full disk) or a Ctrl-C leaves it running
            write_pid_file(spec.run_dir / "pid", referee.proc.pid)
            started = time.monotonic()
            source = spec.source_bytes().decode("utf-8", errors="surrogateescape")
            key = secrets.token_hex(32)  # seals the result: no other process can write one the loop takes
            job = {"source": source, "log": str(log_path), "result": str(result_path), "key": key}
            if self._stopped.is_set():  # stop() came as it was made, and found no run to kill
                raise RunStopped("the loop is stopping")
            referee.start(job)
            if self.prewarm:  # once this run trains: before, its start-up would share the cores with the next's
                referee.wait_for_training(spec.run_dir / PROGRESS_NAME, spec.timeout)
                self._prewarm(spec.directory)
            code = referee.wait(max(0.0, spec.timeout - (time.monotonic() - started)))
        except BaseException:  # Ctrl-C or a kill of the loop: take the run down with us, without waiting on it
            referee.kill(wait=STOP_WAIT_S)
            raise
        finally:
            self._current = None
            if referee.proc.poll() is not None:
                referee.release()
        seconds = time.monotonic() - started
        if code is None:
            referee.kill()
            why = f"no result within the hard timeout of {spec.timeout:.0f}s; killed"
            return Outcome(RunEnd.TIMEOUT, None, why, tail(log_path), seconds)
        group = run_group.group_of(referee.proc.pid)  # the evaluator's own (evaluator/memory.py), the run's inside
        killed = code < 0 and memory.killed(group)  # its own doing: a run that had it hold memory for it
        group.remove(wait=0)  # not waited for: what lingers goes with the next evaluator's sweep
        if killed:
            why = f"the run went past its share of memory ({memory.MEMORY_ENV}), its evaluator with it; killed"
            return Outcome(RunEnd.CRASH, None, why, tail(log_path), seconds)
        if code == DISK_FULL:
            # Looked at again now that the evaluator is gone, its box removed and every file it held closed: a run
            # that filled the disk with a file it unlinked but held open (or passed to its evaluator over the channel,
            # or with empty files, all its inodes) left no file of its own to count, and stopped the loop at every
            # start (red team). The room back that a run may take of the disk was the run's.
            if not full_after(spec, MAX_STAGED_BYTES):
                why = f"the run filled the disk: once it ended, {MAX_STAGED_BYTES / 2**30:g} GiB or more were free"
                return Outcome(RunEnd.CRASH, None, why, tail(log_path), seconds)
            raise DiskFullError("a training run (its evaluator's writes)")
        try:
            result = read_result(result_path, key)
        except ForgedResult as exc:
            return Outcome(RunEnd.CRASH, None, f"not counted: {exc}", tail(log_path), seconds)
        outcome = outcome_of(code, result, referee.errors(), tail(log_path), seconds, spec.fingerprint)
        if outcome.hint == REPAIR_HINT:  # "the same --dataset and --preset", which it does not name: the command
            outcome = replace(outcome, hint=repair_hint(spec.directory))
        if outcome.result is None and outcome.status in (RunEnd.CRASH, RunEnd.CHANGED) and full_after(spec):
            raise DiskFullError("a training run (its evaluator could not run)")
        return outcome

    def _prewarm(self, directory: Path) -> None:
        """Start the next run's evaluator: forked in a thread (ForkAhead), so that the fork server's answer never
        holds back the wait that enforces this run's hard timeout; without the server, a new process, started here."""
        # Refused a process or a thread (EAGAIN) while this run holds what is left of your `ulimit -u` (a loop not run
        # as root): none ahead, the next run's evaluator is started when that run comes.
        if self._server is None:
            with contextlib.suppress(BlockingIOError):
                self._warm = self._referee(directory)
            return
        ahead = ForkAhead(self._server, directory)
        try:
            ahead.start()
        except RuntimeError:  # "can't start new thread"
            return
        self._ahead = ahead

    def _forked_ahead(self) -> Exception | None:
        """Wait for the fork started ahead, if any: what it made is the warm evaluator; why it made none is returned."""
        ahead = self._ahead
        if ahead is None:
            return None
        while ahead.is_alive():  # in steps: a Ctrl-C that another thread took still stops the wait
            ahead.join(SIGNAL_CHECK_S)
        if ahead.made is not None:
            self._warm = Referee(ahead.directory, ahead.made)
        self._ahead = None  # only once what it made is warm: a Ctrl-C between the two leaves it for `close` to kill
        return ahead.failed

    def _take(self, directory: Path) -> Referee:
        failed = self._forked_ahead()
        if isinstance(failed, ForkFailed):  # the server is still there: only `close` closes it with a fork ahead
            self._fork_failed(failed)
        elif failed is not None:
            raise failed  # as a fork for this run would have (a full disk: the loop stops saying so)
        warm, self._warm = self._warm, None
        if warm is not None and warm.directory == directory and warm.alive():
            return warm
        if warm is not None:
            warm.kill()
        return self._referee(directory)

    def _referee(self, directory: Path) -> Referee:
        if self._stopped.is_set():
            raise RunStopped("the loop is stopping")
        if self._server is not None:
            try:
                return Referee(directory, self._server.fork(directory))
            except ForkFailed as exc:
                self._fork_failed(exc)
        return Referee(directory, NewProcess(self.python, directory, self.env))

    def _fork_failed(self, exc: ForkFailed) -> None:
        """Give up the fork server, which could not make an evaluator (`exc`, said once by the loop)."""
        if self._stopped.is_set():  # the fork gave up waiting for the server: no new process either
            raise RunStopped("the loop is stopping") from None
        if isinstance(exc, ForkRefused):  # while a run holds what the user may have: this evaluator alone, as new
            return
        self.fork_failure = str(exc)
        self._server.close()
        self._server = None  # from now on, every evaluator is a new process

    def stop(self) -> None:
        """The loop is stopping (Ctrl-C, an error): kill the run in progress, and start no evaluator from now on (a
        run whose evaluator is still being made ends as soon as it is, untrained)."""
        self._stopped.set()  # before looking for the run: `run` sets its run, then looks at this
        if (current := self._current) is not None:
            current.kill()

    def close(self, wait: float = STOP_WAIT_S) -> None:
        """Kill what was started ahead (`wait`: how long the fork server may take to end by itself)."""
        if self._server is not None and self._ahead is not None and self._ahead.is_alive():
            self._server.close(wait)  # first: a fork still waiting for the server's answer gives up at once
            self._server = None
        self._forked_ahead()  # what it made is killed below; why it made none is no news once no run comes
        if self._warm is not None:
            self._warm.kill(wait=STOP_WAIT_S)  # it never got a job: nothing of it is worth waiting for
            self._warm = None
        if self._server is not None:  # once the warm one is killed: the server reaps it, and its box can go
            self._server.close(wait)
            self._server = None


def outcome_of(
    code: int, result: Result | None, errors: str, log_tail: str, seconds: float, fingerprint: str
) -> Outcome:
    """What a run came to, from its evaluator's exit code and the result it wrote (None: none)."""
    if code == UNSEEN:  # the fork server died before it could say how the evaluator ended
        if result is None:  # nothing says the run's doing: tried once more, as a run killed from outside
            why = "the fork server exited before its evaluator, whose end went unseen, and it wrote no result"
            return Outcome(RunEnd.LOST, None, why, log_tail + errors, seconds)
        # Its result, which only it writes, decides. One without a score is the experiment's failure, whether the
        # code that went unseen was 3 (crashed) or 0 (late, say): recorded as its crash, in the evaluator's own words,
        # not as a scored run's "invalid result" (a crash of train.py read so).
        code = 0 if result.val_bpb is not None else EXPERIMENT_CRASHED
    if code < 0 and result is None and -code in FAULTS:  # it broke itself: the graph it ran was the experiment's
        why = f"the evaluator died of {signal.Signals(-code).name}, a fault of its own, as it ran or scored the run"
        return Outcome(RunEnd.CRASH, None, why, log_tail + errors, seconds)
    if code < 0 and result is None:  # the evaluator itself was killed by a signal: not the experiment's doing
        return Outcome(RunEnd.LOST, None, f"the run was killed from outside (signal {-code})", log_tail, seconds)
    if code == SETUP_FAILED and result is None:
        # Every run would fail so (a shard truncated, the data deleted): the loop stops, the experiment stays in
        # flight and is trained once that is repaired, rather than be recorded as a crash of its own.
        error, hint = setup_error(errors)
        return Outcome(RunEnd.CHANGED, None, f"the evaluator could not run: {error}", log_tail + errors, seconds, hint)
    if code not in (0, EXPERIMENT_CRASHED):
        last = errors.strip().splitlines()[-1] if errors.strip() else f"exit code {code}"
        return Outcome(RunEnd.CRASH, None, f"the evaluator could not run: {last}", log_tail + errors, seconds)
    if result is None:
        return Outcome(RunEnd.CRASH, None, "the evaluator wrote no result", log_tail + errors, seconds)
    if result.harness_fingerprint != fingerprint:
        why = "the apparatus (evaluator code, data or budget) changed"
        return Outcome(RunEnd.CHANGED, result, why, log_tail, seconds)
    if code == EXPERIMENT_CRASHED:  # the reason quotes the experiment's last line of output
        return Outcome(RunEnd.CRASH, result, result.invalid_reason or "crashed", log_tail, seconds)
    damaged = (result.invalid_reason or "").partition(f"; {REPAIR_HINT}")
    if not result.valid and damaged[1] and damaged[0].startswith(TRAIN_SHARD_DAMAGED):
        # A train shard changed on disk (hashed while the run trained: evaluator/feeder.py): as one found at the run's
        # set-up, every run would fail so; the loop stops, and the experiment is trained once the data is repaired,
        # rather than be recorded as a crash of its own, and the next, and the next, all night.
        return Outcome(
            RunEnd.CHANGED, None, f"the evaluator could not run: {damaged[0]}", log_tail, seconds, REPAIR_HINT
        )
    if not result.valid or result.val_bpb is None:
        return Outcome(RunEnd.INVALID, result, f"invalid result: {result.invalid_reason}", log_tail, seconds)
    return Outcome(RunEnd.OK, result, "", log_tail, seconds)


def full_after(spec: RunSpec, room: int = ROOM) -> bool:
    """Whether the disk of the run's folder, or the workspace's, has less than `room` free now that its evaluator
    ended without a result (one that died of it writing, outside its own handling): seen by statvfs, never in text
    train.py wrote. What the run compiled goes first, as the failed run's verdict would delete it (it is the run's, up
    to a GiB)."""
    with contextlib.suppress(OSError):
        remove_tree(spec.run_dir / STAGED)
    return nearly_full(spec.run_dir, room) or nearly_full(spec.directory, room)


def repair_hint(directory: Path) -> str:
    """The command that repairs the data of the workspace at `directory` (`prepare_again_hint`), for the evaluator's
    hint about a damaged shard, which names no dataset or preset: `autoresearch prepare` pasted as it is prepares
    the default dataset, and leaves the damaged shard as it was."""
    try:
        return prepare_again_hint(Apparatus.load(directory / CONFIG_NAME))
    except ConfigError:
        return REPAIR_HINT


def setup_error(errors: str) -> tuple[str, str]:
    """The message and hint of the error an evaluator printed as it failed to set up (cli-like "error: ..." then
    "  hint: ..." lines), where its last line alone would be the hint."""
    lines = [line.strip() for line in errors.strip().splitlines()]
    at = max((i for i, line in enumerate(lines) if line.startswith("error:")), default=None)
    if at is None:
        return (lines[-1] if lines else f"exit code {SETUP_FAILED}"), ""
    hints = [line.removeprefix("hint:").strip() for line in lines[at + 1 :] if line.startswith("hint:")]
    return lines[at].removeprefix("error:").strip(), " ".join(hints)


def reap_orphan(run_dir: Path) -> bool:
    """Kill the process group of a run a killed loop left behind (found by its pid file); True if one was."""
    return reap(run_dir / "pid")


def read_result(path: Path, key: str | None = None) -> Result | None:
    """The result in `path`, None if there is none to read; with `key`, ForgedResult if it lacks that key's seal."""
    try:
        return Result.load(path, key)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None


def tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - chars))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
