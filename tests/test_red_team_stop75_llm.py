"""Red team (helper 133) of stop 75's LLM-client changes (whole_request_client, retry-after, strip_thinking): each
test but the guard failed on them. Left alone: a server that trickles its status line and headers is bounded by the
read timeout of each byte only (the whole request's deadline starts with the body)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import openai
import pytest
from test_llm_server_failures import GOOD, _chat, odd_server

from autoresearch.agents.anthropic_agent import AnthropicAgent
from autoresearch.agents.base import Context, ProposalError
from autoresearch.agents.openai_agent import OpenAIAgent


@pytest.fixture
def context(tmp_path: Path) -> Context:
    from test_llm_server_failures import TRAIN_PY as train_py

    return Context(tmp_path, "program", train_py, 0.97, 0.0012)


def test_https_proxy_of_the_environment_is_still_used(context: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user behind a corporate proxy sets HTTP(S)_PROXY; the SDKs' DefaultHttpxClient honours it. 645fdcb passes
    `transport=WholeRequestTimeout()`, and httpx(2).Client drops every environment proxy when a transport is given
    (`allow_env_proxies = trust_env and transport is None`): every request now goes direct, so behind a proxy
    every ask fails (DNS or firewall) and the night proposes nothing. Here the only way to the API host is the
    proxy at 127.0.0.1, which answers any request with a good chat completion. Seen: ProposalError "could not reach
    OpenAI API at http://llm.example.invalid/v1" (the proxy got no request)."""
    with odd_server(_chat({"role": "assistant", "content": GOOD}, None), "application/json") as proxy:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("OPENAI_BASE_URL", "http://llm.example.invalid/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        real = socket.getaddrinfo

        def loopback_only(host: object, *args: object, **kwargs: object) -> object:
            if host not in ("127.0.0.1", b"127.0.0.1"):
                raise socket.gaierror(socket.EAI_NONAME, f"{host}: only the proxy is reachable")
            return real(host, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
        agent = OpenAIAgent("gpt-5-mini")
        agent.client = agent.client.with_options(max_retries=0)
        assert agent.propose(context).description == "a higher Muon LR helps"


def test_anthropic_does_not_wait_hours_on_a_retry_after_beside_a_bad_retry_after_ms(fake_anthropic, context) -> None:
    """`longer_than` returns False as soon as retry-after-ms is present but not a number ("", "soon"), without
    looking at retry-after; the Anthropic SDK's parser falls through to retry-after in that case and waits it out.
    A gateway's `retry-after-ms: ` (empty) beside `retry-after: 3600` holds one ask 6 x 1 h again. Seen: sleeps
    [3600.0]."""
    fake_anthropic.error(429, "rate limited", {"retry-after-ms": "", "retry-after": "3600"})
    fake_anthropic.reply(GOOD)
    assert AnthropicAgent("claude-sonnet-4-6").propose(context).description == "a higher Muon LR helps"
    assert 0 < max(fake_anthropic.sleeps) <= 60, fake_anthropic.sleeps


def test_a_whole_answer_that_mentions_a_think_tag_is_not_destroyed(fake_openai, context) -> None:
    """strip_thinking now removes an unclosed `<think>` to the end of the text whether or not the answer was cut at
    the token limit. A complete answer (finish_reason "stop") whose hypothesis or code names the tag once (a model
    writing about its own format, a tokenizer change, a comment) loses everything after it: its edit blocks. Seen:
    "no usable answer, even after a correction" for a valid answer sent twice. The fix 645fdcb wanted only needs
    the unclosed section dropped where the reply was truncated (Reply.truncated) or the text starts with it."""
    hypothesis = "Hypothesis: a higher Muon LR helps"
    answer = GOOD.replace(hypothesis, f"{hypothesis} (no <think> needed)")
    fake_openai.reply(answer)
    fake_openai.reply(answer)
    assert OpenAIAgent("gpt-5-mini").propose(context).description.startswith("a higher Muon LR helps")


@pytest.mark.slow  # over half a second
def test_after_a_deadline_error_the_next_ask_on_the_same_client_works() -> None:
    """Held (keep-alive): after AnswerTimeout mid-body the connection is dropped, not reused for the next ask.
    This passes at 46b3bcd; kept as a guard."""
    from autoresearch.agents.http_client import whole_request_client

    body = json.dumps({}).encode()
    with odd_server(body, "application/json", trickle_s=0.2) as url:
        client = openai.OpenAI(
            api_key="k",
            base_url=url + "/v1",
            max_retries=0,
            timeout=openai.Timeout(0.6, connect=1.0),
            http_client=whole_request_client(openai.DefaultHttpxClient, openai.OpenAIError),
        )
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(openai.OpenAIError, match="no whole answer"):
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
            assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "text", "text": GOOD}],  # content as a list of parts (Mistral's reasoning models, some proxies)
        123,
    ],
    ids=["parts list", "number"],
)
def test_an_openai_answer_whose_content_is_not_a_string_is_no_traceback(
    content: object, context: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """645fdcb catches NOT_AN_ANSWER around the request and `_reply`, but `_reply` passes `message.content` on as it
    came (the SDK does not validate): a list of content parts, or a number, reaches strip_thinking in `_proposal`,
    outside that guard, and raises TypeError ("expected string or bytes-like object"), which loop/asking.py
    re-raises: `autoresearch run` ends with a traceback on one odd answer. Expected: the text used, or a
    ProposalError."""
    from autoresearch.agents.openai_agent import OpenAIAgent as Agent

    with odd_server(_chat({"role": "assistant", "content": content}, None), "application/json") as url:
        monkeypatch.setenv("OPENAI_BASE_URL", url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        agent = Agent("gpt-5-mini")
        if isinstance(content, list):  # its text parts are the answer
            assert agent.propose(context).description == "a higher Muon LR helps"
        else:
            with pytest.raises(ProposalError, match="no usable answer"):
                agent.propose(context)
