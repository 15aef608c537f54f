"""A cpuset cgroup for a shell agent's turns, where a loop run as root can make one (cgroup v1's cpuset hierarchy).

The fence pins a turn to the agents' CPUs and refuses it `sched_setaffinity` (agents/fence.py). But the turn of a
loop run as root is root in its user namespace, and in cgroup and mount namespaces of its own (which the coding
agents' own sandboxes need, so they are not refused) it could mount the cpuset hierarchy afresh and move into a
cpuset of every CPU, or widen the one it is in: a task entering a cpuset takes its CPUs (red team). So such a loop
starts each turn in a cpuset of the agents' CPUs that lies in another of them: the turn's own mount shows the inner
one as its root, whose CPUs cannot leave those of the outer one, which it cannot see. cgroup v2 keeps a cgroup
namespace's root from its processes (`nsdelegate`), and its cpuset controller is seldom handed down to a loop: there
nothing is made, and the pin and the filter are what hold.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
from pathlib import Path

from autoresearch.evaluator import cgroups

PREFIX = "autoresearch-agents-"  # + the loop's pid, "-", the CPUs
TURN = "turn"


@functools.cache
def turn_group(cpus: str) -> Path | None:
    """The cpuset a turn on `cpus` (a kernel CPU list) starts in, made once per loop (removed when it exits); None
    where there are none to keep to, or none can be made: a loop not run as root, no v1 cpuset hierarchy to write."""
    if not cpus or os.getuid() != 0:
        return None
    for own, _ in cgroups.own_folders("cpuset"):
        if not (own / "tasks").exists():  # v2
            continue
        cgroups.sweep(own, PREFIX)
        outer = own / f"{PREFIX}{os.getpid()}-{cpus.replace(',', '_')}"
        try:
            mems = cgroups.text(own / "cpuset.mems").strip()  # a cpuset takes no task before it has memory nodes
            for folder in (outer, outer / TURN):
                folder.mkdir(exist_ok=True)
                (folder / "cpuset.cpus").write_text(cpus)
                (folder / "cpuset.mems").write_text(mems)
        except OSError:
            cgroups.remove(outer)
            continue
        atexit.register(_remove, outer, os.getpid())
        return outer / TURN
    return None


def enter(group: Path) -> None:
    """Put this process, and so all it starts from now on, in the cpuset `group` (in a turn's first process). Where
    it is gone (removed by hand), the turn runs as where none can be made: pinned, and the filter refusing a new pin."""
    with contextlib.suppress(OSError):
        (group / "cgroup.procs").write_text(str(os.getpid()))


def _remove(outer: Path, maker: int) -> None:
    if os.getpid() == maker:  # not a process forked from the loop's, ending before it
        cgroups.remove(outer)
