"""A run's cap on tasks (evaluator/tasks.py): the setting, RLIMIT_NPROC in a user namespace, and the run's pids group.

A whole run that forks without end is test_red_team.py's `test_a_train_py_that_forks_without_end_...`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from autoresearch.errors import AutoresearchError
from autoresearch.evaluator import run_group, sandbox, tasks
from autoresearch.evaluator.run_group import RunGroup

# Forks until refused (40 at most), kills what it started, tries to raise its limit again: "FORKED RAISED-OR-KEPT".
FORKS = """\
import os, resource, time
children = []
try:
    while len(children) < 40:
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
except OSError:
    pass
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
try:
    resource.setrlimit(resource.RLIMIT_NPROC, (1000, 1000))
    raised = "raised"
except (OSError, ValueError):
    raised = "kept"
print(len(children), raised)
"""
# The cap as a run (harness/boot.py) or an agent's turn (agents/fence.py) of a loop not run as root gets it: as nobody
# where this is root (root is not bound by RLIMIT_NPROC), in a user namespace of its own ("own") or the machine's.
# Imported first (nobody may not read this Python), then in a fork: a process of one thread, as a new user namespace
# needs.
CAPPED_FORKS = """\
import ctypes, os, resource, sys, time
from autoresearch.agents.fence import restrict
from autoresearch.harness.boot import cap_tasks
libc = ctypes.CDLL(None, use_errno=True)
if os.fork():
    sys.exit(os.waitstatus_to_exitcode(os.wait()[1]))
if os.getuid() == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, which the change of user cleared: else /proc/self is root's
if sys.argv[1] == "own":
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        sys.exit("no user namespace: " + os.strerror(ctypes.get_errno()))
    with open("/proc/self/uid_map", "w") as mapping:
        mapping.write(f"{os.getuid()} {os.getuid()} 1")
if sys.argv[2] == "run":
    cap_tasks(16)  # as the harness does on "go"
else:
    restrict(None, None, 16)  # as the agent's fence does
"""


def test_the_cap_is_a_number_of_tasks_or_0_for_none() -> None:
    assert tasks.run_tasks({}) == tasks.DEFAULT_TASKS
    assert tasks.run_tasks({tasks.TASKS_ENV: " 8192 "}) == 8192
    assert tasks.run_tasks({tasks.TASKS_ENV: "0"}) == 0
    with pytest.raises(AutoresearchError, match="AUTORESEARCH_TASKS takes a number") as refused:
        tasks.run_tasks({tasks.TASKS_ENV: "lots"})
    assert "0 for no cap" in refused.value.hint
    for beyond in ("²", "-1", str(tasks.MOST_TASKS + 1)):  # a pids cgroup takes no more than the kernel's most
        with pytest.raises(AutoresearchError, match="up to 4194304"):
            tasks.run_tasks({tasks.TASKS_ENV: beyond})
    assert tasks.limits(0) == {} and RunGroup.make(tasks.limits(0)) is None


@pytest.mark.slow  # over a second: the fast subset stays under a minute
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_NPROC per user namespace is Linux's")
@pytest.mark.parametrize("who", ["run", "agent"])
def test_not_root_a_run_or_an_agents_turn_in_its_own_user_namespace_gets_the_cap_and_cannot_raise_it(who) -> None:
    def forks(namespace: str) -> list[str]:
        script = textwrap.dedent(CAPPED_FORKS) + textwrap.dedent(FORKS)
        done = subprocess.run([sys.executable, "-c", script, namespace, who], capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    forked, raised = forks("own")
    assert 0 < int(forked) < 16 and raised == "kept"
    # In the machine's own user namespace the kernel would count every process of the user: not set there.
    assert forks("machine")[0] == "40"


GROUPS = RunGroup.make(tasks.limits(tasks.DEFAULT_TASKS))
if GROUPS is not None:
    GROUPS.remove()


@pytest.mark.skipif(GROUPS is None, reason="no pids cgroup can be made below this process's (root, cgroup v1: CI)")
def test_a_runs_group_caps_what_it_starts_and_one_its_killed_evaluator_left_is_swept() -> None:
    # A process in a group of 12 forks until refused; its evaluator is then "killed": the group stays behind.
    ready_r, ready_w = os.pipe()
    left = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; os.read(int(sys.argv[1]), 1)", str(ready_r)], pass_fds=[ready_r]
    )
    os.close(ready_r)
    (mine,) = GROUPS.folders
    folder = mine.with_name(f"{run_group.PREFIX}{left.pid}")
    folder.mkdir()
    (folder / "pids.max").write_text("12")
    group = RunGroup({folder: GROUPS.folders[mine]}, frozenset({"pids"}))
    forks = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORKS)], capture_output=True, text=True, timeout=60, check=True,
        preexec_fn=group.enter,
    )  # fmt: skip
    assert 0 < int(forks.stdout.split()[0]) < 12 and tasks.refused(group), forks.stdout
    os.close(ready_w)
    left.wait(timeout=30)
    assert folder.is_dir()
    made = RunGroup.make(tasks.limits(tasks.DEFAULT_TASKS))  # the next run's evaluator sweeps it
    try:
        assert not folder.exists() and made is not None and not tasks.refused(made)
        (made_folder,) = made.folders
        made_folder.rmdir()
        made_folder.mkdir()  # as an earlier process of this pid may have left it: made again all the same
        again = RunGroup.make(tasks.limits(12))
        assert again is not None and (made_folder / "pids.max").read_text().strip() == "12"
    finally:
        made.remove()
        group.remove(wait=0)


@pytest.mark.parametrize(("v1", "promised"), [(True, {"pids"}), (False, set())])
def test_a_cap_is_promised_to_every_run_only_where_a_runs_group_can_have_it_inside_its_evaluators(
    monkeypatch: pytest.MonkeyPatch, tmp_path, v1: bool, promised: set[str]
) -> None:
    """cgroup v2 hands no controller down to a group that holds a process, and a run's group is made inside its
    evaluator's, which holds the evaluator: a pids group the loop could make in its own cgroup on v2 promised every
    run a cap no run's evaluator could give, and every run would have stopped the loop. (v1 gives every group all.)"""
    made = RunGroup({tmp_path / "autoresearch-run-1": v1}, frozenset({"pids"}))
    monkeypatch.setattr(RunGroup, "make", classmethod(lambda cls, limits: made))
    monkeypatch.setattr(RunGroup, "remove", lambda self, wait=0: None)
    monkeypatch.setattr(run_group, "_limitable", {})
    assert run_group.limitable(tasks.limits(48)) == promised
    assert sandbox.runs_capped(48) is bool(promised)  # `run` warns where runs are not capped (as root, here)


def test_a_bubblewrap_that_makes_no_user_namespace_caps_no_run_by_rlimit_and_run_is_told(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """A setuid bubblewrap makes no user namespace where unprivileged ones are disabled: its runs are in the machine's,
    where the harness sets no RLIMIT_NPROC (it would count every process of yours), and `run` said they were capped
    (BROKE, fixed: it asked only whether runs were confined)."""
    flat = tmp_path / "bwrap"  # a sandbox in the machine's user namespace: what it runs sees the machine's map
    flat.write_text("#!/bin/sh\nexec cat /proc/self/uid_map\n")
    flat.chmod(0o755)
    monkeypatch.setattr(tasks, "by_limit", lambda: True)  # a loop not run as root, on Linux 5.14 or later
    monkeypatch.setattr(run_group, "limitable", lambda limits: set())  # and no pids group to be made

    def probe_again() -> None:
        for cached in (sandbox.bwrap, sandbox.unavailable_reason, sandbox.own_user_namespace):
            cached.cache_clear()

    probe_again()
    try:
        assert sandbox.own_user_namespace() and sandbox.runs_capped(48)  # this machine's bubblewrap makes one
        probe_again()
        monkeypatch.setenv(sandbox.BWRAP_ENV, str(flat))
        assert sandbox.unavailable_reason() is None  # confined, as far as the probe can tell
        assert not sandbox.own_user_namespace() and not sandbox.runs_capped(48)
        assert sandbox.runs_capped(0)  # no cap wanted: none missing
    finally:
        probe_again()
