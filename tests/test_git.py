"""The workspace's git: what it says when the folder it runs in is gone, and a branch moved while train.py is
missing (a coding agent at work deleted it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autoresearch.workspace.git import Git, GitError


def repo(root: Path) -> Git:
    root.mkdir()
    git = Git(root)
    git.init("main")
    (root / "train.py").write_text("LR = 0.1\n")
    git.commit("baseline", "train.py")
    return git


def test_a_workspace_folder_deleted_under_git_is_named_not_taken_for_git_missing(tmp_path: Path) -> None:
    git = repo(tmp_path / "ws")
    shutil.rmtree(tmp_path / "ws")
    with pytest.raises(GitError, match="is gone") as raised:
        git.head()
    assert "not installed" not in str(raised.value)


def test_the_branch_moves_onto_a_commit_while_train_py_is_deleted_and_train_py_comes_back(tmp_path: Path) -> None:
    git = repo(tmp_path / "ws")
    win = git.commit_onto(git.head(), "train.py", "LR = 0.2\n", "exp 2: LR 0.2")
    (tmp_path / "ws" / "train.py").unlink()
    git.advance(win, "train.py")
    assert git.head() == win and (tmp_path / "ws" / "train.py").read_text() == "LR = 0.2\n"
