"""The one channel between a training run and the evaluator that serves and scores it.

A run is two processes: the confined experiment (train.py and the harness it imports) and the
trusted evaluator. They share nothing but a Unix stream socket, inherited by the experiment as the file
descriptor named in $AUTORESEARCH_CHANNEL. Every message is a frame: a 4-byte big-endian length, a
JSON header of that length, then `header["payload"]` raw bytes (0 when absent). The evaluator trusts
no header: every field it reads is checked where it is read.

Experiment -> evaluator (requests answered with one frame carry "?"):
    hello?                      -> the run's constants (seq_len, vocab_size, budget_seconds, ...)
    model (payload: archive)    the exported graph, before the clock starts
    clock?                      -> start the clock: training data from now on
    batch? {"rows": n}          -> n rows of seq_len + 1 uint16 tokens; "data": false before the clock
    step {"loss": x}            one optimizer step done (progress and the last step's length)
    stop                        training is over (the clock stops here)
    weights (payload)           the model's parameters and buffers, right after `stop`
Evaluator -> experiment: only the answers, plus a first "go" frame when the run may begin.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from collections.abc import Mapping
from typing import Any

CHANNEL_ENV = "AUTORESEARCH_CHANNEL"
MAX_HEADER = 1 << 20  # a header is a few hundred bytes; anything bigger is a broken or hostile peer
_LENGTH = struct.Struct(">I")
_inherited: Channel | None = None  # the experiment's end, shared by the boot process and the harness


class ChannelClosed(ConnectionError):
    """The other side is gone (or sent something that is not a frame)."""


class PayloadRefused(ChannelClosed):
    """The other side announced a payload its request may not carry, or one larger than it may: not read."""


class Channel:
    """Frames over a connected stream socket; `request` is safe to call from several threads. `payloads`, for a side
    that is not trusted, names the most bytes each request may carry (one it does not name, none): a payload is read
    into this process's memory, which is not the sender's to fill."""

    def __init__(self, sock: socket.socket, payloads: Mapping[str, int] | None = None):
        self.sock = sock
        self.payloads = payloads
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> Channel | None:
        """The experiment's end, when the evaluator started this process (one per process); None when
        run by hand."""
        global _inherited
        fd = os.environ.get(CHANNEL_ENV)
        if not fd:
            return None
        if _inherited is None:
            _inherited = cls(socket.socket(fileno=int(fd)))
        return _inherited

    def send(self, header: dict[str, Any], payload: bytes | memoryview = b"") -> None:
        with self._lock:
            self._send(header, payload)

    def request(self, header: dict[str, Any], payload: bytes = b"") -> tuple[dict[str, Any], bytes]:
        with self._lock:
            self._send(header, payload)
            return self.receive()

    def receive(self) -> tuple[dict[str, Any], bytes]:
        """The next frame: its header and payload. ChannelClosed at the end of the stream or on garbage."""
        (length,) = _LENGTH.unpack(self._exactly(_LENGTH.size))
        if length > MAX_HEADER:
            raise ChannelClosed(f"a frame header of {length} bytes")
        try:
            header = json.loads(self._exactly(length))
        # Not JSON, or JSON Python will not read: an integer past 4,300 digits (ValueError), arrays nested past the
        # recursion limit. Raised as they were, they ended the evaluator as if it could not set a run up (red team).
        except (ValueError, RecursionError) as exc:
            raise ChannelClosed(f"a frame header that is not JSON: {str(exc)[:200]}") from None
        if not isinstance(header, dict):
            raise ChannelClosed("a frame header that is not an object")
        size = header.get("payload", 0)
        if not isinstance(size, int) or size < 0:
            raise ChannelClosed(f"a payload size of {size!r}")
        if self.payloads is not None and size > (most := self.payloads.get(op := str(header.get("op")), 0)):
            raise PayloadRefused(f"a payload of {size:,} bytes for {op[:40]!r}, which may carry {most:,} at most")
        return header, self._exactly(size) if size else b""

    def close(self) -> None:
        self.sock.close()

    def _send(self, header: dict[str, Any], payload: bytes | memoryview) -> None:
        data = json.dumps({**header, "payload": len(payload)}).encode()
        try:
            self.sock.sendall(_LENGTH.pack(len(data)) + data)
            if len(payload):
                self.sock.sendall(payload)
        except OSError as exc:
            raise ChannelClosed(str(exc)) from None

    def _exactly(self, n: int) -> bytes:
        """n bytes, waited for in the kernel (MSG_WAITALL): read a socket buffer (~200 KB) at a time, a payload
        waited for Python's interpreter lock at every read, up to 5 ms each while another thread held it (the
        evaluator's compile ahead), and 200 MB of weights came seconds late (BENCHMARKS.md)."""
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:], n - got, socket.MSG_WAITALL)  # fewer at a signal or the end
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None
            if k == 0:
                raise ChannelClosed("the other side closed the channel")
            got += k
        return bytes(buf)
