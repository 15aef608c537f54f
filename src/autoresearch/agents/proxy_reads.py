"""What the turn's proxy (agents/egress.py) reads of what a client sends it: a request's head, the one request it
makes of a plain HTTP one (to the host it reaches, and no other), and the host a TLS hello names. A name, a port and
a request's words are checked here as DNS and HTTP take them: what the proxy lets through is what these say."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

HEAD_LIMIT = 1 << 16  # a request's head, at most
HELLO_LIMIT = 16384 + 2048  # a TLS record's, at most (TLSCiphertext: 2^14 and its expansion)
_CHUNK = 1 << 16
# A name of DNS's (253 at most, each label 63), or an IPv6 address. A label too long (or empty) raised UnicodeError in
# the resolver (its IDNA codec), no OSError: for a name a wildcard allows, a traceback on the loop's stderr (red team).
NAME = re.compile(r"(?=.{1,253}$)[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*|\[[0-9a-f:.]{2,45}\]")
TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # a method's, a field's name (RFC 9110)
# The fields of a plain request that name another host or keep the connection for another request: the proxy sets them
HOP_BY_HOP = (b"host", b"connection", b"proxy-connection", b"proxy-authorization", b"keep-alive", b"upgrade")


def is_port(word: str) -> bool:
    return word.isascii() and word.isdigit() and 0 < int(word) < 65536  # not "²", a digit to isdigit, not to int


def read_head(s: socket.socket, data: bytes = b"") -> tuple[bytes | None, bytes]:
    """A request's (or an answer's) head, through its blank line, and what came after it (`data`: what of it was
    read already); None for a head over HEAD_LIMIT or a connection closed first."""
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > HEAD_LIMIT:
            return None, b""
        chunk = s.recv(_CHUNK)
        if not chunk:
            return None, b""
        data += chunk
    return data[: end + 4], data[end + 4 :]


def target(head: bytes) -> tuple[str, int, Exchange | None] | None:
    """The host and port a request asks for, and for a plain HTTP one, the exchange it is (None for a CONNECT); None
    for a request that is neither."""
    line, _, fields = head.partition(b"\r\n")
    words = line.decode("latin-1").split(" ")
    if len(words) != 3 or not re.fullmatch(r"HTTP/1\.[01]", words[2]) or not re.fullmatch(TOKEN, line.split(b" ")[0]):
        return None
    method, target, version = words
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        if not is_port(port) or not NAME.fullmatch(host.lower()):
            return None
        return host.lower(), int(port), None
    try:
        url = urlsplit(target)
        port = url.port or 80
    except ValueError:
        return None
    if url.scheme.lower() != "http" or not url.hostname or not NAME.fullmatch(url.hostname.lower()):
        return None
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    exchange = Exchange.of(method, path, version, fields, host + (f":{url.port}" if url.port else ""))
    return None if exchange is None else (host.lower(), port, exchange)


@dataclass
class Exchange:
    """One plain HTTP request on a connection, and its answer: the request for `host` alone (its fields as sent, each
    on a line of its own, but for those that name another host or ask for another request on the connection), its
    body and nothing after it (`asked`), and the answer's head made to say the connection closes (`answered`), so that
    the client asks again on a connection of its own. A Host of another site's, or a second request on the
    connection, went to the host allowed, and a CDN (or any server of many sites) served the site named (red team);
    a client that kept the connection (Claude Code) had its second request refused by the host (walk)."""

    method: str
    path: str
    version: str
    host: str
    fields: bytes  # those kept, each ending in CRLF
    left: int  # the body's bytes still to go on (of a chunked body: of its chunk)
    chunked: bool = False
    line: bytes = b""  # a chunked body's line (a chunk's size, the CRLF after its data, a trailer), while it is read
    state: str = "size"  # of a chunked body: the line it reads next ("size", "crlf", "trailer"), or "done"
    answer: bytes = b""  # the answer's head, while it is read
    answered_head: bool = False

    @classmethod
    def of(cls, method: str, path: str, version: str, fields: bytes, host: str) -> Exchange | None:
        """The exchange a request's head asks for (`fields`: what follows its first line); None for a head that is
        not one (a bare CR or LF, a line folded, a length that is not one, or a length and a chunked body both; a
        target with a space or a control character: a tab and a bare LF in a tunnel's were a field of another Host's
        to a server that splits lines at LF and words at whitespace, as Python's does (red team h155))."""
        if not re.fullmatch(r"HTTP/1\.[01]", version) or not re.fullmatch(TOKEN, method.encode("latin-1")):
            return None
        if not re.fullmatch(r"[^\x00-\x20\x7f]+", path):
            return None
        lines = fields[:-4].split(b"\r\n") if fields[:-4] else []
        if any(not re.fullmatch(TOKEN + rb":[^\r\n\0]*", f) for f in lines):
            return None
        lengths = {f.partition(b":")[2].strip() for f in lines if f.partition(b":")[0].lower() == b"content-length"}
        # A body chunked (in HTTP/1.1, and nothing else) is read to its last chunk: what came after it went on, and a
        # server or proxy that took more than one request on a connection, though it was to close, served it as a
        # second request, to any site (red team h155).
        codings = [f.partition(b":")[2].strip().lower() for f in lines if f.lower().startswith(b"transfer-encoding:")]
        if codings and (codings != [b"chunked"] or version != "HTTP/1.1" or lengths):
            return None
        if len(lengths) > 1:
            return None
        length = lengths.pop() if lengths else b"0"
        if not length.isdigit():
            return None
        kept = b"".join(f + b"\r\n" for f in lines if f.partition(b":")[0].lower() not in HOP_BY_HOP)
        return cls(method, path, version, host, kept, 0 if codings else int(length), chunked=bool(codings))

    def head(self, proxy: str | None = None) -> bytes:
        """The request's head as it goes on: to the host; or to your proxy (`proxy`: the Proxy-Authorization field it
        is given, or ""), with its absolute URL."""
        target = self.path if proxy is None else f"http://{self.host}{self.path}"
        line = f"{self.method} {target} {self.version}\r\nHost: {self.host}\r\n{proxy or ''}"
        return line.encode("latin-1") + self.fields + b"Connection: close\r\n\r\n"

    def asked(self, data: bytes) -> bytes:
        """What of the client's `data` goes on: the rest of the request's body, and no more."""
        if not self.chunked:
            data, self.left = data[: self.left], self.left - min(self.left, len(data))
            return data
        out = b""
        while data and self.state != "done":
            if self.left:  # a chunk's data
                out, data, self.left = out + data[: self.left], data[self.left :], self.left - min(self.left, len(data))
                continue
            self.line += data
            end = self.line.find(b"\n")
            if end < 0:
                if len(self.line) > HEAD_LIMIT:
                    self.state = "done"
                break
            line, data, self.line = self.line[: end + 1], self.line[end + 1 :], b""
            out += self._chunked(line)
        return out

    def _chunked(self, line: bytes) -> bytes:
        """A chunked body's `line` where it is one (and the state after it); else nothing more goes on."""
        size = re.fullmatch(rb"([0-9a-fA-F]{1,15})(;[^\r\n\0]*)?\r\n", line)
        if self.state == "size" and size:
            self.left = int(size[1], 16)
            self.state = "crlf" if self.left else "trailer"
        elif self.state == "crlf" and line == b"\r\n":
            self.state = "size"
        elif self.state == "trailer" and re.fullmatch(TOKEN + rb":[^\r\n\0]*\r\n|\r\n", line):
            self.state = "done" if line == b"\r\n" else "trailer"
        else:
            self.state = "done"
            return b""
        return line

    def answered(self, data: bytes) -> bytes:
        """What of the host's `data` goes back now: the answer's head held until it is whole, then made to say the
        connection closes (a head of 1xx, an interim answer, as it is, and the next one read)."""
        if self.answered_head:
            return data
        self.answer += data
        out = b""
        while (end := self.answer.find(b"\r\n\r\n")) >= 0:
            head, self.answer = self.answer[: end + 4], self.answer[end + 4 :]
            if re.match(rb"HTTP/1\.[01] 1\d\d ", head):
                out += head
                continue
            lines = [f for f in head[:-4].split(b"\r\n") if f.partition(b":")[0].lower() not in HOP_BY_HOP[1:]]
            out += b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + self.answer
            self.answered_head, self.answer = True, b""
            return out
        if len(self.answer) > HEAD_LIMIT:  # no head: as it came
            self.answered_head, out, self.answer = True, out + self.answer, b""
        return out

    def held(self) -> bytes:
        """What of the answer was held back, once the host has closed."""
        held, self.answer = self.answer, b""
        return held


def plain(client: socket.socket, host: str, port: int, data: bytes) -> tuple[bytes, Exchange | None] | None:
    """What a tunnel's client sent first, with no TLS, as it goes on: an HTTP request, made one to `host`, and the
    exchange it is; or what is none (HTTP's methods are upper case; another protocol, to a host and port allowed,
    goes on), and None. None where it may not go on. Through a tunnel to a host allowed on port 80, a request named
    another site (red team); so did one after an empty line, or of a method with "-" or "_" (red team h155)."""
    while re.fullmatch(rb"[A-Z_-]{1,20}", data):  # a method's first letters, perhaps
        if not (chunk := client.recv(_CHUNK)):
            return None
        data += chunk
    if data[:1] in (b"\r", b"\n"):  # an empty line, which a server skips before a request (RFC 9112, 2.2)
        return None
    if not re.match(rb"[A-Z_-]+ ", data):  # "_" and "-": nginx's methods' letters too
        return data, None
    head, rest = read_head(client, data)
    if head is None:
        return None
    line, _, fields = head.partition(b"\r\n")
    words = line.decode("latin-1").split(" ")
    if len(words) != 3 or not (words[1].startswith("/") or words[1] == "*"):  # not another host's absolute URL
        return None
    exchange = Exchange.of(*words, fields, host if port == 80 else f"{host}:{port}")
    return None if exchange is None else (exchange.head() + exchange.asked(rest), exchange)


def hello_name(data: bytes) -> str | None:
    """The host a TLS ClientHello names (SNI), lower case; "" where it names none; None where `data` does not begin
    with one whole hello in one record, or it has an encrypted one within (ECH), whose name this cannot see."""
    try:
        end = 5 + int.from_bytes(data[3:5], "big")
        if data[5] != 1 or 9 + int.from_bytes(data[6:9], "big") != end or len(data) < end:
            return None
        at = 9 + 2 + 32  # its version and random
        at += 1 + data[at]  # the session's id
        at += 2 + int.from_bytes(data[at : at + 2], "big")  # the cipher suites
        at += 1 + data[at]  # the compression methods
        stop = at + 2 + int.from_bytes(data[at : at + 2], "big")
        if stop != end:
            return None
        at += 2
        name = ""
        while at < stop:
            kind, size = int.from_bytes(data[at : at + 2], "big"), int.from_bytes(data[at + 2 : at + 4], "big")
            body, at = data[at + 4 : at + 4 + size], at + 4 + size
            if len(body) != size or kind == 0xFE0D:  # cut short, or an encrypted hello (ECH)
                return None
            if kind == 0:  # server_name: a list of one host_name
                if size < 5 or body[2] != 0 or 5 + int.from_bytes(body[3:5], "big") != size or name:
                    return None
                name = body[5:].decode("ascii").lower().rstrip(".")
        return name if at == stop else None
    except (IndexError, UnicodeDecodeError):
        return None
