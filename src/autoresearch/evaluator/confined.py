"""The experiment's process: started confined where the machine allows it, stopped with all it started.

The process is `python -m autoresearch.harness.boot` in a fresh, empty run directory (the "box"),
inside the sandbox (evaluator/sandbox.py: no network, no view of the workspace, the data or other
processes, writes only to the box, a compile cache and its own /tmp). It imports torch at once and
waits on the channel for "go", so a run can be started while the previous one trains. Where no
sandbox can be made it runs as a plain child; this process then becomes a child subreaper, so
whatever the experiment detaches (a double fork, `setsid`) is still its descendant and is killed
with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO

import psutil

from autoresearch.evaluator import sandbox
from autoresearch.wire import CHANNEL_ENV, Channel

LOG_LIMIT = 32 * 2**20  # bytes of output kept per run: a train.py that prints without end cannot fill the disk
EARLY_OUTPUT_LIMIT = 2**20  # output kept before the run's log file is known
MAX_PAYLOAD = 2**36  # 64 GiB: the largest model hand-over taken
PR_SET_CHILD_SUBREAPER = 36


class Output:
    """Copies the experiment's output to its log, bounded; holds it until the log is known."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._sink: BinaryIO | None = None
        self._early = bytearray()
        self._written = 0
        self._tail = b""  # the last bytes of output, for the reason of a crash
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, daemon=True, name="experiment-output")
        self._thread.start()

    def attach(self, sink: BinaryIO) -> None:
        with self._lock:
            self._sink = sink
            self._write(bytes(self._early))
            self._early.clear()

    def note(self, text: str) -> None:
        """A line of the evaluator's own in the same log."""
        with self._lock:
            if self._sink is not None:
                self._sink.write(text.encode() + b"\n")
                self._sink.flush()

    def finish(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)

    def last_line(self) -> str:
        """The experiment's last line of output (a traceback's last line says what went wrong)."""
        with self._lock:
            lines = self._tail.decode("utf-8", errors="replace").splitlines()
        return next((line.strip() for line in reversed(lines) if line.strip()), "")

    def _pump(self) -> None:
        while chunk := self._stream.read1(65536):
            with self._lock:
                self._tail = (self._tail + chunk)[-4096:]
                if self._sink is None:
                    if len(self._early) < EARLY_OUTPUT_LIMIT:
                        self._early += chunk
                else:
                    self._write(chunk)

    def _write(self, chunk: bytes) -> None:
        assert self._sink is not None
        room = LOG_LIMIT - self._written
        if room > 0:
            self._sink.write(chunk[:room])
            if len(chunk) > room:
                self._sink.write(f"\n[output past {LOG_LIMIT // 2**20} MiB dropped]\n".encode())
            self._sink.flush()
        self._written += len(chunk)


class ExperimentProcess:
    def __init__(self, box: Path, hidden: list[Path], writable: list[Path], env: dict[str, str]):
        ours, theirs = socket.socketpair()
        env = {**sandbox.scrubbed_env(env), CHANNEL_ENV: str(theirs.fileno()), "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "autoresearch.harness.boot"]
        self.unconfined_reason = sandbox.unavailable_reason()
        if self.unconfined_reason is None:
            argv = sandbox.command(argv, workdir=box, writable=writable, hidden=hidden, env=env)
        else:
            _become_subreaper()
        self.proc = subprocess.Popen(
            argv,
            cwd=box,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        self.channel = Channel(ours, max_payload=MAX_PAYLOAD)
        self.output = Output(self.proc.stdout)
        # When the experiment ends, wake whoever waits on the channel (a leftover child could keep it open).
        threading.Thread(target=self._close_on_exit, daemon=True, name="experiment-exit").start()

    @property
    def confined(self) -> bool:
        return self.unconfined_reason is None

    def _close_on_exit(self) -> None:
        self.proc.wait()
        with contextlib.suppress(OSError):
            self.channel.sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> int:
        """Kill the experiment and everything it started; its exit code (negative: the signal)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)  # bwrap takes its PID namespace, and all in it, along
        for child in psutil.Process().children(recursive=True):  # unconfined leftovers, reparented to us
            with contextlib.suppress(psutil.Error):
                child.kill()
        code = self.proc.wait()
        self.output.finish()
        return code

    def exit_code(self) -> int | None:
        return self.proc.poll()


def _become_subreaper() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def environment_for(base: dict[str, str], compile_cache: Path) -> dict[str, str]:
    """The run's environment: compile caches in a directory the sandbox lets it write and keep."""
    env = dict(base)
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache / "inductor"))
    env.setdefault("TRITON_CACHE_DIR", str(compile_cache / "triton"))
    return env
