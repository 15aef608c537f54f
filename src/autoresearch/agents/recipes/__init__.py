"""Tested recipes for the coding agents users run: aider, Claude Code and Codex (see coding_agent.py)."""

from __future__ import annotations

from autoresearch.agents.coding_agent import Recipe

NAMES = ("aider", "claude-code", "codex")


def recipe(name: str) -> Recipe:
    """The recipe for `name`, one of NAMES (KeyError otherwise)."""
    if name == "aider":
        from autoresearch.agents.recipes.aider import Aider

        return Aider()
    if name == "claude-code":
        from autoresearch.agents.recipes.claude_code import ClaudeCode

        return ClaudeCode()
    if name == "codex":
        from autoresearch.agents.recipes.codex import Codex

        return Codex()
    raise KeyError(name)
