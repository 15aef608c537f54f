"""The API agents and the loop against an LLM server that misbehaves, all on 127.0.0.1 (helper 127's walk; each test
failed before its fix): a 200 that is no API answer, a server that trickles or never answers, a retry-after of hours,
a draft cut off inside a thinking section, a --hours limit passed while the agent keeps failing."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from loop_support import FakeExecutor, ScriptedAgent, constant, make_loop

from autoresearch.agents.anthropic_agent import AnthropicAgent
from autoresearch.agents.base import Context, ProposalError
from autoresearch.agents.openai_agent import OpenAIAgent
from autoresearch.loop import engine
from autoresearch.workspace.workspace import Workspace

if TYPE_CHECKING:
    from fake_llm import FakeLLM

TRAIN_PY = resources.files("autoresearch.workspace").joinpath("templates", "train.py").read_text()
LR_OLD = "MATRIX_LR = 0.04  # Muon learning rate for the matrices inside the blocks (0.01-0.1)"
LR_NEW = "MATRIX_LR = 0.06  # Muon learning rate for the matrices inside the blocks (0.01-0.1)"
GOOD = f"Hypothesis: a higher Muon LR helps\ntrain.py\n<<<<<<< SEARCH\n{LR_OLD}\n=======\n{LR_NEW}\n>>>>>>> REPLACE\n"


@pytest.fixture
def context(tmp_path: Path) -> Context:
    return Context(tmp_path, "program", TRAIN_PY, 0.97, 0.0012)


@contextmanager
def odd_server(body: bytes, content_type: str, trickle_s: float = 0.0, headers_too: bool = False) -> Iterator[str]:
    """A server on 127.0.0.1 that answers every POST with 200, `content_type` and `body` (or, with `trickle_s`,
    a byte of whitespace every `trickle_s` seconds, for ever; `headers_too`: a byte of a header). Yields its address."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if headers_too:
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Pad: ")
            else:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body) if not trickle_s else 1_000_000))
                self.end_headers()
            if not trickle_s:
                self.wfile.write(body)
                return
            try:
                while not stop.is_set():
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    stop.wait(trickle_s)
            except OSError:
                pass

    stop = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def agent_at(kind: str, url: str, monkeypatch: pytest.MonkeyPatch):
    if kind == "openai":
        monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        return OpenAIAgent("gpt-5-mini")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    return AnthropicAgent("claude-sonnet-4-6")


ODD_ANSWERS = {
    # a proxy, captive portal or web UI at the base URL answers 200 with a page
    "html page": (b"<html><body>502 Bad Gateway</body></html>", "text/html"),
    # a gateway that cut the JSON body, or wrote an error as text, under a JSON content type
    "broken json": (b'{"id": "chatcmpl-1", "choi', "application/json"),
}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("answer", list(ODD_ANSWERS))
def test_an_answer_that_is_no_api_json_is_a_proposal_error_not_a_crash(
    kind: str, answer: str, context: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What was seen: AttributeError "'str' object has no attribute 'choices'" (or 'content') for a page,
    json.decoder.JSONDecodeError for cut JSON: not a ProposalError, so `autoresearch run` ends with a traceback
    (loop/asking.py re-raises anything else) on one bad answer of a proxy, hours into a night. Expected: a
    ProposalError that says what came back (the loop records it and goes on)."""
    body, content_type = ODD_ANSWERS[answer]
    with odd_server(body, content_type) as url:
        agent = agent_at(kind, url, monkeypatch)
        agent.client = agent.client.with_options(max_retries=0)
        with pytest.raises(ProposalError) as failed:
            agent.propose(context)
    assert f"at {url}" in str(failed.value) and "answered with no API response" in str(failed.value)
    assert "_BASE_URL" in failed.value.hint and not failed.value.fatal  # the loop records it and goes on


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_preflight_of_a_server_that_answers_no_json_warns_or_stops_with_an_error(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What was seen: preflight raised json.decoder.JSONDecodeError (a traceback before the baseline) for cut
    JSON; for an HTML page it passed silently. Expected: a warning, or a fatal ProposalError naming the base URL."""
    with odd_server(*ODD_ANSWERS["broken json"]) as url:
        warnings = agent_at(kind, url, monkeypatch).preflight(Path("."))
    assert len(warnings) == 1 and "answered with no API response" in warnings[0], warnings


def test_anthropic_answer_without_content_is_a_proposal_error(
    context: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compatible server's 200 of the wrong shape (`{"id": ..., "type": "message"}`, no content): what was seen,
    TypeError "'NoneType' object is not iterable" and a traceback from `autoresearch run`."""
    with odd_server(json.dumps({"id": "msg_1", "type": "message"}).encode(), "application/json") as url:
        agent = agent_at("anthropic", url, monkeypatch)
        with pytest.raises(ProposalError, match="answered with no API response"):
            agent.propose(context)


@pytest.mark.slow  # over half a second
@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "headers"])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_preflight_keeps_its_timeout_against_a_server_that_trickles(
    kind: str, headers_too: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PREFLIGHT_TIMEOUT_S is documented as "the whole 1-token request", but the SDKs' (httpx's) timeouts are per
    read: a server that sends a byte every few seconds holds preflight (and every ask: TIMEOUT_S) for ever. Seen:
    `autoresearch run` against such a server printed nothing for 90 s and more before the baseline, with the
    documented 30 s; and (BROKE, fixed) the same where the bytes were those of a header, before the body's deadline.
    Here the timeout is set to 1 s and the server sends a byte every 0.3 s."""
    module = "autoresearch.agents.openai_agent" if kind == "openai" else "autoresearch.agents.anthropic_agent"
    monkeypatch.setattr(f"{module}.PREFLIGHT_TIMEOUT_S", 1.0)
    with odd_server(b"", "application/json", trickle_s=0.3, headers_too=headers_too) as url:
        agent = agent_at(kind, url, monkeypatch)
        done = threading.Event()
        outcome: list[object] = []

        def check() -> None:
            try:
                outcome.append(agent.preflight(Path(".")))
            except ProposalError as err:
                outcome.append(err)
            finally:
                done.set()

        threading.Thread(target=check, daemon=True).start()
        assert done.wait(10), "preflight still waiting after 10 s with a 1 s timeout"
    assert len(outcome[0]) == 1 and "no whole answer within 1 s" in outcome[0][0], outcome


@pytest.mark.slow  # over half a second
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_an_ask_keeps_its_timeout_against_a_server_that_trickles_its_headers(
    kind: str, context: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BROKE, fixed: TIMEOUT_S bounded an answer's body; a server (or proxy) that sent its headers a byte at a time met
    only each read's timeout and held the loop's ask, and the night, for ever."""
    module = "autoresearch.agents.openai_agent" if kind == "openai" else "autoresearch.agents.anthropic_agent"
    monkeypatch.setattr(f"{module}.TIMEOUT_S", 0.5)
    with odd_server(b"", "application/json", trickle_s=0.1, headers_too=True) as url:
        agent = agent_at(kind, url, monkeypatch)
        started = time.monotonic()
        with pytest.raises(ProposalError, match=r"gave no whole answer within 0\.5 s"):
            agent.propose(context)
    assert time.monotonic() - started < 5


def test_anthropic_does_not_wait_hours_on_a_retry_after_header(fake_anthropic: FakeLLM, context: Context) -> None:
    """A proxy's (or an overloaded gateway's) `retry-after: 3600`: the Anthropic SDK (2.17) waits whatever it says,
    and 6 retries of it hold one ask for 6 h, the loop printing only "asking anthropic for a change", past any
    --hours limit. The OpenAI SDK refuses to wait more than 120 s and gives the error back to the loop, whose own
    back-off (30 s ... 15 min, announced) then applies. Expected: the same here."""
    fake_anthropic.error(429, "rate limited", {"retry-after": "3600"})
    fake_anthropic.reply(GOOD)
    assert AnthropicAgent("claude-sonnet-4-6").propose(context).description == "a higher Muon LR helps"
    assert 0 < max(fake_anthropic.sleeps) <= 60, fake_anthropic.sleeps  # the SDK's own back-off, not the header's


@pytest.mark.slow  # over half a second with its setup
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_server_that_never_answers_is_not_waited_on_seven_times(
    kind: str, context: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that accepts and never answers (a local model server wedged, a proxy that holds the connection): each
    attempt waits TIMEOUT_S (600 s) and the SDK retries a timeout MAX_RETRIES (6) times, so one ask is silent for
    70 min (then the loop asks again at once: 140 min before its first announced back-off). Seen with TIMEOUT_S
    set to 1 s: 7 requests, 27 s. Expected: a timed-out request retried at most once (an answer that took 10 min
    and did not come will not come on the 6th try)."""
    module = "autoresearch.agents.openai_agent" if kind == "openai" else "autoresearch.agents.anthropic_agent"
    monkeypatch.setattr(f"{module}.TIMEOUT_S", 0.3)
    accepted: list[socket.socket] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.setattr(time, "sleep", lambda s: None)  # the SDK's back-off between tries
    try:
        agent = agent_at(kind, f"http://127.0.0.1:{listener.getsockname()[1]}", monkeypatch)
        with pytest.raises(ProposalError, match=r"gave no whole answer within 0\.3 s"):
            agent.propose(context)
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    assert len(accepted) <= 2, f"{len(accepted)} connections for one ask"


def test_hours_limit_reached_during_failures_stops_without_a_back_off_first(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run --hours H` with an agent that keeps failing: ResearchLoop.run pauses (30 s, 1 min, ... 15 min) *before*
    it checks the limit, so a limit already passed is noticed only after a back-off of up to 15 min. Expected: stop at
    once when the limit has passed (and cap a pause at the time left)."""
    now = [0.0]
    monkeypatch.setattr(engine.time, "monotonic", lambda: now[0])

    def failing(_context: Context):
        now[0] += 100.0  # each failed ask takes 100 s (the SDK's retries)
        raise ProposalError("server error (HTTP 503) after 6 retries")

    loop = make_loop(workspace, FakeExecutor(lambda src: 1.0 + 0.001 * constant(src, "SEED")))
    slept: list[float] = []
    loop.sleep = slept.append
    agent = ScriptedAgent([failing] * 10)
    loop.run(agent, hours=150 / 3600)  # two asks: 200 s > 150 s
    assert slept == [], f"slept {slept} s after the {150} s limit had passed"


def test_show_of_a_rejected_answer_gives_the_whole_reason(workspace: Workspace, capsys) -> None:
    """The LLM agents' rejection joins two multi-line edit errors ("First answer: - ...\\n- ... Corrected answer:
    - ...\\n- ..."); the ledger keeps all of it, and the live line prints all of it, but `show N`, where a user looks
    to learn why, prints the first line only: what was wrong with the corrected answer is gone."""
    from autoresearch.cli import main

    loop = make_loop(workspace, FakeExecutor(lambda src: 1.0 + 0.001 * constant(src, "SEED")))
    loop.baseline()

    def rejected(_context: Context):
        raise ProposalError(
            "gave no usable answer. First answer: - no Hypothesis line\n- no blocks. "
            "Corrected answer: - the marker 9c1e of the second answer"
        )

    loop.step(ScriptedAgent([rejected]))
    exp_id = loop.ledger.all()[-1].id
    loop.ledger.close()
    capsys.readouterr()
    assert main(["show", str(exp_id), "--workspace", str(workspace.root)]) == 0
    assert "9c1e" in capsys.readouterr().out


def _chat(choice_message: object, usage: object) -> bytes:
    body = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "usage": usage,
        "choices": [{"index": 0, "message": choice_message, "finish_reason": "stop"}],
    }
    return json.dumps(body).encode()


def _message(usage: object) -> bytes:
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "content": [{"type": "text", "text": GOOD}],
    }
    if usage is not ...:
        body["usage"] = usage
    return json.dumps(body).encode()


NULL_USAGE = {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}
WRONG_SHAPES = {
    # seen: AttributeError 'NoneType' object has no attribute 'content'
    "openai message null": ("openai", _chat(None, None)),
    # seen: TypeError unsupported operand type(s) for *: 'NoneType' and 'float' (a proxy that fills usage with nulls)
    "openai usage nulls": ("openai", _chat({"role": "assistant", "content": GOOD}, NULL_USAGE)),
    # seen: AttributeError 'NoneType' object has no attribute 'input_tokens' (a compatible server without usage)
    "anthropic no usage": ("anthropic", _message(...)),
    # seen: TypeError unsupported operand type(s) for +: 'NoneType' and 'int'
    "anthropic usage nulls": ("anthropic", _message({"input_tokens": None, "output_tokens": None})),
}


@pytest.mark.parametrize("shape", list(WRONG_SHAPES))
def test_a_200_of_the_wrong_shape_is_a_proposal_error_or_an_answer_not_a_crash(
    shape: str, context: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenAI- and Anthropic-compatible servers and proxies leave fields out or null (the OpenAI agent already takes a
    missing `usage`). Each of these ended `autoresearch run` with a traceback; with two workers it also killed the
    other worker's training run in flight. Expected: the answer used (usage unknown), or a ProposalError."""
    kind, body = WRONG_SHAPES[shape]
    with odd_server(body, "application/json") as url:
        agent = agent_at(kind, url, monkeypatch)
        if "message null" in shape:  # no text: an answer that does not parse, sent back once, then a failure
            with pytest.raises(ProposalError, match="no usable answer"):
                agent.propose(context)
        else:  # the answer is used, its tokens unknown
            proposal = agent.propose(context)
            assert proposal.description == "a higher Muon LR helps" and proposal.usage.input_tokens == 0


def test_a_draft_inside_thinking_cut_off_at_the_token_limit_is_not_applied(
    fake_openai: FakeLLM, context: Context
) -> None:
    """A local reasoning model (qwen3, deepseek-r1) that hits its output limit while still thinking: the answer is
    `<think>` + drafts, never closed. strip_thinking removes only closed sections, so a draft edit the model was still
    weighing ("hmm, maybe not") is taken as its answer and trained. Seen: the proposal "DRAFT a higher Muon LR helps"
    from one request. Expected: an unclosed thinking section is no answer (the correction round asks again)."""
    draft = GOOD.replace("Hypothesis: a higher", "Hypothesis: DRAFT a higher")
    fake_openai.reply("<think>Let me draft something:\n" + draft + "\nhmm, maybe not; instead", truncated=True)
    fake_openai.reply(GOOD)
    proposal = OpenAIAgent("qwen3-coder:30b").propose(context)
    assert "DRAFT" not in proposal.description
