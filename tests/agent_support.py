"""For the tests of the real coding agents: where CI installed them, and a run of one through the loop, offline.

CI installs aider into `.agents/aider` (its own virtual environment: its pinned dependencies clash with ours)
and Claude Code and Codex into `.agents/node` (see the README's test command). A test that needs a program
that is not there fails, saying how to install it: it is never skipped.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fake_llm import FakeLLM
from loop_support import FakeExecutor, make_loop
from netns import Offline
from test_agent_turn import score, state

from autoresearch.agents.coding_agent import CodingAgent
from autoresearch.agents.recipes import recipe
from autoresearch.loop.experiment import Experiment

REPO = Path(__file__).resolve().parent.parent
INSTALLED = {  # program -> where the README's test command installs it
    "aider": REPO / ".agents" / "aider" / "bin",
    "claude": REPO / ".agents" / "node" / "node_modules" / ".bin",
    "codex": REPO / ".agents" / "node" / "node_modules" / ".bin",
}
GIT = "git -c user.name=agent -c user.email=agent@example.com -c commit.gpgsign=false"


def program_dir(program: str) -> Path:
    """The directory holding `program`, from CI's install or PATH; the test fails if there is none."""
    if (INSTALLED[program] / program).exists():
        return INSTALLED[program]
    found = shutil.which(program)
    if found is None:
        pytest.fail(f"{program} is not installed: run the install part of the README's test command (.ci/run)")
    return Path(found).parent


def use_installed_agents(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A home of its own (read-only to them in their namespace, which ~/.aider and ~/.claude.json would be written in
    where it is not), and the agents on PATH."""
    monkeypatch.setenv("HOME", str(home))
    for program in INSTALLED:
        monkeypatch.setenv("PATH", f"{program_dir(program)}{os.pathsep}{os.environ['PATH']}")
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "CLAUDE_CONFIG_DIR", "CODEX_HOME"):
        monkeypatch.delenv(name, raising=False)


def offline_agent(name: str, fake: FakeLLM, folder: Path, model: str | None = None) -> tuple[CodingAgent, Offline]:
    """The recipe `name`, run with no network but a bridge to the fake server `fake` (to its Unix socket), whose
    socket and log lie in `folder`: one the agent's turn reaches (`agent_channel`; what it writes in /tmp is its own
    copy, and no socket made outside its turn is reached there: agents/namespace.py)."""
    port = int(fake.url.split(":")[2].split("/")[0])
    offline = Offline(port, folder / "bridge.sock", fake.socket_path)
    return CodingAgent(recipe(name), model, timeout_s=120, launcher=offline.launcher), offline


def turn_through_the_loop(ws, agent: CodingAgent) -> tuple[Experiment, dict]:
    """The baseline (fake executor), one turn of `agent`, then its ledger row and the state before the turn."""
    loop = make_loop(ws, FakeExecutor(score), baseline_runs=2)
    loop.baseline()
    before = state(ws)
    loop.run(agent, max_experiments=1)
    return loop.ledger.all()[-1], before
