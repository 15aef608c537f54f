"""What a killed loop leaves behind: a training run's processes, a coding agent's, an evaluator's box.

A coding agent's turn is of no use once its loop is gone, so its first process dies with the thread that waits for it
(`die_with`): where the turn has a PID namespace of its own, all of it. A run is not: the next start adopts its result.
Each is started in a process group of its own, whose leader's pid and start time go into a pid file; the next
start kills that group (`reap`), before anything else touches what it could still be writing to. The start
time tells a leader from an unrelated process that got its pid since. The pid files lie in the workspace's private
state, within an agent's reach: one could name a process of the user's (a tmux server, an editor) that leads its
group and whose start time it read. So the loop marks the environment of what it starts (MARK), and `reap` kills
only a group whose leader, or (the leader gone) one of whose processes, carries the mark.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from autoresearch.files import read_regular, remove_tree, write_text_atomic

MARK = "AUTORESEARCH_STARTED_BY_LOOP"  # in the environment of each evaluator and agent the loop starts
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: a child of a process with threads cannot load it


def die_with(parent: int) -> None:
    """In a child of `parent`, before it runs anything (a `preexec_fn`): be killed when the thread that started it
    ends, which for a turn is its loop's end: the thread waits for the turn. So a loop killed outright (the OOM killer,
    a supervisor's kill of its cgroup, which on cgroup v2 no longer holds a root loop's turns: agents/turn_cgroups.py)
    leaves no agent running on until the next start kills it (`reap`). Killed now where `parent` is already gone."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it ended before the signal was asked for
        os.kill(os.getpid(), signal.SIGKILL)


def marked(env: dict[str, str]) -> dict[str, str]:
    """`env` for a process the loop starts and a later start may kill (`reap`)."""
    return {**env, MARK: "1"}


def write_pid_file(path: Path, pid: int, init: int | None = None) -> None:
    """The process's pid and start time: together they name it even after the pid is reused. With `init`, the pid
    and start time of the init of the PID namespace it started (an agent's turn's), after them."""
    named = []
    for each in (pid,) if init is None else (pid, init):
        try:
            created = psutil.Process(each).create_time()
        except psutil.Error:  # already gone
            created = 0
        named.append(f"{each} {created}")
    write_text_atomic(path, " ".join(named))


def reap(pid_file: Path) -> bool:
    """Kill the process group named by `pid_file`, and the PID namespace's init named after it; True if either was
    killed. Its leader may have ended while what it started runs on: the group is killed all the same (its id cannot be
    a new process's while the group lives). A leader that runs must be the one named (its start time), lead its group
    and have been started by a loop (MARK); never the loop's own group, nor an ancestor of the loop: the file is within
    an agent's reach."""
    killed = _reap_group(pid_file)
    return _reap_init(pid_file) or killed


def _reap_group(pid_file: Path) -> bool:
    if (named := _named(pid_file)) is None:
        return False
    pid, created_at = named
    if pid == os.getpgrp() or _never_killed(pid):  # killpg(0) is this group, killpg(1) init's
        return False
    try:
        leader = psutil.Process(pid)
        if leader.create_time() != created_at or os.getpgid(pid) != pid:
            return False  # that pid now belongs to another process
        # A leader dead but not yet waited for (its parent, a container's init, reaps late or never) shows no
        # environment: then what it started must carry the mark.
        zombie = leader.status() == psutil.STATUS_ZOMBIE
        if not (_ours(leader) or (zombie and any(map(_ours, _members(pid))))):
            return False  # never one the loop started
    except psutil.NoSuchProcess:  # the leader is gone; its group may not be, if all of it started after the leader
        members = _members(pid)
        if not created_at or any(p.create_time() < created_at for p in members) or not any(map(_ours, members)):
            return False
    except (OSError, psutil.Error):
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:  # no such group left
        return False
    _until(lambda: not any(alive(p) for p in _members(pid)))  # a zombie has left its cgroups
    return True


def _reap_init(pid_file: Path) -> bool:
    """Kill the init of an agent's turn's PID namespace, which takes the namespace along, where the pid file names one
    after its group (`write_pid_file`). Its parent-death signal (`unshare --kill-child`) was to kill it with the turn's
    first process, but the turn can have it dropped, and the init leave the group, through ptrace (BROKE, fixed: such a
    turn outlived its loop killed outright, and the next start; red team). No mark is asked of it: the turn can have
    it run a program with another environment. It must be the one named (its start time), alive, the init of a PID
    namespace and in a user namespace that are not the loop's (a turn's are its own), not the loop nor its ancestor."""
    if (named := _named(pid_file, at=1)) is None or _never_killed(named[0]):
        return False
    pid, created_at = named
    try:
        init = psutil.Process(pid)
        nspid = _nspid(pid)  # its pid here, ..., 1 in its own namespace
        if init.create_time() != created_at or len(nspid) < 2 or nspid[-1] != "1" or not alive(init):
            return False  # a zombie's namespace is gone already
        if any(_same_namespace(pid, kind) for kind in ("pid", "user")):
            return False
    except (OSError, psutil.Error):
        return False
    kill_namespace(init, REAP_WAIT_S)
    return True


def kill_namespace(init: psutil.Process, within: float) -> bool:
    """SIGKILL the init of a turn's PID namespace and every process in it (all descend from it: the namespace's
    orphans are its), again until the init has ended, at most `within` seconds; whether it has. The init's own exit
    kills the rest, but only once it runs: a turn that starved it of the CPU (SCHED_IDLE on the CPU of busy loops it
    had leave its process group) ran on after its end, or its loop's kill, for about a second per busy loop (red
    team). Its processes, at their own priority, die at once, and the init then runs."""
    deadline = time.monotonic() + within
    while alive(init):
        with contextlib.suppress(psutil.Error):
            for process in [init, *init.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    process.kill()
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _never_killed(pid: int) -> bool:
    """Whether `pid` is one `reap` never kills, whatever a pid file says: no process's (Linux's stay below 2**22),
    init's, this process's or an ancestor's."""
    mine = psutil.Process()
    return not 1 < pid < 2**22 or pid == mine.pid or pid in {p.pid for p in mine.parents()}


def _nspid(pid: int) -> list[str]:
    """Process `pid`'s pids in the PID namespaces it is in, from this process's down to its own."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next((line.split()[1:] for line in lines if line.startswith("NSpid:")), [])


def _same_namespace(pid: int, kind: str) -> bool:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino == os.stat(f"/proc/self/ns/{kind}").st_ino


REAP_WAIT_S = 2.0  # how long `reap` waits for what it killed to end


def _until(ended: Callable[[], bool]) -> None:
    """Wait until `ended()` (what `reap` killed has ended), at most REAP_WAIT_S: a SIGKILL takes effect later, and the
    cgroups of a killed turn can be removed only once it has (agents/turn_cgroups.py)."""
    deadline = time.monotonic() + REAP_WAIT_S
    while time.monotonic() < deadline and not ended():
        time.sleep(0.02)


def alive(process: psutil.Process) -> bool:
    """Whether `process` (this very one: its start time) still runs, neither ended nor a zombie."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _members(pgid: int) -> list[psutil.Process]:
    """The processes of group `pgid` (their start times read: `create_time` is cached)."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid:
                process.create_time()
                found.append(process)
        except (OSError, psutil.Error):  # gone meanwhile
            continue
    return found


def _ours(process: psutil.Process) -> bool:
    """Whether the loop started `process`, or a process it started did: the environment it was started with carries
    MARK. No process can add it to another's later (short of writing its memory, which could kill it anyway)."""
    try:
        return process.environ().get(MARK) == "1"
    except (OSError, psutil.Error):  # gone, or not ours to read
        return False


BOX_GRACE_S = 600  # a box with no owner file yet is its evaluator's for this long (it writes the file at once)


def owned_box(state: Path, pid: int) -> Path:
    """A new working directory for an evaluator's experiment under `state` (`box-*`), with the evaluator named
    beside it (`box-*.owner`), so that the box of one killed is found and removed (`remove_left_boxes`)."""
    box = Path(tempfile.mkdtemp(prefix="box-", dir=state))
    # Without the set-group-ID bit of a group's shared workspace, which the kernel passes on to every folder made in
    # it: a run's copy of such a folder (shutil.copytree) asks for the bit, which its filter refuses (syscalls.py).
    os.chmod(box, 0o700)
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
    """A box and its owner file, however train.py left it (files.remove_tree); whether the box is gone. A box that
    could not be removed (a process of its run still writing in it as it died) keeps its owner file, by which the
    next start finds it ended and removes it (without, it passed for a new box for BOX_GRACE_S, and stayed)."""
    with contextlib.suppress(OSError):
        remove_tree(box)
    if os.path.lexists(box):
        return False
    with contextlib.suppress(OSError):
        box.with_name(box.name + ".owner").unlink(missing_ok=True)
    return True


def _named(pid_file: Path, at: int = 0) -> tuple[int, float] | None:
    """The pid and start time a pid file names (`write_pid_file`), the first, or the init's (`at` 1); None if it
    cannot be read, or names none there."""
    try:
        words = read_regular(pid_file, 256).decode().split()  # a FIFO there is never waited on
        text, created = words[2 * at : 2 * at + 2]
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
