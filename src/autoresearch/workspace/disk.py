"""A full disk is a condition a person can fix, not a traceback.

Every write the loop depends on (the ledger, results.tsv, train.py, git) goes through `disk_full_is_an_error`
or checks `is_disk_full`, so that running out of space ends the command with one clear message. The loop
writes in an order that makes this safe: a verdict and its results.tsv line are committed together or not
at all, so after a full disk the experiment is still `running` and the next start trains it again.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from collections.abc import Iterator

from autoresearch.errors import AutoresearchError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"
GIT_FULL_MESSAGES = ("no space left on device", "disk quota exceeded")


class DiskFullError(AutoresearchError):
    def __init__(self, what: str):
        super().__init__(
            "the disk is full: free space, then run again; nothing was lost",
            hint=f"{what} failed for lack of space; the experiment in flight is trained again on the next start",
        )


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "disk is full" in str(exc)
    return False


@contextlib.contextmanager
def disk_full_is_an_error(what: str) -> Iterator[None]:
    """Turn an ENOSPC (or SQLite's "disk is full") raised inside into a `DiskFullError` naming `what`."""
    try:
        yield
    except (OSError, sqlite3.OperationalError) as exc:
        if is_disk_full(exc):
            raise DiskFullError(what) from exc
        raise
