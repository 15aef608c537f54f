"""Red team (helper 155) of the turn's proxy (agents/egress.py, agents/proxy_reads.py) since a plain HTTP request
through it is made one exchange (`Exchange`) and goes through your HTTP_PROXY. Each test marked BROKE failed before
its fix.

- A chunked request body went on unread, and all the client sent after it: a second request there (another site's
  Host, or through your HTTP_PROXY an absolute URL of any host) went to a server or proxy that takes the requests of
  a connection until it closes, though the first said `Connection: close`. A chunked body is now read to its last
  chunk and its trailers, and nothing after it goes on; a Transfer-Encoding other than `chunked` alone, or in an
  HTTP/1.0 request, is refused.
- In a tunnel to a host's plain port, a request's target went on as sent: a tab and a bare LF in it were the end of
  the request line and a field of its own (`Host: hub.example`) to a server that splits lines at LF and words at any
  whitespace, as Python's http.server does, which served the Host named first. A target with a space or a control
  character is now refused (in absolute form too, where urlsplit had dropped only the tab, CR and LF).
- In a tunnel to a host's plain port, what began with an empty line (CRLF) went on unread, as no HTTP: a server skips
  it before a request (RFC 9112 2.2: nginx, Node do), and served the Host the request after it named. So did a method
  with "_" or "-" (M-SEARCH; nginx's methods have them). An empty line first is now cut; such a method is a request,
  made one exchange.

What held (tried, no fix): duplicate and differing Content-Lengths, a length and a chunked body both, a field name
with a space before its colon, obs-fold and a bare CR or LF among the fields (refused); a body longer than declared
and a second request after it, pipelined, in absolute form or in a tunnel (cut at the length); HTTP/1.0 (its Host
set); `Expect: 100-continue` (the 100 passed, then the body); a 101 or other 1xx answer (passed, the next head read);
an absolute URL, CONNECT and `*` in a tunnel (refused, or to the host tunnelled); userinfo, a backslash and a port of
0 in an absolute URL (the host checked is the one connected to and named); CRLF in an absolute URL (urlsplit drops
it); your proxy's credentials (sent only to it, not to the agent); an answer's head that never ends (passed as it
came after 64 KiB). Honest use: an answer chunked or streamed (SSE) flows as it comes, a head over several reads is
whole, HEAD and 204 answers end, a large POST body (by length or chunked, with extensions and trailers) arrives whole.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time

import pytest
from tcp_servers import Accepting
from test_egress import Forwarder
from test_red_team_h153 import VirtualHosts, _tunnel

from autoresearch.agents import egress, proxy_reads


class Lenient(Accepting):
    """An HTTP/1.1 server on 127.0.0.2 as many are: it skips empty lines before a request, reads a body by its length
    or its chunks, takes the requests of a connection until the client closes it (`Connection: close` or not), and
    notes each one's first Host, target and body. Or it answers each request with `answer` (bytes, or pieces to send
    apart); and `honest`, it closes the connection where a request asks it to."""

    def __init__(
        self, answer: bytes | list[bytes] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", honest: bool = False
    ) -> None:
        self.answer = [answer] if isinstance(answer, bytes) else answer
        self.honest = honest
        self.asked: list[tuple[str, str, bytes]] = []
        super().__init__("127.0.0.2")
        self.site = f"127.0.0.2:{self.port}"

    def _read(self, conn: socket.socket, data: bytes, n: int) -> bytes:
        while len(data) < n and (chunk := conn.recv(65536)):
            data += chunk
        return data

    def _line(self, conn: socket.socket, data: bytes) -> tuple[bytes, bytes]:
        while b"\r\n" not in data and (chunk := conn.recv(65536)):
            data += chunk
        line, _, rest = data.partition(b"\r\n")
        return line, rest

    def _one(self, conn: socket.socket) -> None:
        data = b""
        with conn, contextlib.suppress(OSError, ValueError):
            conn.settimeout(10)
            while True:
                while b"\r\n\r\n" not in data.lstrip(b"\r\n") and (chunk := conn.recv(65536)):
                    data += chunk
                data = data.lstrip(b"\r\n")
                if b"\r\n\r\n" not in data:
                    return
                head, _, data = data.partition(b"\r\n\r\n")
                line, *fields = head.split(b"\r\n")
                named = [f.partition(b":") for f in fields]
                host = next((v.strip().decode() for k, _, v in named if k.lower() == b"host"), "")
                length = next((int(v) for k, _, v in named if k.lower() == b"content-length"), 0)
                body = b""
                if any(k.lower() == b"transfer-encoding" for k, _, _ in named):
                    while True:
                        size, data = self._line(conn, data)
                        size = int(size.split(b";")[0], 16)
                        data = self._read(conn, data, size + 2)
                        body, data = body + data[:size], data[size + 2 :]
                        if not size:
                            break
                    while (trailer := self._line(conn, data))[0]:
                        data = trailer[1]
                    data = trailer[1]
                else:
                    data = self._read(conn, data, length)
                    body, data = data[:length], data[length:]
                self.asked.append((host, line.split(b" ")[1].decode("latin-1"), body))
                for piece in self.answer:
                    conn.sendall(piece)
                    time.sleep(0.05 if len(self.answer) > 1 else 0)
                if self.honest and b"connection: close" in head.lower():
                    return

    def close(self) -> None:
        self.listening.close()


def _all(client: socket.socket, until: bytes | None = None) -> bytes:
    """What `client` gets until it closes (or its answer ends with `until`)."""
    answer = b""
    with contextlib.suppress(OSError):
        while (until is None or not answer.endswith(until)) and (data := client.recv(65536)):
            answer += data
    return answer


def _settle(server: Lenient, n: int = 1) -> None:
    deadline = time.monotonic() + 2
    while len(server.asked) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # and a second request, were there one


@pytest.mark.parametrize("way", ["absolute", "tunnel"])
def test_a_chunked_body_ends_at_its_last_chunk_and_nothing_after_it_goes_on(way: str) -> None:
    """BROKE, fixed: a chunked body went on unread, and a request after it reached a server that takes a
    connection's requests until it closes (though the first asked it to close): another site's."""
    server = Lenient()
    try:
        with egress.Egress({egress.HOSTS_ENV: server.site}) as proxy:
            forwarder = Forwarder(proxy)
            if way == "absolute":
                client = forwarder.hand(b"-")
                client.sendall(f"POST http://{server.site}/a HTTP/1.1\r\n".encode())
            else:
                client = _tunnel(forwarder, server.site)
                client.sendall(b"POST /a HTTP/1.1\r\n")
            client.sendall(
                b"Transfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"
                b"GET /val HTTP/1.1\r\nHost: hub.example\r\n\r\n"
            )
            answer = _all(client, b"ok")
            _settle(server)
    finally:
        server.close()
    assert server.asked == [(server.site, "/a", b"abc")], "a request after a chunked body went on"
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in answer


@pytest.mark.parametrize(
    "encoding",
    [b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", b"Transfer-Encoding: x"],
)
def test_a_body_of_another_coding_is_refused(encoding: bytes) -> None:
    with egress.Egress({egress.HOSTS_ENV: "127.0.0.2:9"}) as proxy:
        client = Forwarder(proxy).hand(b"-")
        client.sendall(b"POST http://127.0.0.2:9/a HTTP/1.1\r\n" + encoding + b"\r\n\r\n")
        assert client.recv(100).startswith(b"HTTP/1.1 400 ")
    assert proxy_reads.Exchange.of("POST", "/", "HTTP/1.0", b"Transfer-Encoding: chunked\r\n\r\n", "h") is None


def test_a_chunked_body_that_breaks_off_or_lies_goes_on_no_further() -> None:
    """Where a chunk's size is none, or its data is not followed by CRLF, what follows does not go on."""
    exchange = proxy_reads.Exchange.of("POST", "/", "HTTP/1.1", b"Transfer-Encoding: chunked\r\n\r\n", "h")
    assert exchange is not None
    assert exchange.asked(b"2\r\nabXY\r\nGET / HTTP/1.1\r\n\r\n") == b"2\r\nab"
    exchange = proxy_reads.Exchange.of("POST", "/", "HTTP/1.1", b"Transfer-Encoding: chunked\r\n\r\n", "h")
    assert exchange.asked(b"zz\r\nGET / HTTP/1.1\r\n\r\n") == b""
    exchange = proxy_reads.Exchange.of("POST", "/", "HTTP/1.1", b"Transfer-Encoding: chunked\r\n\r\n", "h")
    pieces = [b"1", b"0\r\n", b"x" * 16, b"\r", b"\n0\r", b"\nA: b\r\n", b"\r\n", b"GET"]
    assert b"".join(exchange.asked(p) for p in pieces) == b"10\r\n" + b"x" * 16 + b"\r\n0\r\nA: b\r\n\r\n"


def test_a_target_with_a_tab_and_a_bare_lf_in_a_tunnel_names_no_other_host() -> None:
    """BROKE, fixed: in a tunnel to a host's plain port, a target's tab and bare LF were the end of its request line
    and a Host field of its own to Python's http.server, which served that Host (the first)."""
    server = VirtualHosts()
    allowed = f"127.0.0.3:{server.port}"
    try:
        with egress.Egress({egress.HOSTS_ENV: allowed}) as proxy:
            forwarder = Forwarder(proxy)
            client = _tunnel(forwarder, allowed)
            client.sendall(b"GET /val\tHTTP/1.1\nHost:\thub.example\nX: HTTP/1.1\r\n\r\n")
            answer = _all(client)
            absolute = forwarder.hand(b"-")
            absolute.sendall(f"GET http://{allowed}/val\x0bx HTTP/1.1\r\n\r\n".encode())
            assert absolute.recv(100).startswith(b"HTTP/1.1 400 ")
    finally:
        server.close()
    assert server.asked == [], f"a target named another Host: {server.asked}"
    assert answer == b""


@pytest.mark.parametrize(
    "request_",
    [b"\r\nGET /val HTTP/1.1\r\nHost: hub.example\r\n\r\n", b"M-SEARCH /val HTTP/1.1\r\nHost: hub.example\r\n\r\n"],
    ids=["an empty line first", "a method with a hyphen"],
)
def test_a_request_in_a_tunnel_after_an_empty_line_or_of_a_method_with_a_hyphen_names_no_other_host(request_) -> None:
    """BROKE, fixed: in a tunnel to a host's plain port, what began with an empty line, or with a method of "-" or
    "_", went on unread (as no HTTP); a server skips the empty line, and takes such a method, and served the Host
    the request named."""
    server = Lenient()
    try:
        with egress.Egress({egress.HOSTS_ENV: server.site}) as proxy:
            client = _tunnel(Forwarder(proxy), server.site)
            client.sendall(request_)
            _all(client, b"ok")
            _settle(server, 0 if request_.startswith(b"\r") else 1)
    finally:
        server.close()
    assert all(host == server.site for host, _, _ in server.asked), f"another site was served: {server.asked}"


@pytest.mark.slow
@pytest.mark.parametrize("way", ["absolute", "tunnel"])
def test_honest_answers_flow_as_they_come_and_a_large_body_arrives_whole(way: str) -> None:
    """An answer streamed (chunked, SSE) goes back piece by piece, its head sent in pieces whole; a POST body of
    8 MiB, by length and chunked, arrives whole; HEAD and 204 answers end."""
    streamed = [
        b"HTTP/1.1 200 OK\r\nContent-",
        b"Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
        b"7\r\ndata: 1\r\n",
        b"7\r\ndata: 2\r\n",
        b"0\r\n\r\n",
    ]
    server = Lenient(streamed, honest=True)
    body = bytes(range(256)) * (1 << 15)
    try:
        with egress.Egress({egress.HOSTS_ENV: server.site}) as proxy:
            forwarder = Forwarder(proxy)

            def ask(head: bytes) -> socket.socket:
                if way == "absolute":
                    client = forwarder.hand(b"-")
                    client.sendall(head.replace(b" /", f" http://{server.site}/".encode(), 1))
                else:
                    client = _tunnel(forwarder, server.site)
                    client.sendall(head)
                return client

            client = ask(b"GET /events HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n")
            got = b""
            while b"data: 1" not in got:
                got += client.recv(65536)
            assert b"data: 2" not in got, "the stream was held"
            assert got.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
            assert b"keep-alive" not in got and b"Connection: close\r\n" in got
            got += _all(client)
            assert got.endswith(b"7\r\ndata: 2\r\n0\r\n\r\n")
            client = ask(b"POST /big HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body))
            client.sendall(body + b"GET /val HTTP/1.1\r\nHost: hub.example\r\n\r\n")
            _all(client)
            chunks = b"".join(
                b"%x;n=1\r\n%s\r\n" % (1 << 20, body[i : i + (1 << 20)]) for i in range(0, len(body), 1 << 20)
            )
            client = ask(b"POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            client.sendall(chunks + b"0\r\nX-Sum: 8\r\n\r\n")
            _all(client)
    finally:
        server.close()
    assert [(p, b == body) for _, p, b in server.asked] == [("/events", False), ("/big", True), ("/chunked", True)]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\nKeep-Alive: timeout=5\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["204", "100 then 200"],
)
def test_an_answer_with_no_body_or_an_interim_one_ends(answer: bytes) -> None:
    server = Lenient(answer, honest=True)
    try:
        with egress.Egress({egress.HOSTS_ENV: server.site}) as proxy:
            client = Forwarder(proxy).hand(b"-")
            client.sendall(f"HEAD http://{server.site}/x HTTP/1.1\r\nExpect: 100-continue\r\n\r\n".encode())
            got = _all(client)
    finally:
        server.close()
    final = re.split(rb"\r\n\r\n", got)
    assert got.count(b"Connection: close\r\n") == 1 and b"Keep-Alive" not in got, got
    assert final[-1] in (b"", b"ok")
