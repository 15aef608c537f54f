"""The `openai` agent: Chat Completions through the official SDK, for OpenAI or any compatible server
(vLLM, Ollama, llama.cpp, LM Studio).

The key comes from OPENAI_API_KEY, the endpoint from OPENAI_BASE_URL (e.g. http://localhost:11434/v1); the
SDK reads both itself. With a base URL and no key (a local server), a placeholder key is sent.
"""

from __future__ import annotations

import openai

from autoresearch.agents.base import ProposalError
from autoresearch.agents.http_client import whole_request_client
from autoresearch.agents.llm import (
    CONNECT_TIMEOUT_S,
    MAX_RETRIES,
    NOT_AN_ANSWER,
    PREFLIGHT_CONNECT_TIMEOUT_S,
    PREFLIGHT_TIMEOUT_S,
    TIMEOUT_S,
    LLMAgent,
    Message,
    Reply,
    api_error,
    api_key,
    not_an_answer,
    usage_for,
)

KEY_ENV, URL_ENV = "OPENAI_API_KEY", "OPENAI_BASE_URL"


class OpenAIAgent(LLMAgent):
    name = "openai"

    def __init__(self, model: str, client: openai.OpenAI | None = None, max_tokens: int | None = None):
        """`client` defaults to one configured from the environment (`make_client`). `max_tokens`, if given,
        is sent as `max_completion_tokens`; by default the server's own limit applies."""
        self.model = model
        self.max_tokens = max_tokens
        self.client = client if client is not None else make_client()

    def _send(self, system: str, messages: list[Message]) -> Reply:
        limit = {"max_completion_tokens": self.max_tokens} if self.max_tokens else {}
        try:
            completion = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "system", "content": system}, *messages], **limit
            )
            return self._reply(completion)
        except openai.OpenAIError as err:
            raise self._error(err, self.client.max_retries) from err
        except NOT_AN_ANSWER as err:
            raise self._not_an_answer(err) from err

    def _reply(self, completion: openai.types.chat.ChatCompletion) -> Reply:
        choice = completion.choices[0] if completion.choices else None
        text = _text(choice.message.content) if choice and choice.message else ""
        usage = completion.usage  # some local servers leave it out, or its counts
        tokens = (usage.prompt_tokens or 0, usage.completion_tokens or 0) if usage else (0, 0)
        truncated = choice is not None and choice.finish_reason == "length"
        return Reply(text, usage_for(self.model, *tokens), truncated)

    def _ping(self) -> None:
        quick = self.client.with_options(
            max_retries=0, timeout=openai.Timeout(PREFLIGHT_TIMEOUT_S, connect=PREFLIGHT_CONNECT_TIMEOUT_S)
        )
        try:
            self._reply(
                quick.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": "ping"}], max_completion_tokens=1
                )
            )
        except openai.OpenAIError as err:
            raise self._error(err, 0) from err
        except NOT_AN_ANSWER as err:
            raise self._not_an_answer(err) from err

    def _error(self, err: openai.OpenAIError, retries: int) -> ProposalError:
        return api_error(
            "OpenAI API", err, key_env=KEY_ENV, url_env=URL_ENV, base_url=str(self.client.base_url), retries=retries
        )

    def _not_an_answer(self, err: Exception) -> ProposalError:
        return not_an_answer("OpenAI API", err, url_env=URL_ENV, base_url=str(self.client.base_url))


def _text(content: object) -> str:
    """A message's text: a string, or (some compatible servers) a list of content parts; anything else none."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, {"type": "reasoning", ...}]
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def make_client() -> openai.OpenAI:
    """A client with the SDK's own retries and timeout set; ConfigError if there is neither key nor base URL."""
    key = api_key("openai", (KEY_ENV,), URL_ENV, "http://host:port/v1")
    return openai.OpenAI(
        api_key=key,  # None: the SDK reads the environment
        max_retries=MAX_RETRIES,
        timeout=openai.Timeout(TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        http_client=whole_request_client(openai.DefaultHttpxClient, openai.OpenAIError),
    )
