"""A root loop's run as a user of its own (evaluator/run_user.py), wherever the machine allows it: RLIMIT_NPROC,
which binds no process of root's, binds it. The loop's own tests of a fork bomb (tests/test_red_team.py) run through
the real loop; these check the sandbox itself, with no cgroup at all, and what the loop decides."""

from __future__ import annotations

import argparse
import fcntl
import os
import textwrap

import pytest

from autoresearch.cli import commands
from autoresearch.errors import AutoresearchError
from autoresearch.evaluator import promises, run_user, sandbox

NS_GET_OWNER_UID = 0xB704  # ioctl on a user namespace's descriptor: its owner, as this process's namespace maps it
ROOT = pytest.mark.skipif(os.getuid() != 0, reason="only a loop run as root runs its runs as a user of their own")

# What a run finds of itself once it is `nobody`, then forks under a cap of 20 tasks until refused.
AS_NOBODY = """
import os, resource
resource.setrlimit(resource.RLIMIT_NPROC, (20, 20))
print("ids", os.getresuid(), os.getresgid(), os.getgroups())
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print("caps", [name for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb") if int(status[name], 16)])
for ask in (lambda: os.setresuid(0, 0, 0), lambda: os.setresgid(0, 0, 0), lambda: resource.setrlimit(
        resource.RLIMIT_NPROC, (4096, 4096))):
    try:
        ask()
        print("regained")
    except (OSError, ValueError):
        pass
open("written", "w").write("in its box")
open("/tmp/written", "w").write("in its /tmp")
import multiprocessing
multiprocessing.Lock()  # a semaphore in /dev/shm, as the compiler's pool of workers makes (BROKE, fixed: root's)
print("wrote")
forked = 0
try:
    for _ in range(40):
        if os.fork() == 0:
            import time
            time.sleep(2)
            os._exit(0)
        forked += 1
except BlockingIOError:
    pass
print("forked", forked)
"""


@ROOT
def test_a_run_of_its_own_user_is_capped_by_rlimit_nproc_alone_and_cannot_become_root_again() -> None:
    """In its sandbox, with no cgroup: the run is `nobody` with no other group and no capability, writes its box, its
    /tmp and its /dev/shm, cannot become root again nor raise its cap, and forks 19 times under a cap of 20 (its Python
    is one)."""
    assert sandbox.users_reason() is None
    ran = sandbox.as_run_user(textwrap.dedent(AS_NOBODY))
    assert not isinstance(ran, str), ran
    nobody = run_user.RUN_UID
    assert f"ids {(nobody,) * 3} {(nobody,) * 3} []" in ran.stdout, ran.stdout + ran.stderr
    assert "caps []" in ran.stdout and "regained" not in ran.stdout and "wrote" in ran.stdout, ran.stdout
    assert "forked 19" in ran.stdout, ran.stdout + ran.stderr


@ROOT
@pytest.mark.parametrize(("switch", "wanted"), [("", True), ("auto", True), ("nobody", True), ("root", False)])
def test_a_root_loop_makes_its_runs_a_user_of_their_own_unless_told_not_to(monkeypatch, switch, wanted) -> None:
    """Where a pids group caps the run too: what the kernel counts by user is then the run's own
    (tests/test_red_team_per_user.py)."""
    monkeypatch.setenv(run_user.RUN_USER_ENV, switch)
    assert run_user.wanted() is wanted
    promised = sandbox.can_promise(dict(os.environ))
    assert (promises.USER in promised) is wanted, promised


def test_a_loop_not_run_as_root_never_does_and_a_wrong_switch_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setenv(run_user.RUN_USER_ENV, "nobody")
    assert not run_user.wanted()
    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.setenv(run_user.RUN_USER_ENV, "daemon")
    with pytest.raises(AutoresearchError, match="auto, nobody or root"):
        run_user.wanted()


class Reached(Exception):
    """The loop's workspace was opened: `run` went past its checks."""


@pytest.mark.parametrize(("switch", "refused"), [("auto", False), ("nobody", True)])
def test_run_refuses_to_start_where_nobody_was_asked_for_and_cannot_be_had(monkeypatch, switch, refused) -> None:
    """`auto` takes root with no capability left where the machine cannot make a run a user of its own; asked for by
    name, `run` says it cannot, before anything starts."""
    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.setenv(run_user.RUN_USER_ENV, switch)
    monkeypatch.setattr(sandbox, "users_reason", lambda: "no user namespace can be made here: EPERM")

    def opened(root):
        raise Reached

    monkeypatch.setattr("autoresearch.workspace.workspace.Workspace", opened)
    args = argparse.Namespace(baseline_runs=2, timeout=None, workspace=None)
    expected = AutoresearchError if refused else Reached
    with pytest.raises(
        expected, match="AUTORESEARCH_RUN_USER=nobody, but a run cannot be made a user" if refused else None
    ):
        commands.make_loop(args, reporter=None)


@ROOT
def test_the_runs_namespace_is_owned_by_a_user_it_does_not_map_neither_root_nor_the_run() -> None:
    """Its owner (NS_GET_OWNER_UID) is the evaluator's `owner_uid`: not root (what the kernel counts for the maker
    would be root's), and not the run's own user outside, which the namespace maps (a process of that user outside
    held every capability in the namespace, which maps root: tests/test_red_team_run_owner.py)."""
    userns = run_user.namespace()
    try:
        owner = int.from_bytes(fcntl.ioctl(userns, NS_GET_OWNER_UID, b"\0" * 4), "little")
    finally:
        os.close(userns)
    assert owner == run_user.owner_uid() and owner not in (0, run_user.host_uid())
