"""A user's walk of the single-machine features on a 2-core CPU-only machine (helper 149): what broke or misled.

1. An error's hint names commands to run in the workspace (`autoresearch rebuild-ledger`, `autoresearch show 8`,
   `git checkout train.py`), and a user who gave `--workspace DIR` from another folder pasted them there: `not a
   research workspace`, `fatal: not a git repository`, or, in another repository of theirs, `git checkout train.py`
   on its file. Such an error now ends by saying where to run them (`cd DIR` first).
2. `run --agent aider` against a server that was down failed 4 asks; the next morning `run --agent openai` failed
   its first ask once (a 500) and said "openai failed 5 times in a row; waiting 240s": the streak of failures that
   backs the loop off counted another agent's, named this one for them, and waited 4 minutes before its second ask.
   It counts this agent's failures only.
3. Meanwhile `status` said "running: the agent is preparing the next experiment" for those 4 minutes (up to 15 at
   night, between asks of an API that is down): the loop was sleeping, which only its own output said. `status`
   now says it waits, how long still, and why (the failures in a row, the last one's reason).
"""

from __future__ import annotations

from loop_support import FakeExecutor, ScriptedAgent, make_loop
from test_agent_turn import score

from autoresearch.cli import main
from autoresearch.loop.ledger import ledger_path


def test_a_hint_given_to_a_workspace_named_by_workspace_says_where_its_commands_run(
    workspace, tmp_path, monkeypatch, capsys
):
    """`status --workspace ws` from another folder, the ledger lost: the hint's `autoresearch rebuild-ledger` works
    only in the workspace. In the workspace itself, the hint is as it was."""
    make_loop(workspace, FakeExecutor(score), baseline_runs=2).baseline()
    ledger_path(workspace.root).unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["status", "--workspace", str(workspace.root)]) == 2
    said = capsys.readouterr().err
    assert "`autoresearch rebuild-ledger`" in said
    assert said.count("\n") == 2 and said.endswith(
        f"; these commands run in the workspace: `cd {workspace.root}` first\n"
    )

    monkeypatch.chdir(workspace.root)
    assert main(["status", "--workspace", str(workspace.root)]) == 2
    said = capsys.readouterr().err
    assert "`autoresearch rebuild-ledger`" in said and "`cd " not in said


def test_the_pause_after_failures_in_a_row_counts_only_this_agents_failures(workspace):
    loop = make_loop(workspace, FakeExecutor(score), baseline_runs=2)
    loop.baseline()
    said = []
    loop.reporter.message = said.append
    for _ in range(2):
        loop.ask(ScriptedAgent([], name="aider"), wait=False)
    assert loop.failure_pause(ScriptedAgent([], name="aider")) > 0  # its own streak still backs it off
    said.clear()
    loop.ask(ScriptedAgent([], name="openai"), wait=False)
    assert loop.failure_pause(ScriptedAgent([], name="openai")) == 0 and said == []  # its first failure
    loop.ask(ScriptedAgent([], name="openai"), wait=False)
    assert loop.failure_pause(ScriptedAgent([], name="openai")) == 30
    assert said == ["openai failed 2 times in a row; waiting 30s"]


def test_status_during_the_pause_after_failed_asks_says_the_loop_waits_and_why(workspace, monkeypatch):
    from autoresearch.loop import status

    loop = make_loop(workspace, FakeExecutor(score), baseline_runs=2)
    loop.baseline()
    loop.reporter.message = lambda text: None
    for _ in range(3):
        loop.ask(ScriptedAgent([], name="openai"), wait=False)
    monkeypatch.setattr(type(workspace), "is_locked", lambda self: True)  # the loop runs: it sleeps in its pause
    said = status.status_text(workspace).splitlines()[-1]
    assert said.startswith("running: waiting 6") and "s before asking openai again" in said, said
    assert "it failed 3 times in a row; the last (exp 4): script exhausted" in said
    last = loop.ledger.all()[-1]
    monkeypatch.setattr(status.time, "time", lambda: last.finished_at + 61)  # the pause is over: it asks again
    assert status.status_text(workspace).splitlines()[-1] == "running: the agent is preparing the next experiment"
