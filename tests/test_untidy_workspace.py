"""A user's untidy handling of a workspace folder: moved or deleted while the loop runs, checked out again with
`git worktree add` (helper 128's findings, fixed by helper 130)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from loop_support import FakeExecutor, ScriptedAgent, constant, make_loop, set_lr

from autoresearch.errors import AutoresearchError
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.settings import LoopError
from autoresearch.vocabulary import Status
from autoresearch.workspace.workspace import Workspace

MADE_BY_THE_LOOP = (".git", "train.py", "results.tsv", "autoresearch.json", ".autoresearch/ledger.sqlite")


def _away_during_the_run(workspace, away) -> FakeExecutor:
    """A loop's executor whose first run after the baseline sees the workspace taken `away` (a `mv`, an `rm -rf`)."""
    executor = FakeExecutor(lambda source: 3.0 + constant(source, "LR"))
    make_loop(workspace, executor).baseline()

    taken: list[bool] = []

    def score(source: str) -> float:
        if not taken:  # once: what the loop makes again there is for the test to find
            taken.append(True)
            away()
        return 3.0 + constant(source, "LR")

    executor.score = score
    return executor


def test_a_workspace_moved_while_its_loop_runs_is_not_rebuilt_at_the_old_path(workspace, tmp_path) -> None:
    """`mv ws ws2` while `autoresearch run` trains in ws. The loop's check after the run found "the workspace changed
    (.git/COMMIT_EDITMSG, .git/HEAD, .git/config, ...)", "put back" the lot, which made a new ws at the old path (a
    .git of 60 loose objects, a ledger, results.tsv), and trained the rest of the night there, while ws2 said
    "interrupted: exp 17 ... will be re-run on the next start" and, resumed, trained other experiments under the same
    ids (helper 128). Now the loop stops, saying the workspace was moved; nothing is made at the old path, and the
    experiment in flight is resumed by the next start in the new place."""
    moved = tmp_path / "moved"
    executor = _away_during_the_run(workspace, lambda: os.rename(workspace.root, moved))
    loop = make_loop(workspace, executor)
    with pytest.raises(AutoresearchError, match="moved or deleted while the loop ran") as caught:
        loop.step(ScriptedAgent([set_lr(0.9)]))
        loop.step(ScriptedAgent([set_lr(0.8)]))
    assert "autoresearch run" in caught.value.hint and str(workspace.root) in str(caught.value)
    # (the fake executor writes its result file under the old path's runs folder: only what the loop made counts)
    remade = [name for name in MADE_BY_THE_LOOP if os.path.lexists(workspace.root / name)]
    assert not remade, f"made again at the old path: {remade}"
    rows = Ledger(moved).all()
    assert [(e.id, e.status, e.attempts) for e in rows[1:]] == [(2, Status.RUNNING, 0)]  # in flight, not "killed"

    again = make_loop(Workspace(moved), FakeExecutor(lambda source: 3.0 + constant(source, "LR")))
    assert again.recover().id == 2  # the next start, in the new place, resumes it


def test_a_workspace_deleted_while_its_loop_runs_is_not_made_again(workspace) -> None:
    """`rm -rf ws` while the loop trains in it: the loop made the whole workspace again at that path (an empty
    ledger's worth of history the person had deleted) and went on there. It stops as for a move instead: the person
    deleted it, and a workspace the loop made up would hold no history to judge by."""
    executor = _away_during_the_run(workspace, lambda: shutil.rmtree(workspace.root))
    loop = make_loop(workspace, executor)
    with pytest.raises(AutoresearchError, match="moved or deleted while the loop ran"):
        loop.step(ScriptedAgent([set_lr(0.9)]))
    remade = [name for name in MADE_BY_THE_LOOP if os.path.lexists(workspace.root / name)]
    assert not remade, f"made again: {remade}"


def test_a_workspace_moved_while_the_agent_proposes_is_not_written_at_the_old_path(workspace, tmp_path) -> None:
    """`mv` during an LLM agent's turn (no shell: no watch around it): its proposal is not committed nor trained at
    the old path; the loop stops as for a move during a run."""
    moved = tmp_path / "moved"
    executor = FakeExecutor(lambda source: 3.0 + constant(source, "LR"))
    loop = make_loop(workspace, executor)
    loop.baseline()

    def edit(context):
        os.rename(workspace.root, moved)
        return set_lr(0.9)(context)

    with pytest.raises(AutoresearchError, match="moved or deleted while the loop ran"):
        loop.step(ScriptedAgent([edit]))
    remade = [name for name in MADE_BY_THE_LOOP if os.path.lexists(workspace.root / name)]
    assert not remade, f"made again at the old path: {remade}"
    assert len(executor.calls) == 3  # the baseline's seeds only


def test_a_workspace_checked_out_with_git_worktree_add_is_refused_not_a_traceback(workspace, tmp_path) -> None:
    """`git worktree add ../other` of a workspace gives a folder whose `.git` is a file. `autoresearch run` there
    started the baseline, then, checking the workspace after the run, died with a traceback: NotADirectoryError:
    '.../.git/refs' (integrity._put_back_links). The worktree also shares refs/autoresearch/discarded/<n> with the
    first workspace, whose ids a second ledger would reuse. It is refused at the start, saying what to do instead."""
    executor = FakeExecutor(lambda source: 3.0 + constant(source, "LR"))
    make_loop(workspace, executor).baseline()
    other = tmp_path / "other"
    workspace.git("worktree", "add", "-q", "-b", "other", str(other), "HEAD")
    with pytest.raises(AutoresearchError, match="git worktree") as caught:
        Workspace(other)
    assert "cp -a" in caught.value.hint and str(workspace.root) in caught.value.hint
    assert not (other / ".autoresearch").exists()  # nothing of the loop's made there


def test_a_git_folder_a_killed_turn_left_a_file_is_put_back_not_refused_as_a_worktree(workspace, tmp_path) -> None:
    """An agent's turn that made .git a file (`gitdir: .moved`, as a worktree's names its folder), then a kill: the
    next start is the recovery's, which says what the turn left (here: the history moved out of .git, whose objects
    the snapshot does not hold), not a refusal of the workspace as a git worktree."""
    from test_red_team_recovery import next_start, sh, turn_begins

    turn_begins(workspace, tmp_path)
    sh(workspace, "mv .git .moved && echo 'gitdir: .moved' > .git")
    again = Workspace(workspace.root)  # not refused
    try:
        next_start(again)
    except LoopError as exc:
        assert "stopped during an agent's turn" in str(exc), exc
    assert again.git.git_dir.is_dir()


@pytest.mark.parametrize(
    "command",
    [
        ["run", "--agent", "queue", "--max-experiments", "1", "--plain"],
        ["try", "-m", "x"],
        ["submit", "-m", "x"],
        ["status"],
        ["report"],
        ["show", "1"],
        ["diff", "1", "1"],
        ["wait", "1"],
        ["rebuild-ledger"],
    ],
)
def test_every_command_in_a_git_worktree_of_a_workspace_refuses_without_a_traceback(
    workspace, tmp_path, command
) -> None:
    """Each command run inside such a worktree says what it is and exits 2, no traceback."""
    workspace.git("worktree", "add", "-q", "-b", "other", str(tmp_path / "other"), "HEAD")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "autoresearch", *command],
        cwd=tmp_path / "other",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    said = done.stdout + done.stderr
    assert done.returncode == 2, said
    assert "Traceback" not in said and "git worktree" in said, said


def test_run_whose_workspace_is_moved_stops_saying_so_and_resumes_in_the_new_place(
    workspace, tmp_path, monkeypatch, capsys
) -> None:
    """`autoresearch run`, its workspace moved during the baseline's first run: exit 2 with the error and hint, no
    traceback, no report or results.tsv written at the old path; `run` in the new place finishes the baseline (and
    goes on)."""
    from autoresearch.cli import main
    from autoresearch.loop import executor as executors

    moved = tmp_path / "moved"

    def score(source: str) -> float:
        if not moved.exists():
            os.rename(workspace.root, moved)
        return 3.0 + constant(source, "LR")

    monkeypatch.setattr(executors, "LocalExecutor", lambda env=None: FakeExecutor(score))
    args = ["run", "--agent", "tune", "--max-experiments", "1", "--plain", "--workspace"]
    assert main([*args, str(workspace.root)]) == 2
    err = capsys.readouterr().err
    assert "moved or deleted while the loop ran" in err and "Traceback" not in err, err
    remade = [name for name in (*MADE_BY_THE_LOOP, "report.md", "progress.png") if (workspace.root / name).exists()]
    assert not remade, f"made again at the old path: {remade}"
    assert main([*args, str(moved)]) == 0
    baseline, *_ = Ledger(moved).all()
    assert baseline.status == Status.KEEP and len(baseline.run_values) == 3, baseline
