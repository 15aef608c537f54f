"""What the turn's proxy (agents/egress.py) reads of what a client sends it: a request's head, the one request it
makes of a plain HTTP one (to the host it reaches, and no other), and the host a TLS hello names. A name, a port and
a request's words are checked here as DNS and HTTP take them: what the proxy lets through is what these say."""

from __future__ import annotations

import re
import socket
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


def target(head: bytes) -> tuple[str, int, bytes | None] | None:
    """The host and port a request asks for, and for a plain HTTP one, its head with the origin-form line (None for
    a CONNECT); None for a request that is neither."""
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
    request = one_request(method, path, version, fields, host + (f":{url.port}" if url.port else ""))
    return None if request is None else (host.lower(), port, request)


def one_request(method: str, target: str, version: str, fields: bytes, host: str) -> bytes | None:
    """A request's head (`fields`: what follows its first line) made one for `host` alone: its fields as sent, each
    on a line of its own (no bare CR or LF, no line folded), but for those that name another host or ask for another
    request on the connection; the proxy names the host it reaches and asks for one answer. None for a head that is
    not one. A Host of another site's, or a second request on the connection, went to the host allowed, and a CDN
    (or any server of many sites) served the site named (red team)."""
    if not re.fullmatch(r"HTTP/1\.[01]", version) or not re.fullmatch(TOKEN, method.encode("latin-1")):
        return None
    lines = fields[:-4].split(b"\r\n") if fields[:-4] else []
    if any(not re.fullmatch(TOKEN + rb":[^\r\n\0]*", f) for f in lines):
        return None
    kept = b"".join(f + b"\r\n" for f in lines if f.partition(b":")[0].lower() not in HOP_BY_HOP)
    line = f"{method} {target} {version}\r\nHost: {host}\r\n".encode("latin-1")
    return line + kept + b"Connection: close\r\n\r\n"


def plain(client: socket.socket, host: str, port: int, data: bytes) -> bytes | None:
    """What a tunnel's client sent first, with no TLS: an HTTP request made one to `host` (`_one_request`), or what
    is none (HTTP's methods are upper case; another protocol, to a host and port allowed, goes on); None where it
    may not go on. Through a tunnel to a host allowed on port 80, a request named another site (red team)."""
    while re.fullmatch(rb"[A-Z]{1,20}", data):  # a method's first letters, perhaps
        if not (chunk := client.recv(_CHUNK)):
            return None
        data += chunk
    if not re.match(rb"[A-Z]+ ", data):
        return data
    head, rest = read_head(client, data)
    if head is None:
        return None
    line, _, fields = head.partition(b"\r\n")
    words = line.decode("latin-1").split(" ")
    if len(words) != 3 or not (words[1].startswith("/") or words[1] == "*"):  # not another host's absolute URL
        return None
    request = one_request(*words, fields, host if port == 80 else f"{host}:{port}")
    return None if request is None else request + rest


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
