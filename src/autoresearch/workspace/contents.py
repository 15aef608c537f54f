"""A file's content as a snapshot of the workspace names it, and the two moves made with it: aside into a quarantine
folder (what an untrusted step wrote), and back (what it changed). Used by workspace/integrity.py and objects.py."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from pathlib import Path

from autoresearch.files import read_regular
from autoresearch.workspace.git import Git

DIRECTORY = "dir"  # the content id of a directory git reports as one path (a nested repository)
# A larger file is known by its signature, not read: the loop held what it read, and a sparse file of 600 MB (no disk
# used) raised its memory by 1.2 GB (red team). Nothing the loop puts back is that large: train.py is 256 KiB at most.
KEPT_BYTES = 64 << 20


def read(path: Path) -> tuple[str, bytes | None, int] | None:
    """(content id, bytes of a regular file, mode), or None if nothing is there.

    A regular file's id is its git blob id, so a snapshot saved to disk can find the bytes in the object
    store; one over KEPT_BYTES is not read, its id is `large_id`; a symlink's is "link:<target>", a directory's
    DIRECTORY, anything else's (a FIFO, which reading would wait on forever; a socket) "special:<mode>"."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "link:" + os.readlink(path), None, mode
    if stat.S_ISDIR(mode):
        return DIRECTORY, None, mode
    if not stat.S_ISREG(mode):
        return f"special:{mode:o}", None, mode
    try:
        data = read_regular(path, KEPT_BYTES) if st.st_size <= KEPT_BYTES else None
    except ValueError:  # grown since
        data = None
    except FileNotFoundError:
        return None
    if data is None:
        return large_id(os.lstat(path)), None, mode
    return blob_id(data), data, mode


def large_id(st: os.stat_result) -> str:
    """The id of a file over KEPT_BYTES: its signature (a write or a rename changes its ctime, which no process can
    set back)."""
    return f"large:{st.st_size}:{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def content_id(path: Path) -> str | None:
    """What `path` holds, as `read` names it (None: nothing there), read only if it is a regular file."""
    found = read(path)
    return found[0] if found else None


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def exists(path: Path) -> bool:
    return os.path.lexists(path)


def kind(mode: int) -> str:
    return "a link" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode) else "a special file"


def restore(path: Path, content_id: str, contents: dict[str, bytes], git: Git | None) -> bool:
    """Write `content_id` back at `path`, its bytes from `contents` (or git's object store); False if not known."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if content_id.startswith("link:"):
        os.symlink(content_id[len("link:") :], path)
        return True
    if content_id == DIRECTORY or content_id.startswith(("special:", "large:")):
        return False
    data = contents.get(content_id)
    if data is None and git is not None:
        data = git.blob(content_id)
    if data is None:
        return False
    path.write_bytes(data)
    return True


def quarantine(root: Path, rel: str, folder: Path, tidy: bool = True) -> Path | None:
    """Move `root/rel` (a file, link or directory) to `folder/rel`, then (`tidy`) drop directories it left empty;
    where it went (None: it was not there)."""
    source = root / rel
    if not exists(source):
        return None
    target = folder / rel
    n = 1
    while exists(target):
        target, n = folder / f"{rel}.{n}", n + 1
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir() and not source.is_symlink():  # moving a folder writes its "..": read-only, it would be copied
        with contextlib.suppress(OSError):
            os.chmod(source, stat.S_IMODE(source.stat().st_mode) | stat.S_IRWXU)
    shutil.move(source, target)
    parent = source.parent
    with contextlib.suppress(OSError):  # a mount point (EBUSY) stays
        while tidy and parent != root and parent.is_dir() and _empty(parent):
            parent.rmdir()
            parent = parent.parent
    return target


def _empty(folder: Path) -> bool:
    """Whether `folder` holds nothing, asked of its first entry alone: an agent left 20,000 files in one folder, and
    listing it whole after each was moved kept the loop 3 minutes (red team)."""
    with os.scandir(folder) as found:
        return next(found, None) is None
