"""aider (aider-chat on PyPI) against any OpenAI-compatible API, one message per proposal.

Flags, checked against aider 0.86.2's `--help`: no git at all (`--no-git`: it neither commits, nor writes its
identity into .git/config, nor adds `.aider*` to .gitignore), `--yes-always` with `--message-file` (one
message, then exit), SEARCH/REPLACE edits (`--edit-format diff`: what a local model handles best; "whole"
would send train.py back in full), no repo map (`--map-tokens 0`: one file, and no tags cache), no update
check, no release notes, no analytics (`--no-analytics` asks nothing and sends nothing; `--analytics-disable`
would also write to ~/.aider), its chat and input history under the workspace's private state.

aider asks the internet for a model price list unless the model is in a `--model-metadata-file`, and
litellm fetches its own unless LITELLM_LOCAL_MODEL_COST_MAP is set: both are cut off here. Tokens are read
from its analytics log (`--analytics-log`: a local file, written even with analytics off), whose
`message_send` events hold exact prompt and completion token counts; its printed "Tokens: 2.3k sent"
is rounded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from autoresearch.agents.base import Usage
from autoresearch.agents.coding_agent import Turn, base_url, json_object, key_or_placeholder
from autoresearch.agents.command_agent import MAX_OUTPUT_BYTES
from autoresearch.agents.llm import usage_for
from autoresearch.files import read_regular, write_text_atomic

CONTEXT_TOKENS = 128_000  # what aider is told of an unknown model: enough for train.py and the prompt
OUTPUT_TOKENS = 16_384
URLS = ("OPENAI_API_BASE", "OPENAI_BASE_URL")  # aider's name, then the OpenAI SDK's: the first set is given as both
# What aider 0.86.2 prints when the server answers 401: "litellm.AuthenticationError: AuthenticationError:
# OpenAIException - <the server's message>", then its advice. A 403 is a plain litellm.APIError, as a 500 is.
_REJECTED = "litellm.AuthenticationError:"
# Where aider 0.86.2 takes settings from beside its command line: .env files in the home and the working directory,
# loaded over the environment (`load_dotenv(override=True)`), and .aider.conf.yml there; and its AIDER_ variables. Those
# that name a key or a base URL (the words here) may send another key to another server than the recipe's variables
# (`own_settings`). Its --no-git: no git root is searched.
OWN_FILES = {".env": ("OPENAI_", "AIDER_"), ".aider.conf.yml": ("openai-api", "api-key", "set-env")}
OWN_VARIABLES = ("AIDER_OPENAI_API_KEY", "AIDER_OPENAI_API_BASE", "AIDER_API_KEY", "AIDER_SET_ENV")
SETTINGS_BYTES = 1_000_000


class Aider:
    name = "aider"
    program = "aider"
    install = "install it apart from autoresearch (its dependencies are pinned): pipx install aider-chat"
    default_model = "gpt-5-mini"
    key_env = "OPENAI_API_KEY"
    url_envs = URLS
    default_url = "https://api.openai.com/v1"  # litellm's, for openai/<model>
    api = "openai"

    def missing(self, environ: Mapping[str, str]) -> str | None:
        if key_or_placeholder(environ, self.key_env, self.url_envs) is None:
            return (
                "neither OPENAI_API_KEY nor OPENAI_BASE_URL is set (export OPENAI_API_KEY=..., or "
                "OPENAI_BASE_URL=http://localhost:11434/v1 for a local server)"
            )
        return None

    def command(self, program: str, model: str, workspace: Path, state: Path, prompt_file: Path) -> list[str]:
        metadata = state / "model-metadata.json"
        write_text_atomic(metadata, json.dumps({_litellm_name(model): _metadata()}))  # not through a link it left
        (state / "analytics.jsonl").unlink(missing_ok=True)  # this run's tokens only
        return [
            program,
            "--model", _litellm_name(model),
            "--weak-model", _litellm_name(model),  # one model, the one in the metadata file: nothing to look up
            "--editor-model", _litellm_name(model),
            "--edit-format", "diff",
            "--no-git",
            "--no-auto-commits",
            "--yes-always",
            "--no-check-update",
            "--no-show-release-notes",
            "--no-analytics",
            "--analytics-log", str(state / "analytics.jsonl"),
            "--no-show-model-warnings",
            "--model-metadata-file", str(metadata),
            "--map-tokens", "0",
            "--no-stream",
            "--no-pretty",
            "--no-fancy-input",
            "--no-detect-urls",
            "--no-suggest-shell-commands",
            "--input-history-file", str(state / "input.history"),
            "--chat-history-file", str(state / "chat.history.md"),
            "--no-restore-chat-history",
            "--encoding", "utf-8",
            "--message-file", str(prompt_file),
            "train.py",
        ]  # fmt: skip

    def environment(self, environ: Mapping[str, str], state: Path) -> dict[str, str]:
        env = dict(environ)
        env["OPENAI_API_KEY"] = key_or_placeholder(environ, self.key_env, self.url_envs) or ""
        if base := base_url(environ, self.url_envs):
            # Both: litellm reads OPENAI_BASE_URL first (then OPENAI_API_BASE). With both set apart, aider talked to
            # OPENAI_BASE_URL's server, and the preflight sent the key to OPENAI_API_BASE's, one aider never asked.
            env["OPENAI_API_BASE"] = env["OPENAI_BASE_URL"] = base
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # litellm's price list from its package, not the internet
        env["COLUMNS"] = "1000"  # without a terminal aider wraps its output at 80 columns
        return env

    def own_settings(self, environ: Mapping[str, str], workspace: Path) -> list[str]:
        home = Path(environ.get("HOME") or Path.home())
        found = [f"${name}" for name in OWN_VARIABLES if environ.get(name)]
        for folder, shown in ((home, "~/"), (workspace, "the workspace's ")):
            for name, words in OWN_FILES.items():
                try:
                    text = read_regular(folder / name, SETTINGS_BYTES, follow=True).decode(errors="replace")
                except (OSError, ValueError):  # none, or no file (a link is followed, as aider follows it)
                    continue
                if any(word in text for word in words):
                    found.append(f"{shown}{name}")
        return found

    def sandbox_check(self, program: str, home: Path) -> None:
        return None  # it has no sandbox of its own (the loop's namespaces confine it)

    def drop_sandbox(self) -> None:
        pass

    def read(self, model: str, stdout: str, stderr: str, state: Path) -> Turn:
        sent = received = answers = 0
        try:  # the agent's to write: not a FIFO (a read would wait for ever), nor without end
            log = read_regular(state / "analytics.jsonl", MAX_OUTPUT_BYTES).decode(errors="replace")
        except (OSError, ValueError):
            log = ""
        for line in log.splitlines():
            event = json_object(line)
            if event.get("event") == "message_send":  # logged for each answer aider received, and only then
                answers += 1
                properties = event.get("properties") or {}
                sent += int(properties.get("prompt_tokens") or 0)
                received += int(properties.get("completion_tokens") or 0)
        usage = usage_for(model.removeprefix("openai/"), sent, received) if sent or received else Usage()
        # litellm's exception for a 401, printed by aider at the start of a line, on a turn no answer reached. Told by
        # the answers logged, not by their tokens: a server that reports no usage (litellm counts it 0) answered too,
        # and the model's words printed at the start of a line stopped the loop as a rejected key.
        refused = [line.strip() for line in stdout.splitlines() if line.startswith(_REJECTED)]
        if refused and not answers:
            return Turn(stdout, usage, refused[-1], 401)
        return Turn(stdout, usage)


def _litellm_name(model: str) -> str:
    """litellm routes `openai/<name>` to the OpenAI-compatible API at OPENAI_API_BASE."""
    return model if model.startswith("openai/") else f"openai/{model}"


def _metadata() -> dict:
    return {
        "max_input_tokens": CONTEXT_TOKENS,
        "max_output_tokens": OUTPUT_TOKENS,
        "max_tokens": OUTPUT_TOKENS,
        "input_cost_per_token": 0.0,  # autoresearch prices the tokens itself (agents/llm.py's table)
        "output_cost_per_token": 0.0,
        "litellm_provider": "openai",
        "mode": "chat",
    }
