"""The workspace's git: what it says when the folder it runs in is gone, and a branch moved while train.py is
missing (a coding agent at work deleted it)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import threading
import zlib
from pathlib import Path

import pytest

from autoresearch.workspace import git as git_module
from autoresearch.workspace import integrity, snapshot_file
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


def test_a_git_command_that_waits_for_ever_is_stopped_with_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    """BROKE, fixed: the loop's git commands had no time limit, and git waits for ever on a FIFO where it reads a file
    (.git/HEAD, at every command): the loop hung without a word, at every start."""
    git = repo(tmp_path / "ws")
    monkeypatch.setattr(git_module, "TIMEOUT_S", 0.2)
    head = git.git_dir / "HEAD"
    head.unlink()
    os.mkfifo(head)
    with pytest.raises(GitError, match=r"git rev-parse did not finish in 0\.2 s, and was stopped") as raised:
        git.head()
    assert "find .git -type p" in raised.value.hint
    monkeypatch.setattr(git_module, "TIMEOUT_S", 0.001)  # less than git takes to start
    with pytest.raises(GitError, match="git merge-file did not finish"):
        git.merge_file("a\n" * 100_000, "b\n" * 100_000, "c\n" * 100_000)


def test_a_git_configuration_that_never_answers_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    """The one git command that reads your own configuration (its safe.directory entries, at the loop's first git
    command) waited for ever on a FIFO there."""
    os.mkfifo(tmp_path / ".gitconfig")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    monkeypatch.setattr(git_module, "TIMEOUT_S", 0.2)
    git_module.trusted_directories.cache_clear()
    try:
        with pytest.raises(GitError, match=r"git config --global did not finish in 0\.2 s") as raised:
            git_module.trusted_directories()
        assert "~/.gitconfig" in raised.value.hint
    finally:
        git_module.trusted_directories.cache_clear()


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


def test_the_loops_commit_starts_no_gc_whatever_the_repository_says(tmp_path: Path) -> None:
    # git's automatic gc (past 6,700 loose objects: a long night; here the repository's gc.auto, which an agent can
    # set) would pack the commit's objects at a moment of git's choosing, and delete them loose. The loop packs them
    # itself (`Git.pack`), between steps.
    git = repo(tmp_path / "ws")
    git("config", "gc.auto", "1")
    _loose_objects(git.git_dir, prefix="17", count=3)
    git("worktree", "add", "--detach", str(tmp_path / "worker"))
    (tmp_path / "worker" / "train.py").write_text("LR = 0.2\n")
    commit = Git(tmp_path / "worker").commit("exp 2: LR 0.2", "train.py")
    assert (git.git_dir / "objects" / commit[:2] / commit[2:]).is_file()
    assert not list((git.git_dir / "objects" / "pack").glob("*.pack"))
    git("fsck", "--strict")


def _loose_objects(git_dir: Path, prefix: str, count: int) -> None:
    """Write `count` loose blobs whose ids start with `prefix` (gc estimates the loose objects from one folder)."""
    made = 0
    for i in itertools.count():
        data = b"blob %d\0%d" % (len(str(i)), i)
        oid = hashlib.sha1(data).hexdigest()
        if oid.startswith(prefix) and made < count:
            (git_dir / "objects" / oid[:2]).mkdir(exist_ok=True)
            (git_dir / "objects" / oid[:2] / oid[2:]).write_bytes(zlib.compress(data))
            made += 1
        if made == count:
            return


def test_a_gc_an_agent_runs_loses_none_of_the_loops_objects_and_keeps_none_of_its_own(tmp_path: Path) -> None:
    # An agent's `git gc` (a tool may run it) packs the loose objects of the loop's last commit and deletes them: the
    # check after the turn takes the new pack away and writes them back. The agent's own commit goes with the pack:
    # the loop keeps no object a step added (each would sit in its memory for the rest of the night).
    git = repo(tmp_path / "ws")
    git("worktree", "add", "--detach", str(tmp_path / "worker"))
    (tmp_path / "worker" / "train.py").write_text("LR = 0.2\n")
    commit = Git(tmp_path / "worker").commit("exp 2: LR 0.2", "train.py")
    before = integrity.take(git, exclude=frozenset({"train.py"}))
    (git.root / "train.py").write_text("LR = 0.3\n")
    mine = git.commit("the agent's", "train.py")
    git("gc", "-q", "--prune=now")
    found = integrity.put_back(before, git, tmp_path / "quarantine", exclude=frozenset({"train.py"}), agent=True)
    assert not found.changed and not found.not_restored
    assert any("objects to .git/objects" in line for line in found.litter), found.litter
    assert not list((git.git_dir / "objects" / "pack").glob("*.pack"))  # taken away: git reads packs first
    assert git("cat-file", "-t", commit).strip() == "commit"
    assert git("cat-file", "-t", mine, check=False).strip() != "commit" and mine not in git.refs().values()
    git("fsck", "--strict")


def test_pack_packs_loose_objects_and_refs_once_there_are_many_and_loses_no_object(tmp_path: Path, monkeypatch) -> None:
    git = repo(tmp_path / "ws")
    for n in range(2, 6):
        (git.root / "train.py").write_text(f"LR = 0.{n}\n")
        git.set_ref(f"refs/autoresearch/discarded/{n}", git.commit(f"exp {n}: LR 0.{n}", "train.py"))
    unreachable = git("hash-object", "-w", "--stdin", stdin="a turn's snapshot, in no commit\n").strip()
    refs = git.refs()
    objects = git("cat-file", "--batch-all-objects", "--batch-check=%(objectname)").split()
    monkeypatch.setattr(git_module, "LOOSE_OBJECTS_MAX", 10**6)
    assert not git.pack()  # few: left as they are (4 loose refs are under LOOSE_REFS_MAX)
    _loose_objects(git.git_dir, prefix="17", count=2)  # git's estimate: 512 loose objects
    monkeypatch.setattr(git_module, "LOOSE_OBJECTS_MAX", 512)
    assert git.pack()
    loose = list((git.git_dir / "objects").glob("??/*"))
    assert loose == [] and git.refs() == refs
    assert not [p for p in (git.git_dir / "refs" / "autoresearch").rglob("*") if p.is_file()]  # in packed-refs
    kept = git("cat-file", "--batch-all-objects", "--batch-check=%(objectname)").split()
    assert set(objects) <= set(kept) and unreachable in kept
    assert git.show(refs["refs/autoresearch/discarded/3"], "train.py") == "LR = 0.3\n"
    git("fsck", "--strict")
    for n in range(6, 12):  # packs are merged as they come: few, whatever the night's length
        objects.append(git._run(("hash-object", "-w", "--stdin"), stdin=f"{n}\n".encode()).decode().strip())
        _loose_objects(git.git_dir, prefix="17", count=2 + n)
        assert git.pack()
    assert len(list((git.git_dir / "objects" / "pack").glob("*.pack"))) <= 3
    # Packs rolled into one keep what nothing reaches too (a turn's snapshot, a discarded run's objects before its ref)
    kept = git("cat-file", "--batch-all-objects", "--batch-check=%(objectname)").split()
    assert set(objects) <= set(kept) and unreachable in kept


def test_a_turns_snapshot_is_saved_without_copying_the_object_store_it_holds(tmp_path: Path) -> None:
    # asdict() deep-copied every field before the objects' bytes were dropped: at 15,000 loose objects, a second of
    # every agent's turn. What cannot be copied at all (a lock) must not stop it either. The objects' listing is saved,
    # without their bytes: after a kill, the next start checks what the turn changed there.
    git = repo(tmp_path / "ws")
    snap = integrity.take(git, exclude=frozenset({"train.py"}))
    snap.contents["not saved"] = threading.Lock()
    snapshot_file.save(snap, git, tmp_path / "turn.json")
    again = snapshot_file.load(tmp_path / "turn.json")
    assert again is not None and again.refs == snap.refs and again.git_files == snap.git_files
    assert again.objects == snap.objects and len(again.objects) == 3  # the first commit's: a blob, a tree, a commit
    assert not set(again.contents) & {content_id for content_id, *_ in snap.objects.values()}
    (tmp_path / "ws" / "notes").mkdir()
    assert snapshot_file.load(_saved(integrity.take(git), git, tmp_path / "turn.json")).folders == ["notes"]
    for forged in ("notes", ["../outside"], [".autoresearch"]):  # not a list; outside the workspace; the loop's own
        saved = json.loads((tmp_path / "turn.json").read_text()) | {"folders": forged}
        (tmp_path / "turn.json").write_text(json.dumps(saved))
        assert snapshot_file.load(tmp_path / "turn.json") is None


def _saved(snap: integrity.Snapshot, git: Git, path: Path) -> Path:
    snapshot_file.save(snap, git, path)
    return path


# -- a full disk ------------------------------------------------------------------------------------


def fake_git(tmp_path: Path, said: str) -> str:
    """A `git` that fails saying `said`, as git does where its write found no space."""
    program = tmp_path / "fake-git"
    program.write_text(f"#!/bin/sh\necho {said!r} >&2\nexit 128\n")
    program.chmod(0o755)
    return str(program)


def test_gits_own_out_of_diskspace_is_a_disk_full_error(tmp_path: Path, monkeypatch) -> None:
    """BROKE, fixed (red team): git's "write error. Out of diskspace" for its index was not taken for a full disk:
    the user got the whole git error, grafts advice and all."""
    from autoresearch.workspace.disk import DiskFullError

    said = f"fatal: sha1 file '{tmp_path}/.git/index.lock' write error. Out of diskspace"
    monkeypatch.setattr(git_module, "program", lambda: fake_git(tmp_path, said))
    with pytest.raises(DiskFullError, match="the disk is full") as err:
        Git(tmp_path)("reset", "-q", "--mixed", "HEAD")
    assert "git reset failed for lack of space" in str(err.value)


def test_a_git_error_that_names_no_cause_on_a_file_system_without_room_is_a_disk_full_error(
    tmp_path: Path, monkeypatch
) -> None:
    """BROKE, fixed (red team): on a full disk git said only "cannot update ref ...: couldn't write '.../5.lock'",
    and the loop stopped with that, with no word of space."""
    from autoresearch.workspace import disk
    from autoresearch.workspace.disk import DiskFullError

    said = f"fatal: cannot update ref 'refs/autoresearch/discarded/5': couldn't write '{tmp_path}/5.lock'"
    monkeypatch.setattr(git_module, "program", lambda: fake_git(tmp_path, said))
    with pytest.raises(GitError, match="couldn't write"):  # room enough: git's own words
        Git(tmp_path)("update-ref", "refs/autoresearch/discarded/5", "HEAD")
    full = os.statvfs_result((4096, 4096, 1000, 0, 0, 100, 0, 0, 0, 255))
    monkeypatch.setattr(disk.os, "statvfs", lambda path: full)
    with pytest.raises(DiskFullError, match="the disk is full"):
        Git(tmp_path)("update-ref", "refs/autoresearch/discarded/5", "HEAD")


def test_a_git_error_carries_no_advice_about_the_grafts_file(tmp_path: Path) -> None:
    """BROKE, fixed (red team): every git error the loop reported began with git 2.39's four lines of advice
    that the grafts file is deprecated (the loop points GIT_GRAFT_FILE at /dev/null)."""
    git = repo(tmp_path / "ws")
    with pytest.raises(GitError) as err:  # a commit read (and with it the grafts file), then a failure
        git("checkout", "-q", git.head(), "--", "no-such-file")
    assert "grafts" not in str(err.value) and "hint:" not in str(err.value)
