"""The experiments' folders (`.autoresearch/box-*`) of evaluators killed before they could remove their own."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from loop_support import FakeExecutor, make_loop

from autoresearch.orphans import owned_box, remove_left_boxes


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
