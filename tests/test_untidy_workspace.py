"""A user's untidy handling of a workspace folder: checked out again with `git worktree add` (helper 128's findings,
fixed by helper 130)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from loop_support import FakeExecutor, constant, make_loop

from autoresearch.errors import AutoresearchError
from autoresearch.loop.settings import LoopError
from autoresearch.workspace.workspace import Workspace


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
