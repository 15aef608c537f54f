"""Starting the browser view: the socket it listens on, which names it answers to, and the server (uvicorn)."""

from __future__ import annotations

import errno
import ipaddress
import signal
import socket
import threading
from collections.abc import Callable

from autoresearch.errors import AutoresearchError
from autoresearch.workspace.workspace import Workspace

DEFAULT_PORT = 8765
LOOPBACK_NAMES = ["localhost", "127.0.0.1", "[::1]"]  # this machine as a Host header names it
OTHER_HOST = "give --host an address of this machine (default 127.0.0.1: this machine alone)"


def listening(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) and listening (port 0: any free one); an error that says what to do where
    it cannot be."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise AutoresearchError(
            f"cannot listen on {host}: no such address ({exc.strerror})",
            hint=OTHER_HOST,
        ) from None
    try:
        return socket.create_server(address, family=family, backlog=64)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AutoresearchError(
                f"port {port} on {host} is taken (by another autoresearch web, or another server)",
                hint="give another with --port (--port 0: any free one)",
            ) from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise AutoresearchError(
                f"cannot listen on port {port}: {exc.strerror}", hint="ports below 1024 need root: give --port 8765"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise AutoresearchError(
                f"cannot listen on {host}: it is no address of this machine",
                hint=OTHER_HOST,
            ) from None
        raise


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def answered_hosts(host: str) -> list[str]:
    """The names a request may give in its Host header. Listening on this machine alone, its loopback names: a page
    of another site whose name was made to point at 127.0.0.1 (DNS rebinding) names that site, and is refused.
    Listening on every address (0.0.0.0, ::), any: the machine's names and addresses are not known here."""
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    named = f"[{host}]" if ":" in host else host.lower()
    return LOOPBACK_NAMES if named in LOOPBACK_NAMES else [*LOOPBACK_NAMES, named]


def url_of(sock: socket.socket, host: str) -> str:
    """The address to open in a browser (on every address: this machine's loopback one)."""
    port = sock.getsockname()[1]
    shown = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def server(ws: Workspace, sock: socket.socket, host: str):
    """The uvicorn server of the view of `ws`, to be run on `sock` (`.run(sockets=[sock])`; `.should_exit` stops
    it, its open pages' streams ended first)."""
    import uvicorn

    from autoresearch.web.app import create_app
    from autoresearch.web.night import Night

    stopping = threading.Event()
    background = signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # `autoresearch web &`: a background job

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            if sig == signal.SIGINT and background:  # ignores Ctrl-C, as background jobs (and `run`) do
                return
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            stopping.set()  # the pages' streams end first: cut after the grace, each wrote a traceback
            await super().shutdown(sockets)

    app = create_app(Night(ws), answered_hosts(host), stopping)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1)
    return Server(config)


def serve(ws: Workspace, host: str, port: int, say: Callable[[str], None]) -> None:
    """Serve the view of `ws` on host:port until Ctrl-C (or SIGTERM)."""
    sock = listening(host, port)
    with sock:
        say(f"the night in {ws.root}, live: {url_of(sock, host)} (Ctrl-C stops)")
        if not is_loopback(host):
            port = sock.getsockname()[1]
            say(
                f"listening on {host}: anyone who can reach this machine on port {port} can read your experiments, "
                "their diffs and logs (the default, 127.0.0.1, is this machine alone; from your laptop, "
                f"`ssh -L {port}:127.0.0.1:{port} THIS-MACHINE` reaches that)"
            )
        server(ws, sock, host).run(sockets=[sock])
