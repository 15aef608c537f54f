"""Red team: a turn that starves its PID namespace's init (the anchor, autoresearch/anchor.py) of the CPU it needs to
end the namespace.

The namespace ends only when its init runs its own exit (the kernel kills the rest from there, in the init's
context). The anchor is the turn's user's: `sched_setscheduler(1, SCHED_IDLE)` and `sched_setaffinity(1, ...)` ask
only for the same user, which a turn is. A turn set them, and kept the anchor's CPU busy with loops that left its
process group (the loop's killpg missed them): the anchor's SIGKILL, at the turn's end or from its parent-death signal
when the loop was killed outright, took effect about a second per busy loop later, and the turn wrote in the workspace
after the loop was done with it (BROKE, fixed). The fence now refuses those calls on pid 1 (agents/fence.py), and the
loop kills every process of the namespace itself (orphans.kill_namespace), at the turn's end and at the next start.
What the fence cannot refuse, the priority of the anchor's session (its autogroup, a file in /proc), is tried too.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time

import psutil
import pytest
from loop_support import FakeExecutor, ScriptedAgent, agent_channel, make_loop
from test_agent_turn import PY, kill_during_turn, score, set_lr
from test_red_team_agent import marked_processes, turn_within

from autoresearch.agents import namespace

HOGS = 48  # busy loops: about a second each of the anchor's delay before (a 2-core VM)
REFUSED = "pin: Operation not permitted; idle: Operation not permitted; nice: Operation not permitted"

# argv: marker, number of busy loops, the channel folder (written for real). Forks the busy loops and a writer, each
# in a session of its own (out of the turn's process group, and of the anchor's autogroup), tries to set the anchor
# SCHED_IDLE on the busy loops' CPU and the anchor's process group at nice 19, lowers the anchor's autogroup, says what
# the kernel let it do (channel/said), and returns. The writer waits for the test's word (channel/go), then writes
# late.txt in the workspace (its working directory) and channel/wrote.
STARVE = r"""
import os, sys, time
marker, hogs, channel = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def leave():
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
for _ in range(hogs):
    if os.fork() == 0:
        leave()
        while True:
            pass
if os.fork() == 0:
    leave()
    while not os.path.exists(os.path.join(channel, "go")):
        time.sleep(0.1)
    with open("late.txt", "w") as late:
        late.write("written by the turn after the loop was done with it\n")
    open(os.path.join(channel, "wrote"), "w").close()
    time.sleep(600)
said = []
for what, act in (
    ("pin", lambda: os.sched_setaffinity(1, {min(os.sched_getaffinity(0))})),  # the anchor onto the busy loops' CPU
    ("idle", lambda: os.sched_setscheduler(1, os.SCHED_IDLE, os.sched_param(0))),  # the anchor: weight 3
    ("nice", lambda: os.setpriority(os.PRIO_PGRP, 0, 19)),  # the turn's first process group: the anchor's too
):
    try:
        act()
        said.append(what)
    except OSError as err:
        said.append(f"{what}: {err.strerror}")
for autogroup in ("/proc/self/autogroup", "/proc/1/autogroup"):  # the anchor's session's, where it is writable
    try:
        with open(autogroup, "w") as group:
            group.write("19")
    except OSError:
        pass
open(os.path.join(channel, "said"), "w").write("; ".join(said))
"""


def _starve(marker: str, channel) -> str:
    return f"{PY} -c {shlex.quote(STARVE)} {marker} {HOGS} {shlex.quote(str(channel))}"


def _writes_late(workspace, channel, marker: str, within: float = 30.0) -> bool:
    """Tell the turn's writer to go (the loop is done with the turn); whether it wrote in the workspace."""
    (channel / "go").touch()
    deadline = time.monotonic() + within
    while marked_processes(marker) and not (channel / "wrote").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return (workspace.root / "late.txt").exists()


def _kill(marker: str) -> None:
    for process in marked_processes(marker):
        with contextlib.suppress(psutil.Error):
            process.kill()


@pytest.mark.skipif(not namespace.pid_namespace(), reason="no PID namespace can be made here")
@pytest.mark.slow  # seconds
def test_a_turn_that_starves_its_anchor_does_not_outlive_its_turn(workspace, tmp_path):
    """At the turn's end (here its timeout) nothing of it runs on after `loop.run` has returned, nor writes in the
    workspace."""
    marker = f"{os.getpid() % 1000}.{time.time_ns() % 10**6}"
    channel = agent_channel(workspace)
    try:
        exp, took = turn_within(workspace, tmp_path, f"{set_lr(0.2)}\n{_starve(marker, channel)}\nsleep 600", 5)
        assert (channel / "said").read_text() == REFUSED
        assert "did not finish within 5 s" in exp.reason, exp.reason
        alive = len(marked_processes(marker))
        assert not alive and not _writes_late(workspace, channel, marker), (
            f"{alive} ran on {took:.0f} s after the start"
        )
        assert took < 30
    finally:
        _kill(marker)


@pytest.mark.skipif(not namespace.pid_namespace(), reason="no PID namespace can be made here")
@pytest.mark.slow  # seconds
def test_a_turn_that_starves_its_anchor_does_not_outlive_a_loop_killed_outright(workspace, tmp_path):
    """Killed outright, the loop leaves the turn to the parent-death signals of its first process and, from that, of
    the anchor; the next start kills the namespace agent.pid names, every process of it. Nothing of the turn runs on
    after that start, nor writes in the workspace. (Checked by hand with the fence's rule on pid 1 taken out, the
    anchor then starved: 49 of the turn's processes ran on where the start killed the init alone, none where it
    kills every process of the namespace.)"""
    marker = f"{os.getpid() % 1000}.{time.time_ns() % 10**6}"
    make_loop(workspace, FakeExecutor(score), baseline_runs=2).baseline()
    channel = agent_channel(workspace)
    try:
        kill_during_turn(workspace, tmp_path, _starve(marker, channel))
        assert (channel / "said").read_text() == REFUSED
        make_loop(workspace, FakeExecutor(score)).run(ScriptedAgent([]), max_experiments=0)  # reaps, puts back
        alive = len(marked_processes(marker))
        assert not alive and not _writes_late(workspace, channel, marker), f"{alive} of the turn's processes ran on"
    finally:
        _kill(marker)
