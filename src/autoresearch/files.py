"""Small file helpers with one home: an atomic text or JSON write, a file's SHA-256, a set of source files' SHA-256,
clearing a path the loop writes its own file at, removing a folder a run or agent made, reading a file an agent could
have planted, a file's signature (whether it changed), whether a file is flocked, a program's path on PATH, every
entry under a folder."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
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
            sync(tmp)
        os.replace(tmp, path)
        if durable:
            sync(path.parent)
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
# The least a file or folder is counted for where what a run or a turn leaves is held to a size (the quarantine, the
# compile caches): its inode and its name. Counted as nothing, 200,000 empty files would be a free store.
BLOCK = 4096


def remove_tree(path: Path) -> None:
    """Remove the folder `path` and all it holds (nothing if it is not there), however a run or an agent made it:
    nested deeper than Python's recursion limit (`shutil.rmtree` recursed: a train.py that nested 1,500 folders in
    its box failed its evaluator, and the box stayed for every later start to fail on) or than a path can name,
    folders made read-only or unreadable, links (removed, never followed)."""

    def remove(folder: int, entry: os.DirEntry) -> bool:
        if entry.is_dir(follow_symlinks=False):
            return True
        os.unlink(entry.name, dir_fd=folder)
        return False

    if not os.path.lexists(path):
        return
    _walk(path, remove, lambda folder, name: os.rmdir(name, dir_fd=folder))
    os.rmdir(path)


def disk_use(path: Path, least: int = 0) -> int:
    """The disk the folder `path` and all it holds use, in bytes: their blocks (a sparse file counts what it holds),
    each entry counted as `least` at least. Walked as `remove_tree` walks: no depth and no mode hides a file; 0 if
    nothing is there."""
    used = 0

    def count(_folder: int, entry: os.DirEntry) -> bool:
        nonlocal used
        with contextlib.suppress(OSError):
            st = entry.stat(follow_symlinks=False)
            used += max(st.st_blocks * 512, least)
            return stat.S_ISDIR(st.st_mode)
        return False

    try:
        used = os.lstat(path).st_blocks * 512
        _walk(path, count, strict=False)
    except OSError:  # not there, or not a folder
        return 0
    return used


def _walk(
    top: Path,
    visit: Callable[[int, os.DirEntry], bool],
    leave: Callable[[int, str], None] | None = None,
    strict: bool = True,
) -> None:
    """Call `visit(folder, entry)` on every entry under the folder `top` (`folder`: a descriptor of the folder it is
    in), walking into those it answers True for, and `leave(folder, name)` once a folder under `top` has been walked
    (with its parent's descriptor). Each folder is listed once, in whole before any visit (what a visit removes does
    not disturb the listing), and made its owner's to read and write; one is open at a time (a tree nested thousands
    deep needs no more), and none is reached through a link. Without recursion, and without paths: a tree may be
    nested past Python's recursion limit and past the longest path the system names. A folder that cannot be opened
    raises OSError, or (not `strict`) is passed over. A folder moved while it is walked raises OSError too: its ".."
    would lead outside `top`."""
    here = os.open(top, _FOLDER)
    names: list[str] = []  # the folders from `top` down to `here`
    left: list[list[str]] = []  # for each of them, the folders in it not yet walked
    ids = [_identity(here)]  # and what each is: going up, ".." must be the folder come down from
    entered = True
    try:
        while True:
            if entered:
                with contextlib.suppress(OSError):  # another user's: reading or removing in it fails below
                    os.fchmod(here, 0o700)
                with os.scandir(here) as listing:
                    found = list(listing)
                left.append([entry.name for entry in found if visit(here, entry)])
            while not left[-1]:  # this folder walked: up to the nearest with folders left
                left.pop()
                if not names:
                    return
                above = os.open("..", _FOLDER, dir_fd=here)
                os.close(here)
                here = above
                ids.pop()
                if _identity(here) != ids[-1]:  # moved meanwhile: what lies above is not the walk's
                    raise OSError(errno.ESTALE, f"{top} changed while it was walked")
                name = names.pop()
                if leave is not None:
                    leave(here, name)
            name = left[-1].pop()
            try:
                below = _open_folder(name, here)
            except OSError:
                if strict:
                    raise
                entered = False
                continue
            os.close(here)
            here, entered = below, True
            names.append(name)
            ids.append(_identity(here))
    finally:
        os.close(here)


def _identity(folder: int) -> tuple[int, int]:
    st = os.fstat(folder)
    return st.st_dev, st.st_ino


def _open_folder(name: str, parent: int) -> int:
    try:
        return os.open(name, _FOLDER, dir_fd=parent)
    except PermissionError:  # made unreadable: the owner's to make readable again
        os.chmod(name, 0o700, dir_fd=parent)
        return os.open(name, _FOLDER, dir_fd=parent)


def make_folder(path: Path, within: Path) -> None:
    """Make `path` a folder, and each folder between `within` and it: a link, file or FIFO found in the place of one
    of them is removed first (`clear`)."""
    for folder in [*reversed(path.relative_to(within).parents), Path(path.relative_to(within))][1:]:
        here = within / folder
        if os.path.islink(here) or (os.path.lexists(here) and not os.path.isdir(here)):
            clear(here)
        here.mkdir(exist_ok=True)


def sync(path: Path) -> None:
    """fsync the file or folder at `path`: what is in it, or the names in it, on disk."""
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


def entries(
    top: Path, skip: frozenset[str] = frozenset(), shut: frozenset[str] = frozenset()
) -> Iterator[tuple[str, os.DirEntry]]:
    """Everything under the folder `top`, as (path relative to it with "/", its directory entry), a folder before
    what it holds. Links are listed, not followed; folders that cannot be read are passed over, as `os.walk` does;
    `skip`: names of folders right under `top` left out; `shut`: names of folders, at any depth, listed but not
    entered. Cheaper than `os.walk` with a `Path` or `relpath` per entry: the driver walks .git/objects, thousands of
    files by the end of a night, around every agent's turn."""
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
                    if entry.is_dir(follow_symlinks=False) and entry.name not in shut:
                        folders.append((f"{prefix}{entry.name}/", entry.path))


def special_files(top: Path) -> list[str]:
    """What under the folder `top` is, or links to, neither a regular file nor a folder (a FIFO, which a reader waits
    on for ever; a socket; a device), relative to it."""
    found = []
    for rel, entry in entries(top):
        with contextlib.suppress(OSError):  # gone, or a link to nothing: nothing to wait on
            mode = entry.stat(follow_symlinks=True).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                found.append(rel)
    return found


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


def signature(path: Path | None) -> tuple[int, int, int] | None:
    """What changes whenever a file is written or replaced: its inode, size and time of change (None: no file, or
    none that can be looked at)."""
    try:
        found = os.stat(path) if path is not None else None
    except OSError:
        return None
    return (found.st_ino, found.st_size, found.st_mtime_ns) if found is not None else None


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
