"""Codex CLI (`codex`, @openai/codex on npm) in exec mode against an OpenAI Responses API, one prompt per proposal.

Flags, checked against codex-cli 0.171.0's `codex exec --help`: the prompt on stdin (`-`); `--json` (events on
stdout, one a line: the agent's messages, `turn.completed` with token usage, `turn.failed` and `error`);
`--ephemeral` (no session files); `--ignore-user-config` and `--ignore-rules` (the user's config.toml and
exec-policy rules do not change what runs); `--sandbox workspace-write` (its commands may write the workspace,
not .git, and reach no network), or `danger-full-access` where the preflight found that sandbox unable to run
`true` (coding_agent.py). The model provider is given in full with `-c`: the Responses API at
OPENAI_BASE_URL (default api.openai.com) with the key in OPENAI_API_KEY. Its home (CODEX_HOME: logs, state
databases) is the workspace's private state; analytics, the update check, web search and the features that
reach OpenAI's or GitHub's servers by themselves (`OFF`) are off.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from autoresearch.agents.base import Usage
from autoresearch.agents.coding_agent import Turn, json_object, key_or_placeholder
from autoresearch.agents.llm import usage_for
from autoresearch.files import make_folder

DEFAULT_BASE_URL = "https://api.openai.com/v1"
PROVIDER = "autoresearch"
SANDBOX = "workspace-write"  # its commands may write the workspace, not .git, and reach no network (bubblewrap)
# Features (`codex features list`) that reach github.com, api.github.com or chatgpt.com at start-up, whatever the
# provider: the plugin marketplace, remote plugins, apps, model discovery and in-app updates. Found by running
# codex 0.171.0 behind a proxy that records every request (tests/netns.py).
OFF = ("plugins", "remote_plugin", "apps", "api_key_model_discovery", "in_app_updates")
# How codex 0.171.0 ends a turn whose request the server refused: `turn.failed` with "unexpected status 401
# Unauthorized: <the server's message>, url: <base URL>/responses" (tests/test_agent_failures_stop76.py).
_REJECTED = re.compile(r"unexpected status (401|403)\b")


class Codex:
    name = "codex"
    program = "codex"
    install = "install it with: npm install -g @openai/codex"
    default_model = "gpt-5-mini"
    key_env = "OPENAI_API_KEY"
    url_envs = ("OPENAI_BASE_URL",)
    default_url = DEFAULT_BASE_URL
    api = "openai"

    def __init__(self) -> None:
        self.sandbox = SANDBOX

    def missing(self, environ: Mapping[str, str]) -> str | None:
        if key_or_placeholder(environ, self.key_env, self.url_envs) is None:
            return (
                "neither OPENAI_API_KEY nor OPENAI_BASE_URL is set (export OPENAI_API_KEY=..., or "
                "OPENAI_BASE_URL for a server that speaks the Responses API)"
            )
        return None

    def command(self, program: str, model: str, workspace: Path, state: Path, prompt_file: Path) -> list[str]:
        base_url = _base_url()
        provider = f"model_providers.{PROVIDER}"
        return [
            program,
            "exec",
            "--json",
            "--ephemeral",
            "--ignore-user-config",
            "--ignore-rules",
            "--color", "never",
            "--sandbox", self.sandbox,
            "--model", model,
            "-c", f"model_provider={json.dumps(PROVIDER)}",
            "-c", f"{provider}.name={json.dumps('autoresearch: OpenAI Responses API')}",
            "-c", f"{provider}.base_url={json.dumps(base_url)}",
            "-c", f"{provider}.env_key={json.dumps('OPENAI_API_KEY')}",
            "-c", f"{provider}.wire_api={json.dumps('responses')}",
            "-c", "analytics.enabled=false",
            "-c", "check_for_update_on_startup=false",
            "-c", 'web_search="disabled"',
            *(word for feature in OFF for word in ("--disable", feature)),
            "-",
        ]  # fmt: skip

    def environment(self, environ: Mapping[str, str], state: Path) -> dict[str, str]:
        env = dict(environ)
        env["OPENAI_API_KEY"] = key_or_placeholder(environ, self.key_env, self.url_envs) or ""
        env["CODEX_HOME"] = str(state / "home")
        # Codex puts its sandbox helpers in CODEX_HOME, but not under the temporary directory (a workspace
        # in /tmp): its temporary directory is its own, so that the home never lies inside it.
        env["TMPDIR"] = str(state / "tmp")
        for folder in ("home", "tmp"):
            make_folder(state / folder, state)  # a link the agent left there is not followed
        return env

    def sandbox_check(self, program: str, home: Path) -> list[str] | None:
        if self.sandbox != SANDBOX:  # dropped already
            return None
        # `codex sandbox` has no --ignore-user-config: an empty home, not CODEX_HOME, whose config.toml the agent writes
        mode = f"sandbox_mode={json.dumps(SANDBOX)}"
        return ["env", f"CODEX_HOME={home}", program, "sandbox", "-c", mode, "--", "true"]

    def own_settings(self, environ: Mapping[str, str], workspace: Path) -> list[str]:
        return []  # --ignore-user-config; its CODEX_HOME is the loop's

    def drop_sandbox(self) -> None:
        self.sandbox = "danger-full-access"

    def read(self, model: str, stdout: str, stderr: str, state: Path) -> Turn:
        messages, errors = [], []
        sent = received = 0
        rejected: int | None = None
        for line in stdout.splitlines():
            event = json_object(line)
            kind = event.get("type")
            item = event.get("item") or {}
            if kind == "item.completed" and item.get("type") == "agent_message":
                messages.append(str(item.get("text") or ""))
            elif kind == "turn.completed":
                usage = event.get("usage") or {}
                sent += int(usage.get("input_tokens") or 0)  # cached input is part of it
                received += int(usage.get("output_tokens") or 0)
            elif kind == "turn.failed":
                errors.append(str((event.get("error") or {}).get("message") or "the turn failed"))
                if status := _REJECTED.match(errors[-1]):  # Codex's own words for the status its request got
                    rejected = int(status[1])
            elif kind == "error":
                errors.append(str(event.get("message") or "error"))
        usage = usage_for(model, sent, received) if sent or received else Usage()
        return Turn(messages[-1] if messages else "", usage, "\n".join(errors) or None, rejected)


def _base_url() -> str:
    return os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
