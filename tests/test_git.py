"""The workspace's git: what it says when the folder it runs in is gone, and a branch moved while train.py is
missing (a coding agent at work deleted it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from autoresearch.workspace import git as git_module
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


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder another user's takes root (CI runs as root)")
def test_a_workspace_owned_by_another_user_and_trusted_in_the_users_git_config_still_works(tmp_path, monkeypatch):
    """BROKE, fixed: the loop's git reads none of ~/.gitconfig (an agent could plant a filter there), so the
    `safe.directory` a container's user sets for a mounted workspace owned by another user was lost: every git
    call failed with "dubious ownership". That one setting is carried over."""
    git = repo(tmp_path / "ws")
    for path in [tmp_path / "ws", *(tmp_path / "ws").rglob("*")]:
        os.lchown(path, 4321, 4321)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    git_module.trusted_directories.cache_clear()
    with pytest.raises(GitError, match="dubious ownership"):
        git.head()
    (home / ".gitconfig").write_text(f"[safe]\n\tdirectory = {tmp_path / 'ws'}\n")
    git_module.trusted_directories.cache_clear()
    try:
        assert len(git.head()) == 40
    finally:
        git_module.trusted_directories.cache_clear()
