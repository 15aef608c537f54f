"""How many CPU cores this process may use: the CPUs it may run on, capped by a cgroup's CPU quota.

`os.cpu_count()` counts the machine's CPUs. A container started with a CPU limit (`docker run --cpus 4`, a
Kubernetes pod's `limits.cpu`, a systemd slice's `CPUQuota=`) may run on every one of them but gets only its
quota's share of their time, and PyTorch, which looks at the CPUs it may run on and not at the quota, starts a
thread per core. On a CPU the budget is counted in CPU time divided by the run's threads (evaluator/clock.py),
so 64 threads on a quota of 4 cores would stretch every budget second to 16 wall seconds, past the run's
hard timeout. Runs take as many threads as there are usable cores, no more.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cores() -> int:
    """The CPUs this process may run on, at most its cgroup's CPU quota (in cores, rounded up); at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity to ask
        cpus = os.cpu_count() or 1
    quota = quota_cores()
    return max(1, min(cpus, quota) if quota is not None else cpus)


def quota_cores(root: Path = CGROUP_ROOT, membership: str | None = None) -> int | None:
    """The tightest CPU quota on this process's cgroup and every cgroup above it, in cores rounded up; None if
    there is none (or no cgroups: not Linux). `membership` is /proc/self/cgroup's text, read if not given.

    cgroup v2 (a `0::/path` line) keeps it in `cpu.max` ("200000 100000", or "max 100000"); v1 (a line whose
    controllers include `cpu`) in `cpu.cfs_quota_us` (-1 for none) over `cpu.cfs_period_us`. Inside a container
    the hierarchy is often mounted at the container's own cgroup while the path still names it from the host's
    root: levels that do not exist are skipped, and the mount point itself is always read."""
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    quotas = []
    for line in membership.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            base, read = root, _v2_quota
        elif "cpu" in controllers.split(","):
            base, read = root / controllers, _v1_quota
        else:
            continue
        level = base / path.strip().lstrip("/")
        while True:
            if (quota := read(level)) is not None:
                quotas.append(quota)
            if level == base or base not in level.parents:
                break
            level = level.parent
    return math.ceil(min(quotas)) if quotas else None


def _v2_quota(directory: Path) -> float | None:
    fields = _read(directory / "cpu.max").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_quota(directory: Path) -> float | None:
    return _ratio(_read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us"))


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
