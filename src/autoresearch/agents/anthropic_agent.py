"""The `anthropic` agent: Claude through the official SDK's Messages API.

The key comes from ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN), the endpoint from ANTHROPIC_BASE_URL; the
SDK reads both itself. With a base URL and no key (a compatible local server), a placeholder key is sent.
"""

from __future__ import annotations

import anthropic

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

KEY_ENV, URL_ENV = "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"
MAX_TOKENS = 16_000  # the longest answer: a hypothesis and edits, with room for a rewrite of a large part


class AnthropicAgent(LLMAgent):
    name = "anthropic"

    def __init__(self, model: str, client: anthropic.Anthropic | None = None, max_tokens: int = MAX_TOKENS):
        """`client` defaults to one configured from the environment (`make_client`)."""
        self.model = model
        self.max_tokens = max_tokens
        self.client = client if client is not None else make_client()

    def _send(self, system: str, messages: list[Message]) -> Reply:
        try:
            message = self.client.messages.create(
                model=self.model, max_tokens=self.max_tokens, system=system, messages=messages
            )
            return self._reply(message)
        except anthropic.AnthropicError as err:
            raise self._error(err, self.client.max_retries) from err
        except NOT_AN_ANSWER as err:
            raise self._not_an_answer(err) from err

    def _reply(self, message: anthropic.types.Message) -> Reply:
        text = "".join(block.text for block in message.content if block.type == "text")
        usage = message.usage  # a compatible server may leave it out, or some of its counts
        counts = (usage.input_tokens, usage.cache_creation_input_tokens, usage.cache_read_input_tokens) if usage else ()
        inputs = sum(count or 0 for count in counts)
        outputs = (usage.output_tokens or 0) if usage else 0
        return Reply(text, usage_for(self.model, inputs, outputs), message.stop_reason == "max_tokens")

    def _ping(self) -> None:
        quick = self.client.with_options(
            max_retries=0, timeout=anthropic.Timeout(PREFLIGHT_TIMEOUT_S, connect=PREFLIGHT_CONNECT_TIMEOUT_S)
        )
        try:
            self._reply(
                quick.messages.create(model=self.model, max_tokens=1, messages=[{"role": "user", "content": "ping"}])
            )
        except anthropic.AnthropicError as err:
            raise self._error(err, 0) from err
        except NOT_AN_ANSWER as err:
            raise self._not_an_answer(err) from err

    def _error(self, err: anthropic.AnthropicError, retries: int) -> ProposalError:
        return api_error(
            "Anthropic", err, key_env=KEY_ENV, url_env=URL_ENV, base_url=str(self.client.base_url), retries=retries
        )

    def _not_an_answer(self, err: Exception) -> ProposalError:
        return not_an_answer("Anthropic", err, url_env=URL_ENV, base_url=str(self.client.base_url))


def make_client() -> anthropic.Anthropic:
    """A client with the SDK's own retries and timeout set; ConfigError if there is neither key nor base URL."""
    key = api_key("anthropic", (KEY_ENV, "ANTHROPIC_AUTH_TOKEN"), URL_ENV, "...")
    return anthropic.Anthropic(
        api_key=key,  # None: the SDK reads the environment
        max_retries=MAX_RETRIES,
        timeout=anthropic.Timeout(TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        http_client=whole_request_client(anthropic.DefaultHttpxClient, anthropic.AnthropicError),
    )
