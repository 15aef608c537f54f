"""The one way out of a shell agent's network namespace: run inside it (`python -I -S forwarder.py SOCKET PORT
[HOST:PORT,...]`, by agents/namespace.py, before the agent starts), it brings the namespace's loopback up, connects
once to the loop's proxy (agents/egress.py) at SOCKET, and hands it each connection made to 127.0.0.1:PORT (the
agent's HTTPS_PROXY), with "-", or to a HOST:PORT's port, with that HOST:PORT: an endpoint on the loop's machine that
a plain URL names (`OPENAI_BASE_URL=http://localhost:11434/v1`), which the namespace's own loopback is not. Handed
over (SCM_RIGHTS), a connection is the proxy's: it alone decides what is reached, and the socket's path is gone once
this file has connected, before the agent starts. This file decides nothing, and the agent may do what it likes with
it. Once every port listens, the first process exits 0 and a second serves on, until the namespace ends. Standard
library only (`python -I -S`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import socket
import struct
import sys
import time

_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def listeners(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on `host` (an address of the loopback; localhost: 127.0.0.1, and ::1 where the namespace
    has IPv6) at `port`."""
    found = []
    addresses = ("127.0.0.1", "::1") if host == "localhost" else (host,)
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, port))
            s.listen(64)
        except OSError:
            s.close()
            if address != "::1":
                raise
            continue
        found.append(s)
    return found


def serve(serving: list[tuple[socket.socket, bytes]], control: socket.socket) -> None:
    """Hand each connection made to a listening socket to the proxy, with what that socket asks for. One thread:
    the turn's task cap counts each."""
    with selectors.DefaultSelector() as selector:
        for listening, target in serving:
            selector.register(listening, selectors.EVENT_READ, target)
        while True:
            for key, _ in selector.select():
                try:
                    client, _ = key.fileobj.accept()
                except OSError:  # out of descriptors, say: the agent's to mend
                    time.sleep(0.1)
                    continue
                with client, contextlib.suppress(OSError):  # an OSError: the turn is ending
                    socket.send_fds(control, [key.data], [client.fileno()])


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: forwarder.py SOCKET PORT [HOST:PORT,...]", file=sys.stderr)
        return 2
    try:
        control = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        control.connect(argv[0])
        loopback_up()
        ends = [word for word in (argv[2] if len(argv) == 3 else "").split(",") if word]
        serving = [(s, b"-") for s in listeners("localhost", int(argv[1]))]
        for end in ends:
            host, _, port = end.rpartition(":")
            serving += [(s, end.encode()) for s in listeners(host, int(port))]
    except (OSError, ValueError) as err:
        print(f"autoresearch: could not give the agent's turn its way to the network: {err}", file=sys.stderr)
        return 1
    if os.fork():
        return 0
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # not the turn's pipes: the loop reads them to their end
        os.dup2(null, fd)
    serve(serving, control)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
