"""Running one training run: a subprocess in its own process group, a hard timeout, the harness's result.

The `Executor` protocol is what the loop depends on; `LocalExecutor` runs on this machine. Executors for
several GPUs or a cluster plug in behind the same interface.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from autoresearch.evaluator.result import RESULT_ENV, RUN_ID_ENV, Result
from autoresearch.loop.launcher import Launcher, LaunchFailed
from autoresearch.loop.launcher import available as launcher_available

OK, CRASH, TIMEOUT, INVALID, CHANGED = "ok", "crash", "timeout", "invalid", "apparatus-changed"
LOG_TAIL_CHARS = 4000
FORK_SERVER_ENV = "AUTORESEARCH_FORK_SERVER"  # "0": start every run as a plain `python train.py`


@dataclass(frozen=True)
class RunSpec:
    directory: Path  # where train.py and autoresearch.json are
    run_dir: Path  # where this run's log and result file go
    timeout: float  # seconds before the whole process group is killed
    fingerprint: str  # the harness fingerprint the result must carry


@dataclass(frozen=True)
class Outcome:
    status: str  # OK, CRASH, TIMEOUT, INVALID or CHANGED
    result: Result | None
    reason: str
    log_tail: str
    seconds: float

    @property
    def val_bpb(self) -> float | None:
        return self.result.val_bpb if self.status == OK and self.result else None


class Executor(Protocol):
    def run(self, spec: RunSpec) -> Outcome:
        """Train train.py in `spec.directory` once and report what happened."""


class LocalExecutor:
    """Runs train.py in a new process group on this machine: forked from a `Launcher` that has already
    imported torch where that works (Linux), else as `python train.py`."""

    def __init__(self, python: str = sys.executable, prefork: bool | None = None):
        self.python = python
        if prefork is None:
            prefork = os.environ.get(FORK_SERVER_ENV, "1") != "0"
        self.launcher = Launcher(python) if prefork and launcher_available() else None

    def run(self, spec: RunSpec) -> Outcome:
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        result_path, log_path = spec.run_dir / "result.json", spec.run_dir / "log.txt"
        result_path.unlink(missing_ok=True)
        log_path.write_text("")
        run_id = secrets.token_hex(8)  # a result without it was not written by the harness for this run
        env = {**os.environ, RESULT_ENV: str(result_path), RUN_ID_ENV: run_id, "PYTHONUNBUFFERED": "1"}
        started = time.monotonic()
        child = self._start(spec.directory, env, log_path)
        write_pid_file(spec.run_dir / "pid", child.pid)
        try:
            code = child.wait(timeout=spec.timeout)
        except BaseException:  # Ctrl-C or a kill of the loop: take the run down with us
            kill_group(child)
            raise
        if code is None:
            kill_group(child)
            return Outcome(
                TIMEOUT,
                None,
                f"no result within the hard timeout of {spec.timeout:.0f}s; killed",
                tail(log_path),
                time.monotonic() - started,
            )
        seconds = time.monotonic() - started
        log_tail = tail(log_path)
        result = read_result(result_path)
        if result is None or code != 0:
            last = next((line for line in reversed(log_tail.splitlines()) if line.strip()), "")
            why = f"exit code {code}" + (f": {last.strip()}" if last else "")
            if result is not None and not result.valid:
                why = f"{result.invalid_reason} ({why})"
            return Outcome(CRASH, result, why, log_tail, seconds)
        if result.run_id != run_id or result.harness_fingerprint != spec.fingerprint:
            return Outcome(
                INVALID, None, "the result file was not written by the harness for this run", log_tail, seconds
            )
        if not result.valid or result.val_bpb is None:
            return Outcome(INVALID, result, f"invalid result: {result.invalid_reason}", log_tail, seconds)
        return Outcome(OK, result, "", log_tail, seconds)

    def _start(self, directory: Path, env: dict[str, str], log_path: Path) -> Child:
        if self.launcher is not None:
            try:
                return self.launcher.start(directory, env, log_path)
            except LaunchFailed:
                pass  # the launcher restarts its server; this run starts the plain way
        with log_path.open("a") as log:
            return PlainChild(
                subprocess.Popen(
                    [self.python, "train.py"],
                    cwd=directory,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )

    def close(self) -> None:
        if self.launcher is not None:
            self.launcher.close()


class Child(Protocol):
    pid: int  # also the id of its process group

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None if still running after `timeout` seconds."""


class PlainChild:
    def __init__(self, proc: subprocess.Popen):
        self.proc, self.pid = proc, proc.pid

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None


def kill_group(child: Child, grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        if child.wait(timeout=grace) is not None:
            return


def write_pid_file(path: Path, pid: int) -> None:
    """The run's pid and start time: together they name the process even after the pid is reused."""
    try:
        path.write_text(f"{pid} {psutil.Process(pid).create_time()}")
    except psutil.Error:  # already gone
        path.write_text(f"{pid} 0")


def reap_orphan(run_dir: Path) -> bool:
    """Kill the process group of a run a killed loop left behind (found by its pid file); True if one was."""
    try:
        pid, created = (run_dir / "pid").read_text().split()
        if psutil.Process(int(pid)).create_time() != float(created):
            return False  # that pid now belongs to another process
        os.killpg(int(pid), signal.SIGKILL)
        return True
    except (OSError, ValueError, psutil.Error):
        return False


def read_result(path: Path) -> Result | None:
    try:
        return Result.load(path)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None


def tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - chars))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
