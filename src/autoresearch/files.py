"""Small file helpers with one home: an atomic text or JSON write, a file's SHA-256, a set of source files' SHA-256,
clearing a path the loop writes its own file at, removing a folder a run or agent made, reading a file an agent could
have planted, whether a file is flocked, a program's path on PATH, every entry under a folder."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON so that a reader sees the old file or the new one, never half of one."""
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def write_text_atomic(path: Path, text: str, tmp: Path | None = None, durable: bool = False) -> None:
    """Write `text` so that a reader, a kill or a full disk leaves the old file or the new one, never half of
    one. It is written first to `tmp` (default: beside it; on the same filesystem), removed if that fails.
    `durable`: a power cut too (the file and its folder are synced to the disk)."""
    tmp = tmp or path.with_name(path.name + ".tmp")
    try:
        clear(tmp)  # made anew below: never what was found there
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))
        tmp.write_text(text)
        if durable:
            _sync(tmp)
        os.replace(tmp, path)
        if durable:
            _sync(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def clear(path: Path) -> None:
    """Remove whatever is at `path`: a file, a link, a FIFO, a folder with all it holds. Where the loop writes a file
    of its own (in its private state, or results.tsv's temporary file), an agent may have put something else first:
    a FIFO, which opening to write waits on for ever; a link, which a write follows; a folder, which it cannot
    write."""
    if os.path.isdir(path) and not os.path.islink(path):
        remove_tree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


_FOLDER = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0)


def remove_tree(path: Path) -> None:
    """Remove the folder `path` and all it holds (nothing if it is not there), however a run or an agent made it:
    nested deeper than Python's recursion limit (`shutil.rmtree` recursed: a train.py that nested 1,500 folders in
    its box failed its evaluator, and the box stayed for every later start to fail on) or than a path can name,
    folders made read-only or unreadable, links (removed, never followed). One folder is open at a time."""
    try:
        here = os.open(path, _FOLDER)
    except FileNotFoundError:
        return
    names: list[str] = []  # the folders from `path` down to `here`
    try:
        while True:
            with contextlib.suppress(OSError):  # another user's: then removing what it holds fails below
                os.fchmod(here, 0o700)
            deeper = None
            with os.scandir(here) as listing:
                for entry in listing:
                    if entry.is_dir(follow_symlinks=False):
                        deeper = entry.name
                        break
                    os.unlink(entry.name, dir_fd=here)
            if deeper is not None:
                with contextlib.suppress(OSError):
                    os.chmod(deeper, 0o700, dir_fd=here)
                below = os.open(deeper, _FOLDER, dir_fd=here)
                os.close(here)
                here = below
                names.append(deeper)
                continue
            if not names:
                break
            above = os.open("..", _FOLDER, dir_fd=here)
            os.close(here)
            here = above
            os.rmdir(names.pop(), dir_fd=here)
    finally:
        os.close(here)
    os.rmdir(path)


def disk_use(path: Path) -> int:
    """The disk the folder `path` and all it holds use, in bytes: their blocks (a sparse file counts what it holds).
    Walked as `remove_tree` walks, one folder open at a time, each made its owner's to read: no depth and no mode
    hides a file; 0 if nothing is there."""
    try:
        here = os.open(path, _FOLDER)
    except OSError:
        return 0
    used = os.fstat(here).st_blocks * 512
    left: list[list[str]] = []  # for each folder from `path` down to `here`, those in it not yet walked
    try:
        entered = True
        while True:
            if entered:
                left.append([])
                with os.scandir(here) as listing:
                    for entry in listing:
                        with contextlib.suppress(OSError):
                            st = entry.stat(follow_symlinks=False)
                            used += st.st_blocks * 512
                            if stat.S_ISDIR(st.st_mode):
                                left[-1].append(entry.name)
            while not left[-1]:  # this folder walked: up to the nearest with folders left
                left.pop()
                if not left:
                    return used
                above = os.open("..", _FOLDER, dir_fd=here)
                os.close(here)
                here = above
            name = left[-1].pop()
            with contextlib.suppress(OSError):
                os.chmod(name, 0o700, dir_fd=here)
            try:
                below = os.open(name, _FOLDER, dir_fd=here)
            except OSError:  # gone, or not the loop's to read
                entered = False
                continue
            os.close(here)
            here, entered = below, True
    finally:
        os.close(here)


def make_folder(path: Path, within: Path) -> None:
    """Make `path` a folder, and each folder between `within` and it: a link, file or FIFO found in the place of one
    of them is removed first (`clear`)."""
    for folder in [*reversed(path.relative_to(within).parents), Path(path.relative_to(within))][1:]:
        here = within / folder
        if os.path.islink(here) or (os.path.lexists(here) and not os.path.isdir(here)):
            clear(here)
        here.mkdir(exist_ok=True)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def sources_sha256(paths: list[Path], root: Path) -> str:
    """SHA-256 over files' names (relative to `root`) and contents, in the order given."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def entries(top: Path, skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, os.DirEntry]]:
    """Everything under the folder `top`, as (path relative to it with "/", its directory entry), a folder before
    what it holds. Links are listed, not followed; folders that cannot be read are passed over, as `os.walk` does;
    `skip`: names of folders right under `top` left out. Cheaper than `os.walk` with a `Path` or `relpath` per
    entry: the driver walks .git/objects, thousands of files by the end of a night, around every agent's turn."""
    folders = [("", os.fspath(top))]
    while folders:
        prefix, folder = folders.pop()
        try:
            listing = os.scandir(folder)
        except OSError:
            continue
        with listing:
            for entry in listing:
                if not prefix and entry.name in skip:
                    continue
                yield prefix + entry.name, entry
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        folders.append((f"{prefix}{entry.name}/", entry.path))


# Opens what an agent could have put in the place of a file: never a link's target, never waiting on a FIFO's writer
_UNTRUSTED_OPEN = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)


def read_regular(path: Path, limit: int | None, follow: bool = False) -> bytes:
    """The bytes of the file at `path`, a file the loop's private state holds and an agent could have planted or
    replaced: OSError if it is not a regular file (a FIFO, which a read waits on for ever; a link, not followed unless
    `follow`: one the person made, to their program.md; a folder), ValueError if it is over `limit` bytes (read no
    further: it would fill the memory; None: no limit)."""
    fd = os.open(path, (os.O_RDONLY | os.O_NONBLOCK) if follow else _UNTRUSTED_OPEN)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        with open(fd, "rb", closefd=False) as f:
            data = f.read() if limit is None else f.read(limit + 1)
    finally:
        os.close(fd)
    if limit is not None and len(data) > limit:
        raise ValueError(f"{path.name} is over {limit >> 20} MiB")
    return data


def flock_held(path: Path) -> bool:
    """Whether another open file holds an flock on the regular file at `path` (False for anything else there: a FIFO,
    which opening could wait on for ever, a link, a folder)."""
    try:
        fd = os.open(path, _UNTRUSTED_OPEN)
    except OSError:  # gone, or a link
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases it, if it was ours
    return False


def holds(folder: Path, path: Path) -> bool:
    """Whether `folder` is `path` or a folder above it (both as given: resolve them first where links matter)."""
    return folder == path or folder in path.parents


def absolute_entries(value: str) -> list[str]:
    """The absolute entries of a search path (PATH, PYTHONPATH): a relative one ('.', an empty entry, which `export
    PATH=$X:$PATH` leaves where X is unset) is the working directory, often the workspace, where an agent writes."""
    return [d for d in value.split(os.pathsep) if os.path.isabs(d)]


def program_path(name: str, path: str | None = None) -> str | None:
    """`name`'s path, found in the absolute folders of `path` (default: PATH), or None: in a relative one
    `shutil.which` answered a bare "bwrap", which the process then ran from the workspace (red team)."""
    folders = absolute_entries(os.environ.get("PATH", os.defpath) if path is None else path)
    return shutil.which(name, path=os.pathsep.join(folders))
