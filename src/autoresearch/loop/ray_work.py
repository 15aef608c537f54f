"""A Ray worker's own folder on its node, where it trains the runs of a loop whose workspace it does not see
(loop/ray_executor.py), and the sweep of the folders of workers that are gone.

A worker holds an exclusive lock (flock) on `<folder>.lock` beside its folder for as long as it lives; the kernel
drops the lock when the worker dies, however it dies. The folders whose lock another worker can take are those of
workers gone, one killed with a run in flight (the loop's stop kills a task that does not take Ray's cancel), and
are deleted by the node's next run. A lock, not a pid: containers that share a hostname (host networking) and a
cache root each have pids of their own, so one saw the workers of another as gone, and two workers of the same
pid and GPU number shared one folder. A folder's name (pid, GPU, a random part) is for people to read.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
from pathlib import Path

from autoresearch.loop.ray_data import remove_tree

LOCK = ".lock"

_held: dict[tuple[Path, str], Path] = {}  # (a node's folder of works, the GPU) -> this worker's folder in it
_fds: list[int] = []  # their locks' descriptors, open (so held) for the worker's life


def claim(works: Path, gpu: str) -> Path:
    """This worker's folder in `works` (one node's) for runs on `gpu`, made and locked at the first call; every
    call first deletes the folders there of workers that are gone."""
    if (folder := _held.get((works, gpu))) is None:
        works.mkdir(parents=True, exist_ok=True)
        folder = works / f"{os.getpid()}-{re.sub(r'[^A-Za-z0-9-]', '_', gpu) or 'cpu'}-{secrets.token_hex(4)}"
        _fds.append(_lock(_lock_of(folder)))  # before the folder is there: a folder without its lock is nobody's
        _held[works, gpu] = folder
    sweep(works)
    folder.mkdir(exist_ok=True)
    return folder


def sweep(works: Path) -> None:
    """Delete the folders in `works` whose worker is gone (its lock free), and any without a lock."""
    mine = set(_held.values())
    for lock in works.glob("*" + LOCK):
        folder = lock.with_name(lock.name.removesuffix(LOCK))
        if folder in mine or (fd := _free(lock)) is None:
            continue
        try:
            remove_tree(folder)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
    for folder in works.iterdir():
        if folder.is_dir() and folder not in mine and not _lock_of(folder).exists():
            remove_tree(folder)


def _lock_of(folder: Path) -> Path:
    return folder.with_name(folder.name + LOCK)


def _lock(path: Path) -> int:
    """An open descriptor of `path`, created if need be, holding its lock. A sweep can take the lock between the
    file's making and its locking, and deletes it: then made again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited: a run's processes do not hold it
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _still(fd, path):
            return fd
        os.close(fd)


def _free(path: Path) -> int | None:
    """A descriptor of `path` holding its lock if no one else holds it (its worker is gone), else None."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:  # deleted meanwhile by another sweep, or not ours to open
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    if not _still(fd, path):  # another sweep deleted it between our open and our lock
        os.close(fd)
        return None
    return fd


def _still(fd: int, path: Path) -> bool:
    """Whether `path` is still the file open as `fd`."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
