"""An LLM server's answer compressed: inflated under the answer's size limit, not past it (agents/http_client.py).

The limit counted the bytes as they came: 32 MiB of gzip, which httpx then inflated into memory after the transport,
can be 32 GiB of answer. Only gzip is asked for now, and inflated in the transport, the limit counting what comes out.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import pytest
from test_llm_server_failures import GOOD, TRAIN_PY, _chat, _message, agent_at
from test_red_team_h144 import server, warm

from autoresearch.agents import http_client
from autoresearch.agents.base import Context, ProposalError

_USAGE = {"input_tokens": 5, "output_tokens": 7}


def answering(
    body: bytes, encoding: str | None, seen: list[str] | None = None
) -> Callable[[BaseHTTPRequestHandler], None]:
    """A 200 of `body` as it is, with `encoding` as its Content-Encoding; `seen` gets each request's Accept-Encoding."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        if seen is not None:
            seen.append(handler.headers.get("Accept-Encoding", ""))
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if encoding:
            handler.send_header("Content-Encoding", encoding)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def limited(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No retries, and an answer of 1 MiB at most."""
    module = "autoresearch.agents.openai_agent" if kind == "openai" else "autoresearch.agents.anthropic_agent"
    monkeypatch.setattr(f"{module}.MAX_RETRIES", 0)
    monkeypatch.setattr(http_client, "MAX_ANSWER_BYTES", 1 << 20)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_gzipped_answer_is_asked_for_and_used(kind, tmp_path, monkeypatch) -> None:
    """A server that compresses (most proxies do, asked) still gives an answer the agent applies; gzip is all that is
    asked for, not the br and zstd the SDK's client would also take."""
    usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    body = _chat({"role": "assistant", "content": GOOD}, usage) if kind == "openai" else _message(_USAGE)
    seen: list[str] = []
    with server(answering(gzip.compress(body), "gzip", seen)) as url:
        proposal = agent_at(kind, url, monkeypatch).propose(Context(tmp_path, "program", TRAIN_PY, 0.97, 0.0012))
    assert proposal.description == "a higher Muon LR helps" and proposal.usage.output_tokens == 7
    assert seen == ["gzip"]


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_gzip_bomb_is_cut_off_at_the_answers_limit_as_it_inflates(kind, tmp_path, monkeypatch) -> None:
    """BROKE, fixed: 64 kB of gzip that inflates to 64 MiB of JSON whitespace, against a limit of 1 MiB, passed it (the
    limit counted the 64 kB) and was inflated whole into the loop's memory; at the real limit, 32 MiB of gzip would
    have been 32 GiB. Now the answer is an error once 1 MiB has come out of it."""
    limited(kind, monkeypatch)
    bomb = gzip.compress(b" " * (64 << 20), compresslevel=9)
    assert len(bomb) < 1 << 20  # the limit is not what stops it
    with server(answering(bomb, "gzip")) as url:
        agent = agent_at(kind, url, monkeypatch)
        warm(agent)
        started = time.monotonic()
        with pytest.raises(ProposalError, match=r"gave an answer over 1 MiB"):
            agent.propose(Context(tmp_path, "program", TRAIN_PY, 0.97, 0.0012))
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("encoding", "body", "why"),
    [
        ("br", b"\x1b\x00\x00", r"gave an answer compressed as 'br', not as asked"),
        ("gzip, deflate", gzip.compress(b"{}", mtime=0), r"compressed as 'gzip, deflate', not as asked"),
        ("gzip", b"\x1f\x8b\x08\x00" + b"\xff" * 64, r"gave an answer whose gzip does not inflate"),
    ],
    ids=["brotli", "two layers", "gzip that does not inflate"],  # the same in every xdist worker (no time in them)
)
def test_an_answer_compressed_otherwise_than_asked_is_an_error_that_says_so(encoding, body, why, tmp_path, monkeypatch):
    """An encoding not asked for (which httpx would have decoded past the limit, where its brotli or zstandard module is
    installed), two layers of it, or a gzip that does not inflate: an error of the ask that names it, not a crash."""
    limited("openai", monkeypatch)
    with server(answering(body, encoding)) as url, pytest.raises(ProposalError, match=why):
        agent_at("openai", url, monkeypatch).propose(Context(tmp_path, "program", TRAIN_PY, 0.97, 0.0012))
