"""Moving a forked process into a sandbox that bubblewrap made, then taking every privilege from it.

The experiment is forked from a process that has imported torch and its compiler already (the fork
server: no import per run). bubblewrap cannot confine a process that exists, so each run gets a fresh
sandbox of its own, holding only a waiting `sleep` (the anchor), and the forked process joins its
namespaces: the user namespace that owns its mounts, then its mount, PID, network, IPC, UTS and cgroup
namespaces, then the anchor's own user namespace, and finally its root directory. What it then sees
and can reach is exactly what the anchor sees (evaluator/sandbox.py). Joining leaves it every
capability in the sandbox's user namespace (and, run as root without one, in the machine's), so
`drop_privileges` takes them all, for good, before a line of train.py runs, and checks that it did.
Only a process that joins PID namespaces puts its children there: the caller forks once more after
`join`. Linux only; `join` raises OSError where the kernel refuses (an old kernel, a setuid bubblewrap).
"""

from __future__ import annotations

import ctypes
import fcntl
import os

CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWPID = 0x10000000, 0x00020000, 0x20000000
CLONE_NEWNET, CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWCGROUP = 0x40000000, 0x08000000, 0x04000000, 0x02000000
NS_GET_USERNS = 0xB701  # ioctl on a namespace file: the user namespace that owns it
# In the order they are joined, after the user namespace that owns the mounts.
NAMESPACES = (("mnt", CLONE_NEWNS), ("pid", CLONE_NEWPID), ("net", CLONE_NEWNET), ("ipc", CLONE_NEWIPC),
              ("uts", CLONE_NEWUTS), ("cgroup", CLONE_NEWCGROUP))  # fmt: skip
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
PR_SET_DUMPABLE = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _same(fd: int, path: str) -> bool:
    return os.fstat(fd).st_ino == os.stat(path).st_ino


def join(pid: int) -> None:
    """Enter the namespaces and the root directory of process `pid` (the sandbox's anchor)."""
    # Open everything first: once in the new mount namespace, /proc is the sandbox's and `pid` is not in it.
    files = {name: os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY) for name in ("user", *dict(NAMESPACES))}
    root = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY)
    owner = fcntl.ioctl(files["mnt"], NS_GET_USERNS)
    try:
        joined = {name: _same(files[name], f"/proc/self/ns/{name}") for name in files}
        if not _same(owner, "/proc/self/ns/user"):
            _check(_libc.setns(owner, CLONE_NEWUSER))
        for name, flag in NAMESPACES:
            if not joined[name]:
                _check(_libc.setns(files[name], flag))
        if not joined["user"] and os.fstat(files["user"]).st_ino != os.fstat(owner).st_ino:
            _check(_libc.setns(files["user"], CLONE_NEWUSER))
        os.fchdir(root)
        os.chroot(".")
    finally:
        for fd in (*files.values(), root, owner):
            os.close(fd)


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


def drop_privileges(uid: int | None = None) -> None:
    """No capability left in any set, none to be regained by exec (bounding set empty, no_new_privs); with `uid`,
    this process that user and its group, with no other group (evaluator/run_user.py)."""
    cap = 0
    while _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:  # EINVAL past the last capability
        cap += 1
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))
    if uid is not None:  # while CAP_SETUID and CAP_SETGID are still its own; becoming a user not root clears them all
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        # A change of user leaves the process undumpable, its /proc/self root's: /proc/self/fd unreadable to it
        _check(_libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0))
    _check(_libc.capset(ctypes.byref(_CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)), (_CapData * 2)()))
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    left = privileges_left()
    if uid is not None and (os.getresuid(), os.getresgid(), os.getgroups()) != ((uid,) * 3, (uid,) * 3, []):
        left.append(f"user {os.getresuid()}, group {os.getresgid()}, groups {os.getgroups()}")
    if left:
        raise OSError(f"capabilities left after dropping them: {left}")


def privileges_left() -> list[str]:
    """The capability sets of this process that are not empty, and whether it may still gain privileges."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    left = [name for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb") if int(fields[name], 16)]
    if fields.get("NoNewPrivs", "0").strip() != "1":
        left.append("NoNewPrivs=0")
    return left
