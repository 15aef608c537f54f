"""How many tasks (processes and threads, as the kernel counts them) one run may have at once; and a shell agent's
turn (agents/fence.py), or under a loop run as root its turns together (agents/turn_cgroups.py).

A train.py that forks without end (a fork bomb, or a pool started in a loop) fills the machine's process table
(32,768 entries on many machines) within a second. The sandbox's PID namespace kills all of it when the run ends,
but until then the loop cannot start git, and an honest run of another worker cannot start its compiler's workers:
it crashes, and a crash is not retried. So a run gets at most `run_tasks()` tasks:

- by RLIMIT_NPROC, under a loop not run as root, set as the run begins (harness/boot.py, told by the evaluator's
  "go") in the run's own user namespace. From Linux 5.14 on the kernel counts it per user namespace, so only the
  run's tasks count against it (before, every process of yours would: not set there). The run cannot raise it
  again: that takes CAP_SYS_RESOURCE outside its namespace. Its tasks still count toward your own RLIMIT_NPROC
  (`ulimit -u`) outside it, which binds them too: where that is low (4096 on RHEL and its kin), a run at the
  default cap took all of it, and the loop could start no git, the fork server no evaluator, another worker's
  run no thread. So there the runs, the agent's turn and the rest of your processes share what is left of it
  (`shares`).
- by the pids controller of the run's cgroup (evaluator/run_group.py), where one can be made: a loop run as root,
  which RLIMIT_NPROC does not bind, with cgroup v1's pids hierarchy, or v2 where its cgroup's parent hands the pids
  controller down (the group is made beside the loop's).
- by RLIMIT_NPROC again, under a loop run as root, for a run that is a user of its own (evaluator/run_user.py, wherever
  the machine allows it), which it binds: where no such group can be made, the one cap.

Elsewhere (root, no such cgroup, and no user namespace the run can be another user in) a run is not capped, and
`run` says so (sandbox.runs_capped).
"""

from __future__ import annotations

import os
import platform
import re
import resource
import sys
from collections.abc import Mapping

from autoresearch.errors import AutoresearchError
from autoresearch.evaluator.run_group import RunGroup

TASKS_ENV = "AUTORESEARCH_TASKS"  # the most tasks a run, or an agent's turn, may have at once; "0": none
# A GPU run has a few hundred: torch's threads, CUDA's, the compiler's pool of workers and theirs.
DEFAULT_TASKS = 4096
# The least `shares` gives a run: an honest GPU run peaked at ~160 tasks more than its machine had (BENCHMARKS.md).
LEAST_TASKS = 256
MOST_TASKS = 4_194_304  # the kernel's own most (PID_MAX_LIMIT): a pids cgroup takes no higher limit
# /proc/self/uid_map in the machine's own user namespace, split: every uid, mapped to itself.
MACHINE_UID_MAP = ["0", "0", "4294967295"]


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


def by_limit(own_user: bool = False) -> bool:
    """Whether RLIMIT_NPROC can cap a confined run here: a loop not run as root, or a run as a user of its own
    (`own_user`: evaluator/run_user.py), on Linux 5.14 or later."""
    if not sys.platform.startswith("linux") or (os.getuid() == 0 and not own_user):
        return False
    release = re.match(r"(\d+)\.(\d+)", platform.release())
    return release is not None and (int(release[1]), int(release[2])) >= (5, 14)


def limits(tasks: int) -> dict[str, dict[str, str]]:
    """A run's group's limits (evaluator/run_group.py) for a cap of `tasks` (0: none)."""
    return {"pids": {"pids.max": str(tasks)}} if tasks else {}


def refused(group: RunGroup) -> bool:
    """Whether the run's group refused a task, for its cap or one above it (pids.events, which v1 keeps for both)."""
    return group.count("pids.events", "max") > 0


def shares(workers: int, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """TASKS_ENV for each of `workers` runs and the agent's turn of a loop not run as root, where your RLIMIT_NPROC
    (which counts their tasks too) leaves each less than DEFAULT_TASKS; {} where you set TASKS_ENV (each gets that),
    where the loop is root (each run is a user of its own, or not bound) or the runs are not capped by RLIMIT_NPROC."""
    if env.get(TASKS_ENV, "").strip() or not by_limit() or not (limit := user_limit()):
        return {}
    each = share(workers, limit, user_tasks(os.getuid()))
    return {TASKS_ENV: str(each)} if each < DEFAULT_TASKS else {}


def user_limit() -> int:
    """Your RLIMIT_NPROC (`ulimit -u`, the soft limit: what a user namespace made now is bound by), 0 for none."""
    limit = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    return 0 if limit == resource.RLIM_INFINITY else limit


def share(workers: int, limit: int, in_use: int) -> int:
    """Each run's cap where the user may have `limit` tasks and has `in_use`: what is left, split between the
    `workers` runs, one agent's turn (a coding agent is asked one turn at a time) and one share kept for the loop, its
    evaluators, git and the rest of the user's processes; at least LEAST_TASKS (then a run that forks without end can
    still take what the others need: `run` says so)."""
    return max((limit - in_use) // (workers + 2), LEAST_TASKS)


def overlap(workers: int, each: int) -> bool:
    """Whether `workers` runs, the agent's turn and the loop, `each` tasks apiece, may hold more than your limit leaves
    your processes now: where the shares are at the floor, LEAST_TASKS."""
    return each * (workers + 2) > user_limit() - user_tasks(os.getuid())


def user_tasks(uid: int) -> int:
    """The tasks (processes and threads) of real user `uid` that this process can see (its PID namespace's)."""
    import psutil  # not at the top: the harness imports this module before train.py

    count = 0
    for process in psutil.process_iter(["uids", "num_threads"]):
        uids, threads = process.info["uids"], process.info["num_threads"]
        if uids is not None and uids.real == uid and threads:
            count += threads
    return count
