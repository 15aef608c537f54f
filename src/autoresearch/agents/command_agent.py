"""The `command` agent: any CLI coding agent (or script) that edits train.py itself.

The command runs through the shell in the workspace, in its own process group, with the prompt on stdin
and the prompt's path in AUTORESEARCH_PROMPT_FILE (<workspace>/.autoresearch/prompt.md). It edits
train.py in place and prints a one-line description as the last line of its stdout. Whether it touched
other files is for the loop to check with git; this agent checks only that train.py changed and still
compiles, and leaves it as the command left it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from autoresearch.agents.base import Context, Proposal, ProposalError
from autoresearch.agents.prompt import build_prompt

PROMPT_ENV = "AUTORESEARCH_PROMPT_FILE"
TIMEOUT_S = 30 * 60.0  # a coding agent may think, read and edit for a long while; a hung one must not stall the loop
STDERR_TAIL_CHARS = 2000
DESCRIPTION_CHARS = 300
PIPE_DRAIN_S = 5.0  # after a kill, how long to wait for output still in the pipes


class CommandAgent:
    name = "command"

    def __init__(self, command: str, timeout_s: float = TIMEOUT_S):
        self.command = command
        self.model = command
        self.timeout_s = timeout_s

    def propose(self, context: Context) -> Proposal:
        """Run the command once; its train.py is the proposal, its last stdout line the description."""
        workspace = context.workspace
        prompt = build_prompt(context, answer_format="command").as_text()
        prompt_file = workspace / ".autoresearch" / "prompt.md"
        prompt_file.parent.mkdir(parents=True, exist_ok=True)
        prompt_file.write_text(prompt)
        code, stdout, stderr = self._run(workspace, prompt, prompt_file)
        if code != 0:
            raise ProposalError(
                f"command agent {self.command!r} exited with status {code}; the end of its stderr:\n"
                f"{_tail(stderr or stdout, STDERR_TAIL_CHARS)}"
            )
        return Proposal(_description(stdout), _checked_source(workspace / "train.py", context.train_py))

    def _run(self, workspace: Path, prompt: str, prompt_file: Path) -> tuple[int, str, str]:
        """Exit status, stdout and stderr; ProposalError on timeout, after killing the whole process group."""
        process = subprocess.Popen(
            self.command,
            shell=True,
            cwd=workspace,
            env={**os.environ, PROMPT_ENV: str(prompt_file)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group, so that a kill reaches everything it started
        )
        try:
            stdout, stderr = process.communicate(prompt, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            stdout, stderr = _drain(process)
            raise ProposalError(
                f"command agent {self.command!r} did not finish within {self.timeout_s:g} s and was killed; "
                f"the end of its stderr:\n{_tail(stderr, STDERR_TAIL_CHARS)}"
            ) from None
        finally:
            _kill_group(process)  # whatever it left running in the background
        return process.returncode, stdout, stderr


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(process.pid, signal.SIGKILL)


def _drain(process: subprocess.Popen[str]) -> tuple[str, str]:
    """What is left in the pipes of a killed process; gives up after PIPE_DRAIN_S if something that left the
    process group still holds them open."""
    try:
        return process.communicate(timeout=PIPE_DRAIN_S)
    except subprocess.TimeoutExpired:
        for pipe in (process.stdout, process.stderr):
            if pipe:
                pipe.close()
        process.wait()
        return "", ""


def _checked_source(train_py: Path, before: str) -> str:
    """train.py as the command left it, if it changed and still compiles."""
    if not train_py.is_file():
        raise ProposalError("the command agent deleted train.py")
    source = train_py.read_text()
    if source == before:
        raise ProposalError("the command agent left train.py unchanged")
    try:
        compile(source, "train.py", "exec")
    except SyntaxError as err:
        raise ProposalError(
            f"the command agent left train.py invalid: {err.msg} at line {err.lineno}: {(err.text or '').strip()!r}"
        ) from None
    return source


def _description(stdout: str) -> str:
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        return "train.py edited by the command agent (it printed no description)"
    last = lines[-1]
    return last if len(last) <= DESCRIPTION_CHARS else last[: DESCRIPTION_CHARS - 3] + "..."


def _tail(text: str, limit: int) -> str:
    text = text.strip()
    return text[-limit:] if text else "(empty)"
