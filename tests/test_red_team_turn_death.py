"""Red team: an agent's turn that outlives its loop killed outright, and what the next start does about it."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import sys
import time

import psutil
import pytest
from loop_support import FakeExecutor, ScriptedAgent, agent_channel, make_loop
from test_agent_turn import kill_during_turn, left_turn_groups, score
from test_red_team_agent import PTRACE, marked_processes

from autoresearch.agents import namespace

PY = shlex.quote(sys.executable)

# Tries to have its PID namespace's init (pid 1) drop the parent-death signal `unshare --kill-child` gave it and leave
# the turn's process group, and to open the init's memory to write, writing what the kernel said to the file argv[3];
# leaves the group itself, starts a helper, then asks for the loop's kill.
DODGE = (
    PTRACE
    + r"""
import sys, time
os.setsid()
said = []
try:
    inject(1, [(157, 1, 0), (112,)])  # prctl(PR_SET_PDEATHSIG, 0), setsid()
    said.append("traced")
except OSError as err:
    said.append(err.strerror)
try:  # or rewrite its code (as a run rewrote a `sleep`, the anchor of runs before)
    os.close(os.open("/proc/1/mem", os.O_RDWR))
    said.append("opened")
except OSError as err:
    said.append(err.strerror)
open(sys.argv[3], "w").write("; ".join(said))
if os.fork() == 0:
    os.execv("/bin/sleep", ["sleep", sys.argv[1]])
open(sys.argv[2], "w").close()
time.sleep(120)
"""
)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the injected system calls are x86_64's")
@pytest.mark.skipif(not namespace.pid_namespace(), reason="no PID namespace can be made here")
@pytest.mark.slow  # seconds
def test_a_turn_cannot_have_its_init_drop_its_parent_death_signal(workspace, tmp_path):
    """BROKE, fixed: a turn dies with its loop killed outright through the parent-death signals of its first process
    (`unshare`) and, from that, of its PID namespace's init, which was the turn's own shell. Through ptrace (the same
    user, dumpable) the turn had the init drop its signal and leave the turn's process group: killed outright, the
    loop left the turn running until the next start (which kills the init agent.pid names), or for good where there
    was none (red team). The init is now an anchor of ours, not dumpable, in a user namespace above the agent's: the
    kernel refuses the trace, and the turn dies with its loop."""
    marker = f"{os.getpid() % 1000}.{time.time_ns() % 10**6}"
    make_loop(workspace, FakeExecutor(score), baseline_runs=2).baseline()
    said = agent_channel(workspace) / "the kernel said"  # /tmp is the turn's own
    words = " ".join(map(shlex.quote, (DODGE, marker, str(agent_channel(workspace) / "kill the loop"), str(said))))
    try:
        kill_during_turn(workspace, tmp_path, f"exec {PY} -c {words}")
        assert said.read_text() == "Operation not permitted; Permission denied"
        deadline = time.monotonic() + 5
        while marked_processes(marker):
            assert time.monotonic() < deadline, "the turn outlived its loop"
            time.sleep(0.05)
        events = []
        make_loop(workspace, FakeExecutor(score), events=events).run(ScriptedAgent([]), max_experiments=0)
        assert not any("killed an agent" in e for e in events)  # none was left to kill
        assert not left_turn_groups()  # a loop run as root left its turns' groups: the start removed them
    finally:
        for process in marked_processes(marker):
            with contextlib.suppress(psutil.Error):
                process.kill()


@pytest.mark.skipif(not namespace.pid_namespace(), reason="no PID namespace can be made here")
def test_an_init_named_in_a_forged_agent_pid_file_is_killed_only_where_it_is_a_turns(workspace):
    """The init named after the group in agent.pid (within the turn's reach) is killed only where it still has its
    start time and is the init of a PID namespace, in a user namespace, that are not the loop's: never a process of
    the loop's own namespaces (the user's), the loop itself, nor an init whose pid was reused."""
    import subprocess

    from autoresearch.orphans import reap, write_pid_file

    pid_file = workspace.state / "agent.pid"
    plain = subprocess.Popen(["sleep", "60"])
    turn = subprocess.Popen(["unshare", "--user", "--pid", "--fork", "--map-root-user", "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while not psutil.Process(turn.pid).children():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        [init] = psutil.Process(turn.pid).children()
        for named in (plain.pid, os.getpid()):
            write_pid_file(pid_file, 2**22 - 1, named)
            assert not reap(pid_file) and psutil.Process(named).is_running()
        write_pid_file(pid_file, 2**22 - 1, init.pid)
        words = pid_file.read_text().split()
        pid_file.write_text(" ".join([*words[:3], str(float(words[3]) + 1)]))  # its pid, another's start time
        assert not reap(pid_file) and init.is_running()
        pid_file.write_text(" ".join(words))
        assert reap(pid_file)
        assert turn.wait(5) is not None  # the namespace went with its init, and the `unshare` that waited for it
    finally:
        for process in (plain, turn):
            process.kill()
            process.wait()
