"""The experiments' folders (`.autoresearch/box-*`) of evaluators killed before they could remove their own."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from loop_support import FakeExecutor, make_loop

from autoresearch.orphans import owned_box, remove_box, remove_left_boxes


def test_a_start_removes_the_boxes_of_evaluators_that_ended_and_keeps_those_in_use(workspace) -> None:
    state = workspace.state
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    left = owned_box(state, ended.pid)  # its evaluator was killed with the loop
    (left / ".compile").mkdir()
    (left / "train.py").write_text("x = 1\n")
    ended.wait()
    in_use = owned_box(state, os.getpid())  # another evaluator's, running
    just_made = state / "box-fresh"  # made a moment ago, its owner not yet written
    just_made.mkdir()
    old = state / "box-old"  # from a version that wrote no owner
    old.mkdir()
    os.utime(old, (time.time() - 3600, time.time() - 3600))

    make_loop(workspace, FakeExecutor(lambda source: 1.0)).recover_workspace()
    assert sorted(p.name for p in state.glob("box-*")) == sorted([in_use.name, in_use.name + ".owner", just_made.name])
    assert remove_left_boxes(state) == 0  # nothing more to take


def test_a_folder_train_py_made_read_only_does_not_keep_its_box(tmp_path, monkeypatch) -> None:
    """A confined train.py can make a folder of its box read-only; the box must still go (the tests run as root,
    whom permissions do not stop: unlinking is refused here as it would be for a user)."""
    real_unlink = os.unlink

    def unlink(path, *, dir_fd=None):
        parent = os.fstat(dir_fd) if dir_fd is not None else os.stat(os.path.dirname(path))
        if not parent.st_mode & 0o200:
            raise PermissionError(13, "Permission denied", path)
        return real_unlink(path, dir_fd=dir_fd)

    box = owned_box(tmp_path, os.getpid())
    locked = box / "ro"
    locked.mkdir()
    (locked / "big").write_bytes(b"x" * 1000)
    locked.chmod(0o500)
    monkeypatch.setattr(os, "unlink", unlink)
    assert remove_box(box) and not box.exists() and not list(tmp_path.iterdir())
