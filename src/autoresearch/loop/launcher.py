"""Starting `python train.py` without paying for `import torch` at every experiment.

Importing torch, its compiler and the harness takes 5-10 s on a GPU machine. A `Launcher` keeps a small server process
(`python -m autoresearch.loop.launcher`) that imports them once, while the previous experiment trains,
and forks one child per run. Runs still share nothing: each child is a fresh process whose globals,
CUDA context (never created in the server: it would not survive fork), threads and memory die with
it. The child becomes its own session (so the executor can kill the whole group), writes to the run's
log and runs train.py as `__main__` in the workspace, as `python train.py` would. Linux only: fork
after importing torch is not safe on macOS.

Protocol, one JSON object per line: the client sends {"directory", "env", "log"}; the server answers
{"pid"} once forked and {"exit"} (as `Popen.returncode`: negative means killed by that signal) when
the child has ended, then takes the next request.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import psutil

# What a run imports before its first step, imported once by the server.
PRELOAD = ("torch", "torch._dynamo", "torch._inductor.compile_fx", "torch.nn.attention.flex_attention")
PRELOAD_HARNESS = "autoresearch.harness"
MAX_FAILURES = 2  # servers that died or answered nonsense before the launcher gives up on forking


class LaunchFailed(RuntimeError):
    """The server is gone or answered nonsense: start the run the plain way."""


def available() -> bool:
    return sys.platform.startswith("linux")


class ForkedChild:
    """A run forked by the server: its pid (also its process group) and, once it ends, its exit code."""

    def __init__(self, replies: _Replies, pid: int):
        self._replies, self.pid = replies, pid
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None if the run is still going after `timeout` seconds.

        If the server died meanwhile, the run (not its child) is watched until it is gone, and its exit
        code is unknown: 0 is returned and the run's result file, which only the harness writes, decides.
        """
        if self.returncode is None:
            try:
                reply = self._replies.next(timeout)
                if reply is not None:
                    self.returncode = int(reply["exit"])
            except LaunchFailed:
                if _gone(self.pid, timeout):
                    self.returncode = 0
        return self.returncode


def _gone(pid: int, timeout: float | None) -> bool:
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.TimeoutExpired:
        return False
    except psutil.NoSuchProcess:
        pass
    return True


class Launcher:
    """Client of the fork server; the server starts (and begins importing) as soon as this is made."""

    def __init__(self, python: str = sys.executable):
        self._python = python
        self._server: subprocess.Popen | None = None
        self._failures = 0
        self._start_server()

    def _start_server(self) -> None:
        """Start the server; it imports in the background while the caller goes on."""
        self._server = subprocess.Popen(
            [self._python, "-m", "autoresearch.loop.launcher"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._replies = _Replies(self._server.stdout.fileno())

    def start(self, directory: Path, env: dict[str, str], log_path: Path) -> ForkedChild:
        """Fork a run of train.py in `directory`; raises LaunchFailed (and restarts the server) if it can't."""
        server = self._server
        try:
            if server is None or server.poll() is not None:  # after MAX_FAILURES, every run starts plainly
                raise LaunchFailed("the fork server is not running")
            request = {"directory": str(directory), "env": env, "log": str(log_path)}
            server.stdin.write((json.dumps(request) + "\n").encode())
            server.stdin.flush()
            reply = self._replies.next(timeout=120)
            if reply is None or "pid" not in reply:
                raise LaunchFailed(f"the fork server answered {reply!r}")
            return ForkedChild(self._replies, int(reply["pid"]))
        except (OSError, ValueError, LaunchFailed) as exc:
            self.close()
            self._failures += 1
            if self._failures < MAX_FAILURES:
                self._start_server()
            raise LaunchFailed(str(exc)) from exc

    def close(self) -> None:
        if self._server is not None and self._server.poll() is None:
            self._server.kill()
            self._server.wait()
        self._server = None

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Replies:
    """The server's answers, a line at a time, with a timeout (read from the raw pipe: a buffered reader
    could hold a whole line that select() would then never report)."""

    def __init__(self, fd: int):
        self._fd, self._buffer = fd, b""

    def next(self, timeout: float | None) -> dict | None:
        """The next answer, or None if none came within `timeout`; LaunchFailed if the server died."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._fd], [], [], left)[0]:
                return None
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise LaunchFailed("the fork server exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


# -- the server side ----------------------------------------------------------------------------------


def serve() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the loop's to handle: it stops the run first
    if not getattr(sys.flags, "safe_path", False):  # -P (Python 3.11+) prepends nothing
        del sys.path[0]  # `-m` put the loop's working directory there; a run gets its own workspace instead
    # CUDA must stay untouched here; asking NVML, not the CUDA driver, whether a GPU exists keeps it so.
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    for name in (*PRELOAD, PRELOAD_HARNESS):
        try:
            importlib.import_module(name)
        except Exception:  # the run imports it again itself and reports the error
            traceback.print_exc()
    if not _forks_can_use_cuda():
        sys.exit("autoresearch launcher: the imports touched CUDA, so forked runs could not use it")
    replies = os.fdopen(os.dup(1), "wb")  # the protocol's own copy: anything printed goes to stderr
    os.dup2(2, 1)
    for line in sys.stdin.buffer:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            replies.close()
            _child(request["directory"], request["env"], request["log"])
        replies.write(json.dumps({"pid": pid}).encode() + b"\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
        replies.flush()


def _forks_can_use_cuda() -> bool:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return True
    pid = os.fork()
    if pid == 0:
        os._exit(1 if torch.cuda._is_in_bad_fork() else 0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def _child(directory: str, env: dict[str, str], log_path: str) -> None:
    """Become `python train.py` in `directory`: own session, output to the log, the run's environment."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(env)
        os.chdir(directory)
        sys.argv = ["train.py"]
        sys.path.insert(0, directory)
        runpy.run_path(os.path.join(directory, "train.py"), run_name="__main__")
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:  # report it as `python train.py` would, then exit 1
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()  # what a normal interpreter exit does
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    serve()
