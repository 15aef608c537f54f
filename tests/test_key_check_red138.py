"""Red team (helper 138) of the coding agents' key check and key stops; each test failed before its fix.

- The preflight's GET of the model list followed redirects: Anthropic's x-api-key went to whatever host a Location
  named (httpx drops only Authorization), and a 401 of the host redirected to, asked without the OpenAI key, stopped
  the loop as the key's.
- It read the whole answer: a 401 whose body had no end filled memory until the deadline, then read as unreachable.
- aider, given OPENAI_API_BASE and OPENAI_BASE_URL apart, asked the latter's server (litellm's order), the preflight
  the former's: the key went to a server aider never asked.
- aider's `litellm.AuthenticationError:` line counted as a 401 on a turn with no tokens counted: a server that reports
  no usage answered, and the model's own words stopped the loop as a rejected key.
- aider loads ~/.env (and the workspace's) over the environment: the preflight checked a key aider did not send, and
  stopped a loop whose aider worked on a stale OPENAI_API_KEY's 401.
- A server that trickled its headers held the key check for ever.
- Claude Code with a gateway's ANTHROPIC_AUTH_TOKEN and no key, the token rejected, was told to set ANTHROPIC_API_KEY.
- Claude Code on Bedrock or Vertex had ANTHROPIC_API_KEY checked with the Anthropic API, which it never asks; and its
  provider's 403 read as the Anthropic API's, with ANTHROPIC_API_KEY to check.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from agent_support import offline_agent, turn_through_the_loop, use_installed_agents
from loop_support import agent_channel

from autoresearch.agents import key_check
from autoresearch.agents.base import ProposalError
from autoresearch.agents.key_check import check_key
from autoresearch.agents.recipes import recipe
from autoresearch.loop.settings import LoopError
from autoresearch.vocabulary import Kind, Status

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
        server.handle_error = lambda request, address: None  # a client that went away mid-answer: no traceback
        server.stopping = threading.Event()  # ends the handlers that would answer for ever
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", seen

    yield start
    for server in servers:
        server.stopping.set()
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
        while not h.server.stopping.is_set():
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


# -- aider: the server its key was checked with, and a 401 told from the model's words --------------------------------


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    use_installed_agents(home, monkeypatch)


def test_aider_is_given_as_both_variables_the_base_url_its_key_is_checked_with(tmp_path: Path) -> None:
    """litellm reads OPENAI_BASE_URL before OPENAI_API_BASE; the recipe (its preflight, its stop's message, the README)
    reads OPENAI_API_BASE first."""
    aider = recipe("aider")
    environ = {"OPENAI_API_BASE": "http://127.0.0.1:8000/v1", "OPENAI_BASE_URL": "https://elsewhere.example/v1"}
    env = aider.environment(environ, tmp_path)
    assert env["OPENAI_BASE_URL"] == env["OPENAI_API_BASE"] == "http://127.0.0.1:8000/v1"


@pytest.mark.slow  # the real aider's turn: 2-5 s
def test_aider_asks_the_server_the_preflight_checked_when_both_base_urls_are_set(
    workspace, installed, fake_openai, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What was seen: the preflight asked OPENAI_API_BASE's server with the key, and aider, through litellm, asked
    OPENAI_BASE_URL's (here one no turn reaches: it retried for two minutes, then failed)."""
    monkeypatch.setenv("OPENAI_API_BASE", fake_openai.url)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    fake_openai.reply("Hypothesis: nothing to change.")
    agent, offline = offline_agent("aider", fake_openai, agent_channel(workspace))
    try:
        row, _ = turn_through_the_loop(workspace, agent)
    finally:
        offline.close()
    assert len(fake_openai.listings) == 1 and len(fake_openai.requests) == 1, row.reason


def test_aiders_answer_without_token_counts_is_an_answer(tmp_path: Path) -> None:
    aider = recipe("aider")
    said = "litellm.AuthenticationError: AuthenticationError: OpenAIException - as the model wrote it\n"
    (tmp_path / "analytics.jsonl").write_text(
        json.dumps({"event": "message_send", "properties": {"prompt_tokens": 0, "completion_tokens": 0}})
    )
    assert aider.read("gpt-5-mini", said, "", tmp_path).rejected_key is None


@pytest.mark.slow  # the real aider's turn
def test_a_models_words_do_not_stop_aider_as_a_rejected_key_where_the_server_counts_no_tokens(
    workspace, installed, fake_openai
) -> None:
    """What was seen: a server that reports no usage (litellm counts 0 tokens), and a model whose answer had a line
    starting `litellm.AuthenticationError:`: the loop stopped, "rejected the aider agent's API key (HTTP 401)"."""
    fake_openai.reply(
        "I will not edit it.\nlitellm.AuthenticationError: AuthenticationError: OpenAIException - in my notes\n",
        input_tokens=0,
        output_tokens=0,
    )
    agent, offline = offline_agent("aider", fake_openai, agent_channel(workspace))
    try:
        row, _ = turn_through_the_loop(workspace, agent)
    finally:
        offline.close()
    assert row.kind == Kind.PROPOSAL and row.status == Status.CRASH and "HTTP 401" not in row.reason, row.reason


# -- aider's own settings: another key, or server, than the one checked ---------------------------------------------


def test_aiders_own_settings_are_its_dotenv_and_config_files_that_name_a_key_or_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aider, home, workspace = recipe("aider"), tmp_path / "home", tmp_path / "ws"
    home.mkdir()
    workspace.mkdir()
    environ = {"HOME": str(home)}
    (home / ".env").write_text("HF_TOKEN=x\n")  # nothing aider sends to the model server
    (workspace / ".aider.conf.yml").write_text("dark-mode: true\n")
    assert aider.own_settings(environ, workspace) == []
    (home / "dotfiles").mkdir()
    (home / "dotfiles" / "env").write_text("OPENAI_API_KEY=sk-other\n")
    (home / ".env").unlink()
    (home / ".env").symlink_to(home / "dotfiles" / "env")  # a dotfiles manager's link: aider follows it
    (workspace / ".aider.conf.yml").write_text("openai-api-base: http://elsewhere:8000/v1\n")
    found = aider.own_settings({**environ, "AIDER_OPENAI_API_KEY": "sk-third"}, workspace)
    assert found == ["$AIDER_OPENAI_API_KEY", "~/.env", "the workspace's .aider.conf.yml"]
    assert [recipe(name).own_settings(environ, workspace) for name in ("claude-code", "codex")] == [[], []]


@pytest.mark.slow  # the real aider, once: what it sends
def test_aider_takes_the_key_in_a_home_dotenv_over_the_environments(
    workspace, installed, fake_openai, tmp_path: Path
) -> None:
    """Why: aider loads ~/.env over the environment (python-dotenv's override), as the turn shows."""
    (tmp_path / "home" / ".env").write_text("OPENAI_API_KEY=sk-from-home-dotenv\n")
    fake_openai.reply("Hypothesis: nothing to change.")
    agent, offline = offline_agent("aider", fake_openai, agent_channel(workspace))
    try:
        turn_through_the_loop(workspace, agent)
    finally:
        offline.close()
    assert [r.headers.get("authorization") for r in fake_openai.requests] == ["Bearer sk-from-home-dotenv"]
    assert fake_openai.listings == []  # not checked: the preflight would have sent the other key


def test_an_aider_with_a_key_of_its_own_is_not_stopped_by_the_environments_key_being_rejected(
    tmp_path: Path, fake_openai, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What was seen: OPENAI_API_KEY exported, stale, and the key aider uses in ~/.env: the preflight stopped the loop
    on the stale one's 401, though every turn of aider would have worked. Expected: not checked, and said so."""
    from autoresearch.agents.coding_agent import CodingAgent

    home, folder = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    folder.mkdir()
    (folder / "aider").write_text("#!/bin/sh\nexit 0\n")
    (folder / "aider").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(home))
    (home / ".env").write_text("OPENAI_API_KEY=sk-the-one-aider-uses\n")
    fake_openai.refuse_listing(401, "Incorrect API key provided: stale.")
    [warning] = CodingAgent(recipe("aider")).preflight(tmp_path)
    assert "key was not checked before the baseline: aider also reads ~/.env" in warning, warning
    assert fake_openai.listings == []


def trickle(h: BaseHTTPRequestHandler) -> None:
    """A status line and then a header, a byte every 0.2 s, without end: each read of the socket gets one in time."""
    h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Pad: ")
    h.wfile.flush()
    while not h.server.stopping.is_set():
        time.sleep(0.2)
        h.wfile.write(b"a")
        h.wfile.flush()


@pytest.mark.slow  # 2 s: the deadline
def test_a_server_that_trickles_its_headers_holds_the_key_check_no_longer_than_its_deadline(
    serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What was seen: the deadline bounds the body; headers a byte at a time met only each read's timeout, and the
    preflight waited for ever, before the baseline: a night lost with nothing done. Expected: a warning in time."""
    monkeypatch.setattr(key_check, "PREFLIGHT_TIMEOUT_S", 1.0)
    monkeypatch.setattr(key_check, "PREFLIGHT_CONNECT_TIMEOUT_S", 1.0)
    base, _ = serve(trickle)
    started = time.monotonic()
    checked = check_key("openai", "sk-ok", base, {})
    # The transport's deadline (agents/http_client.py) now bounds the headers too, and comes first: 1 s, not this 2 s
    assert checked.unreachable is not None and "answer within 1 s" in checked.unreachable, checked
    assert time.monotonic() - started < 3


@pytest.mark.slow  # the real Claude Code's turn
def test_claude_code_whose_gateway_token_is_rejected_is_told_to_check_the_token(
    workspace, installed, fake_anthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What was seen: ANTHROPIC_BASE_URL and ANTHROPIC_AUTH_TOKEN (a gateway's bearer token), no key, the token
    rejected: "hint: ANTHROPIC_API_KEY is not set, and the model server ... wants a key: set it", which is not what
    the gateway wants. Expected: the token named."""
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "expired-token")
    monkeypatch.setenv("CLAUDE_CODE_MAX_RETRIES", "0")
    fake_anthropic.error(401, "token expired")
    agent, offline = offline_agent("claude-code", fake_anthropic, agent_channel(workspace))
    try:
        with pytest.raises(LoopError) as stopped:
            turn_through_the_loop(workspace, agent)
    finally:
        offline.close()
    assert "HTTP 401" in str(stopped.value) and "hint: check ANTHROPIC_AUTH_TOKEN" in str(stopped.value), stopped.value
    assert fake_anthropic.requests[0].headers.get("authorization") == "Bearer expired-token"


def test_claude_code_on_bedrock_or_vertex_has_no_anthropic_key_checked(
    tmp_path: Path, fake_anthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What was seen: CLAUDE_CODE_USE_BEDROCK=1 (Claude Code talks to Bedrock with AWS credentials, --bare too) and an
    ANTHROPIC_API_KEY of another use, stale: the preflight sent it to the Anthropic API, which Claude Code never asks,
    and its 401 stopped the loop."""
    from autoresearch.agents.coding_agent import CodingAgent

    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "claude").write_text("#!/bin/sh\nexit 0\n")
    (folder / "claude").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    fake_anthropic.refuse_listing(401, "invalid x-api-key")
    for name in ("CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX"):
        with monkeypatch.context() as patch:
            patch.setenv(name, "1")
            assert CodingAgent(recipe("claude-code")).preflight(tmp_path) == []
    assert fake_anthropic.listings == []
    monkeypatch.setenv("CLAUDE_CODE_USE_BEDROCK", "0")  # off: checked
    with pytest.raises(ProposalError, match="HTTP 401"):
        CodingAgent(recipe("claude-code")).preflight(tmp_path)


@pytest.mark.slow  # a turn through the loop, of a stand-in for Claude Code
def test_claude_code_refused_on_bedrock_names_the_provider_not_the_anthropic_key(
    workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What was seen: on Bedrock, a 403 (the AWS role may not invoke the model) read "the model server at
    https://api.anthropic.com refused ... hint: check that ANTHROPIC_API_KEY may use model ...": neither is in use."""
    from autoresearch.agents.coding_agent import CodingAgent
    from autoresearch.loop.ledger import Ledger

    folder = tmp_path / "bin"
    folder.mkdir()
    report = {"type": "result", "is_error": True, "api_error_status": 403, "result": "API Error: 403 AccessDenied"}
    (folder / "claude").write_text(f"#!/bin/sh\ncat >/dev/null\necho '{json.dumps(report)}'\n")
    (folder / "claude").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-of-another-use")
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.setenv("CLAUDE_CODE_USE_BEDROCK", "1")
    with pytest.raises(LoopError) as stopped:
        turn_through_the_loop(workspace, CodingAgent(recipe("claude-code"), timeout_s=60))
    said = str(stopped.value)
    assert "provider (CLAUDE_CODE_USE_BEDROCK is set) refused its request (HTTP 403)" in said, said
    assert "api.anthropic.com" not in said and "ANTHROPIC_API_KEY" not in said, said
    assert "HTTP 403" in Ledger(workspace.root).all()[-1].reason
