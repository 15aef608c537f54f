"""Fake Anthropic and OpenAI APIs on 127.0.0.1 that speak the real wire protocols, for hermetic agent tests.

- Anthropic: `POST /v1/messages` answers a Message (`content` text and `tool_use` blocks, `stop_reason`,
  `usage` with input/output tokens), as server-sent events when the request asks to stream (Claude Code
  does); errors use Anthropic's body `{"type": "error", "error": {"type", "message"}}`.
- OpenAI: `POST /v1/chat/completions` answers a chat completion (`choices[0].message.content`,
  `finish_reason`, `usage` with prompt/completion tokens); `POST /v1/responses` answers the Responses API's
  event stream (`message` and `function_call` output items, `response.completed` with usage), as Codex
  reads it; errors use `{"error": {"message", "type", ...}}`.

Each server answers from a scripted queue (`reply(...)`, `error(...)`) and records every request. Use the
`fake_anthropic` / `fake_openai` fixtures (`pytest_plugins = ["fake_llm"]`): they point the SDKs' environment
variables at the server with a test key, make `time.sleep` (the SDKs' retry back-off) return at once while
recording the delays asked for in `.sleeps`, and refuse to resolve any host name but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import ThreadingUnixStreamServer

import pytest

PATHS = {"anthropic": ("/v1/messages",), "openai": ("/v1/chat/completions", "/v1/responses")}
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class Call:
    """A tool call in a scripted answer: Anthropic `tool_use`, or a Responses API `function_call`."""

    name: str
    input: dict


@dataclass
class Answer:
    """A successful answer, written out in the protocol of the request it answers."""

    text: str
    calls: list[Call]
    input_tokens: int
    output_tokens: int
    truncated: bool
    number: int  # makes the ids unique


@dataclass
class Scripted:
    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)
    answer: Answer | None = None  # a success: its body depends on the path and on streaming


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]  # names in lower case
    body: dict


@dataclass
class FakeLLM:
    kind: str  # "anthropic" or "openai"
    url: str = ""  # the base URL the SDK is given
    socket_path: str = ""  # the same server on a Unix socket: where tests/netns.py's bridge connects a program
    queue: list[Scripted] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)  # retry back-offs the SDK asked for
    blocked_hosts: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    listings: list[Recorded] = field(default_factory=list)  # GETs of the model list (a coding agent's preflight)
    listing: Scripted | None = None  # what they are answered (`refuse_listing`); by default the list of one model

    def reply(
        self,
        text: str,
        input_tokens: int = 1200,
        output_tokens: int = 300,
        truncated: bool = False,
        calls: list[Call] | None = None,
    ) -> None:
        """Queue a successful answer with `text`, tool `calls` and the given token usage."""
        answer = Answer(text, list(calls or []), input_tokens, output_tokens, truncated, len(self.queue))
        self.queue.append(Scripted(200, {}, answer=answer))

    def error(
        self, status: int, message: str, headers: dict[str, str] | None = None, times: int = 1, code: str | None = None
    ) -> None:
        """Queue `times` error responses in the provider's error format; `code`, OpenAI's error code, as OpenAI sends
        a request's error (`invalid_api_key`, `context_length_exceeded`: type `invalid_request_error`)."""
        if self.kind == "anthropic":
            kind = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
            body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}
        else:
            kind = "invalid_request_error" if code else "server_error"
            body = {"error": {"message": message, "type": kind, "param": None, "code": code or str(status)}}
        self.queue.extend(Scripted(status, body, dict(headers or {})) for _ in range(times))

    def refuse_listing(self, status: int, message: str) -> None:
        """Answer every GET of the model list with `status`, in the provider's error format."""
        queue, self.queue = self.queue, []
        self.error(status, message)
        self.listing, self.queue = self.queue[0], queue

    def messages(self, n: int) -> list[dict]:
        """The conversation sent in request `n` (without the OpenAI system message)."""
        return [m for m in self.requests[n].body["messages"] if m["role"] != "system"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        """The list of models (`GET /v1/models`): what a coding agent's preflight asks, with its key."""
        fake = self.server.fake
        if self.path.split("?", 1)[0] != "/v1/models":
            return self._send(Scripted(404, {"error": {"type": "not_found_error", "message": f"no {self.path}"}}))
        with fake.lock:
            fake.listings.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, {}))
        model = {"id": "fake-model", "object": "model", "type": "model", "created": 1_700_000_000}
        self._send(fake.listing or Scripted(200, {"object": "list", "data": [model], "has_more": False}))

    def do_POST(self) -> None:
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        path = self.path.split("?", 1)[0]  # Claude Code asks for /v1/messages?beta=true
        if path not in PATHS[fake.kind]:
            return self._send(Scripted(404, {"error": {"type": "not_found_error", "message": f"no {self.path}"}}))
        body = json.loads(raw or b"{}")
        with fake.lock:
            fake.requests.append(Recorded(path, {k.lower(): v for k, v in self.headers.items()}, body))
            scripted = fake.queue.pop(0) if fake.queue else None
        if scripted is None:  # a test asked for more than it scripted: fail at once, without retries
            scripted = Scripted(400, {"error": {"type": "invalid_request_error", "message": "nothing scripted"}})
            scripted.headers["x-should-retry"] = "false"
        if scripted.answer is None:
            return self._send(scripted)
        answer = scripted.answer
        if path == "/v1/responses":
            return self._send_events(responses_events(answer))
        if path == "/v1/messages":
            message = anthropic_message(answer, body.get("model", "claude-fake"))
            if body.get("stream"):
                return self._send_events(anthropic_events(message))
            return self._send(Scripted(200, message))
        self._send(Scripted(200, chat_completion(answer)))

    def _send_events(self, events: list[dict]) -> None:
        """Server-sent events, each named by its `type`."""
        data = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()
        self._send(Scripted(200, {}), data, "text/event-stream")

    def _send(self, scripted: Scripted, data: bytes | None = None, content_type: str = "application/json") -> None:
        data = json.dumps(scripted.body).encode() if data is None else data
        self.send_response(scripted.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in scripted.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def chat_completion(answer: Answer) -> dict:
    return {
        "id": f"chatcmpl-{answer.number:04d}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": "length" if answer.truncated else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": answer.input_tokens,
            "completion_tokens": answer.output_tokens,
            "total_tokens": answer.input_tokens + answer.output_tokens,
        },
    }


def anthropic_message(answer: Answer, model: str) -> dict:
    content: list[dict] = [{"type": "text", "text": answer.text}] if answer.text else []
    content += [
        {"type": "tool_use", "id": f"toolu_{answer.number:04d}_{i}", "name": call.name, "input": call.input}
        for i, call in enumerate(answer.calls)
    ]
    stop = "max_tokens" if answer.truncated else "tool_use" if answer.calls else "end_turn"
    return {
        "id": f"msg_{answer.number:04d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": answer.input_tokens, "output_tokens": answer.output_tokens},
    }


def anthropic_events(message: dict) -> list[dict]:
    """The Messages API's stream for `message`: start, each block (text or tool input as deltas), delta, stop."""
    start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
    events: list[dict] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opening, delta = {"type": "text", "text": ""}, {"type": "text_delta", "text": block["text"]}
        else:
            opening = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events += [
            {"type": "content_block_start", "index": index, "content_block": opening},
            {"type": "content_block_delta", "index": index, "delta": delta},
            {"type": "content_block_stop", "index": index},
        ]
    events += [
        {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": message["usage"]["output_tokens"]},
        },
        {"type": "message_stop"},
    ]
    return events


def responses_events(answer: Answer) -> list[dict]:
    """The Responses API's stream: the answer's message and function calls as output items, then its usage."""
    rid = f"resp_{answer.number:04d}"
    items: list[dict] = []
    if answer.text:
        content = [{"type": "output_text", "text": answer.text, "annotations": []}]
        items.append({"type": "message", "id": f"msg_{answer.number:04d}", "role": "assistant", "content": content})
    items += [
        {
            "type": "function_call",
            "id": f"fc_{answer.number:04d}_{i}",
            "call_id": f"call_{answer.number:04d}_{i}",
            "name": call.name,
            "arguments": json.dumps(call.input),
        }
        for i, call in enumerate(answer.calls)
    ]
    usage = {
        "input_tokens": answer.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": answer.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": answer.input_tokens + answer.output_tokens,
    }
    events: list[dict] = [{"type": "response.created", "response": {"id": rid, "status": "in_progress"}}]
    for index, item in enumerate(items):
        events += [
            {"type": "response.output_item.added", "output_index": index, "item": item},
            {"type": "response.output_item.done", "output_index": index, "item": {**item, "status": "completed"}},
        ]
    events.append({"type": "response.completed", "response": {"id": rid, "status": "completed", "usage": usage}})
    return events


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # Codex opens a connection per request
    fake: FakeLLM


class _UnixServer(ThreadingUnixStreamServer):
    """The same server on a Unix socket: the bridge to a program in a network namespace needs no TCP of the host's
    (in CI, its second connection to the TCP port was once refused, and Codex waited for ever)."""

    daemon_threads = True
    request_queue_size = 64
    fake: FakeLLM


@contextmanager
def _serving(fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    server = _Server(("127.0.0.1", 0), _Handler)
    folder = tempfile.mkdtemp(prefix="fake-llm-")
    fake.socket_path = os.path.join(folder, "llm.sock")
    unix = _UnixServer(fake.socket_path, _Handler)
    server.fake = unix.fake = fake
    root = f"http://127.0.0.1:{server.server_address[1]}"
    fake.url = root if fake.kind == "anthropic" else root + "/v1"
    for served in (server, unix):
        threading.Thread(target=served.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    _quick_sleep(fake, monkeypatch)
    _loopback_only(fake, monkeypatch)
    try:
        yield fake
    finally:
        for served in (server, unix):
            served.shutdown()
            served.server_close()
        shutil.rmtree(folder, ignore_errors=True)


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
