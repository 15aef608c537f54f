"""Run a program where the only network is a bridge to one server of the test on 127.0.0.1.

`Offline(port)` gives a launcher: `unshare` puts the program in new user and network namespaces, whose only
interface is loopback, brought up here; this file, run there as a script, listens on 127.0.0.1:<port> inside
and carries each connection over a Unix socket (a file, which crosses namespaces) to a bridge in the test
process, which connects to the real server on 127.0.0.1:<port>, or on its own Unix socket where it has one. The
program sees the server at the same URL and nothing else: no route, no DNS, so no request can leave 127.0.0.1,
whatever it tries.

To see what it tried, HTTP_PROXY and HTTPS_PROXY point at a listener inside that writes down the first line of
every request it gets (`CONNECT host:443 ...`) and closes the connection: `Offline.attempts()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


class Offline:
    """A bridge from a Unix socket at `path` to 127.0.0.1:`port`; `.launcher` runs a program behind it."""

    def __init__(self, port: int, path: Path, server: str = ""):
        """`server`: the server's Unix socket, where the bridge connects instead of 127.0.0.1:`port` (the program
        still sees the server at 127.0.0.1:`port`)."""
        self.port, self.path, self.server = port, path, server
        self.proxy_log = path.with_suffix(".proxy.log")
        self.connections = 0  # connections the program made to the server
        self.failures: list[str] = []  # connections that could not reach the server: why, and who listens there
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.folder, address = short_address(path)
        self.listener.bind(address)
        self.listener.listen(64)
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def launcher(self) -> tuple[str, ...]:
        script = str(Path(__file__).resolve())
        inside = (sys.executable, script, str(self.path), str(self.port), str(self.proxy_log), "--")
        return ("unshare", "--user", "--map-root-user", "--net", "--", *inside)

    def attempts(self) -> list[str]:
        """The requests the program sent to its proxy (anywhere but the server), one line each."""
        return self.proxy_log.read_text().splitlines() if self.proxy_log.exists() else []

    def close(self) -> None:
        self.listener.close()
        with contextlib.suppress(OSError):
            os.close(self.folder)

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._bridge, args=(client,), daemon=True).start()

    def _bridge(self, client: socket.socket) -> None:
        """Connect `client` to the server. A refusal is tried again for 5 s (a listen queue that overflowed refuses
        where net.ipv4.tcp_abort_on_overflow is set), then written down with what listens on the port, and the
        program's connection is closed: it is told at once, not left waiting for an answer."""
        deadline = time.monotonic() + 5
        while True:
            try:
                server = self._connect()
                break
            except ConnectionRefusedError as exc:
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                why = exc
            except OSError as exc:
                why = exc
            overflow = Path("/proc/sys/net/ipv4/tcp_abort_on_overflow")
            there = (
                f"{self.server} exists: {os.path.exists(self.server)}"
                if self.server
                else (
                    f"listening on 127.0.0.1:{self.port}: {listening(self.port)}; "
                    f"tcp_abort_on_overflow {overflow.read_text().strip() if overflow.exists() else '?'}"
                )
            )
            self.failures.append(f"{why}; {there}")
            client.close()
            return
        server.settimeout(None)
        pipe(client, server)

    def _connect(self) -> socket.socket:
        if not self.server:
            return socket.create_connection(("127.0.0.1", self.port), timeout=10)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.settimeout(10)
        try:
            unix.connect(self.server)
        except OSError:
            unix.close()
            raise
        return unix


def short_address(path: Path | str) -> tuple[int, str]:
    """A socket's address for `path`, however long (an address takes 108 bytes): a descriptor of its folder, which
    the caller keeps open while it binds or connects, and the path through it in /proc."""
    folder = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY)
    return folder, f"/proc/self/fd/{folder}/{os.path.basename(path)}"


def listening(port: int) -> str:
    """Whether a socket of this network namespace listens on 127.0.0.1:`port`, and its inode (from /proc/net/tcp)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    found = [row[9] for row in rows if row[1] == wanted and row[3] == "0A"]  # 0A: LISTEN
    return f"yes, socket inode {found[0]}" if found else "nothing"


def pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways between two sockets until either side closes."""

    def copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    threading.Thread(target=copy, args=(a, b), daemon=True).start()
    threading.Thread(target=copy, args=(b, a), daemon=True).start()


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _refuse(listener: socket.socket, log: str) -> None:
    """The proxy: write down what each client asked for, answer 403, close."""
    while True:
        client, _ = listener.accept()
        with client:
            client.settimeout(5)
            try:
                first = client.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                first = "(a connection that sent nothing)"
        with open(log, "a") as f:
            f.write(first + "\n")


def _inside(path: str, port: int, log: str, argv: list[str]) -> int:
    loopback_up()
    listener = socket.create_server(("127.0.0.1", port))
    proxy = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{proxy.getsockname()[1]}"
    threading.Thread(target=_refuse, args=(proxy, log), daemon=True).start()
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    env.update({name: url for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY")})

    _, address = short_address(path)

    def serve() -> None:
        while True:
            client, _ = listener.accept()
            unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            unix.connect(address)
            pipe(client, unix)

    threading.Thread(target=serve, daemon=True).start()
    return subprocess.run(argv, env=env).returncode


if __name__ == "__main__":
    sys.exit(_inside(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[5:]))
