"""How many tasks (processes and threads, as the kernel counts them) one run may have at once; and a shell agent's
turns, together (agents/turn_cgroups.py for a loop run as root, agents/fence.py otherwise).

A train.py that forks without end (a fork bomb, or a pool started in a loop) fills the machine's process table
(32,768 entries on many machines) within a second. The sandbox's PID namespace kills all of it when the run ends,
but until then the loop cannot start git, and an honest run of another worker cannot start its compiler's workers:
it crashes, and a crash is not retried. So a run gets at most `run_tasks()` tasks:

- by RLIMIT_NPROC, under a loop not run as root, set as the run begins (harness/boot.py, told by the evaluator's
  "go") in the run's own user namespace. From Linux 5.14 on the kernel counts it per user namespace, so only the
  run's tasks count (before, every process of yours would: not set there). The run cannot raise it again: that
  takes CAP_SYS_RESOURCE outside its namespace.
- by a pids cgroup made for the run below the evaluator's own (`Group`), where one can be made: a loop run as root,
  which RLIMIT_NPROC does not bind, with cgroup v1's pids hierarchy, or v2 where its cgroup hands the pids
  controller down. The run cannot leave it: /sys is read-only in the sandbox, and its filter refuses mounts.

Elsewhere (root, and no such cgroup) a run is not capped, and `run` says so (`capped`).
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from autoresearch.errors import AutoresearchError
from autoresearch.evaluator import cgroups

TASKS_ENV = "AUTORESEARCH_TASKS"  # the most tasks a run, or an agent's turns together, may have at once; "0": none
# A GPU run has a few hundred: torch's threads, CUDA's, the compiler's pool of workers and theirs.
DEFAULT_TASKS = 4096
MOST_TASKS = 4_194_304  # the kernel's own most (PID_MAX_LIMIT): a pids cgroup takes no higher limit
GROUP_PREFIX = "autoresearch-run-"  # + the evaluator's pid
REMOVE_WAIT_S = 5.0  # how long a finished run's group is given to empty: its tasks leave as the kernel reaps them


def run_tasks(env: Mapping[str, str] = os.environ) -> int:
    """The most tasks a run may have at once (TASKS_ENV; DEFAULT_TASKS where unset), 0 for no cap."""
    raw = env.get(TASKS_ENV, "").strip()
    if not raw:
        return DEFAULT_TASKS
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MOST_TASKS:
        raise AutoresearchError(
            f"{TASKS_ENV} takes a number of tasks, processes and threads together, up to {MOST_TASKS} (got {raw!r})",
            hint=f"e.g. {TASKS_ENV}=8192, or 0 for no cap; unset, a run may have {DEFAULT_TASKS}",
        )
    return int(raw)


def by_limit() -> bool:
    """Whether RLIMIT_NPROC can cap a confined run here: a loop not run as root, on Linux 5.14 or later."""
    if not sys.platform.startswith("linux") or os.getuid() == 0:
        return False
    release = re.match(r"(\d+)\.(\d+)", platform.release())
    return release is not None and (int(release[1]), int(release[2])) >= (5, 14)


def capped(confined: bool, tasks: int) -> bool:
    """Whether a run started by this process gets its cap of `tasks`, by RLIMIT_NPROC or by a group it can make (0:
    none is wanted, and none is missing)."""
    if tasks == 0 or (confined and by_limit()):
        return True
    group = Group.make(tasks)
    if group is not None:
        group.remove()
    return group is not None


class Group:
    """A pids cgroup for one run, below this process's own: made before the run starts, entered by the run's
    first process (so all it starts are in it), removed once the run has ended."""

    def __init__(self, folder: Path):
        self.folder = folder

    @classmethod
    def make(cls, tasks: int) -> Group | None:
        """A group of at most `tasks` tasks; None where none can be made here (no pids controller below this
        process's cgroup, or no right to write there)."""
        if tasks == 0:
            return None
        for own, _ in cgroups.own_folders("pids"):
            v1 = (own / "tasks").exists()  # v1 gives every group the pids controller; v2 those it is handed down to
            if not v1 and "pids" not in cgroups.text(own / "cgroup.subtree_control").split():
                continue
            cgroups.sweep(own, GROUP_PREFIX)
            group = cls(own / f"{GROUP_PREFIX}{os.getpid()}")
            cgroups.remove(group.folder)  # one left by an earlier process of this pid, empty
            try:
                group.folder.mkdir()
                (group.folder / "pids.max").write_text(str(tasks))
            except OSError:
                group.remove(wait=0)
                continue
            return group
        return None

    def enter(self) -> None:
        """Put this process in the group, and so everything it starts from now on."""
        (self.folder / "cgroup.procs").write_text(str(os.getpid()))

    def reached(self) -> bool:
        """Whether a task was refused, for this cap or one above it (pids.events' count, which v1 keeps for both)."""
        events = dict(line.split(None, 1) for line in cgroups.text(self.folder / "pids.events").splitlines() if line)
        return events.get("max", "0").strip() not in ("", "0")

    def remove(self, wait: float = REMOVE_WAIT_S) -> None:
        """Remove the group once the run's tasks have left it; left for a later run's `make` to sweep if they
        have not within `wait` seconds."""
        deadline = time.monotonic() + wait
        while not cgroups.remove(self.folder) and time.monotonic() < deadline:
            time.sleep(0.02)


def remove_group_of(pid: int) -> None:
    """Remove the group of the evaluator `pid`, killed before it could (a run started ahead and never used)."""
    for own, _ in cgroups.own_folders("pids"):
        Group(own / f"{GROUP_PREFIX}{pid}").remove()
