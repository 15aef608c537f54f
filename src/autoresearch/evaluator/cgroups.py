"""Where this process's cgroups are mounted here: cores.py reads a CPU quota there, tasks.py makes a run's group.

/proc/self/cgroup names the process's cgroup in each hierarchy (v1: `4:cpu,cpuacct:/docker/abc`, one hierarchy
per set of controllers; v2: `0::/user.slice/session-1.scope`, one for all), /proc/self/mountinfo where each is
mounted. A mount shows the hierarchy from its own root (a container sees its cgroup as `/`), so the process's
path is read relative to it, and a path outside the mounted part is not guessed at.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath


def folders(controller: str, membership: str, mountinfo: str) -> list[tuple[Path, Path]]:
    """(the process's cgroup folder, the top of the mount that shows it) in each hierarchy mounted here that may
    hold `controller`: v1's that has it, and v2's, whichever controllers it has (the caller reads its files).
    `membership` is /proc/self/cgroup's text, `mountinfo` /proc/self/mountinfo's."""
    return [(f, top) for held, f, top in _placed(membership, mountinfo) if not held or controller in held.split(",")]


def every_folder(membership: str, mountinfo: str) -> list[tuple[str, Path]]:
    """(its controllers, the process's cgroup folder) in every hierarchy mounted here, at one mount each: v1's
    ("cpu,cpuacct", "name=systemd") and v2's ("")."""
    found: dict[str, Path] = {}
    for held, folder, _ in _placed(membership, mountinfo):
        found.setdefault(held, folder)
    return list(found.items())


def _placed(membership: str, mountinfo: str):
    """(the hierarchy's controllers, the process's cgroup folder, the mount's top) at each mount of each of its
    hierarchies."""
    for line in membership.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, held, path = fields
        for mount_root, mount_point in _mounts(mountinfo, held):
            inside = _relative(PurePosixPath(path), PurePosixPath(mount_root))
            if inside is not None:
                yield held, Path(mount_point, inside), Path(mount_point)


def own_folders(controller: str) -> list[tuple[Path, Path]]:
    """`folders(controller, ...)` of this process; [] where they cannot be read (not Linux)."""
    return folders(controller, text("/proc/self/cgroup"), text("/proc/self/mountinfo"))


def own_every_folder() -> list[tuple[str, Path]]:
    """`every_folder(...)` of this process; [] where they cannot be read (not Linux)."""
    return every_folder(text("/proc/self/cgroup"), text("/proc/self/mountinfo"))


PID_T_MAX = (1 << 31) - 1  # no pid is larger (a C int): os.kill refuses one that is, with OverflowError
PID = "(?P<pid>[0-9]+)"  # in a `sweep` pattern: the pid its group's maker had


def sweep(home: Path, pattern: str, own: Path | None = None) -> None:
    """Remove the cgroups below `home` whose maker no longer runs (killed before it removed them), with the groups
    inside them; one that still holds a process stays. Their name is all of `pattern` (a regular expression, its PID
    the maker's pid), then, where the maker made it beside the cgroup it was in, "-" + that one's name. Those made
    where the sweeping process would make them, beside its own cgroup `own` (None, or `home`: below it), go once their
    PID runs no more; another's (another loop's, by pids of another PID namespace: red team, a sweep took them for its
    own dead evaluators') once the cgroup they were made beside is gone, and their makers with it (BROKE, fixed: a
    killed loop's were left in the parent for good, where each loop is given a cgroup of its own); a loop's in `home`
    itself, made below it, stay. A "pid" past a C int is another's: left (red team: a tenant's group named so beside
    the loop's raised OverflowError out of every evaluator's sweep, each run recorded as its experiment's crash; as did
    a superscript two, which `isdigit` takes and PID does not)."""
    beside = own.name if own is not None and own != home else ""
    with contextlib.suppress(OSError):
        for folder in home.iterdir():
            named = re.fullmatch(f"{pattern}(?:-(?P<beside>.+))?", folder.name)
            if named is None:
                continue
            if (named["beside"] or "") == beside:
                stale = (pid := int(named["pid"])) <= PID_T_MAX and not _running(pid)
            else:
                stale = named["beside"] is not None and not (home / named["beside"]).is_dir()
            if stale:
                remove(folder)


def remove(folder: Path) -> bool:
    """Remove the cgroup `folder` and those inside it, innermost first; whether it is gone (one that holds a process
    stays, as do the groups above it)."""
    walk(folder, remove=True)
    try:
        folder.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def walk(folder: Path, visit: Callable[[int], None] | None = None, remove: bool = False) -> None:
    """`visit` each group of the tree at `folder`, an open descriptor of its folder, outermost first; with `remove`,
    remove the groups below `folder` once visited, innermost first (those that hold a process stay). By descriptors
    and one level at a time, with no recursion: an agent's turn nested its groups 1,100 deep, where Python's
    recursion stopped `rglob` (and deeper, a path would be too long to name them)."""
    try:
        here = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    names: list[str] = []  # the way down from `folder` to `here`
    pending = [_visited(here, visit)]  # per level, the groups below still to go into
    try:
        while pending:
            if pending[-1]:
                name = pending[-1].pop()
                with contextlib.suppress(OSError):
                    inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=here)
                    os.close(here)
                    here = inner
                    names.append(name)
                    pending.append(_visited(here, visit))
                continue
            pending.pop()
            if not names:
                break
            above = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=here)
            os.close(here)
            here, name = above, names.pop()
            if remove:
                with contextlib.suppress(OSError):
                    os.rmdir(name, dir_fd=here)
    except OSError:  # a group above moved away meanwhile: what is left goes with a later sweep
        pass
    finally:
        os.close(here)


def _visited(fd: int, visit: Callable[[int], None] | None) -> list[str]:
    """The groups in the open folder `fd`, once `visit` has seen it."""
    if visit is not None:
        visit(fd)
    try:
        with os.scandir(fd) as entries:
            return [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _running(pid: int) -> bool:  # psutil.pid_exists's twin: cores.py imports this module, standard library only
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _mounts(mountinfo: str, held: str) -> list[tuple[str, str]]:
    """(the cgroup path mounted, where) of each mount of the hierarchy of the controllers `held`: v2's for "", else
    v1's whose options name them all."""
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        v2 = tail[0] == "cgroup2"
        if (not held and v2) or (held and tail[0] == "cgroup" and set(held.split(",")) <= set(tail[2].split(","))):
            mounts.append((_unescape(fields[3]), _unescape(fields[4])))
    return mounts


def _relative(path: PurePosixPath, root: PurePosixPath) -> PurePosixPath | None:
    if ".." in path.parts:  # outside its namespace's root: not a path under any mount
        return None
    try:
        return path.relative_to(root)
    except ValueError:
        return None


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline or backslash in a path as an octal escape: \\040."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def text(path: str | Path) -> str:
    """A file's text, any bytes kept (as os.fsdecode does a path); "" if it cannot be read."""
    try:
        return os.fsdecode(Path(path).read_bytes())
    except (OSError, ValueError):
        return ""
