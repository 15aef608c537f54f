"""aider, Claude Code and Codex, as shipped, through the loop: each against a scripted server on 127.0.0.1 that
speaks its protocol (aider: Chat Completions; Claude Code: Messages with tool use, streamed; Codex: the
Responses API, streamed), in a network namespace where nothing else can be reached (tests/netns.py).

Each test runs the baseline (fake executor), one turn of the real program, and checks what a user relies on:
only train.py changes, the branch holds only the loop's commits, the loop goes on, and the tokens the server
reported are in the ledger. Whatever the agent does, `assert_the_loop_owns_the_workspace` must hold after.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_support import GIT, offline_agent, turn_through_the_loop, use_installed_agents
from fake_llm import Call, FakeLLM
from loop_support import agent_channel, constant
from netns import Offline
from test_agent_turn import assert_the_loop_owns_the_workspace, quarantined

from autoresearch.agents import coding_agent
from autoresearch.agents.recipes.claude_code import ClaudeCode
from autoresearch.loop.ledger import Ledger
from autoresearch.vocabulary import Kind, Status

OLD, NEW = "LR = 0.05  # Adam learning rate (0.001-1)", "LR = 0.2  # Adam learning rate (0.001-1)"
HYPOTHESIS = "Hypothesis: LR 0.05 -> 0.2: the bigram table learns faster in a 1 s budget"
PROGRAM_LINE = "This file is yours: it tells the agent what to work on. Edit it freely; the loop re-reads it before"
API_ERROR = "prompt is too long: 250000 tokens > 200000 maximum (scripted)"


@pytest.fixture
def agent_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    use_installed_agents(home, monkeypatch)
    return home


@pytest.fixture
def run_turn(workspace, agent_env) -> Iterator:
    """`run_turn(name, fake)`: one turn of agent `name` against `fake`, offline; its row, the state before it."""
    bridges = []

    def run(name: str, fake: FakeLLM):
        agent, offline = offline_agent(name, fake, agent_channel(workspace))
        bridges.append(offline)
        exp, before = turn_through_the_loop(workspace, agent)
        assert offline.failures == [], f"the bridge could not reach the scripted server: {offline.failures}"
        assert offline.attempts() == [], f"{name} tried to reach another host: {offline.attempts()}"
        assert offline.connections >= 1  # it did talk to the scripted server, through the bridge
        return exp, before

    yield run
    for offline in bridges:
        offline.close()


def commit_and_record(commits: Path) -> str:
    """A shell line: the agent commits everything, and the test notes the commit to look for it later."""
    return f'{GIT} commit -qam "agent: LR 0.2" && git rev-parse HEAD >> {commits}'


# -- aider: SEARCH/REPLACE edits in the answer, no tools -------------------------------------------------


def aider_block(path: str, old: str, new: str) -> str:
    return f"{path}\n```\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n>>>>>>> REPLACE\n```\n"


@pytest.mark.slow  # aider imports litellm: ~6 s a turn on 2 busy cores
def test_aider_edit_is_kept_with_its_hypothesis_and_exact_tokens_and_its_new_file_quarantined(
    workspace, fake_openai, run_turn
):
    # One turn for both (each costs aider's start): the file it was told to add is all that is put back.
    answer = aider_block("train.py", OLD, NEW) + aider_block("notes.md", "", "an idea for later")
    fake_openai.reply(f"{HYPOTHESIS}\n\n{answer}", input_tokens=2345, output_tokens=67)
    exp, before = run_turn("aider", fake_openai)
    assert exp.status == Status.KEEP and constant(exp.source, "LR") == 0.2
    assert exp.description == HYPOTHESIS.removeprefix("Hypothesis: ")
    assert (exp.agent, exp.model, exp.input_tokens, exp.output_tokens) == ("aider", "gpt-5-mini", 2345, 67)
    assert exp.cost_usd == pytest.approx((2345 * 0.25 + 67 * 2.0) / 1e6)
    assert exp.reason.startswith("better:")
    put_back = exp.reason.split("put back after the agent: ")[1].partition(" (kept in ")[0]
    assert put_back == "added notes.md", exp.reason  # nothing else: aider wrote only its own state
    assert quarantined(workspace, "notes.md")[0].read_text().strip() == "an idea for later"
    request = fake_openai.requests[0].body
    assert request["model"] == "gpt-5-mini" and "train.py" in str(request["messages"])
    assert (workspace.state / "agents" / "aider" / "chat.history.md").exists()
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow
def test_aider_edit_of_program_md_rejects_the_proposal(workspace, fake_openai, run_turn):
    answer = aider_block("train.py", OLD, NEW) + aider_block("program.md", PROGRAM_LINE, "Only ever raise LR.")
    fake_openai.reply(f"{HYPOTHESIS}\n\n{answer}")
    exp, before = run_turn("aider", fake_openai)
    assert exp.status == Status.CRASH and "edited files other than train.py: changed program.md" in exp.reason
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow
def test_aider_api_failure_is_recorded_with_the_error_and_the_loop_goes_on(workspace, fake_openai, run_turn):
    fake_openai.error(400, API_ERROR)
    exp, before = run_turn("aider", fake_openai)
    assert exp.status == Status.CRASH and exp.kind == Kind.PROPOSAL
    assert "left train.py unchanged" in exp.reason and "prompt is too long" in exp.reason
    assert_the_loop_owns_the_workspace(workspace, exp, before)


# -- Claude Code: Read, Edit, Write and Bash tools, streamed ----------------------------------------------


def claude_edit(fake: FakeLLM, ws, *more: Call, text: str = HYPOTHESIS) -> None:
    """Read train.py, edit it, then whatever `more` calls do, one request each, then the final message."""
    train = str(ws.root / "train.py")
    fake.reply("I'll read the script first.", calls=[Call("Read", {"file_path": train})], input_tokens=1000)
    edit = {"file_path": train, "old_string": OLD, "new_string": NEW}
    fake.reply("", calls=[Call("Edit", edit)], input_tokens=1500, output_tokens=60)
    for call in more:
        fake.reply("", calls=[call], input_tokens=1700, output_tokens=40)
    fake.reply(f"Raised the learning rate.\n\n**{text}**", input_tokens=1800, output_tokens=50)


def bash(command: str) -> Call:
    return Call("Bash", {"command": command, "description": "run a shell command"})


@pytest.mark.slow  # a real Node program: ~1 s a turn
def test_claude_code_edit_is_kept_with_its_hypothesis_tokens_and_cost(workspace, fake_anthropic, run_turn):
    claude_edit(fake_anthropic, workspace)
    exp, before = run_turn("claude-code", fake_anthropic)
    assert exp.status == Status.KEEP and constant(exp.source, "LR") == 0.2
    assert exp.description == HYPOTHESIS.removeprefix("Hypothesis: ")
    assert (exp.agent, exp.model, exp.input_tokens, exp.output_tokens) == (
        "claude-code",
        "claude-sonnet-4-6",
        4300,
        410,
    )
    assert exp.cost_usd == pytest.approx((4300 * 3 + 410 * 15) / 1e6)  # Claude Code's own total_cost_usd
    first = fake_anthropic.requests[0]
    assert first.body["stream"] is True and first.body["model"] == "claude-sonnet-4-6"
    assert {t["name"] for t in first.body["tools"]} == {"Read", "Edit", "Bash"}
    assert "Hypothesis: " in str(first.body["messages"][0]) and "train.py" in str(first.body["messages"][0])
    assert first.headers["x-api-key"] == "test-key"
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow  # a real Node program: ~1 s a turn
def test_claude_code_works_in_your_read_only_home_where_it_keeps_its_config(
    workspace, fake_anthropic, run_turn, monkeypatch
):
    """Your home is read-only to an agent's turn (agents/namespace.py). Claude Code run as `--command "claude -p ..."`
    keeps its config there (~/.claude.json, ~/.claude/), not in CLAUDE_CONFIG_DIR: it still edits, and writes
    nothing there."""
    environment = ClaudeCode.environment

    def as_a_plain_command(self, environ, state):
        return {k: v for k, v in environment(self, environ, state).items() if k != "CLAUDE_CONFIG_DIR"}

    monkeypatch.setattr(ClaudeCode, "environment", as_a_plain_command)
    claude_edit(fake_anthropic, workspace)
    exp, _ = run_turn("claude-code", fake_anthropic)
    assert exp.status == Status.KEEP and constant(exp.source, "LR") == 0.2, exp.reason
    assert os.listdir(os.environ["HOME"]) == []


@pytest.mark.slow  # a real Node program: ~1 s a turn
def test_claude_code_commit_is_taken_apart_and_its_train_py_judged(workspace, fake_anthropic, run_turn):
    claude_edit(fake_anthropic, workspace, bash(commit_and_record(agent_channel(workspace) / "commits")))
    exp, before = run_turn("claude-code", fake_anthropic)
    assert (agent_channel(workspace) / "commits").exists(), "the scripted commit did not happen"
    assert exp.status == Status.KEEP and constant(exp.source, "LR") == 0.2
    assert "put back after the agent" in exp.reason and "moved refs/heads/autoresearch/test" in exp.reason
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow  # a real Node program: ~1 s a turn
def test_claude_code_new_staged_file_is_quarantined(workspace, fake_anthropic, run_turn):
    claude_edit(fake_anthropic, workspace, bash("echo 'an idea for later' > notes.md && git add notes.md"))
    exp, before = run_turn("claude-code", fake_anthropic)
    assert exp.status == Status.KEEP and "added notes.md" in exp.reason and "the index" in exp.reason
    assert quarantined(workspace, "notes.md")[0].read_text() == "an idea for later\n"
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow  # a real Node program: ~1 s a turn
def test_claude_code_edit_of_program_md_rejects_the_proposal(workspace, fake_anthropic, run_turn):
    program = str(workspace.root / "program.md")
    edit = Call("Edit", {"file_path": program, "old_string": PROGRAM_LINE, "new_string": "Only ever raise LR."})
    claude_edit(fake_anthropic, workspace, Call("Read", {"file_path": program}), edit)
    exp, before = run_turn("claude-code", fake_anthropic)
    assert exp.status == Status.CRASH and "edited files other than train.py: changed program.md" in exp.reason
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow  # a real Node program: ~1 s a turn
def test_claude_code_api_failure_is_recorded_and_the_loop_goes_on(workspace, fake_anthropic, run_turn):
    fake_anthropic.error(400, API_ERROR)
    exp, before = run_turn("claude-code", fake_anthropic)
    assert exp.status == Status.CRASH and exp.kind == Kind.PROPOSAL and "prompt is too long" in exp.reason.lower()
    assert_the_loop_owns_the_workspace(workspace, exp, before)


# -- Codex: exec_command (apply_patch, shell) in its sandbox, the Responses API streamed ----------------


def codex_edit(fake: FakeLLM, *more: str, text: str = HYPOTHESIS) -> None:
    """apply_patch on train.py, then each shell line of `more`, one request each, then the final message."""
    patch = (
        f"apply_patch <<'PATCH'\n*** Begin Patch\n*** Update File: train.py\n@@\n-{OLD}\n+{NEW}\n*** End Patch\nPATCH"
    )
    fake.reply("Patching train.py.", calls=[Call("exec_command", {"cmd": patch})], input_tokens=2000)
    for line in more:
        fake.reply("", calls=[Call("exec_command", {"cmd": line})], input_tokens=2100, output_tokens=40)
    fake.reply(f"Done.\n{text}", input_tokens=2200, output_tokens=50)


@pytest.mark.slow  # a real Node program: ~1 s a turn
def test_codex_edit_is_kept_with_its_hypothesis_and_tokens(workspace, fake_openai, run_turn):
    codex_edit(fake_openai)
    exp, before = run_turn("codex", fake_openai)
    assert exp.status == Status.KEEP and constant(exp.source, "LR") == 0.2
    assert exp.description == HYPOTHESIS.removeprefix("Hypothesis: ")
    assert (exp.agent, exp.model, exp.input_tokens, exp.output_tokens) == ("codex", "gpt-5-mini", 4200, 350)
    assert exp.cost_usd == pytest.approx((4200 * 0.25 + 350 * 2.0) / 1e6)
    first = fake_openai.requests[0]
    assert first.path == "/v1/responses" and first.body["stream"] is True
    assert first.headers["authorization"] == "Bearer test-key"
    assert not any(t.get("type") == "web_search" for t in first.body["tools"])
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow  # a real Node program: ~1 s a turn
def test_codex_commit_and_staged_file_leave_the_branch_to_the_loop(workspace, fake_openai, run_turn):
    commits = agent_channel(workspace) / "commits"
    codex_edit(fake_openai, "echo 'an idea' > notes.md; git add notes.md", commit_and_record(commits))
    exp, before = run_turn("codex", fake_openai)
    assert exp.status == Status.KEEP and constant(exp.source, "LR") == 0.2 and "added notes.md" in exp.reason
    # Codex's own sandbox cannot be made in the agent's namespace (agents/fence.py refuses pivot_root), and Codex runs
    # its commands without it: its commit was made, and the loop takes it apart.
    assert commits.read_text().split()
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow  # a real Node program: ~1 s a turn
def test_codex_edit_of_program_md_rejects_the_proposal(workspace, fake_openai, run_turn):
    codex_edit(fake_openai, "echo 'Only ever raise LR.' >> program.md")
    exp, before = run_turn("codex", fake_openai)
    assert exp.status == Status.CRASH and "edited files other than train.py: changed program.md" in exp.reason
    assert_the_loop_owns_the_workspace(workspace, exp, before)


BWRAP_THAT = {  # a bubblewrap first on PATH (Codex takes that one), answering only --help (Codex's version probe)
    "hangs": "sleep 1000",  # as on an autofs mount
    "fails": "echo 'bwrap: Creating new namespace failed: Operation not permitted' >&2; exit 1",  # a container
}


@pytest.fixture
def bin_dir() -> Iterator[Path]:
    """A folder for programs put first on PATH, outside /tmp: Codex takes no bubblewrap from there (its commands
    may write /tmp)."""
    folder = Path(tempfile.mkdtemp(prefix="autoresearch-test-bin-", dir="/var/tmp"))
    yield folder
    shutil.rmtree(folder)


@pytest.mark.slow  # a real Node program, and its sandbox check waits 2 s where bubblewrap hangs
@pytest.mark.parametrize("bwrap", sorted(BWRAP_THAT))
def test_codex_whose_own_sandbox_cannot_run_a_command_runs_without_it(
    bwrap, workspace, fake_openai, agent_env, bin_dir, monkeypatch
):
    calls = agent_channel(workspace) / "bwrap-calls"  # written in the agent's namespaces
    (bin_dir / "bwrap").write_text(
        f'#!/bin/sh\ncase "$1" in --help) exec {shutil.which("bwrap")} "$@";; esac\n'
        f'echo "$*" >> {calls}\n{BWRAP_THAT[bwrap]}\n'
    )
    (bin_dir / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(coding_agent, "SANDBOX_CHECK_S", 2.0)
    codex_edit(fake_openai)
    agent, offline = offline_agent("codex", fake_openai, agent_channel(workspace))
    warnings = agent.preflight(workspace.root)
    said = {"hangs": "did not finish within 2 s", "fails": "exited 1: bwrap: Creating new namespace failed"}[bwrap]
    assert len(warnings) == 1 and "codex's own sandbox cannot run a command here" in warnings[0]
    assert said in warnings[0] and "runs its commands without it" in warnings[0]
    assert "autoresearch-sandbox-check-" not in warnings[0]  # its empty home: a path that says nothing
    checked = calls.read_text().splitlines()
    assert checked  # the check did call bubblewrap
    start = time.monotonic()
    exp, before = turn_through_the_loop(workspace, agent)  # not a turn that hangs or fails in every command
    offline.close()
    assert exp.status == Status.KEEP and constant(exp.source, "LR") == 0.2, exp.reason
    assert time.monotonic() - start < 60 and calls.read_text().splitlines() == checked  # the turn used none
    assert offline.failures == [] and offline.attempts() == []
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow  # a real Node program
def test_a_codex_config_the_agent_wrote_into_its_home_cannot_make_the_loop_drop_codex_sandbox(
    workspace, fake_openai, agent_env
):
    home = workspace.root / ".autoresearch" / "agents" / "codex" / "home"  # CODEX_HOME: the agent writes there
    home.mkdir(parents=True)
    (home / "config.toml").write_text("this is = not [ toml\n")  # `codex sandbox` reading it would exit 1
    agent, offline = offline_agent("codex", fake_openai, agent_channel(workspace))
    # Its sandbox cannot be made in the agent's namespace at all (agents/fence.py refuses pivot_root): the check says
    # so, not that the config could not be read.
    (warning,) = agent.preflight(workspace.root)
    assert "its bubblewrap pivots its root, which the loop's fence refuses to a turn" in warning
    assert "toml" not in warning
    offline.close()


@pytest.mark.slow  # a real Node program: ~1 s a turn
def test_codex_api_failure_is_recorded_and_the_loop_goes_on(workspace, fake_openai, run_turn):
    fake_openai.error(400, API_ERROR)
    exp, before = run_turn("codex", fake_openai)
    assert exp.status == Status.CRASH and exp.kind == Kind.PROPOSAL and "prompt is too long" in exp.reason.lower()
    assert_the_loop_owns_the_workspace(workspace, exp, before)


# -- the reference's own mode: Claude Code follows program.md and drives the loop with `autoresearch try` --


@pytest.mark.slow  # real training: the baseline twice and the experiment, ~1 s each plus start-up
def test_claude_code_drives_the_loop_with_autoresearch_try(workspace, fake_anthropic, agent_env, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "autoresearch"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m autoresearch "$@"\n')
    shim.chmod(0o755)
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"  # put back by monkeypatch (agent_env)
    train, program = str(workspace.root / "train.py"), str(workspace.root / "program.md")
    try_it = 'autoresearch try -m "LR 0.05 -> 0.5" --baseline-runs 2'
    fake_anthropic.reply("I'll follow program.md.", calls=[Call("Read", {"file_path": program})])
    fake_anthropic.reply("", calls=[Call("Read", {"file_path": train})])
    fake_anthropic.reply(
        "", calls=[Call("Edit", {"file_path": train, "old_string": OLD, "new_string": NEW.replace("0.2", "0.5")})]
    )
    fake_anthropic.reply(
        "", calls=[Call("Bash", {"command": try_it, "description": "judge the edit", "timeout": 600000})]
    )
    fake_anthropic.reply("The loop judged it; see the verdict above.")
    offline = Offline(int(fake_anthropic.url.rsplit(":", 1)[1]), tmp_path / "bridge.sock", fake_anthropic.socket_path)
    prompt = "Read program.md and run one experiment: edit train.py, then judge it with `autoresearch try -m`."
    argv = [*offline.launcher, "claude", "-p", "--bare", "--output-format", "json", "--allowedTools", "Read,Edit,Bash"]
    env = ClaudeCode().environment(os.environ, tmp_path / "claude")  # the recipe's switches: no telemetry ...
    (temporary := tmp_path / "tmp").mkdir()
    env["TMPDIR"] = str(temporary)  # where its Bash tool keeps what a command printed (else /tmp/claude-<uid>/)
    done = subprocess.run(argv, cwd=workspace.root, input=prompt, env=env, capture_output=True, text=True, timeout=300)
    offline.close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert offline.failures == [] and offline.attempts() == []
    verdict = str(fake_anthropic.requests[-1].body["messages"][-1]["content"])
    assert "exp 2 " in verdict and "LR 0.05 -> 0.5" in verdict and "best" in verdict
    rows = Ledger(workspace.root).all()
    assert [(r.id, r.kind, r.agent) for r in rows] == [(1, "baseline", ""), (2, "experiment", "try")]
    assert rows[1].val_bpb is not None and constant(rows[1].source, "LR") == 0.5
    assert workspace.git.head() == [r for r in rows if r.status == Status.KEEP][-1].commit
