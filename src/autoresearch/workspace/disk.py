"""A full disk is a condition a person can fix, not a traceback.

Every write the loop depends on (the ledger, results.tsv, train.py, git) goes through `disk_full_is_an_error`
or checks `is_disk_full`, so that running out of space ends the command with one clear message. The loop
writes in an order that makes this safe: a verdict and its results.tsv line are committed together or not
at all, so after a full disk the experiment is still `running` and the next start trains it again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from autoresearch.errors import AutoresearchError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"
_SQLITE_IOERR, _SQLITE_CANTOPEN = 10, 14  # what opening in WAL mode can say instead, where -shm or -wal cannot grow
# Below this much room (for this user) a file system counts as full: the next write of a log line, a result, a git
# object or a ledger row may not fit (a WAL ledger's -shm alone is 32 KiB). Looked at from outside a run
# (`nearly_full`), never in a run's own text.
ROOM = 1 << 20
# git says so in its own words where a write of its own failed: "Out of diskspace" for an object or the index.
GIT_FULL_MESSAGES = ("no space left on device", "disk quota exceeded", "out of diskspace")
IN_FLIGHT = "the experiment in flight is trained again on the next start"  # what the loop's callers say


class DiskFullError(AutoresearchError):
    def __init__(self, what: str, then: str = IN_FLIGHT, where: str | None = None):
        """`then`: what happens once space is freed, in the caller's words (only the loop has an experiment in
        flight: `init` or `prepare` saying so sent the reader looking for one). `where`: whose disk, where it is not
        this machine's (a Ray node's, with the folder its run wrote in: loop/ray_executor.py)."""
        self.what, self.then, self.where = what, then, where
        on, there = (f" on {where}", " there") if where else ("", "")
        super().__init__(
            f"the disk is full{on}: free space{there}, then run again; nothing was lost",
            hint=f"{what} failed for lack of space; {then}",
        )

    def __reduce__(self):
        # It crosses processes (from a Ray node to the loop) with its fields. By default it is made again from its
        # message (taken for `what`), then given its fields back, but not its message, which named the node.
        return type(self), (self.what, self.then, self.where)


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "disk is full" in str(exc)
    return False


def sqlite_short_of_space(exc: BaseException, folder: Path) -> bool:
    """Whether SQLite failed (opening a file in `folder`, say) for lack of space. Opening a ledger in WAL mode makes
    its -shm and -wal files, and on a full disk that fails as "disk I/O error" (SQLITE_IOERR) as often as "disk is
    full": such an error where `folder` has next to no free space is a full disk, not a corrupt file (red team: every
    command called a healthy ledger unreadable and said to rebuild it)."""
    if is_disk_full(exc):
        return True
    if not isinstance(exc, sqlite3.OperationalError):  # corrupt, not a database: DatabaseError, whatever the space
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF not in (_SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN):
        return False
    return nearly_full(folder)


@contextlib.contextmanager
def disk_full_is_an_error(what: str, then: str | None = None) -> Iterator[None]:
    """Turn an ENOSPC (or SQLite's "disk is full") raised inside into a `DiskFullError` naming `what`. `then`: what
    the caller's command does once space is freed (default: the loop's words), said by a `DiskFullError` raised
    inside (git's) too."""
    try:
        yield
    except DiskFullError as exc:
        if then is None:
            raise
        raise DiskFullError(exc.what, then, exc.where) from exc.__cause__
    except (OSError, sqlite3.OperationalError) as exc:
        if is_disk_full(exc):
            raise DiskFullError(what, then or IN_FLIGHT) from exc
        raise


def nearly_full(path: Path, room: int = ROOM) -> bool:
    """Whether the file system holding `path` has (almost) no room left for this user: under `room` bytes, or no free
    inode; False where that cannot be told (`path` gone). What a failed git command, SQLite open or evaluator is checked
    against, since none always says why a write failed ("couldn't write '.../5.lock'", "disk I/O error")."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    root = os.geteuid() == 0  # root may write into the blocks (and inodes) reserved for it
    blocks, inodes = (st.f_bfree, st.f_ffree) if root else (st.f_bavail, st.f_favail)
    return blocks * st.f_frsize < room or (st.f_files > 0 and inodes == 0)  # f_files 0: no inode counts kept
