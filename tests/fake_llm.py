"""Fake Anthropic and OpenAI APIs on 127.0.0.1 that speak the real wire protocols, for hermetic agent tests.

- Anthropic: `POST /v1/messages` answers a Message (`content` text blocks, `stop_reason`, `usage` with
  input/output tokens); errors use Anthropic's body `{"type": "error", "error": {"type", "message"}}`.
- OpenAI: `POST /v1/chat/completions` answers a chat completion (`choices[0].message.content`,
  `finish_reason`, `usage` with prompt/completion tokens); errors use `{"error": {"message", "type", ...}}`.

Each server answers from a scripted queue (`reply(...)`, `error(...)`) and records every request. Use the
`fake_anthropic` / `fake_openai` fixtures (`pytest_plugins = ["fake_llm"]`): they point the SDKs' environment
variables at the server with a test key, make `time.sleep` (the SDKs' retry back-off) return at once while
recording the delays asked for in `.sleeps`, and refuse to resolve any host name but 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

PATHS = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class Scripted:
    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]  # names in lower case
    body: dict


@dataclass
class FakeLLM:
    kind: str  # "anthropic" or "openai"
    url: str = ""  # the base URL the SDK is given
    queue: list[Scripted] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)  # retry back-offs the SDK asked for
    blocked_hosts: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reply(self, text: str, input_tokens: int = 1200, output_tokens: int = 300, truncated: bool = False) -> None:
        """Queue a successful answer with `text` and the given token usage."""
        if self.kind == "anthropic":
            body = {
                "id": f"msg_{len(self.queue):04d}",
                "type": "message",
                "role": "assistant",
                "model": "claude-fake",
                "content": [{"type": "text", "text": text}],
                "stop_reason": "max_tokens" if truncated else "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
            }
        else:
            body = {
                "id": f"chatcmpl-{len(self.queue):04d}",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "gpt-fake",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "length" if truncated else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": input_tokens,
                    "completion_tokens": output_tokens,
                    "total_tokens": input_tokens + output_tokens,
                },
            }
        self.queue.append(Scripted(200, body))

    def error(self, status: int, message: str, headers: dict[str, str] | None = None, times: int = 1) -> None:
        """Queue `times` error responses in the provider's error format."""
        if self.kind == "anthropic":
            kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
            body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}
        else:
            body = {"error": {"message": message, "type": "server_error", "param": None, "code": str(status)}}
        self.queue.extend(Scripted(status, body, dict(headers or {})) for _ in range(times))

    def messages(self, n: int) -> list[dict]:
        """The conversation sent in request `n` (without the OpenAI system message)."""
        return [m for m in self.requests[n].body["messages"] if m["role"] != "system"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != PATHS[fake.kind]:
            return self._send(Scripted(404, {"error": {"type": "not_found_error", "message": f"no {self.path}"}}))
        with fake.lock:
            fake.requests.append(
                Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(raw or b"{}"))
            )
            scripted = fake.queue.pop(0) if fake.queue else None
        if scripted is None:  # a test asked for more than it scripted: fail at once, without retries
            scripted = Scripted(400, {"error": {"type": "invalid_request_error", "message": "nothing scripted"}})
            scripted.headers["x-should-retry"] = "false"
        self._send(scripted)

    def _send(self, scripted: Scripted) -> None:
        data = json.dumps(scripted.body).encode()
        self.send_response(scripted.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in scripted.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeLLM


@contextmanager
def _serving(fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = fake
    root = f"http://127.0.0.1:{server.server_address[1]}"
    fake.url = root if fake.kind == "anthropic" else root + "/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    _quick_sleep(fake, monkeypatch)
    _loopback_only(fake, monkeypatch)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def _quick_sleep(fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = time.sleep

    def quick_sleep(seconds: float) -> None:
        fake.sleeps.append(seconds)
        real_sleep(min(seconds, 0.01))

    monkeypatch.setattr(time, "sleep", quick_sleep)


def _loopback_only(fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host: object, *args: object, **kwargs: object) -> object:
        if host not in ("127.0.0.1", b"127.0.0.1"):
            fake.blocked_hosts.append(str(host))
            raise socket.gaierror(socket.EAI_NONAME, f"fake_llm: {host} is not 127.0.0.1")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)


@pytest.fixture
def fake_anthropic(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    """A fake Anthropic API; ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY point at it."""
    for name in ("ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE", "ANTHROPIC_CUSTOM_HEADERS", "ANTHROPIC_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    fake = FakeLLM("anthropic")
    with _serving(fake, monkeypatch) as served:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", served.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        yield served


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    """A fake OpenAI API; OPENAI_BASE_URL and OPENAI_API_KEY point at it."""
    for name in ("OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_CUSTOM_HEADERS", "OPENAI_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    fake = FakeLLM("openai")
    with _serving(fake, monkeypatch) as served:
        monkeypatch.setenv("OPENAI_BASE_URL", served.url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        yield served
