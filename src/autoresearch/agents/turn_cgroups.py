"""The cgroups a shell agent's turns start in, where a loop run as root can make them.

A turn of a loop run as root is root in its user namespace. In cgroup and mount namespaces of its own (which the
coding agents' own sandboxes need, so they are not refused) it may mount any cgroup hierarchy afresh, whose root is
then the cgroup it started in, and, as the owner of their files (cgroup v1 checks no more), change what lies below
(red team): move into a cpuset of the runs' CPUs, where its pin named none of the cpuset's (a task then runs on the
cpuset's); set `pids.max` to 1 on a run's pids group (evaluator/tasks.py), so that every process or thread another
worker's run starts is refused; change the memory limit of the loop's own cgroup; freeze another service. So such a
loop starts each turn, in every hierarchy, in a group of the turn's own that lies in another of the loop's: the
turn's own mount shows only its group and what it makes in it, and the outer group, the other workers' turns', the
loop's and the runs' are out of its sight (one group for every turn let a turn freeze the turns beside it). In the
cpuset hierarchy both are of the agents' CPUs, which a cpuset inside cannot leave. cgroup v2 keeps a cgroup
namespace's root from its processes (`nsdelegate`), but not what lies below it: its hierarchy gets the same groups.
The outer pids group caps the turns' tasks together (evaluator/tasks.py): an agent that forked without end would fill
the process table, as a run would.

The turn's own group is then not the turn's to write either (`_lock`): it could freeze its processes there, which
cgroup v1 keeps from dying (the loop thaws them, `thaw`, where the lock cannot be set), and make groups without end:
each holds kernel memory, and cgroup v1 has 65,535 memory-group ids per machine, past which a run's memory group
(evaluator/run_group.py) could not be made and the run would hold what it liked.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import time
from pathlib import Path

from autoresearch.evaluator import cgroups, memory, run_group
from autoresearch.evaluator.run_group import RunGroup, named, write_limits

PREFIX = "autoresearch-agents-"  # + the loop's pid, "-", the CPUs (on v2 beside its cgroup, + "-" + that one's name)
HELD = frozenset({"pids", "memory"})  # the controllers the turns are held by: their cap of tasks, each one's memory
TURN = "turn-"  # + the pid of the turn's first process
LEAVE_WAIT_S = 2.0  # how long a turn's group is given to empty once the turn has been killed
NOBODY = 65534  # the owner of a turn's own group: no turn's user namespace maps it (they map root alone)


@functools.cache
def turn_groups(cpus: str) -> tuple[Path, ...]:
    """The groups the turns' own lie in, one per hierarchy, in cpuset's of `cpus` (a kernel CPU list; "": the loop's
    own), made once per loop and removed when it exits; none where the loop is not run as root, and in a hierarchy
    that cannot be written (a container's read-only /sys/fs/cgroup). On cgroup v2, beside the loop's own cgroup where
    it hands nothing down, as a run's group is (run_group.home_on_v2: BROKE, fixed: a root loop's turns there had
    neither their cap of tasks nor their memory limit), the turns' groups inside given the controllers; below it
    where the parent cannot take the outer."""
    if os.getuid() != 0:
        return ()
    made = []
    for held, own in cgroups.own_every_folder():
        # Below the loop's cgroup too where its parent cannot take the outer (red team: a name past 255 bytes, the
        # agents' CPUs and the loop's cgroup's; a parent not the loop's to write): no group at all left the turn in the
        # loop's own cgroup, whose cgroup.freeze and cgroup.kill it could write from a cgroup namespace of its own.
        outer = next(filter(None, (_outer(held, own, home, cpus) for home in _homes(held, own))), None)
        if outer is None:
            continue
        if not held:  # v2: the turns' groups get what the outer is given (it holds no process)
            run_group.hand_down(outer, HELD)
        atexit.register(_remove, outer, os.getpid())
        made.append(outer)
    return tuple(made)


def sweep_left() -> None:
    """Remove the turns' groups that loops killed outright left where this loop would make its own (no atexit of
    theirs ran), at its start: their turns died with them (orphans.die_with), and the groups stayed, empty, until the
    first turn of a later loop run as root."""
    if os.getuid() != 0:
        return
    for held, own in cgroups.own_every_folder():
        for home in _homes(held, own):
            cgroups.sweep(home, outer_pattern(), own)


def _homes(held: str, own: Path) -> list[Path]:
    """Where the turns' outer group is made in the hierarchy of the controllers `held` (v2: none named), the loop's
    cgroup being `own`, best first: below it on v1; on v2 beside it where its parent hands HELD down, else below it."""
    return list(dict.fromkeys([own] if held else [run_group.home_on_v2(own, HELD, beside=True) or own, own]))


def _outer(held: str, own: Path, home: Path, cpus: str) -> Path | None:
    """The turns' outer group in `home` (the loop's cgroup `own`, or beside it) of the hierarchy of the controllers
    `held`, made, a killed loop's there swept first; None where it cannot be made."""
    suffix = "" if home == own else f"-{own.name}"
    cgroups.sweep(home, outer_pattern(), own)
    outer = home / f"{PREFIX}{os.getpid()}-{cpus.replace(',', '_').replace('-', '.') or 'all'}{suffix}"
    try:
        outer.mkdir(exist_ok=True)
        if "cpuset" in held.split(","):  # a cpuset takes no task before it has CPUs and memory nodes
            (outer / "cpuset.cpus").write_text(cpus or cgroups.text(own / "cpuset.cpus").strip())
            (outer / "cpuset.mems").write_text(cgroups.text(own / "cpuset.mems").strip())
    except OSError:
        cgroups.remove(outer)
        return None
    return outer


def outer_pattern() -> str:
    """The names of a loop's outer groups (cgroups.sweep's pattern, which reads the name of the cgroup they were made
    beside after it): the pid, the CPUs with no "-" in them, so that no part of that name is read as theirs."""
    return re.escape(PREFIX) + cgroups.PID + "-(?:all|[0-9_.]+)"


def enter(groups: tuple[Path, ...], tasks: int, held: int = 0) -> None:
    """Put this process (a turn's first), and so all it starts from now on, in a group of its own in each of
    `groups`, the turns at most `tasks` tasks together (0: no cap), this one at most `held` bytes of memory (0: no
    limit), its processes' and what it writes in a tmpfs together. Where a group is gone (removed by hand), the turn
    runs outside it there."""
    for outer in groups:
        with contextlib.suppress(OSError):
            if (outer / "pids.max").exists():
                (outer / "pids.max").write_text(str(tasks or "max"))
            own = outer / f"{TURN}{os.getpid()}"
            own.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):  # v1 leaves a new cpuset's empty
                if (outer / name).exists():
                    (own / name).write_text(cgroups.text(outer / name).strip())
            v1 = (own / "tasks").exists()
            limit = named("memory.max", v1)
            if held and limit and (own / limit).exists():  # the memory hierarchy, or v2's handing it down
                write_limits(own, v1, memory.limits(held)["memory"])
            _lock(own)
            (own / "cgroup.procs").write_text(str(os.getpid()))


def _lock(group: Path) -> None:
    """Make `group` and its files no user's to write, none but root outside every user namespace: owned by NOBODY,
    which the turn's user namespace does not map, so that its root's capabilities do not reach them, and no write bit
    left for NOBODY itself. Left as it is where this process cannot (a loop that is root in a user namespace of its
    own, where NOBODY is not mapped either)."""
    with contextlib.suppress(OSError):
        for path in (group, *group.iterdir()):
            os.chown(path, NOBODY, NOBODY)
            os.chmod(path, os.stat(path).st_mode & 0o555)


def thaw(groups: tuple[Path, ...], pid: int) -> None:
    """Thaw the groups of the turn whose first process was `pid`, and every group the turn made in them, outermost
    first: a turn can mount the freezer hierarchy as it can any other and freeze its processes (its own group too),
    which cgroup v1 then keeps from dying of SIGKILL: they outlived the turn in its pids group, and the loop waited for
    a frozen first process for ever (red team). Killed, they die once thawed. Needed where the turn's group could not
    be locked (`_lock`)."""
    for outer in groups:
        cgroups.walk(outer / f"{TURN}{pid}", _thawed)


def _thawed(folder: int) -> None:
    for name, thawed in (("freezer.state", b"THAWED"), ("cgroup.freeze", b"0")):  # v1's, v2's
        with contextlib.suppress(OSError):
            state = os.open(name, os.O_WRONLY, dir_fd=folder)
            try:
                os.write(state, thawed)
            finally:
                os.close(state)


def killed_for_memory(groups: tuple[Path, ...], pid: int) -> bool:
    """Whether the kernel killed a process of the turn whose first process was `pid` for its memory."""
    turn = RunGroup({outer / f"{TURN}{pid}": (outer / "tasks").exists() for outer in groups}, frozenset())
    return memory.killed(turn)


def leave(groups: tuple[Path, ...], pid: int) -> None:
    """Remove the groups of the turn whose first process was `pid`, once the turn has been killed and its processes
    have left them, thawed (else they go with the outer group when the loop exits)."""
    deadline = time.monotonic() + LEAVE_WAIT_S
    for outer in groups:
        while not cgroups.remove(outer / f"{TURN}{pid}") and time.monotonic() < deadline:
            thaw(groups, pid)
            time.sleep(0.02)


def leave_unstarted(groups: tuple[Path, ...]) -> None:
    """Remove the groups of turns whose first process is gone: one whose program could not be started (its exec
    failed, E2BIG) had entered its groups, and no pid of it is known for `leave`; each such turn left an empty group
    until the loop's end. Another worker's turn, whose first process lives, keeps its own."""
    for outer in groups:
        with contextlib.suppress(OSError):
            for group in outer.glob(f"{TURN}*"):
                pid = group.name.removeprefix(TURN)
                if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                    cgroups.remove(group)


def _remove(outer: Path, maker: int) -> None:
    if os.getpid() == maker:  # not a process forked from the loop's, ending before it
        cgroups.remove(outer)
