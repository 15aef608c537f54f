"""The evaluator process a run is refereed by, as the loop holds it: forked from the fork server (evaluator/zygote.py,
which has imported torch and its compiler once), or started as a new process where forking fails.

`Referee` is what the executor (loop/executor.py) drives: send the job, wait for training to start or for the
end, kill. `ForkServer` is the loop's end of the fork server's socket; `ForkedProcess` gives one of its evaluators
the part of a Popen the executor uses.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import psutil

from autoresearch.evaluator import run_group
from autoresearch.evaluator.confined import kill_tree
from autoresearch.evaluator.result import STARTING
from autoresearch.evaluator.sandbox import evaluator_env, module_command
from autoresearch.loop.clock import SIGNAL_CHECK_S, wait_step

LOG_TAIL_CHARS = 4000
# On Ctrl-C and at close, what is killed (SIGKILL, whole process groups) is waited for this long at most: the
# loop must be gone within seconds, and whatever it leaves is already dead and reaped by its parent or init.
STOP_WAIT_S = 1.0
# The exit code of a forked evaluator whose end went unseen: the fork server, which reports it, died first. No real
# code (0-255, or minus a signal's number).
UNSEEN = -(2**31)


class Referee:
    """One run's evaluator process, started ahead of its job: it and its experiment get ready meanwhile."""

    def __init__(self, directory: Path, proc: NewProcess | ForkedProcess):
        self.directory = directory
        self.proc = proc

    def alive(self) -> bool:
        return self.proc.poll() is None

    def start(self, job: dict) -> None:
        """Send the job. Its stdin stays open until the run is over (`release`): the evaluator takes the end
        of its stdin for the end of this process, and stops the run (a loop killed, a Ray worker lost)."""
        try:
            self.proc.stdin.write((json.dumps(job) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            pass  # it died starting up; its exit code and errors say why

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()

    def wait_for_training(self, progress: Path, timeout: float) -> None:
        """Return when the run's clock has started, or it ended, or `timeout` seconds passed."""
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            try:
                if json.loads(progress.read_text()).get("phase") != STARTING:
                    return
            except (OSError, ValueError, AttributeError):
                pass  # not written yet, or being replaced
            time.sleep(0.1)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self, wait: float = 10.0) -> None:
        kill_tree(self.proc, wait)
        self.release()
        run_group.remove_group_of(self.proc.pid)

    def errors(self) -> str:
        self.proc.captured.seek(0)
        return self.proc.captured.read()[-LOG_TAIL_CHARS:].decode("utf-8", errors="replace")


class NewProcess(subprocess.Popen):
    """An evaluator started as `python -m autoresearch.evaluator.referee`, its output kept in `captured`."""

    def __init__(self, python: str, directory: Path, env: Mapping[str, str]):
        self.captured = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process it records
        super().__init__(
            [*module_command(python, "autoresearch.evaluator.referee"), "--workspace", str(directory)],
            stdin=subprocess.PIPE,
            stdout=self.captured,
            stderr=self.captured,
            env=evaluator_env(env),
            start_new_session=True,  # its own process group: a kill takes the experiment along
        )


class ForkFailed(RuntimeError):
    """The fork server is gone or answered nonsense: start evaluators as new processes."""


class ForkRefused(ForkFailed):
    """The kernel refused the fork server this one evaluator: its descriptors (ETOOMANYREFS: the kernel counts the
    descriptors in flight in unix sockets by user), or its fork (EAGAIN: your limit of tasks). A run of the loop's own
    user (a loop not run as root) that kept more in flight than the loop may have open, or that held what was left of
    the user's tasks, had the loop give its server up for the night, every later evaluator started cold (red team).
    Only this evaluator is started as a new process: the server stays."""


class ForkServer:
    """The loop's end of the fork server (evaluator/zygote.py), started at once: it imports meanwhile."""

    def __init__(self, python: str, env: Mapping[str, str], stopped: threading.Event | None = None):
        """`stopped`: once set, a fork waits for the server no longer (the loop is stopping)."""
        self._stopped = stopped or threading.Event()
        self._sock, theirs = socket.socketpair()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self._proc = subprocess.Popen(
            [*module_command(python, "autoresearch.evaluator.zygote"), str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            env=evaluator_env(env),
        )
        theirs.close()
        self._buffer = b""
        self._exits: dict[int, int] = {}
        self._replies: deque[dict] = deque()  # what is no exit: `ready`, a fork's pid
        self._reading = threading.Lock()  # a worker's thread waits for its run while Ctrl-C kills it from the driver
        self._ready = False

    def fork(self, directory: Path) -> ForkedProcess:
        """A new evaluator for a run of `directory`; ForkFailed if the server cannot make one."""
        stdin_r, stdin_w = os.pipe()
        errors = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process it records
        try:
            if not self._ready:
                self._ready = self._next(timeout=300) == {"ready": True}
                if not self._ready:
                    raise ForkFailed("the fork server did not get ready")
            if self._stopped.is_set():  # a fork ahead (its own thread) asks after the loop's stop: no evaluator
                raise ForkFailed("the loop is stopping")
            request = json.dumps({"argv": ["--workspace", str(directory)]}).encode()
            socket.send_fds(self._sock, [request], [stdin_r, errors.fileno()])
            reply = self._next(timeout=60)
            if reply and "refused" in reply:
                raise ForkRefused(f"the fork server was refused a fork: {reply['refused']}")
            if not reply or "pid" not in reply:
                raise ForkFailed(f"the fork server answered {reply!r}")
        except (OSError, ValueError, ForkFailed) as exc:
            os.close(stdin_w)
            errors.close()
            if isinstance(exc, ForkRefused):  # the server goes on
                raise
            if isinstance(exc, OSError) and exc.errno == errno.ETOOMANYREFS:  # nothing was sent: the server waits on
                raise ForkRefused(str(exc)) from exc
            self._stderr.seek(0)
            said = self._stderr.read().decode(errors="replace").strip().splitlines()[-1:]
            raise ForkFailed(f"{exc}{': ' + said[0] if said else ''}") from exc
        finally:
            os.close(stdin_r)
        return ForkedProcess(self, int(reply["pid"]), os.fdopen(stdin_w, "wb"), errors)

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        """The exit code of evaluator `pid`, once it ended; None if it still runs after `timeout` seconds.
        If the server died meanwhile, the exit code is unknown: UNSEEN once the process is gone."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while pid not in self._exits:
            try:
                if not self._read(deadline):
                    return None
            except (OSError, ValueError, ForkFailed):
                return _gone(pid, deadline)
        return self._exits[pid]

    def _next(self, timeout: float) -> dict | None:
        """The server's next message that is no evaluator's exit (those are recorded as they are read, by whichever
        thread reads them); None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self._replies:
            if self._stopped.is_set() or not self._read(deadline):
                return None
        return self._replies.popleft()

    def _read(self, deadline: float | None) -> bool:
        """Take in what the server sent within SIGNAL_CHECK_S (less where `deadline`, None: none, comes first): exits
        into `_exits`, other messages into `_replies`. False once the deadline has come with nothing read. Two
        threads may read at once (the driver kills a run its worker's thread waits for): neither blocks on data
        the other took, and each message is taken whole by one of them."""
        wait = wait_step(deadline)
        if not select.select([self._sock], [], [], wait)[0]:
            return wait >= SIGNAL_CHECK_S  # the deadline has come, or not yet
        with self._reading:
            try:
                chunk = self._sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True  # the other thread took it: the caller looks again at what it waits for
            if not chunk:
                raise ForkFailed("the fork server exited")
            self._buffer += chunk
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                message = json.loads(line)
                if "exit" in message:
                    self._exits[int(message["pid"])] = int(message["exit"])
                    continue
                if "pid" in message:  # pids wrap: an earlier evaluator's exit under this pid is not this one's
                    self._exits.pop(int(message["pid"]), None)
                self._replies.append(message)
        return True

    def close(self, wait: float = STOP_WAIT_S) -> None:
        """Ends the server: it exits once it reads the closed socket, which it reads only once ready; never asked
        for a fork, it has made none, and is killed at once (`run` stopped by an error took a second longer)."""
        self._sock.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=wait if self._ready else 0)
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def _gone(pid: int, deadline: float | None) -> int | None:
    """UNSEEN once process `pid` (not our child) has ended; None if it still runs at `deadline`."""
    while psutil.pid_exists(pid) and not _zombie(pid):
        if (wait := wait_step(deadline)) <= 0:
            return None
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(wait)
    return UNSEEN


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


class ForkedProcess:
    """An evaluator the fork server made: what the executor needs of a Popen (pid, stdin, poll, wait)."""

    def __init__(self, server: ForkServer, pid: int, stdin, captured):
        self.server, self.pid, self.stdin, self.captured = server, pid, stdin, captured
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.wait(0) if self.returncode is None else self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.exit_code(self.pid, timeout)
            if self.returncode is None and timeout is not None and timeout > 0:
                raise subprocess.TimeoutExpired("evaluator", timeout)
        return self.returncode
