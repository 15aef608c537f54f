"""The system calls the experiment may not make: changing what happens when its children end, keyrings, and
the ways off the CPUs it is pinned to.

On a CPU the budget is the CPU time of the experiment's processes (evaluator/clock.py). A process's time
reaches its parent's "children's times" when the parent reaps it; a process that ignores SIGCHLD (or sets
SA_NOCLDWAIT) has its ended children reaped by the kernel, whose time then counts nowhere. A train.py
could do its work in such short-lived helpers and train for free. So the experiment runs under a seccomp
filter (libseccomp, through pyseccomp) that refuses `rt_sigaction(SIGCHLD, <new action>)` with EPERM:
SIGCHLD keeps its default action in every process of the run, and every ended process is reaped by a
parent that counts it. Reading the action stays allowed. The filter also refuses the kernel keyrings'
calls (KEYRING_CALLS), and every way off the CPUs a run is pinned to (with several workers on a machine, its
worker's: evaluator/cores.py; one that took every core back slowed the runs beside it): `sched_setaffinity` and
io_uring (CPU_CALLS), whose polling thread spins on whichever CPU its ring names (`IORING_SETUP_SQ_AFF`; red team:
pinned to CPU 0, it kept CPU 1 busy); a user namespace of its own and mounts (NAMESPACE_CALLS, `clone` with
CLONE_NEWUSER, and `clone3`, whose flags the filter cannot read: it answers ENOSYS and glibc uses `clone`), in
which a run as root mounted the cgroup filesystem and moved into a cpuset of the other worker's CPUs (red team);
`prctl(PR_SCHED_CORE)`, which can keep a core's other hyperthread idle; and `prlimit` on another process, the
sandbox's anchor (evaluator/confined.py), which a run killed so (red team); and inotify and fanotify
(NOTIFY_CALLS), whose instances and watches the kernel charges to whoever made the run's user namespace, root or the
user, on top of their own: a run that held them all had that user's own tools (systemd, an editor, a coding agent's)
refused theirs while it lived (red team); changing the anchor's scheduling, and a socket of AF_VSOCK, which no
network namespace holds; and a file's set-user-ID or set-group-ID bit, by chmod or as it is made
(SET_ID_CALLS): a file of the run's own user, which for a run as root (`AUTORESEARCH_RUN_USER=root`) is the
machine's root and for a loop not run as root yours, and in a box any user of the machine may pass through, made
whoever ran it that user while the run lived. Nothing else is filtered. libseccomp kills a process that makes a system
call of another architecture (the 32-bit entry points), so there is no way around it. Linux only; where libseccomp
is missing, `unavailable_reason()` says so.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import signal
import sys

from autoresearch.errors import AutoresearchError
from autoresearch.evaluator import promises

# The kernel's keyrings belong to no namespace: a session keyring the loop has (a login through pam_keyinit)
# would be shared with the run, which could read its keys and leave one for the next run.
KEYRING_CALLS = ("add_key", "request_key", "keyctl")
AF_VSOCK = 40
CPU_CALLS = ("sched_setaffinity", "io_uring_setup", "io_uring_enter", "io_uring_register")
NAMESPACE_CALLS = ("unshare", "setns", "mount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick")
NAMESPACE_CALLS += ("move_mount", "open_tree", "mount_setattr")
NOTIFY_CALLS = ("inotify_init", "inotify_init1", "fanotify_init")  # an honest run watches no file
# (call, its mode's argument, the argument whose flags must ask for a new file or None): refused a mode with S_ISUID
# or S_ISGID. openat2, whose mode lies in a struct the filter cannot read, answers ENOSYS (glibc's open uses openat).
SET_ID_CALLS = (
    ("chmod", 1, None), ("fchmod", 1, None), ("fchmodat", 2, None), ("fchmodat2", 2, None), ("creat", 1, None),
    ("mknod", 1, None), ("mknodat", 2, None), ("open", 2, 1), ("openat", 3, 2),
)  # fmt: skip
_SET_ID = 0o6000  # S_ISUID | S_ISGID
_NEW_FILE = (os.O_CREAT, 0o20200000)  # O_CREAT, O_TMPFILE
_CLONE_NEWUSER = 0x10000000
_PR_SCHED_CORE = 62


@functools.cache
def _pyseccomp():
    import pyseccomp  # raises where libseccomp is not installed

    return pyseccomp


def unavailable_reason() -> str | None:
    """None where the filter can be made; else one line saying why."""
    if not sys.platform.startswith("linux"):
        return "seccomp is Linux's"
    try:
        _pyseccomp()
    except (ImportError, OSError, RuntimeError) as exc:
        return f"libseccomp cannot be loaded ({exc}); install libseccomp2"
    return None


class FilterUnavailable(AutoresearchError):
    """The filter the loop found working cannot be loaded for this run: the run is not trained without it."""

    def __init__(self, reason: str):
        super().__init__(
            f"cannot put train.py under its seccomp filter: {reason}",
            hint="the loop loaded the filter at its start; see that libseccomp2 is installed and the machine has "
            "memory to spare, then run again: the experiment in flight is trained then",
        )


def evaluators_reason() -> str | None:
    """`unavailable_reason` as an evaluator takes it: where the process that started it promised the filter
    (evaluator/promises.py), FilterUnavailable rather than a run trained without it."""
    reason = unavailable_reason()
    if reason is not None and promises.FILTER in promises.promised():
        raise FilterUnavailable(reason)
    return reason


def _filter():
    seccomp = _pyseccomp()
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    for call in KEYRING_CALLS:
        rules.add_rule(seccomp.ERRNO(errno.EPERM), call)
    for call in (*CPU_CALLS, *NAMESPACE_CALLS, *NOTIFY_CALLS):
        with contextlib.suppress(OSError):  # an older libseccomp has no name for io_uring's or the new mount calls
            rules.add_rule(seccomp.ERRNO(errno.EPERM), call)
    rules.add_rule(
        seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_NEWUSER, _CLONE_NEWUSER)
    )
    with contextlib.suppress(OSError):
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for call, mode, flags in SET_ID_CALLS:
        new_file = [[]] if flags is None else [[seccomp.Arg(flags, seccomp.MASKED_EQ, f, f)] for f in _NEW_FILE]
        for bits, made in itertools.product((0o4000, 0o2000, _SET_ID), new_file):
            set_id = seccomp.Arg(mode, seccomp.MASKED_EQ, _SET_ID, bits)
            with contextlib.suppress(OSError):  # an older libseccomp has no name for fchmodat2
                rules.add_rule(seccomp.ERRNO(errno.EPERM), call, *made, set_id)
    with contextlib.suppress(OSError):
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "openat2")
    rules.add_rule(seccomp.ERRNO(errno.EPERM), "prctl", seccomp.Arg(0, seccomp.EQ, _PR_SCHED_CORE))
    # prlimit64(pid, resource, new, old): refused when it sets another process's limits (setrlimit passes pid 0). A
    # run set the anchor's CPU limit to 1 s, then kept it busy reaping until the kernel killed it (red team).
    rules.add_rule(
        seccomp.ERRNO(errno.EPERM), "prlimit64", seccomp.Arg(0, seccomp.NE, 0), seccomp.Arg(2, seccomp.NE, 0)
    )
    # The anchor's scheduling (pid 1; a run of a loop not run as root is its user): a run that set it SCHED_IDLE beside
    # busy loops of its own would have it reap, and end the box, late (red team, on an agent's turn's anchor). And
    # setpriority on a process group or every process of the user, the anchor among them.
    for call in ("sched_setscheduler", "sched_setparam", "sched_setattr"):
        rules.add_rule(seccomp.ERRNO(errno.EPERM), call, seccomp.Arg(0, seccomp.EQ, 1))
    rules.add_rule(seccomp.ERRNO(errno.EPERM), "setpriority", seccomp.Arg(0, seccomp.NE, 0))
    rules.add_rule(seccomp.ERRNO(errno.EPERM), "setpriority", seccomp.Arg(1, seccomp.EQ, 1))
    # A socket of AF_VSOCK: the run's network namespace does not hold it, and it reaches the host of a VM, whose
    # agents run what they are sent (red team, from an agent's turn).
    rules.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, AF_VSOCK))
    # rt_sigaction(signum, act, oldact): refused when signum is SIGCHLD and act is not NULL.
    rules.add_rule(
        seccomp.ERRNO(errno.EPERM),
        "rt_sigaction",
        seccomp.Arg(0, seccomp.EQ, signal.SIGCHLD),
        seccomp.Arg(1, seccomp.NE, 0),
    )
    return rules


def install() -> None:
    """Put this process (and all it will start) under the filter, SIGCHLD reset to its default first.
    Sets no_new_privs, which the kernel requires of an unprivileged filter. Raises OSError if it cannot."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _filter().load()


def bpf_fd() -> int:
    """A file descriptor holding the filter as a BPF program, read from its start (`bwrap --seccomp FD`)."""
    fd = os.memfd_create("autoresearch-seccomp", 0)  # not close-on-exec: bwrap inherits it
    with os.fdopen(fd, "wb", closefd=False) as out:
        _filter().export_bpf(out)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
