"""The cgroups one run is held in, where this process can make them: its cap of tasks (evaluator/tasks.py) and its
share of memory (evaluator/memory.py).

A group below the evaluator's own cgroup in each hierarchy that holds one of those controllers: cgroup v1's pids and
memory hierarchies (a loop run as root). cgroup v2 hands a controller down only to the groups of one that holds no
process, and the loop's own cgroup holds the loop: there a group is made beside it, below its parent, where that hands
the controllers down (a loop run as root in a systemd session or a GPU machine's container, whose parent the machine
gave controllers: BROKE, fixed: runs there had neither their cap of tasks nor their share of memory), once the loop's
probe made such a group and put a process in it (`limitable`), and promised it to every run. A group made to
hold groups of its own (`holds`: the evaluator's share, with the run's group inside) is entered through a leaf group
in it on v2, so that it holds no process itself. The run's first processes (the sandbox's anchor, the experiment)
enter its group before they start anything, so all the run starts is in it; it is removed once the run has ended. The
run cannot leave it: /sys is read-only in the sandbox, and its filter refuses mounts.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from autoresearch.errors import AutoresearchError
from autoresearch.evaluator import cgroups, promises

PREFIX = "autoresearch-run-"  # + the evaluator's pid (+ "-" + the name of the cgroup it was made beside, on v2)
LEAF = "evaluator"  # on v2, the group inside a group that `holds` others which the process that made it enters
REMOVE_WAIT_S = 5.0  # how long a finished run's group is given to empty: its tasks leave as the kernel reaps them
# A file by cgroup v2's name: v1's, where it differs (None: v1 has no such file). v1 counts OOM kills in
# memory.oom_control (`oom_kill N`, Linux 4.13 and later), v2 in memory.events. v1 limits memory and swap together
# (`_written`).
_V1 = {
    "memory.max": "memory.limit_in_bytes",
    "memory.swap.max": "memory.memsw.limit_in_bytes",
    "memory.oom.group": None,
    "memory.events": "memory.oom_control",
}


class RunGroup:
    """One run's cgroup in each hierarchy it is limited in; `limited` names the controllers whose limits are set."""

    def __init__(
        self,
        folders: Mapping[Path, bool],
        limited: frozenset[str],
        entries: Mapping[Path, Path] | None = None,
        origins: Mapping[Path, Path] | None = None,
    ):
        self.folders = dict(folders)  # the group's folder in each hierarchy: whether that is cgroup v1
        self.limited = limited
        self.entries = dict(entries or {})  # where a process enters a folder, if not at the folder itself (a leaf)
        self.origins = dict(origins or {})  # the cgroup that made the folder, if not the folder's parent

    @classmethod
    def make(
        cls, limits: Mapping[str, Mapping[str, str]], holds: frozenset[str] = frozenset(), beside: bool | None = None
    ) -> RunGroup | None:
        """A group limited as `limits` says (controller: its files, as `write_limits` takes them), in the first
        hierarchy that holds each controller, below this process's cgroup or, where `beside` (None: where the loop
        promised one of them, its probe having made such a group: `limitable`), on v2 beside it; None where no limit
        could be set. `holds`: the controllers of groups to be made inside it, by a process that enters it."""
        if beside is None:
            beside = bool(promises.promised() & set(limits))
        wanted: dict[Path, tuple[bool, Path, dict[str, Mapping[str, str]]]] = {}
        for controller, files in limits.items():
            for own, _ in cgroups.own_folders(controller):
                v1 = (own / "tasks").exists()  # v1 gives every group its controllers; v2 those handed down to it
                home = own if v1 else home_on_v2(own, frozenset(limits), beside)
                if home is not None and (v1 or controller in cgroups.text(home / "cgroup.subtree_control").split()):
                    wanted.setdefault(home, (v1, own, {}))[2][controller] = files
                    break
        folders, limited, entries, origins = {}, set(), {}, {}
        for home, (v1, own, controllers) in wanted.items():
            suffix = "" if home == own else f"-{own.name}"
            cgroups.sweep(home, re.escape(PREFIX) + cgroups.PID, own)
            folder = home / f"{PREFIX}{os.getpid()}{suffix}"
            cgroups.remove(folder)  # one left by an earlier process of this pid, empty
            try:
                folder.mkdir()
            except OSError:  # no right to write there
                continue
            folders[folder] = v1
            if suffix:
                origins[folder] = own
            for controller, files in controllers.items():
                try:
                    write_limits(folder, v1, files)
                except OSError:
                    continue
                limited.add(controller)
            if holds and not v1 and (leaf := _holding(folder, holds)) is not None:
                entries[folder] = leaf
        group = cls(folders, frozenset(limited), entries, origins)
        if not limited:
            group.remove(wait=0)
            return None
        return group

    def enter(self, pid: int = 0) -> None:
        """Put this process (or the process `pid`) in the group, and so everything it starts from now on."""
        for folder in self.folders:
            (self.entries.get(folder, folder) / "cgroup.procs").write_text(str(pid or os.getpid()))

    def leave(self) -> None:
        """Move this process back to the cgroups it made the group from, and remove the group (an evaluator run by
        hand, which no loop removes the group of)."""
        for folder in self.folders:
            with contextlib.suppress(OSError):
                (self.origins.get(folder, folder.parent) / "cgroup.procs").write_text(str(os.getpid()))
        self.remove()

    def handed_down(self) -> frozenset[str]:
        """The controllers the group hands down to groups made inside it (v2's, where it holds groups: `make`)."""
        return frozenset(c for folder in self.entries for c in cgroups.text(folder / "cgroup.subtree_control").split())

    def count(self, file: str, key: str) -> int:
        """A count the kernel keeps in `file` (by cgroup v2's name) under `key`: `count("pids.events", "max")`, the
        tasks refused for this group's cap or one above it; 0 where there is none."""
        total = 0
        for folder, v1 in self.folders.items():
            if (name := named(file, v1)) is None:
                continue
            for line in cgroups.text(folder / name).splitlines():
                fields = line.split()
                if len(fields) == 2 and fields[0] == key and fields[1].isdigit():
                    total += int(fields[1])
        return total

    def remove(self, wait: float | None = None) -> None:
        """Remove the group once the run's tasks have left it; left for a later run's `make` to sweep if they
        have not within `wait` seconds (REMOVE_WAIT_S)."""
        deadline = time.monotonic() + (REMOVE_WAIT_S if wait is None else wait)
        for folder in self.folders:
            while not cgroups.remove(folder) and time.monotonic() < deadline:
                time.sleep(0.02)


def home_on_v2(own: Path, controllers: frozenset[str], beside: bool) -> Path | None:
    """Where a group limited in `controllers` is made, on cgroup v2, for a process in `own`: below `own` where it hands
    them all down; else, where `beside` and `own` limits nothing (`_limited`), beside it, below its parent, where that
    hands any down (the parent's are a superset of the own's; above the top of the mount, no cgroup's file is read);
    else below `own` where it hands any down; None where neither does (a container's own cgroup, the top of what it
    sees). One place for them all: a process is in one group on v2."""
    handed = set(cgroups.text(own / "cgroup.subtree_control").split())
    if controllers <= handed:
        return own
    parent = set(cgroups.text(own.parent / "cgroup.subtree_control").split()) if _parent_mounted(own) else set()
    if beside and not _limited(own) and controllers & parent:
        return own.parent
    return own if controllers & handed else None


# A v2 cgroup's limits, none of which holds a group made beside it: "max", or nothing, where it sets none.
# The files by which a v2 cgroup limits what it holds. A single value (cpu.max's quota first), "max" for none; a CPU or
# memory-node list, empty for none; lines of a key and its values (`key=value`, or one value), "max" for none;
# hugetlb's a file per page size (hugetlb.2MB.max, .rsvd.max), matched by pattern.
_OWN_LIMITS = {
    "memory.max": "value",
    "memory.high": "value",
    "memory.swap.max": "value",
    "memory.swap.high": "value",
    "memory.zswap.max": "value",
    "pids.max": "value",
    "cpu.max": "value",
    "hugetlb.*.max": "value",
    "cpuset.cpus": "list",
    "cpuset.mems": "list",
    "io.max": "keyed",
    "rdma.max": "keyed",
    "misc.max": "keyed",
}


def _limited(own: Path) -> bool:
    """Whether the v2 cgroup `own` limits what it holds (a container's memory, CPU quota or cpuset, its huge pages,
    RDMA or misc resources): a group made beside it would be out of that limit, the runs in it on top of all the
    container may hold (red team)."""
    return any(_limits(kind, cgroups.text(path)) for name, kind in _OWN_LIMITS.items() for path in own.glob(name))


def _limits(kind: str, text: str) -> bool:
    words = text.split()
    if kind == "value":
        return bool(words) and words[0] != "max"
    if kind == "list":
        return bool(words)
    return any(value.split("=")[-1] != "max" for line in text.splitlines() for value in line.split()[1:])


def _holding(folder: Path, holds: frozenset[str]) -> Path | None:
    """Have the v2 group `folder` hand `holds` down to groups inside it, and make the leaf its maker enters; None (a
    group that hands nothing down) where that cannot be done."""
    hand_down(folder, holds)
    try:
        (folder / LEAF).mkdir()
    except OSError:
        return None
    return folder / LEAF


def hand_down(folder: Path, controllers: frozenset[str]) -> None:
    """Have the v2 group `folder` hand `controllers` down to the groups made inside it, those it is given."""
    for controller in sorted(controllers):  # each on its own: one the kernel refuses does not stop the others
        with contextlib.suppress(OSError):
            (folder / "cgroup.subtree_control").write_text(f"+{controller}")


class GroupUnavailable(AutoresearchError):
    """The run's group cannot be limited in a controller the loop found it could be: the run is not trained."""

    def __init__(self, missing: set[str]):
        what = {"pids": "pids (its cap of tasks)", "memory": "memory (its share)"}
        super().__init__(
            "cannot hold the run in its cgroup: no limit in " + ", ".join(what.get(c, c) for c in sorted(missing)),
            hint="the loop made such a group at its start; see that the machine has memory and cgroups to spare "
            "(cgroup v1 has 65,535 memory groups), then run again: the experiment in flight is trained then",
        )


_limitable: dict[frozenset[str], frozenset[str]] = {}


def limitable(limits: Mapping[str, Mapping[str, str]]) -> frozenset[str]:
    """The controllers of `limits` every run's group is limited in, where this process starts the evaluators: those of
    a group made here now as an evaluator makes its own (made and removed; once per process for each set of
    controllers). A run's group is made inside its evaluator's, which holds the evaluator: on v2, only what that group
    hands down to the run's, beside the leaf the evaluator is in, is had (nor `run` told runs are capped otherwise)."""
    key = frozenset(limits)
    if key not in _limitable:
        group = RunGroup.make(limits, holds=key, beside=True)
        found: frozenset[str] = frozenset()
        if group is not None:
            found = group.limited if all(group.folders.values()) else group.limited & group.handed_down()
            found = found if _enters(group) else frozenset()
            group.remove()
        _limitable[key] = found
    return _limitable[key]


def _enters(group: RunGroup) -> bool:
    """Whether a process of this one's can be put in `group`, as an evaluator puts itself in its own: a child that
    waits, put there and killed."""
    try:
        child = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    except OSError:  # no `sleep` here: nothing proves the group can be entered
        return False
    try:
        group.enter(child.pid)
        return True
    except OSError:
        return False
    finally:
        child.kill()
        child.wait()


def check(group: RunGroup | None, limits: Mapping[str, Mapping[str, str]]) -> None:
    """GroupUnavailable where `group` (None: none was made) lacks a limit of `limits` that was promised (a controller
    named in evaluator/promises.py's word)."""
    if missing := (promises.promised() & set(limits)) - (group.limited if group is not None else frozenset()):
        if group is not None:
            group.remove(wait=0)
        raise GroupUnavailable(missing)


def named(file: str, v1: bool) -> str | None:
    """The name of cgroup v2's `file` in a group of cgroup v1 (`v1`) or v2; None where v1 has no such file."""
    return _V1.get(file, file) if v1 else file


def write_limits(folder: Path, v1: bool, files: Mapping[str, str]) -> None:
    """Write one controller's `files` (by cgroup v2's names, its limit first, and their values) in the group at
    `folder`; OSError where the limit cannot be set. A file after the limit that this kernel has not (swap not
    accounted) is left out: the limit holds without it."""
    for name, value in files.items():
        if (written := named(name, v1)) is None:
            continue
        try:
            (folder / written).write_text(_written(name, value, files) if v1 else value)
        except FileNotFoundError:
            if name == next(iter(files)):
                raise


def _written(name: str, value: str, files: Mapping[str, str]) -> str:
    """What v1's file for `name` takes: its memory.memsw limit is of memory and swap together."""
    return str(int(files["memory.max"]) + int(value)) if name == "memory.swap.max" else value


def group_of(pid: int) -> RunGroup:
    """The group the evaluator `pid` made below this process's cgroups, or beside them on v2 (its own, in the memory
    hierarchy: see evaluator/memory.py), as found now: to read what it counted, and to remove it once the evaluator has
    ended."""
    folders = {}
    for held, own in cgroups.own_every_folder():
        folders[own / f"{PREFIX}{pid}"] = bool(held)
        if not held and _parent_mounted(own):  # v2's
            folders[own.parent / f"{PREFIX}{pid}-{own.name}"] = False
    return RunGroup(folders, frozenset())


def _parent_mounted(own: Path) -> bool:
    """Whether the folder above the cgroup `own` is a cgroup of the same mount: not where `own` is the top of what is
    mounted (a container's own cgroup, or a hybrid machine's /sys/fs/cgroup/unified), whose folder above is none,
    whatever lies in it (red team)."""
    try:
        return os.stat(own.parent).st_dev == os.stat(own).st_dev
    except OSError:
        return False


def remove_group_of(pid: int) -> None:
    """Remove the group of the evaluator `pid`, once it has ended (it cannot remove the one it is in itself)."""
    group_of(pid).remove()
