"""A coding agent's key, checked before the baseline trains: one GET of the model server's list of models.

The API agents' preflight sends a 1-token request (agents/llm.py). A coding agent's program makes its own requests,
and a key its server rejects showed only in the first turn, after the baseline had trained. Here the loop asks the
server the recipe's program talks to (Anthropic's API for Claude Code, an OpenAI-compatible one for aider and Codex)
for its models, once, with the key and base URL the program is given (the recipe's environment) in the headers the
program sends, within PREFLIGHT_TIMEOUT_S, however slowly the answer comes, without retries or redirects, reading no
more of the answer than a 401's message. A list of models costs no tokens, and a server that checks keys checks them
there too (OpenAI, Anthropic, vLLM's --api-key, LiteLLM's proxy).

Only a 401 stops the loop. A 403 there may be a restricted key that may use the model but not list the models (OpenAI's
per-endpoint permissions), a 404 a server without the list (some local ones): they, and every other answer, say nothing
of the key, and are not reported. A server that cannot be reached (or does not answer in time) is a warning, as for the
API agents: it may be up by the first turn. Where the program would send more than the key (Claude Code's
ANTHROPIC_AUTH_TOKEN, a bearer token a gateway reads; ANTHROPIC_CUSTOM_HEADERS), nothing is checked: a request without
them could be refused where the program's is not. Nor where the program may take a key or base URL of its own
(`Recipe.own_settings`: aider's .env files, loaded over the environment): it may not send the key checked here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import openai

from autoresearch.agents.http_client import whole_request_client
from autoresearch.agents.llm import PREFLIGHT_CONNECT_TIMEOUT_S, PREFLIGHT_TIMEOUT_S

ANTHROPIC_VERSION = "2023-06-01"  # the header Anthropic's API wants on every request
DETAIL_CHARS = 300
# Of a 401's body, what is read for its message (an error is a few hundred bytes): a server that sends more, or sends
# without end, filled memory as fast as the loopback carries it until the 30 s deadline, then read as unreachable.
BODY_BYTES = 64 * 1024
# What a program sends beside the key, read from its environment: where one is set, the check is not made.
MORE_THAN_THE_KEY = {"anthropic": ("ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_CUSTOM_HEADERS"), "openai": ()}
# Where one of these is true, the program talks to another provider with other credentials (Claude Code, even --bare: on
# Bedrock, Vertex, Foundry ...; the list Claude Code 2.1.332 keeps of them): its key is not checked (red team:
# ANTHROPIC_API_KEY went to api.anthropic.com, which Claude Code never asked, and a stale one stopped a loop whose
# Claude Code worked on Bedrock).
ANOTHER_PROVIDER = {
    "anthropic": tuple(
        f"CLAUDE_CODE_USE_{name}"
        for name in ("BEDROCK", "VERTEX", "FOUNDRY", "ANTHROPIC_AWS", "ANTHROPIC_GOOGLE_CLOUD", "MANTLE", "GATEWAY")
    ),
    "openai": (),
}
TRUE = ("1", "true", "yes", "on")  # Claude Code's reading of such a switch


@dataclass(frozen=True)
class KeyCheck:
    rejected: str | None = None  # the server's words where it answered 401
    unreachable: str | None = None  # why no answer came


def check_key(api: str, key: str, base_url: str, env: Mapping[str, str]) -> KeyCheck:
    """Ask the server at `base_url` for its models with `key`, as `api` ("anthropic" or "openai") sends it, unless the
    program's environment `env` has it send more (MORE_THAN_THE_KEY), or talk to another provider (ANOTHER_PROVIDER)."""
    if any(env.get(name) for name in MORE_THAN_THE_KEY[api]):
        return KeyCheck()
    if another_provider(api, env):
        return KeyCheck()
    base = base_url.rstrip("/")
    if api == "anthropic":
        url, headers = f"{base}/v1/models", {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION}
    else:
        url, headers = f"{base}/models", {"authorization": f"Bearer {key}"}
    # The SDKs' HTTP client with the loop's transport: the whole answer within the timeout, its status line and headers
    # too, however slowly they come (a byte every few seconds held the preflight for ever, before the baseline: red
    # team), and the environment's proxies.
    client = whole_request_client(openai.DefaultHttpxClient, openai.OpenAIError)
    return _ask(client, url, headers, openai.Timeout(PREFLIGHT_TIMEOUT_S, connect=PREFLIGHT_CONNECT_TIMEOUT_S))


def _ask(client: Any, url: str, headers: dict[str, str], timeout: Any) -> KeyCheck:
    """The GET, without redirects (the SDK's client follows them): httpx takes the Authorization header off a redirect
    to another host, but not Anthropic's x-api-key, which went wherever a server's Location said (red team: to another
    port of 127.0.0.1); and a 401 of the host redirected to, asked without the OpenAI key, stopped the loop as the
    key's. A 3xx, as a 403 or 404, says nothing of the key."""
    try:
        with client, client.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=False) as response:
            if response.status_code != 401:
                return KeyCheck()  # its body unread
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) >= BODY_BYTES:
                    break
    except Exception as err:  # httpx's errors, the transport's timeout (an OpenAIError), a URL that is none
        return KeyCheck(unreachable=f"{type(err).__name__}: {err}")
    return KeyCheck(rejected=_detail(body[:BODY_BYTES].decode(errors="replace")))


def another_provider(api: str, env: Mapping[str, str]) -> str | None:
    """The variable, true in `env`, that has the program talk to another provider (ANOTHER_PROVIDER); None if none."""
    return next((name for name in ANOTHER_PROVIDER[api] if env.get(name, "").strip().lower() in TRUE), None)


def _detail(text: str) -> str:
    """The API's own error message if the body has one (OpenAI's and Anthropic's shapes), else the body's start."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    inner = body.get("error", body) if isinstance(body, dict) else None
    message = inner.get("message") if isinstance(inner, dict) else None
    said = " ".join(str(message or text).split())
    return said if len(said) <= DETAIL_CHARS else said[: DETAIL_CHARS - 3] + "..."
