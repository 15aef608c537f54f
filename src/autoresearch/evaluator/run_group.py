"""The cgroups one run is held in, where this process can make them: its cap of tasks (evaluator/tasks.py) and its
share of memory (evaluator/memory.py).

A group below the evaluator's own cgroup in each hierarchy that holds one of those controllers: cgroup v1's pids and
memory hierarchies (a loop run as root), or v2's one where the evaluator's cgroup hands the controller down. The run's
first processes (the sandbox's anchor, the experiment) enter it before they start anything, so all the run starts is
in it; it is removed once the run has ended. The run cannot leave it: /sys is read-only in the sandbox, and its filter
refuses mounts.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from pathlib import Path

from autoresearch.errors import AutoresearchError
from autoresearch.evaluator import cgroups, promises

PREFIX = "autoresearch-run-"  # + the evaluator's pid
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

    def __init__(self, folders: Mapping[Path, bool], limited: frozenset[str]):
        self.folders = dict(folders)  # the group's folder in each hierarchy: whether that is cgroup v1
        self.limited = limited

    @classmethod
    def make(cls, limits: Mapping[str, Mapping[str, str]]) -> RunGroup | None:
        """A group limited as `limits` says (controller: its files, as `write_limits` takes them), in the first
        hierarchy below this process's cgroup that holds each controller; None where no limit could be set."""
        wanted: dict[Path, tuple[bool, dict[str, Mapping[str, str]]]] = {}
        for controller, files in limits.items():
            for own, _ in cgroups.own_folders(controller):
                v1 = (own / "tasks").exists()  # v1 gives every group its controllers; v2 those handed down to it
                if v1 or controller in cgroups.text(own / "cgroup.subtree_control").split():
                    wanted.setdefault(own, (v1, {}))[1][controller] = files
                    break
        folders, limited = {}, set()
        for own, (v1, controllers) in wanted.items():
            cgroups.sweep(own, PREFIX)
            folder = own / f"{PREFIX}{os.getpid()}"
            cgroups.remove(folder)  # one left by an earlier process of this pid, empty
            try:
                folder.mkdir()
            except OSError:  # no right to write there
                continue
            folders[folder] = v1
            for controller, files in controllers.items():
                try:
                    write_limits(folder, v1, files)
                except OSError:
                    continue
                limited.add(controller)
        group = cls(folders, frozenset(limited))
        if not limited:
            group.remove(wait=0)
            return None
        return group

    def enter(self) -> None:
        """Put this process in the group, and so everything it starts from now on."""
        for folder in self.folders:
            (folder / "cgroup.procs").write_text(str(os.getpid()))

    def leave(self) -> None:
        """Move this process back to the cgroups above the group, and remove the group (an evaluator run by hand,
        which no loop removes the group of)."""
        for folder in self.folders:
            with contextlib.suppress(OSError):
                (folder.parent / "cgroup.procs").write_text(str(os.getpid()))
        self.remove()

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

    def remove(self, wait: float = REMOVE_WAIT_S) -> None:
        """Remove the group once the run's tasks have left it; left for a later run's `make` to sweep if they
        have not within `wait` seconds."""
        deadline = time.monotonic() + wait
        for folder in self.folders:
            while not cgroups.remove(folder) and time.monotonic() < deadline:
                time.sleep(0.02)


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
    a group made here now (made and removed; once per process for each set of controllers), in cgroup v1. A run's group
    is made inside its evaluator's, which holds the evaluator, and v2 hands no controller down to a group that holds a
    process: there a run's group lacks what one made here has, and none is promised (nor `run` told runs are capped)."""
    key = frozenset(limits)
    if key not in _limitable:
        group = RunGroup.make(limits)
        _limitable[key] = group.limited if group is not None and all(group.folders.values()) else frozenset()
        if group is not None:
            group.remove()
    return _limitable[key]


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
    """The group the evaluator `pid` made below this process's cgroups (its own, in the memory hierarchy: see
    evaluator/memory.py), as found now: to read what it counted, and to remove it once the evaluator has ended."""
    return RunGroup({own / f"{PREFIX}{pid}": bool(held) for held, own in cgroups.own_every_folder()}, frozenset())


def remove_group_of(pid: int) -> None:
    """Remove the group of the evaluator `pid`, once it has ended (it cannot remove the one it is in itself)."""
    group_of(pid).remove()
