"""What a killed loop leaves behind: a training run's processes, a coding agent's, an evaluator's box.

Each is started in a process group of its own, whose leader's pid and start time go into a pid file; the next
start kills that group (`reap`), before anything else touches what it could still be writing to. The start
time tells a leader from an unrelated process that got its pid since.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import psutil

from autoresearch.files import write_text_atomic


def write_pid_file(path: Path, pid: int) -> None:
    """The process's pid and start time: together they name it even after the pid is reused."""
    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:  # already gone
        created = 0
    write_text_atomic(path, f"{pid} {created}")


def reap(pid_file: Path) -> bool:
    """Kill the process group named by `pid_file`; True if one was killed. Its leader may have ended while what it
    started runs on: the group is killed all the same (its id cannot be a new process's while the group lives).
    A leader that runs must be the one named (its start time), and lead its group; never the loop's own group, nor
    an ancestor of the loop: the file is within an agent's reach."""
    if (named := _named(pid_file)) is None:
        return False
    pid, created_at = named
    mine = psutil.Process()
    if not 1 < pid < 2**22 or pid in (os.getpgrp(), mine.pid) or pid in {p.pid for p in mine.parents()}:
        return False  # killpg(0) is this group, killpg(1) init's; Linux's pids stay below 2**22
    try:
        leader = psutil.Process(pid)
        if leader.create_time() != created_at or os.getpgid(pid) != pid:
            return False  # that pid now belongs to another process
    except psutil.NoSuchProcess:  # the leader is gone; its group may not be, if all of it started after the leader
        if not created_at or any(started < created_at for started in _started(pid)):
            return False
    except (OSError, psutil.Error):
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
        return True
    except OSError:  # no such group left
        return False


def _started(pgid: int) -> list[float]:
    """When each process of group `pgid` started."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid:
                found.append(process.create_time())
        except (OSError, psutil.Error):  # gone meanwhile
            continue
    return found


BOX_GRACE_S = 600  # a box with no owner file yet is its evaluator's for this long (it writes the file at once)


def owned_box(state: Path, pid: int) -> Path:
    """A new working directory for an evaluator's experiment under `state` (`box-*`), with the evaluator named
    beside it (`box-*.owner`), so that the box of one killed is found and removed (`remove_left_boxes`)."""
    box = Path(tempfile.mkdtemp(prefix="box-", dir=state))
    write_pid_file(box.with_name(box.name + ".owner"), pid)
    return box


def remove_left_boxes(state: Path) -> int:
    """Remove the boxes under `state` whose evaluator has ended (killed before it could remove its own); how many."""
    removed = 0
    for box in state.glob("box-*"):
        if box.suffix == ".owner" or box.is_symlink() or not box.is_dir():
            continue
        owner = box.with_name(box.name + ".owner")
        try:
            if _running(owner) or (not owner.exists() and time.time() - box.stat().st_mtime < BOX_GRACE_S):
                continue
        except OSError:  # removed meanwhile by its own evaluator
            continue
        removed += remove_box(box)
    return removed


def remove_box(box: Path) -> bool:
    """A box and its owner file, folders train.py made read-only included; whether the box is gone."""

    def writable(func, path, _) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, 0o700)
            func(path)

    shutil.rmtree(box, onerror=writable)
    with contextlib.suppress(OSError):
        box.with_name(box.name + ".owner").unlink(missing_ok=True)
    return not box.exists()


def _named(pid_file: Path) -> tuple[int, float] | None:
    """The pid and start time a pid file names (`write_pid_file`); None if it cannot be read."""
    try:
        text, created = pid_file.read_text().split()
        return int(text), float(created)
    except (OSError, ValueError):
        return None


def _running(pid_file: Path) -> bool:
    """Whether the process named by `pid_file` still runs."""
    if (named := _named(pid_file)) is None:
        return False
    try:
        return psutil.Process(named[0]).create_time() == named[1]
    except psutil.Error:
        return False
