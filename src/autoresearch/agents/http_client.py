"""The HTTP client the LLM agents give the official SDKs: theirs (`openai.DefaultHttpxClient`,
`anthropic.DefaultHttpxClient`), with a transport that bounds a whole request and waits out no long retry-after."""

from __future__ import annotations

import contextlib
import email.utils
import importlib
import math
import socket
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

RETRY_AFTER_MAX_S = 60.0  # the longest retry-after the SDKs may wait out inside one ask
# The most of an answer's body read (an answer is at most tens of kB: a hypothesis and edits; an error, less): past it
# the answer is an error, its bytes not kept (red team: a server that sent without end filled memory until TIMEOUT_S).
# Counted as the SDK gets them, decompressed: 32 MiB of gzip can be 32 GiB of answer.
MAX_ANSWER_BYTES = 32 << 20
# The only compression asked for, and inflated here under the limit (the SDKs' own list may add br and zstd, which
# would be decoded past it, by httpx, after the transport); an answer compressed any other way is an error.
ACCEPTED_ENCODING = "gzip"
# The errors of the SDK's class an answer ends in here, by name (each client's are classes of its SDK's own)
ANSWER_ERRORS = ("AnswerTimeout", "AnswerTooLarge", "AnswerUnreadable")
_PIECE = 1 << 16  # the most a gzipped answer is inflated by at a time
_DEADLINE = "autoresearch.deadline"  # the request's extension that holds its deadline (time.monotonic())


def whole_request_client(default_client: type, sdk_error: type[Exception]) -> Any:
    """The SDK's own HTTP client (`openai.DefaultHttpxClient`, `anthropic.DefaultHttpxClient`) with a transport whose
    timeout is the whole request's, and ends it for good. The SDKs' timeouts bound each read of the socket: a server
    that sends a byte now and then never met one, and the loop waited on it for ever. And a read timeout was retried
    MAX_RETRIES times: a server that took the request and never answered held one ask for 7 x TIMEOUT_S (70 min).
    Here an answer not there in full when its read timeout has passed since the request was sent, or silent for that
    long, ends in an error of the SDK's own (`sdk_error`, its base class), which it passes on without retrying: the
    loop's own back-off asks again, and says so. The deadline holds for the status line and headers too, for each read
    of the body (not only between them), and for the redirects the client follows (one deadline for them all); a
    request given up on has its connection shut, and its thread ends; a body past MAX_ANSWER_BYTES is an error."""
    # The SDKs' HTTP library: httpx, or httpx2 in their later versions; the client's base class is its Client.
    http = importlib.import_module(default_client.__mro__[1].__module__.partition(".")[0])

    class AnswerTimeout(sdk_error):
        def __init__(self, request: Any):
            limit = (request.extensions.get("timeout") or {}).get("read")
            super().__init__(f"no whole answer within {limit:g} s" if limit else "no whole answer in time")

    class AnswerTooLarge(sdk_error):
        def __init__(self, limit: int):
            super().__init__(f"an answer over {limit / (1 << 20):g} MiB")

    class AnswerUnreadable(sdk_error):
        def __init__(self, why: str):
            super().__init__(why)

    class Deadline(http.SyncByteStream):
        def __init__(self, stream: Any, deadline: float, request: Any, gzipped: bool, failed: bool = False):
            self._stream, self._deadline, self._request, self._gzipped = stream, deadline, request, gzipped
            self._failed = failed  # an error's answer (a status of 300 and more)

        def __iter__(self) -> Iterator[bytes]:
            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if self._gzipped else None
            chunks, read, came, limit = iter(self._stream), 0, 0, MAX_ANSWER_BYTES
            while True:
                # Each read of the body waits no longer than the deadline (`_WatchedStream.read`), not its whole read
                # timeout (red team: a byte just before the deadline, then silence, held the ask twice TIMEOUT_S)
                _sending.until = self._deadline
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return
                except http.ReadTimeout:
                    raise AnswerTimeout(self._request) from None
                finally:
                    _sending.until = None
                if time.monotonic() > self._deadline:
                    raise AnswerTimeout(self._request)
                # What comes counts too (red team: empty deflate blocks, or bytes after the gzip's end, without end
                # inflate to nothing: read until the deadline, those after the end kept by zlib all the while)
                if (came := came + len(chunk)) > limit:
                    raise AnswerTooLarge(limit)
                if inflate and inflate.eof:
                    continue  # past the gzip's end: not kept (httpx's decoder reads no further member either)
                try:
                    for piece in _inflated(inflate, chunk, AnswerUnreadable) if inflate else (chunk,):
                        if (read := read + len(piece)) > limit:
                            raise AnswerTooLarge(limit)
                        yield piece
                except AnswerUnreadable as exc:
                    if not self._failed:
                        raise
                    # An error's status says what failed, not its body (red team: a proxy's 401 of plain JSON said
                    # to be gzip lost its 401, the rejected key stopped nothing): the body then these words
                    yield str(exc).encode()
                    return

        def close(self) -> None:
            self._stream.close()

    class WholeRequestTimeout(http.HTTPTransport):
        def handle_request(self, request: Any) -> Any:
            limit = (request.extensions.get("timeout") or {}).get("read")
            # One deadline for the request and the redirects the client follows for it (the SDKs do, 20 at most): a
            # redirect is a request of its own, which carries the first one's extensions (red team: each hop had a
            # deadline of its own, and a server that sent a 307 to itself just before it held an ask 21 of them)
            deadline = request.extensions.setdefault(_DEADLINE, time.monotonic() + limit if limit else math.inf)
            request.headers["Accept-Encoding"] = ACCEPTED_ENCODING
            try:
                response = self._headers_by(deadline, request)
            except http.ReadTimeout:  # not a byte of the answer in all that time
                raise AnswerTimeout(request) from None
            # Decompressed here, under the limit, not by httpx after it (red team: 32 MiB of gzip, 32 GiB of answer)
            encodings = [e.strip().lower() for e in ",".join(response.headers.get_list("content-encoding")).split(",")]
            encodings = [e for e in encodings if e and e != "identity"]
            if encodings not in ([], ["gzip"], ["x-gzip"]):
                response.close()
                why = f"an answer compressed as {', '.join(encodings)[:80]!r}, not as asked"
                if response.status_code < 300:
                    raise AnswerUnreadable(why)
                # An error's status says what failed (a 401: the key), its body then these words (red team: a proxy's
                # brotli 401 was this error, retried, and the rejected key stopped nothing)
                response = http.Response(
                    response.status_code, headers=response.headers, content=why.encode(), extensions=response.extensions
                )
                encodings = []
            response.headers.pop("content-encoding", None)
            failed = response.status_code >= 300
            response.stream = Deadline(response.stream, deadline, request, gzipped=bool(encodings), failed=failed)
            if longer_than(response.headers, RETRY_AFTER_MAX_S):
                # The Anthropic SDK waits whatever a retry-after says (a proxy's 3600: 6 retries, 6 h, past --hours,
                # saying nothing); without it the SDK backs off its own way, then the loop's announced back-off takes
                # over. OpenAI's SDK does the same above 60 s.
                for name in ("retry-after", "retry-after-ms"):
                    response.headers.pop(name, None)
            return response

        def _headers_by(self, deadline: float, request: Any) -> Any:
            """The response, its status line and headers read, by `deadline`: httpx bounds each read of them only, and
            a server that trickled them a byte at a time held the ask for ever (red team). They are read in a thread of
            their own; past the deadline (or on a Ctrl-C) its connection is shut, which ends it, and this is an
            AnswerTimeout."""
            if deadline == math.inf:
                return super().handle_request(request)
            outcome: list[Any] = []  # the response or the exception; None once given up on
            lock, send, used = threading.Lock(), super().handle_request, _Used()

            def sending() -> None:
                _sending.used = used  # the connection it reads and writes, for the thread that waits to shut
                got = _outcome(lambda: send(request))
                with lock:
                    if not outcome:
                        outcome.append(got)
                        return
                if not isinstance(got, BaseException):  # too late: its connection is closed
                    got.close()

            thread = threading.Thread(target=sending, name="autoresearch-http", daemon=True)
            thread.start()
            try:
                thread.join(max(0.0, deadline - time.monotonic()))
            finally:  # and on a Ctrl-C meanwhile
                with lock:
                    if not outcome:
                        outcome.append(None)
                        # Shut, its thread ends now (red team: it ended when the server did, and one that trickled
                        # for ever kept a thread and a connection for each ask given up on, all night)
                        used.shut()
            if outcome[0] is None:
                raise AnswerTimeout(request)
            if isinstance(outcome[0], BaseException):
                raise outcome[0]
            return outcome[0]

        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            pool = getattr(self, "_pool", None)  # httpcore's; its connections are made by its network backend
            if (backend := getattr(pool, "_network_backend", None)) is not None:
                pool._network_backend = _Watched(backend)

    # A transport given, the client no longer reads HTTP(S)_PROXY and NO_PROXY itself (red team: behind a company
    # proxy every ask went direct and failed): each proxy of the environment gets a transport of ours, as httpx reads
    # them (a pattern without one, NO_PROXY's, takes the direct transport).
    proxies = getattr(getattr(http, "_utils", None), "get_environment_proxies", dict)()  # its own reading of them
    mounts = {pattern: url and WholeRequestTimeout(proxy=url) for pattern, url in proxies.items()}
    return default_client(transport=WholeRequestTimeout(), mounts=mounts)


class _Used:
    """The network stream a request's own thread (`_headers_by`) last read or wrote: its connection."""

    def __init__(self) -> None:
        self.stream: Any = None
        self.given_up = False  # then a stream the thread comes to use later is shut as it does (`_WatchedStream`)

    def shut(self) -> None:
        """Shut the connection down: a read waiting on it, in the request's thread, ends at once."""
        self.given_up = True
        with contextlib.suppress(AttributeError, OSError):  # none yet (the thread not started), or closed already
            # socket.socket's own: an SSLSocket's would drop its TLS state under the thread reading it
            socket.socket.shutdown(self.stream.get_extra_info("socket"), socket.SHUT_RDWR)


# `used`: in a request's own thread, its `_Used`; `until`: while a body is read, its deadline
_sending = threading.local()


class _Watched:
    """A network backend (httpcore's) whose streams tell the request's own thread's `_Used` when it uses them."""

    def __init__(self, backend: Any):
        self._backend = backend

    def connect_tcp(self, *args: Any, **kwargs: Any) -> Any:
        return _WatchedStream(self._backend.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> Any:
        return _WatchedStream(self._backend.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _WatchedStream:
    def __init__(self, stream: Any):
        self._stream = stream

    def _used(self) -> None:
        if (used := getattr(_sending, "used", None)) is not None:
            used.stream = self._stream
            if used.given_up:  # before it had a connection (red team: it then sent the request, and waited on it)
                used.shut()

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._used()
        if (until := getattr(_sending, "until", None)) is not None:  # a body's read (`Deadline`): by its deadline
            left = max(until - time.monotonic(), 0.001)
            timeout = left if timeout is None else min(timeout, left)
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._used()
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> Any:
        self._used()  # a handshake the server trickles: shut as a read
        return _WatchedStream(self._stream.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def _inflated(inflate: Any, chunk: bytes, error: type[Exception]) -> Iterable[bytes]:
    """`chunk` of a gzip stream inflated, a piece of at most 64 KiB at a time (a chunk of 64 KiB can hold 64 MiB)."""
    try:
        while True:
            piece = inflate.decompress(chunk, _PIECE)
            chunk = inflate.unconsumed_tail
            yield piece
            if not chunk and len(piece) < _PIECE:  # all of it taken in, and nothing more waiting to come out
                return
    except zlib.error as exc:
        raise error(f"an answer whose gzip does not inflate ({exc})") from None


def _outcome(call: Any) -> Any:
    """What `call()` returned, or the exception it raised."""
    try:
        return call()
    except BaseException as exc:  # handed to the thread that waits, which raises it
        return exc


def longer_than(headers: Any, seconds: float) -> bool:
    """Whether a response's retry-after (or retry-after-ms) asks for a wait longer than `seconds`."""
    with contextlib.suppress(TypeError, ValueError):  # none, or not a number: the SDKs read retry-after then
        return float(headers.get("retry-after-ms")) / 1000 > seconds
    if (after := headers.get("retry-after")) is None:
        return False
    try:
        return float(after) > seconds
    except ValueError:  # an HTTP date
        when = email.utils.parsedate_tz(after)
        return when is not None and email.utils.mktime_tz(when) - time.time() > seconds
