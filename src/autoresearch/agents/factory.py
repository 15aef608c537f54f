"""Agents by name, for the command line."""

from __future__ import annotations

from autoresearch.agents.base import Agent
from autoresearch.errors import ConfigError

AGENTS = ("tune", "anthropic", "openai", "command", "aider", "claude-code", "codex")
DEFAULT_MODELS = {"anthropic": "claude-sonnet-4-6", "openai": "gpt-5-mini"}


def make_agent(name: str, model: str | None = None, command: str | None = None) -> Agent:
    if name == "tune":
        from autoresearch.agents.tune import TuneAgent

        return TuneAgent()
    if name == "anthropic":
        from autoresearch.agents.anthropic_agent import AnthropicAgent

        return AnthropicAgent(model or DEFAULT_MODELS["anthropic"])
    if name == "openai":
        from autoresearch.agents.openai_agent import OpenAIAgent

        return OpenAIAgent(model or DEFAULT_MODELS["openai"])
    if name == "command":
        if not command:
            raise ConfigError("--agent command needs --command CMD", hint='e.g. --command "claude -p"')
        from autoresearch.agents.command_agent import CommandAgent

        return CommandAgent(command)
    from autoresearch.agents.recipes import NAMES, recipe

    if name in NAMES:
        from autoresearch.agents.coding_agent import CodingAgent

        return CodingAgent(recipe(name), model)
    raise ConfigError(
        f"unknown agent {name!r}",
        hint=f"choose one of: {', '.join(AGENTS)}; or, for `run`, queue (what `submit` queues)",
    )
