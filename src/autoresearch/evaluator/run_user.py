"""A run's own user, under a loop run as root.

RLIMIT_NPROC binds no process whose user is the machine's root, whatever its user namespace (the kernel checks the
real user), and where no pids group can be made for a run (a container's read-only cgroups; the lent GPU machines'
cgroup v2, whose parent hands `memory` down alone) a root loop's run could fill the process table (32,768 entries
there) within a second; and what the kernel counts by user whatever the cgroup (`wanted`) a run as root counted as
root's. So a root loop's run is a user of its own before train.py runs, wherever the machine allows it, `nobody`
(RUN_UID) as it sees itself, and RLIMIT_NPROC caps it (evaluator/tasks.py), counted in its user namespace alone.

That namespace is made by the evaluator for each sandbox (`namespace`), mapping root to itself and RUN_UID to a
user of the evaluator's own outside (`host_uid`): bubblewrap joins it (`--userns`) and sets the sandbox up as root,
as before; the experiment then becomes RUN_UID as it drops every privilege (evaluator/joining.py `drop_privileges`),
forked or started as a new process (harness/boot.py `main`). Having been root in that namespace gives it nothing: no
capability is left, none can be regained (no_new_privs), and root's processes there (the anchor) are neither its to
trace nor to signal.

As `nobody` it reads what every user may read (the files of its Python, which bubblewrap shows at their paths, in
directories it is told to make 0755, `sandbox.command`); it writes its box, made its own (`give`), and a /tmp of mode
1777, as is its /dev/shm. Switched by RUN_USER_ENV: "auto" (the default: every run of a root loop, where the machine
can make one a user of its own; a pids group, where one can be made, caps its tasks too), "nobody" (the same, and
`run` refuses to start where it cannot), "root" (never: a run as root shares what the kernel counts by user with
root's own processes and every other run, and runs uncapped where no group caps them, as `run` warns).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
from pathlib import Path

from autoresearch.errors import AutoresearchError

RUN_UID = 65534  # in its namespace, the machine's `nobody`, as its group is `nogroup`/`nobody`
# Outside it, a user of each evaluator's own (`host_uid`): the kernel counts some things by that user alone, whatever
# the namespace (file descriptors in flight in unix sockets, pipes' pages, epoll's watches). Mapped to the machine's
# nobody, every run was one user there: one run that kept 20,000 descriptors in flight had every other worker's run
# refused the next it sent (ETOOMANYREFS: a DataLoader's workers, multiprocessing's fork server), BROKE (red team).
HOST_BASE = 0x7F000000  # + the evaluator's pid (at most 2**22): far above any user a system or its containers give
# The owner of the run's namespace (its maker), another user of the evaluator's own that the namespace does not map:
# the kernel gives a process outside the namespace whose user is its owner every capability in it, and it maps root.
OWNERS = 1 << 22  # + HOST_BASE + the evaluator's pid
RUN_USER_ENV = "AUTORESEARCH_RUN_USER"
CHOICES = ("auto", "nobody", "root")
AS_USER = "--as-user"  # UID: to a harness started as a new process (harness/boot.py), the user to become first
CLONE_NEWUSER = 0x10000000


def choice() -> str:
    """RUN_USER_ENV, checked."""
    raw = os.environ.get(RUN_USER_ENV, "").strip().lower() or "auto"
    if raw not in CHOICES:
        raise AutoresearchError(
            f"{RUN_USER_ENV} takes auto, nobody or root (got {raw!r})",
            hint="unset it: a loop run as root then runs each run as `nobody` wherever the machine allows it",
        )
    return raw


def wanted() -> bool:
    """Whether a run of this loop should be RUN_UID: run as root, on Linux, unless RUN_USER_ENV says root. Also where a
    pids group caps its tasks: what the kernel counts by user (descriptors in flight in unix sockets, epoll's watches,
    pipes' pages) a run as root counts as root's, and a run that kept 20,000 descriptors in flight had every other
    worker's run refused the next it sent (ETOOMANYREFS: a DataLoader's workers), one that held 5.5 million epoll
    watches (1.1 GiB, within its share) every root process on the machine refused one (ENOSPC: asyncio, the coding
    agents' runtimes, systemd), red team. Where the machine cannot make a run a user of its own (sandbox.users_reason)
    runs are root: with "auto" as they were, with "nobody" `run` refuses to start."""
    if os.getuid() != 0 or not hasattr(os, "setresuid"):
        return False
    return choice() != "root"


def host_uid() -> int:
    """The user (and group) the run is outside its namespace: its evaluator's own, by this process's pid, which no
    other live process has."""
    return HOST_BASE + os.getpid()


def owner_uid() -> int:
    """The user (and group) that makes the run's namespace (`namespace`), its owner: one of its evaluator's own, not
    `host_uid`. A process of the namespace's owner outside it holds every capability in it, where root is mapped:
    made by `host_uid`, a run left a copy of `nsenter` of its own, set-user-ID, in its box, and any user of the
    machine who ran it entered the run's namespace as root, the machine's (read /etc/shadow, wrote root's files;
    red team). No file and no process of the run is this user: the run cannot make one, nor become it."""
    return HOST_BASE + OWNERS + os.getpid()


def namespace() -> int:
    """A descriptor of a new user namespace that maps root to itself and RUN_UID to `host_uid`, for bubblewrap to
    join; the caller closes it. OSError where the kernel refuses one.

    Made by `owner_uid` (its owner, which it does not map), where the kernel lets that user make one: what the kernel
    counts along the chain of user namespaces (queued signals and POSIX timers, POSIX message queues' bytes, locked
    shared memory, tasks, inotify instances) it counts in the run's namespace and again for whoever made it, outside.
    Made by root, a run as `nobody` that queued 96,360 real-time signals had every root process of the machine refused
    a timer and a real-time signal (timer_create, glibc's pthread_cancel and set*id broadcast: EAGAIN), red team.
    Owning it gives that user nothing: no process of it is outside the namespace, and none can be made (not
    `host_uid`, the run's own, whose set-user-ID file was one: `owner_uid`). Root writes the maps, as before."""
    libc = ctypes.CDLL(None, use_errno=True)
    owner = owner_uid()

    def unshare(own: bool) -> None:
        if own:  # no group, then the user: it keeps no capability
            os.setgroups([])
            os.setresgid(owner, owner, owner)
            os.setresuid(owner, owner, owner)
        if libc.unshare(CLONE_NEWUSER) != 0:
            raise OSError(ctypes.get_errno(), "unshare")

    try:  # Popen returns once the holder has exec'd: in its namespace by then
        holder = subprocess.Popen(["sleep", "30"], preexec_fn=lambda: unshare(True), stdin=subprocess.DEVNULL)
    except subprocess.SubprocessError:  # no user namespace for a user without privilege here: root's, as before
        try:
            holder = subprocess.Popen(["sleep", "30"], preexec_fn=lambda: unshare(False), stdin=subprocess.DEVNULL)
        except subprocess.SubprocessError as exc:
            raise OSError(f"no user namespace can be made here: {exc}") from None
    try:
        mapping = f"0 0 1\n{RUN_UID} {host_uid()} 1\n"
        for name in ("uid_map", "gid_map"):
            Path(f"/proc/{holder.pid}/{name}").write_text(mapping)
        return os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY)
    finally:
        holder.kill()
        holder.wait()


def give(paths: list[Path]) -> None:
    """Make `paths` (the run's box, with its compile caches' layer) the run's (`host_uid`), their folders and files:
    the run writes there. Not a link, nor what it leads to (the layer's lead to the shared caches, which no run may
    write). Each of `paths` is a folder."""
    owner = host_uid()
    for top in paths:
        os.chown(top, owner, owner, follow_symlinks=False)
        os.chmod(top, 0o711)  # bubblewrap, root in the namespace with no capability left, goes into it
        for folder, folders, files in os.walk(top):
            for name in [*folders, *files]:
                path = os.path.join(folder, name)
                with contextlib.suppress(FileNotFoundError):
                    if not os.path.islink(path):
                        os.chown(path, owner, owner, follow_symlinks=False)
