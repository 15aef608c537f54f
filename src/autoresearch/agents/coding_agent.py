"""A coding agent run from a recipe: aider, Claude Code or Codex, each non-interactive, as it ships.

A `Recipe` knows one program: the command line that runs it once in the workspace without git of its own,
without update checks or telemetry, with its history and caches under `.autoresearch/agents/<name>/`; the
environment it needs (keys, base URL); and how to read back what it said (its final message, the tokens it
used, an API error it reported). `CodingAgent` runs a recipe through the command agent's machinery (its own
process group, a timeout, the prompt on stdin and in `.autoresearch/prompt.md`), takes train.py as the agent
left it, and reads the description from the `Hypothesis:` line the prompt asks for. What else the agent did
in the workspace (commits, staged files, its own files) is for the loop to put back (loop/watch.py).

A turn whose program reports that the model server rejected its key (HTTP 401, or 403: the key may not use the model)
stops the loop, as the API agents stop (agents/llm.py): every later turn would fail the same way, and the loop's
back-off would ask again all night at up to 15 min apart. Only the program's own report of the server's status counts
(`Turn.rejected_key`, read by each recipe): Claude Code's `api_error_status` in its result object, Codex's
`turn.failed` event, whose message begins `unexpected status 401`, and aider's `litellm.AuthenticationError` (litellm's
name for a 401) on a turn that sent no request the server answered. Never words in the model's answer or a command's
output: a false stop would lose a night. aider's 403 is a `litellm.APIError` like a 500, with no status: it is not
told apart, and stays a failure that is retried. (A turn could forge such a report, from the agent's own commands; it
could already stop the loop as surely by exiting 127.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from autoresearch.agents import fence
from autoresearch.agents.base import Context, Proposal, ProposalError, Usage
from autoresearch.agents.command_agent import (
    LAST_LINES_CHARS,
    NOT_RUNNABLE,
    STDERR_TAIL_CHARS,
    TIMEOUT_S,
    checked_source,
    output_tail,
    run_process,
    tail,
    write_prompt,
)
from autoresearch.agents.namespace import AGENT_FILES
from autoresearch.agents.prompt import build_prompt
from autoresearch.files import make_folder

DESCRIPTION_CHARS = 300
SANDBOX_CHECK_S = 30.0  # `true` in the agent's own sandbox takes ~0.2 s
_HYPOTHESIS = re.compile(r"^[\s>*_#`-]*hypothesis[*_`]*\s*:[*_`]*\s*(.+?)[*_`\s]*$", re.IGNORECASE)


@dataclass(frozen=True)
class Turn:
    """What one run of a coding agent reported."""

    text: str  # its final message (aider: all it printed)
    usage: Usage = field(default_factory=Usage)
    error: str | None = None  # an API failure it reported, even if it exited 0
    rejected_key: int | None = None  # 401 or 403: its own report that the model server refused its key


class Recipe(Protocol):
    name: str  # the agent's name on the command line: "aider", "claude-code", "codex"
    program: str  # the executable looked up on PATH
    install: str  # how to install it, for the error when it is missing
    default_model: str
    key_env: str  # the variable its key is read from: what to check when the server rejects it
    url_envs: tuple[str, ...]  # the variables its base URL is read from, first the one it reads first
    default_url: str  # its server where none of them is set
    api: str  # "anthropic" or "openai": how it sends the key (agents/key_check.py)

    def missing(self, environ: Mapping[str, str]) -> str | None:
        """What the agent lacks to reach a model (a key or a base URL), as a sentence; None if nothing."""

    def command(self, program: str, model: str, workspace: Path, state: Path, prompt_file: Path) -> list[str]:
        """The argv that runs the agent once; `program` is its resolved path, `state` its private folder."""

    def environment(self, environ: Mapping[str, str], state: Path) -> dict[str, str]:
        """The agent's environment: `environ` with its keys, base URL and switches set."""

    def read(self, model: str, stdout: str, stderr: str, state: Path) -> Turn:
        """Its final message, tokens and cost, and any API error, from its output and files."""

    def own_settings(self, environ: Mapping[str, str], workspace: Path) -> list[str]:
        """The files and variables here from which the program may take a key or base URL other than `key_env`'s
        and `url_envs`' (aider's .env files and config): where there are any, the key is not checked before the
        baseline, nor named alone when the server rejects it."""

    def sandbox_check(self, program: str, home: Path) -> list[str] | None:
        """The argv that runs `true` in the sandbox the agent puts its own commands in, reading its configuration
        from `home` (an empty folder: not its own folder, which it writes); None if it has no sandbox."""

    def drop_sandbox(self) -> None:
        """Run the agent's commands without its own sandbox from now on: `sandbox_check` failed here."""


class CodingAgent:
    """Runs `recipe` once per proposal; `launcher` is put before its argv (tests run it in a network namespace)."""

    def __init__(
        self, recipe: Recipe, model: str | None = None, timeout_s: float = TIMEOUT_S, launcher: tuple[str, ...] = ()
    ):
        self.recipe = recipe
        self.name = recipe.name
        self.model = model or recipe.default_model
        self.timeout_s = timeout_s
        self.launcher = launcher

    def preflight(self, workspace: Path) -> list[str]:
        """A fatal ProposalError naming the missing executable or key, or the key the server rejects (`_check_key`);
        no model is asked anything. A warning where the server cannot be reached, and where the agent's own sandbox
        cannot run a command here (`_sandbox_fails`)."""
        program = self._program()
        if why := self.recipe.missing(os.environ):
            raise ProposalError(f"the {self.name} agent cannot reach a model: {why}", fatal=True)
        warnings = self._check_key(workspace)
        if (why := self._sandbox_fails(program, workspace)) is None:
            return warnings
        self.recipe.drop_sandbox()
        return [
            *warnings,
            f"{self.name}'s own sandbox cannot run a command here ({why}), so {self.name} runs its commands without "
            "it (with the network, and .git writable): what they change is checked after each turn, as for any agent",
        ]

    def _check_key(self, workspace: Path) -> list[str]:
        """A fatal ProposalError where the server answers 401 when asked for its models with the key the program is
        given (agents/key_check.py), before the baseline trains; a warning where it cannot be reached."""
        from autoresearch.agents.key_check import check_key  # the SDK's HTTP client: for a coding agent's preflight

        if own := self.recipe.own_settings(os.environ, workspace):
            # The program may send another key, to another server, than the one checked here (red team: aider
            # loads ~/.env over the environment; a stale OPENAI_API_KEY exported stopped a loop whose aider worked).
            theirs = f"{self.recipe.key_env} and {self._url()}"
            return [
                f"the {self.name} agent's key was not checked before the baseline: {self.name} also reads "
                f"{', '.join(own)}, which may give it another key or server than {theirs}"
            ]
        env = self.recipe.environment(os.environ, self._state(workspace))
        checked = check_key(self.recipe.api, env.get(self.recipe.key_env) or "", self._url(), env)
        if checked.rejected is not None:
            raise self._key_rejected(Turn(checked.rejected, rejected_key=401), workspace)
        if checked.unreachable is not None:
            return [
                f"the {self.name} agent's model server at {self._url()} could not be reached to check its key "
                f"({checked.unreachable}); going on, its turns will try again"
            ]
        return []

    def _sandbox_fails(self, program: str, workspace: Path) -> str | None:
        """Why the agent's own sandbox cannot run `true` here, as its turns would run it (in the loop's namespaces,
        with its environment), or None if it can or it has none. Codex's bubblewrap fails where user namespaces
        are not allowed (a container) and hangs where a mount makes it wait (an autofs); every command of every
        turn would then fail, or hang until the turn's timeout."""
        with tempfile.TemporaryDirectory(prefix="autoresearch-sandbox-check-") as home:
            argv = self.recipe.sandbox_check(program, Path(home))
            if argv is None:
                return None
            env = self.recipe.environment(os.environ, self._state(workspace))
            who = f"`{' '.join(word for word in argv if home not in word)}`"  # not CODEX_HOME=<home>
            try:
                code, stdout, stderr = run_process([*self.launcher, *argv], workspace, "", env, SANDBOX_CHECK_S, who)
            except ProposalError as exc:  # it hung
                return str(exc).split(";")[0]
        if code == 0:
            return None
        if "pivot_root" in stderr and fence.refuses_pivot_root():  # not this machine's doing: the fence's
            return (
                "its bubblewrap pivots its root, which the loop's fence refuses to a turn: with it a turn moved the "
                "workspace out of its pins"
            )
        return f"`true` in it exited {code}: {tail(stderr or stdout, 300)}"

    def propose(self, context: Context) -> Proposal:
        workspace = context.workspace
        program = self._program()
        state = self._state(workspace)
        prompt = build_prompt(context, answer_format="agent").as_text()
        prompt_file = write_prompt(workspace, prompt)
        argv = [*self.launcher, *self.recipe.command(program, self.model, workspace, state, prompt_file)]
        env = self.recipe.environment(os.environ, state)
        who = f"the {self.name} agent"
        code, stdout, stderr = run_process(argv, workspace, prompt, env, self.timeout_s, who, context.named)
        turn = self._read(stdout, stderr, state)
        if code in NOT_RUNNABLE:
            raise ProposalError(
                f"the {self.name} agent exited with status {code}: {NOT_RUNNABLE[code]}; the end of its "
                f"output:\n{tail(stderr or stdout, STDERR_TAIL_CHARS)}",
                hint=self.recipe.install,
                usage=turn.usage,
                fatal=True,
            )
        output = output_tail(turn.error or turn.text or stdout, stderr)  # what it said, readable (not its JSON)
        if turn.rejected_key is not None:
            raise self._key_rejected(turn, workspace)
        if code != 0:
            raise ProposalError(
                f"the {self.name} agent exited with status {code}; the end of its output:\n{output}", usage=turn.usage
            )
        source = checked_source(workspace / "train.py", context.train_py, output, turn.usage, f"the {self.name} agent")
        return Proposal(hypothesis(turn.text, self.name), source, turn.usage)

    def _key_rejected(self, turn: Turn, workspace: Path) -> ProposalError:
        """The fatal error for a turn whose program reported that the server refused its key, naming the variable,
        and the program's own settings where it has any (`Recipe.own_settings`)."""
        from autoresearch.agents.key_check import MORE_THAN_THE_KEY, another_provider  # the SDK's client: rare path

        key, said = self.recipe.key_env, tail(turn.error or turn.text, 300)
        server = f"the model server at {self._url()}"
        if switch := another_provider(self.recipe.api, os.environ):
            # Claude Code on Bedrock, Vertex ...: neither the Anthropic API nor its key (red team: "the model server
            # at https://api.anthropic.com rejected ... hint: check ANTHROPIC_API_KEY", of a Bedrock 403)
            return ProposalError(
                f"the {self.name} agent's provider ({switch} is set) refused its request "
                f"(HTTP {turn.rejected_key}): {said}",
                hint=f"check the credentials {self.name} uses there, and that they may use model {self.model!r}",
                usage=turn.usage,
                fatal=True,
            )
        if turn.rejected_key == 403:
            message = f"{server} refused the {self.name} agent's request (HTTP 403): {said}"
            hint = f"check that {key} may use model {self.model!r}"
        else:
            message = f"{server} rejected the {self.name} agent's API key (HTTP 401): {said}"
            # What the program sends beside the key (Claude Code's ANTHROPIC_AUTH_TOKEN, a gateway's bearer token) may
            # be what was rejected: named too (red team: a token and no key read "ANTHROPIC_API_KEY is not set: set it")
            sent = [name for name in (key, *MORE_THAN_THE_KEY[self.recipe.api]) if os.environ.get(name)]
            hint = f"check {' and '.join(sent)}" if sent else f"{key} is not set, and {server} wants a key: set it"
        if own := self.recipe.own_settings(os.environ, workspace):
            hint += f"; and {', '.join(own)}, which {self.name} reads too, and which may set another key or server"
        return ProposalError(message, hint=hint, usage=turn.usage, fatal=True)

    def _read(self, stdout: str, stderr: str, state: Path) -> Turn:
        """The recipe's reading of the turn; nothing read (no text, no usage) where what the agent printed or left in
        its folder does not have the shape the recipe reads: a JSON line of 100,000 `[`, a token count that was text
        or a list, each ended the loop (red team)."""
        try:
            return self.recipe.read(self.model, stdout, stderr, state)
        except Exception:  # the agent's output: any shape, any depth
            return Turn("", Usage())

    def _state(self, workspace: Path) -> Path:
        """The agent's own folder: its history, caches and config. The agent writes it, and the loop does too, outside
        its namespace: a link it left in the place of this folder (or of one above it) is removed first, so that the
        loop's writes stay in it (red team: the link led into your home, read-only to the agent)."""
        state = workspace / AGENT_FILES / self.name
        make_folder(state, workspace)
        return state

    def _url(self) -> str:
        """The base URL of the program's model server, as it reads it."""
        return base_url(os.environ, self.recipe.url_envs) or self.recipe.default_url

    def _program(self) -> str:
        found = shutil.which(self.recipe.program)
        if found is None:
            raise ProposalError(
                f"the {self.name} agent cannot start: {self.recipe.program!r} is not a program on PATH",
                hint=self.recipe.install,
                fatal=True,
            )
        return found


def hypothesis(text: str, agent: str) -> str:
    """The description: the last `Hypothesis:` line of the agent's final message (markdown emphasis allowed),
    else its last non-empty line, cut to DESCRIPTION_CHARS."""
    lines = [line.strip() for line in text[-LAST_LINES_CHARS:].splitlines() if line.strip()]
    found = [m[1] for line in lines if (m := _HYPOTHESIS.match(line))]
    line = found[-1] if found else (lines[-1] if lines else f"train.py edited by {agent} (it gave no hypothesis)")
    return line if len(line) <= DESCRIPTION_CHARS else line[: DESCRIPTION_CHARS - 3] + "..."


def key_or_placeholder(environ: Mapping[str, str], key: str, urls: tuple[str, ...]) -> str | None:
    """The key to hand the agent: `key` if set, a placeholder when a base URL is (a local server that needs
    none; the programs insist on some key), else None."""
    if environ.get(key):
        return environ[key]
    if base_url(environ, urls):
        return "no-key"
    return None


def base_url(environ: Mapping[str, str], urls: tuple[str, ...]) -> str | None:
    """The base URL the program reads: the first of `urls` set (a recipe's `url_envs`); None if none is."""
    return next((environ[name] for name in urls if environ.get(name)), None)


def json_object(line: str) -> dict:
    """`line` parsed as a JSON object; {} if it is none (an agent's output mixes its JSON events with other lines)."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
