"""Red team (helper 138) of the coding agents' key check and key stops; each test failed before its fix.

- The preflight's GET of the model list followed redirects: Anthropic's x-api-key went to whatever host a Location
  named (httpx drops only Authorization), and a 401 of the host redirected to, asked without the OpenAI key, stopped
  the loop as the key's.
- It read the whole answer: a 401 whose body had no end filled memory until the deadline, then read as unreachable.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from autoresearch.agents import key_check
from autoresearch.agents.key_check import check_key

PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable], tuple[str, list[dict]]]]:
    """Servers on 127.0.0.1 whose GET is `handle(handler)`; each gives its base URL and the headers it was sent."""
    for name in PROXIES:
        monkeypatch.delenv(name, raising=False)
    servers = []

    def start(handle: Callable) -> tuple[str, list[dict]]:
        seen: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                seen.append({k.lower(): v for k, v in self.headers.items()})
                with contextlib.suppress(OSError):  # the client went away
                    handle(self)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def answer(status: int, body: bytes = b"{}") -> Callable:
    def handle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return handle


def redirect_to(url: str) -> Callable:
    def handle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(307)
        h.send_header("Location", f"{url}{h.path}")
        h.send_header("Content-Length", "0")
        h.end_headers()

    return handle


def endless(status: int) -> Callable:
    def handle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.end_headers()  # no length: the body ends when the connection does
        h.wfile.write(b'{"error": {"message": "bad key", "padding": "')
        while True:
            h.wfile.write(b"x" * 65536)

    return handle


@pytest.mark.parametrize("api", ["anthropic", "openai"])
def test_the_key_check_follows_no_redirect_to_another_host(api: str, serve) -> None:
    elsewhere, seen_there = serve(answer(401, b'{"error": {"message": "who are you?"}}'))
    base, seen = serve(redirect_to(elsewhere))
    checked = check_key(api, "sk-secret-138", base, {})
    assert len(seen) == 1 and seen_there == [], "the key check went where the server redirected it"
    assert checked == key_check.KeyCheck(), checked  # a 3xx says nothing of the key


def test_a_401_whose_body_has_no_end_is_a_rejected_key_read_no_further(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_check, "PREFLIGHT_TIMEOUT_S", 3.0)  # the 30 s deadline, shorter: the old code waited it
    base, _ = serve(endless(401))
    started = time.monotonic()
    checked = check_key("openai", "sk-bad", base, {})
    assert checked.rejected is not None and checked.rejected.startswith("{") and len(checked.rejected) <= 300, checked
    assert time.monotonic() - started < 2


def test_an_answer_other_than_401_is_not_read_at_all(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_check, "PREFLIGHT_TIMEOUT_S", 3.0)
    base, _ = serve(endless(200))
    started = time.monotonic()
    assert check_key("anthropic", "sk-ok", base, {}) == key_check.KeyCheck()
    assert time.monotonic() - started < 2
