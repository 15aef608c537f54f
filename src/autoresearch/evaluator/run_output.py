"""The experiment's output: copied to its log as it comes, bounded, so that a train.py that prints without end cannot
fill the disk, and held until the log is known."""

from __future__ import annotations

import threading
from typing import BinaryIO

from autoresearch.workspace.disk import is_disk_full

LOG_LIMIT = 32 * 2**20  # bytes of output kept per run: a train.py that prints without end cannot fill the disk
EARLY_OUTPUT_LIMIT = 2**20  # output kept before the run's log file is known


class Output:
    """Copies the experiment's output to its log, bounded; holds it until the log is known."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._sink: BinaryIO | None = None
        self._early = bytearray()
        self._written = 0
        self._tail = b""  # the last bytes of output, for the reason of a crash
        self.disk_full = False  # a write to the log failed for lack of space: what follows is not kept
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
        if room > 0 and not self.disk_full:
            try:
                self._sink.write(chunk[:room])
                if len(chunk) > room:
                    self._sink.write(f"\n[output past {LOG_LIMIT // 2**20} MiB dropped]\n".encode())
                self._sink.flush()
            except OSError as exc:  # the output is still read, or train.py would block on a full pipe
                if not is_disk_full(exc):
                    raise
                self.disk_full = True  # the referee stops the run's recording (Referee.run)
        self._written += len(chunk)
