"""Claude Code (`claude`, @anthropic-ai/claude-code on npm) in print mode, one prompt per proposal.

Flags, checked against Claude Code 2.1.332's `--help`: `-p` with the prompt on stdin; `--output-format json`
(one result object: the final message, `usage`, `total_cost_usd`, `is_error`); `--bare` (no hooks, plugins,
CLAUDE.md discovery, attribution or background prefetches; the key is ANTHROPIC_API_KEY, never a login);
`--no-session-persistence` (no transcript saved); the tools to read and edit files and a shell, allowed
without asking (`--allowedTools`: in print mode nobody answers a permission prompt). Its configuration and
caches go to the workspace's private state (CLAUDE_CONFIG_DIR); telemetry, error reporting, the auto-updater
and every other non-essential request are switched off by Claude Code's own variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from autoresearch.agents.base import Usage
from autoresearch.agents.coding_agent import Turn, json_object, key_or_placeholder

TOOLS = "Read,Edit,Bash"  # --bare offers no Write tool; a shell creates files
QUIET = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",  # implies the three below; each is set for older releases
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
}


class ClaudeCode:
    name = "claude-code"
    program = "claude"
    install = "install it with: npm install -g @anthropic-ai/claude-code"
    default_model = "claude-sonnet-4-6"
    key_env = "ANTHROPIC_API_KEY"
    url_envs = ("ANTHROPIC_BASE_URL",)
    default_url = "https://api.anthropic.com"
    api = "anthropic"

    def missing(self, environ: Mapping[str, str]) -> str | None:
        if key_or_placeholder(environ, self.key_env, self.url_envs) is None:
            return (
                "ANTHROPIC_API_KEY is not set (export ANTHROPIC_API_KEY=..., or ANTHROPIC_BASE_URL for a "
                "compatible server)"
            )
        return None

    def command(self, program: str, model: str, workspace: Path, state: Path, prompt_file: Path) -> list[str]:
        return [
            program,
            "-p",
            "--bare",
            "--output-format", "json",
            "--no-session-persistence",
            "--model", model,
            "--tools", TOOLS,
            "--allowedTools", TOOLS,
            "--permission-mode", "acceptEdits",
        ]  # fmt: skip

    def environment(self, environ: Mapping[str, str], state: Path) -> dict[str, str]:
        env = {**environ, **QUIET}
        env["ANTHROPIC_API_KEY"] = key_or_placeholder(environ, self.key_env, self.url_envs) or ""
        env["CLAUDE_CONFIG_DIR"] = str(state / "config")
        return env

    def sandbox_check(self, program: str, home: Path) -> None:
        return None  # it has no sandbox of its own (the loop's namespaces confine it)

    def own_settings(self, environ: Mapping[str, str], workspace: Path) -> list[str]:
        return []  # --bare: no settings files, the key is ANTHROPIC_API_KEY

    def drop_sandbox(self) -> None:
        pass

    def read(self, model: str, stdout: str, stderr: str, state: Path) -> Turn:
        result = _last_json(stdout)
        if result is None:
            return Turn("", error=None)
        usage = result.get("usage") or {}
        sent = sum(
            int(usage.get(k) or 0) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        )
        cost = result.get("total_cost_usd")
        turn_usage = Usage(sent, int(usage.get("output_tokens") or 0), float(cost) if cost is not None else None)
        text = str(result.get("result") or "")
        error = text or str(result.get("subtype")) if result.get("is_error") else None
        status = result.get("api_error_status")  # the status of the request that ended the turn, as Claude Code saw it
        rejected = status if error and type(status) is int and status in (401, 403) else None
        return Turn(text, turn_usage, error, rejected)


def _last_json(stdout: str) -> dict | None:
    """The result object: the last line of stdout that parses as a JSON object."""
    return next((value for line in reversed(stdout.strip().splitlines()) if (value := json_object(line))), None)
