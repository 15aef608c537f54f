"""A Ray worker's own folder on its node, where it trains the runs of a loop whose workspace it does not see
(loop/ray_executor.py), and the sweep of the folders of workers that are gone.

A worker holds an exclusive lock (flock) on `<folder>.lock` beside its folder for as long as it lives; the kernel
drops the lock when the worker dies, however it dies. The folders whose lock another worker can take are those of
workers gone, one killed with a run in flight (the loop's stop kills a task that does not take Ray's cancel), and
are deleted by the node's next run. A lock, not a pid: containers that share a hostname (host networking) and a
cache root each have pids of their own, so one saw the workers of another as gone, and two workers of the same
pid and GPU number shared one folder. A folder is named by its pid, GPU and a random part; what is named
otherwise is no worker's, and goes.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import stat
from pathlib import Path

from autoresearch.loop.ray_data import remove_tree

LOCK = ".lock"
NAME = re.compile(r"[0-9]+-[A-Za-z0-9_-]{1,64}-[0-9a-f]{8}")  # a worker's folder: pid, GPU, a random part

_held: dict[tuple[Path, str], Path] = {}  # (a node's folder of works, the GPU) -> this worker's folder in it


def claim(works: Path, gpu: str) -> Path:
    """This worker's folder in `works` (one node's) for runs on `gpu`, made and locked at the first call; every
    call first sweeps `works`."""
    if (folder := _held.get((works, gpu))) is None:
        works.mkdir(parents=True, exist_ok=True)
        tag = (re.sub(r"[^A-Za-z0-9-]", "_", gpu) or "cpu")[:64]  # an old MIG id has slashes
        while True:  # a name no one has, its lock made and held before the folder is there
            folder = works / f"{os.getpid()}-{tag}-{secrets.token_hex(4)}"
            if _lock(_lock_of(folder)) is not None:  # its descriptor left open: the lock held for the worker's life
                break
        _held[works, gpu] = folder
    sweep(works)
    folder.mkdir(exist_ok=True)
    return folder


def sweep(works: Path) -> None:
    """Delete what `works` holds but the folders of live workers and their locks: a folder and its lock once no one
    holds the lock, a folder without a lock, a link, anything not named as a worker names them. Never raises: a
    raise here failed every run of the node."""
    mine = {_lock_of(folder) for folder in _held.values()} | set(_held.values())
    for entry in _entries(works):
        name = entry.name.removesuffix(LOCK)
        try:
            if entry in mine:
                continue
            if not NAME.fullmatch(name) or entry.is_symlink():  # no worker's: `...lock` named works/.. (red team)
                remove_tree(entry)  # a link goes, never what it names
            elif entry.name.endswith(LOCK):
                if (fd := _free(entry)) is not None:
                    try:
                        remove_tree(works / name)
                        entry.unlink()
                    finally:
                        os.close(fd)
            elif not os.path.lexists(_lock_of(entry)):  # its worker gone, or an older autoresearch's
                remove_tree(entry)
        except OSError:  # what could not go now goes with a later sweep
            continue


def _entries(works: Path) -> list[Path]:
    try:
        return list(works.iterdir())
    except OSError:
        return []


def _lock_of(folder: Path) -> Path:
    return folder.with_name(folder.name + LOCK)


def _lock(path: Path) -> int | None:
    """A descriptor of `path`, made here, holding its lock; None where `path` is there already (another worker drew
    the same name) or a sweep took the lock between its making and its locking (and deleted it)."""
    try:  # not inherited (Python's default): the run's processes never hold the lock
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:  # no locks on this file system (NFS without them): its file alone keeps sweeps off the folder
        return fd
    if _still(fd, path):
        return fd
    os.close(fd)
    return None


def _free(path: Path) -> int | None:
    """A descriptor of lock file `path` holding its lock if no one else holds it (its worker is gone), else None.
    Only a regular file is opened: never what a link names, nor a FIFO or a device, whose open can have effects."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:  # deleted meanwhile by another sweep
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    if stat.S_ISREG(os.fstat(fd).st_mode) and _still(fd, path):  # not deleted, or swapped, between lstat and lock
        return fd
    os.close(fd)
    return None


def _still(fd: int, path: Path) -> bool:
    """Whether `path` is still the file open as `fd`."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except OSError:
        return False
