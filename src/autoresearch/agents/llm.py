"""What the LLM agents share: the ask-check-correct conversation, token prices, and API error messages.

A provider module (anthropic_agent, openai_agent) only turns a system prompt and a list of messages into a
`Reply` with one SDK call. Retries live in the SDK alone (`MAX_RETRIES`, with its exponential back-off that
honours Retry-After); nothing here retries a call. The one extra request this module may make is the
correction round: an answer that does not parse or apply is sent back once with the exact error.

Before the baseline, `preflight` sends a 1-token request with a short timeout and no retries: a rejected
key (401/403) or an unknown model (404) stops the loop at once; anything else (no connection yet, 429, 5xx)
is a warning, and the loop's own calls back off from it as usual.

A 400 that says the prompt is longer than the model's context (`ContextTooLong`) says what to shorten. It stops the
loop where the prompt that failed was as short as it gets by itself: the first request of an ask, with no crash log
and nothing in flight shown. What is left (program.md, train.py, the latest results and diffs) changes only with a
new result, which a loop whose every ask fails never gets: each ask would fail the same way, all night, 15 min apart.
(But for the latest results' lines, up to 240 characters each, which the failures' own shorter lines replace: some 750
tokens at most, over 20 failures, hours of back-off. A prompt that close to the limit leaves the answer no room.)
A prompt that showed a crash log (shown until 3 failures in a row, and a failed ask is one) or experiments in flight,
or a correction round (the first answer added), may fit next time: that is a failure like any other, with the hint.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from autoresearch.agents.base import Context, Proposal, ProposalError, Usage
from autoresearch.agents.edits import SEARCH, EditError, parse_answer
from autoresearch.agents.http_client import ANSWER_ERRORS
from autoresearch.agents.prompt import Prompt, build_prompt, correction_message
from autoresearch.errors import ConfigError

log = logging.getLogger(__name__)

MAX_RETRIES = 6  # the SDK's retries of 408/409/429/5xx and connection errors: ~0.5+1+2+4+8+8 s of back-off
TIMEOUT_S = 600.0  # one request, the whole of it (agents/http_client.py); a long non-streamed answer takes minutes
CONNECT_TIMEOUT_S = 10.0
PREFLIGHT_TIMEOUT_S = 30.0  # the whole 1-token request of the preflight, without retries
PREFLIGHT_CONNECT_TIMEOUT_S = 5.0
SAID_CHARS = 200  # of an answer with no edits, in the failure's reason (`_said`)
PLACEHOLDER_KEY = "no-key"  # sent to a local server (base URL set, no key): the SDKs insist on some key

# USD per million (input, output) tokens at list price, without caching or batch discounts.
PRICES: dict[str, tuple[float, float]] = {
    "claude-3-haiku": (0.25, 1.25),
    "claude-3-opus": (15.0, 75.0),
    "claude-3-5-haiku": (0.8, 4.0),
    "claude-3-5-sonnet": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-sonnet-4-0": (3.0, 15.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4-6": (3.0, 15.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-opus-4-0": (15.0, 75.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-6": (5.0, 25.0),
    "claude-opus-4-7": (5.0, 25.0),
    "claude-opus-4-8": (5.0, 25.0),
    "claude-sonnet-5": (2.0, 10.0),
    "claude-sonnet-5-5": (2.0, 10.0),
    "claude-opus-5": (5.0, 25.0),
    "claude-opus-5-5": (4.0, 20.0),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.4, 1.6),
    "gpt-4.1-nano": (0.1, 0.4),
    "o1": (15.0, 60.0),
    "o3": (2.0, 8.0),
    "o3-mini": (1.1, 4.4),
    "o3-pro": (20.0, 80.0),
    "o4-mini": (1.1, 4.4),
    "gpt-5": (1.25, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.4),
    "gpt-5-pro": (15.0, 120.0),
    "gpt-5.1": (1.25, 10.0),
    "gpt-5.2": (1.75, 14.0),
    "gpt-5.2-pro": (21.0, 168.0),
    "gpt-5.4": (2.5, 15.0),
    "gpt-5.4-mini": (0.75, 4.5),
    "gpt-5.4-nano": (0.2, 1.25),
    "gpt-5.4-pro": (30.0, 180.0),
    "gpt-5.5": (5.0, 30.0),
    "gpt-5.5-pro": (30.0, 180.0),
}
# What may follow a priced name: nothing, or a snapshot date / alias. "gpt-5" must not price "gpt-5-pro".
_SNAPSHOT = re.compile(r"(-\d{8}|-\d{4}-\d{2}-\d{2}|@\d{8}|-latest)?")
_THINKING = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>", re.DOTALL | re.IGNORECASE)
_OPEN_THINKING = re.compile(r"<think(?:ing)?>.*\Z", re.DOTALL | re.IGNORECASE)
# What reading a 200 that is no API answer raises: a proxy's HTML page, a cut body, JSON of another shape.
NOT_AN_ANSWER = (ValueError, TypeError, AttributeError, KeyError, IndexError)

Message = dict[str, str]  # {"role": "user" | "assistant", "content": text}


@dataclass(frozen=True)
class Reply:
    text: str
    usage: Usage
    truncated: bool = False  # the model stopped at its output-token limit


def price(model: str) -> tuple[float, float] | None:
    """USD per million (input, output) tokens for `model` or one of its dated snapshots; None if unknown."""
    for name in sorted(PRICES, key=len, reverse=True):
        if model.startswith(name) and _SNAPSHOT.fullmatch(model[len(name) :]):
            return PRICES[name]
    return None


def usage_for(model: str, input_tokens: int, output_tokens: int) -> Usage:
    """Token counts with their cost at list price (None for a model not in PRICES)."""
    rates = price(model)
    cost = None if rates is None else (input_tokens * rates[0] + output_tokens * rates[1]) / 1e6
    return Usage(input_tokens, output_tokens, cost)


class ContextTooLong(ProposalError):
    """The server refused the request because the prompt does not fit the model's context (`too_long`)."""


# The words of a 400 for a prompt longer than the model's context, beside OpenAI's code `context_length_exceeded` and
# Anthropic's "prompt is too long": vLLM's and OpenAI's message, llama.cpp's error type; Anthropic's where the prompt
# and the answer's room (MAX_TOKENS, fixed) pass the context, SGLang's and Together's, LM Studio's (red team: they
# failed as any 400, and were asked again all night); text-generation-inference's 422s, for the prompt and for the
# prompt with the answer's room.
_TOO_LONG_WORDS = (
    "prompt is too long",
    "maximum context length",
    "exceed context limit",
    "is longer than the model's context length",
    "greater than the context length",
    "`inputs` must have less than",
    "`inputs` tokens + `max_new_tokens` must be <=",
)
_TOO_LONG_TYPES = ("exceed_context_size_error",)


class LLMAgent:
    """An agent that asks a chat model for SEARCH/REPLACE edits. Subclasses implement `_send`."""

    name = "llm"
    model = ""
    answers_only = True  # an API call per proposal: several may be in flight at once

    def propose(self, context: Context) -> Proposal:
        """Ask once; if the answer does not parse or apply, send the error back once; else ProposalError."""
        prompt = build_prompt(context)
        messages: list[Message] = [{"role": "user", "content": prompt.task}]
        try:
            reply = self._send(prompt.system, messages)
        except ContextTooLong as err:
            raise _too_long(err, context, prompt) from None
        try:
            return self._proposal(reply, context.train_py, reply.usage)
        except EditError as err:
            first = err
        log.info("%s answer rejected, asking for a correction: %s", self.name, first)
        messages += [
            {"role": "assistant", "content": reply.text.strip() or "(empty answer)"},
            {"role": "user", "content": correction_message(context.workspace, _explain(first, reply))},
        ]
        second = self._send(prompt.system, messages)
        try:
            return self._proposal(second, context.train_py, reply.usage + second.usage)
        except EditError as err:
            raise ProposalError(
                f"{self.name} ({self.model}) gave no usable answer, even after a correction. "
                f"First answer: {first}{_said(reply)}. Corrected answer: {_explain(err, second)}{_said(second)}",
                usage=reply.usage + second.usage,
            ) from None

    def _send(self, system: str, messages: list[Message]) -> Reply:
        """One API call (the SDK retries inside it). Raises ProposalError when it fails."""
        raise NotImplementedError

    def _ping(self) -> None:
        """A 1-token request, once, with PREFLIGHT_TIMEOUT_S. Raises ProposalError when it fails."""
        raise NotImplementedError

    def preflight(self, workspace: Path) -> list[str]:
        """Ask for one token: a fatal ProposalError for a rejected key or an unknown model, else a warning
        for whatever may pass (the server is not up yet, rate limits, server errors)."""
        try:
            self._ping()
        except ProposalError as err:
            if err.fatal:
                raise ProposalError(
                    f"the {self.name} agent cannot work with model {self.model!r}: {err.args[0]}",
                    hint=err.hint,
                    fatal=True,
                ) from None
            return [f"the {self.name} agent's first request failed ({err.args[0]}); going on, it will be retried"]
        return []

    @staticmethod
    def _proposal(reply: Reply, train_py: str, usage: Usage) -> Proposal:
        answer = parse_answer(strip_thinking(reply.text, reply.truncated), train_py)
        return Proposal(answer.hypothesis, answer.source, usage)


def api_key(agent: str, key_envs: tuple[str, ...], url_env: str, url_example: str) -> str | None:
    """The key to give the SDK: None when one of `key_envs` is set (the SDK reads it itself), the
    placeholder for a keyless server at `url_env`; ConfigError when there is neither."""
    if any(os.environ.get(name) for name in key_envs):
        return None
    if os.environ.get(url_env):
        return PLACEHOLDER_KEY
    raise ConfigError(
        f"the {agent} agent needs an API key and {key_envs[0]} is not set",
        hint=f"export {key_envs[0]}=...  (or {url_env}={url_example} for a server that needs no key)",
    )


def strip_thinking(text: str, cut_off: bool = False) -> str:
    """The answer without `<think>...</think>` sections, which some local reasoning models put in the text; and
    without one left open where the model stopped at its token limit (`cut_off`) or began its answer with it: a draft
    there is no answer. (An answer that only names the tag keeps all its text.)"""
    text = _THINKING.sub("", text)
    if cut_off or re.match(r"\s*<think(?:ing)?>", text, re.IGNORECASE):
        text = _OPEN_THINKING.sub("", text)
    return text


def not_an_answer(provider: str, err: Exception, *, url_env: str, base_url: str) -> ProposalError:
    """The ProposalError for a 200 that is no API answer (NOT_AN_ANSWER): a proxy or captive portal's page, a body cut
    short, a compatible server's JSON of another shape."""
    return ProposalError(
        f"{provider} at {base_url} answered with no API response ({type(err).__name__}: {err})",
        hint=f"check {url_env}: it must name the API itself, not a proxy's or web UI's page",
    )


def api_error(
    provider: str, err: Exception, *, key_env: str, url_env: str, base_url: str, retries: int
) -> ProposalError:
    """A ProposalError that says what failed, for an SDK exception that survived the SDK's retries."""
    status = getattr(err, "status_code", None)
    detail = _detail(err)
    after = f" after {retries} retries" if retries else ""
    if status == 401:
        return ProposalError(
            f"{provider} rejected the API key (HTTP 401): {detail}", hint=f"check {key_env}", fatal=True
        )
    if status == 403:
        return ProposalError(
            f"{provider} refused the request (HTTP 403): {detail}",
            hint=f"check that {key_env} may use this model",
            fatal=True,
        )
    if status == 404:
        return ProposalError(
            f"{provider} answered 404 at {base_url}: {detail}", hint=f"check the model name and {url_env}", fatal=True
        )
    if status == 429:
        return ProposalError(
            f"{provider} kept rate-limiting (HTTP 429){after}: {detail}",
            hint="wait, or raise the account's rate limit",
        )
    if status is not None and status >= 500:
        return ProposalError(f"{provider} server error (HTTP {status}){after}: {detail}")
    if status in (400, 422) and too_long(err):  # 422: text-generation-inference's
        return ContextTooLong(
            f"{provider} refused the prompt as longer than the model's context (HTTP {status}): {detail}",
            hint="shorten program.md; or show the model less: a prompts/task.md of your own without {{diffs}} (the "
            "recent diffs), from the shipped agents/prompts/task.md; or use a model, or a server setting (vLLM's "
            "--max-model-len, llama.cpp's -c, Ollama's num_ctx, text-generation-inference's --max-input-tokens and "
            "--max-total-tokens), with a longer context",
        )
    if status is not None:
        return ProposalError(f"{provider} rejected the request (HTTP {status}): {detail}")
    if type(err).__name__ in ANSWER_ERRORS:  # whole_request_client's: the server was reached
        return ProposalError(
            f"{provider} at {base_url} gave {detail}", hint=f"check that the server {url_env} names is up and not stuck"
        )
    if "timeout" in type(err).__name__.lower() or "connection" in type(err).__name__.lower():
        return ProposalError(
            f"could not reach {provider} at {base_url} ({detail}){after}",
            hint=f"check the network and {url_env}",
        )
    return ProposalError(f"{provider} client error: {type(err).__name__}: {detail}")


def too_long(err: Exception) -> bool:
    """Whether an SDK's 400 (or 422) says the prompt does not fit the model's context: OpenAI's code
    `context_length_exceeded`, Anthropic's `invalid_request_error` "prompt is too long", vLLM's "maximum context
    length", llama.cpp's `exceed_context_size_error`, SGLang's, LM Studio's and text-generation-inference's words
    (`_TOO_LONG_WORDS`), the message in an error object or alone. Nothing else: a 400 for another reason fails as
    before."""
    body = getattr(err, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(inner, str):  # `{"error": "<message>"}` (LM Studio's), whose "error" the OpenAI SDK gives alone
        inner = {"message": inner}
    if not isinstance(inner, dict):
        return False
    if inner.get("code") == "context_length_exceeded" or inner.get("type") in _TOO_LONG_TYPES:
        return True
    return any(words in str(inner.get("message") or "").lower() for words in _TOO_LONG_WORDS)


def _too_long(err: ContextTooLong, context: Context, prompt: Prompt) -> ProposalError:
    """`err` with the prompt's size, fatal where the prompt had nothing that goes by itself (the module's docstring)."""
    chars = len(prompt.system) + len(prompt.task)
    size = f"the prompt: {chars:,} characters, about {chars // 4:,} tokens; program.md {len(context.program):,}, "
    size += f"train.py {len(context.train_py):,}"
    shown = {"a crash log": context.last_crash, "experiments in flight": context.in_flight}
    passing = [what for what, there in shown.items() if there]
    if passing:
        size += f"; it showed {' and '.join(passing)}, which a later prompt may not: that one may fit"
    return ProposalError(f"{err.args[0]} ({size})", hint=err.hint, usage=err.usage, fatal=not passing)


def _detail(err: Exception) -> str:
    """The API's own error message if the body has one, else the exception's text."""
    body = getattr(err, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(inner, dict) and inner.get("message"):
        text = str(inner["message"])
    elif isinstance(inner, str) and inner.strip():  # `{"error": "<message>"}` (LM Studio's, TGI's): the SDK gives it
        # alone; and a body that is no JSON at all (nginx's 413 page, a proxy's HTML) as it came: on one line, and
        # not whole (red team: a page's six lines, or its 340 kB, went into the verdict line, the ledger and the log)
        text = " ".join(inner.split())
    else:
        text = str(getattr(err, "message", None) or err)
    return text if len(text) <= MAX_DETAIL_CHARS else f"{text[:MAX_DETAIL_CHARS]}... ({len(text):,} characters)"


MAX_DETAIL_CHARS = 500  # of an error's body quoted in a ProposalError: a message, or the start of a page


def _said(reply: Reply) -> str:
    """What an answer with no SEARCH/REPLACE block said, its start on one line (SAID_CHARS at most), for the ledger's
    reason: a refusal, a question or an explanation shows as itself, not only as "no `Hypothesis:` line". Nothing for
    an answer with blocks: the error says what was wrong with them."""
    text = strip_thinking(reply.text, reply.truncated)
    if any(line.rstrip() == SEARCH for line in text.splitlines()):
        return ""
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    if not text:
        return " (the answer was empty)"
    return f' (it said: "{text if len(text) <= SAID_CHARS else text[: SAID_CHARS - 3] + "..."}")'


def _explain(err: EditError, reply: Reply) -> str:
    if reply.truncated:
        return (
            f"{err}\n(The answer was cut off at the output-token limit: write a shorter answer, with fewer or "
            "smaller blocks.)"
        )
    return str(err)
