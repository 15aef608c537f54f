"""Red team (helper 112): what the kernel counts by user rather than by cgroup or namespace, held by a run of a root
loop so that what else runs on the machine is refused its own. Each run is made as the loop makes it by default (a
user of its own where it promises one, else root with no capability left), as an evaluator makes it, in a process of
its own."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import select
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from autoresearch.evaluator import promises, sandbox

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.getuid() != 0, reason="the runs of a loop run as root")]

HELD_S = 30  # seconds a holder holds at most, once it holds: the test lets it go (SIGUSR1) once it has its answer
DROP_ALL = "from autoresearch.evaluator import joining; joining.drop_privileges()\n"
# How a holder holds, once it holds all it may: named "holding" (which the test reads from outside its namespaces),
# until the test lets it go.
HOLD = f"""
import ctypes, signal
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
ctypes.CDLL(None).prctl(15, b"holding", 0, 0, 0)  # PR_SET_NAME
signal.sigtimedwait([signal.SIGUSR1], {HELD_S})
"""


def _as_the_loop_runs_it(code: str, out: str, timeout: float = 60.0) -> None:
    """In a process of its own (an evaluator): `code` run as this loop runs train.py, for `timeout` seconds at most, its
    output written to `out`."""
    code = textwrap.dedent(code)
    if promises.USER in sandbox.can_promise(dict(os.environ)):
        ran = sandbox.as_run_user(code, timeout)
    else:  # root in its sandbox, every capability dropped, as joining.drop_privileges leaves it
        env = sandbox._search_paths_absolute(dict(os.environ))
        ran = sandbox._in_sandbox([sys.executable, "-c", DROP_ALL + code], env=env, timeout=timeout)
    with open(out, "w") as f:
        f.write(ran if isinstance(ran, str) else ran.stdout + ran.stderr)


def _holding(marker: str) -> int | None:
    """The pid of the holder whose code has `marker`, once it holds (named so by HOLD)."""
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/comm") as comm, open(f"/proc/{name}/cmdline", "rb") as cmdline:
                if comm.read() == "holding\n" and marker.encode() in cmdline.read():
                    return int(name)
        except OSError:
            continue
    return None


def _beside(holder_code: str, tmp_path, then, timeout: float = 60.0, every: float = 0.0) -> tuple[str, object]:
    """Run `holder_code` as the loop runs a run (for `timeout` seconds at most) and, once it holds what it holds (it
    says so by its name: a sandboxed run's output comes back at its end), `then()`, then let it go; the holder's output
    and what `then` returned. With `every`, `then()` every `every` seconds from the holder's start, and 4 times more
    once it holds: (what each returned before, what each returned while it held)."""
    context = multiprocessing.get_context("fork")
    held = tmp_path / "held"
    marker = f"holder-{os.getpid()}-{time.time_ns()}"
    holder = context.Process(target=_as_the_loop_runs_it, args=(f"# {marker}\n{holder_code}{HOLD}", str(held), timeout))
    holder.start()
    try:
        before, deadline = [], time.monotonic() + timeout
        while (pid := _holding(marker)) is None and holder.is_alive() and time.monotonic() < deadline:
            if every:
                before.append(then())
            time.sleep(every or 0.1)
        answer = (before, []) if every else then()
        for _ in range(4 if every else 0):  # while it holds
            time.sleep(every)
            answer[1].append(then())
        if pid is not None:
            os.kill(pid, signal.SIGUSR1)
    finally:
        holder.join(timeout + 60)
        if holder.is_alive():
            holder.kill()
    said = held.read_text() if held.exists() else ""
    assert pid is not None, f"the holder never held: {said}"
    return said, answer


# Keeps more descriptors in flight in a unix socket than a run may have open (RLIMIT_NOFILE), which the kernel counts
# by the sender's user (user_struct), whatever its namespace or cgroup.
FDS_IN_FLIGHT = """
import array, os, resource, socket, time
ours, theirs = socket.socketpair()
ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(250)]
sent = 0
try:
    while sent < 4 * resource.getrlimit(resource.RLIMIT_NOFILE)[0]:
        ours.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        sent += len(fds)
except OSError as exc:
    print("stopped", exc)
print("held", sent, flush=True)
"""

# multiprocessing's fork server (Python 3.14's default start method on Linux) is sent each new process's descriptors
# (SCM_RIGHTS), as a DataLoader's workers send each batch's.
START_A_PROCESS = """
import multiprocessing
if __name__ == "__main__":
    try:
        p = multiprocessing.get_context("forkserver").Process(target=print, args=("worker started",))
        p.start()
        p.join()
        print("started", p.exitcode, flush=True)
    except OSError as exc:
        print("refused", exc, flush=True)
"""


def test_a_run_that_keeps_descriptors_in_flight_leaves_another_workers_run_its_own_to_send(tmp_path) -> None:
    """A root loop whose runs a pids group caps ran them as root (no capability left): one run that kept 20,000
    descriptors in flight had the next descriptor any other worker's run sent refused (ETOOMANYREFS), so that
    multiprocessing's fork server and a DataLoader's workers failed and an honest run crashed. BROKE, fixed: a root
    loop runs every run as a user of its own where it can (run_user.wanted), pids group or not. And a user of each
    evaluator's own outside its namespace (run_user.host_uid): when every run was the machine's `nobody` there, the
    same held between runs (helper 111)."""

    def start_one() -> str:
        _as_the_loop_runs_it(START_A_PROCESS, str(tmp_path / "started"))
        return (tmp_path / "started").read_text()

    held, started = _beside(FDS_IN_FLIGHT, tmp_path, start_one)
    assert "held" in held, held
    assert "worker started" in started and "started 0" in started, started


# Holds as many epoll watches as the kernel lets one user have (fs.epoll.max_user_watches, 4 % of the memory: 1.1 GiB
# of kernel memory on a 24 GiB machine, charged to the run's share), by user_struct again. Refuses to hold them as the
# machine's root: that would refuse every root process of the machine one (the test would do the harm it tests for).
WATCHES = int(Path("/proc/sys/fs/epoll/max_user_watches").read_text()) if sys.platform.startswith("linux") else 0
EPOLL_WATCHES = """
import os, resource, select, time
mapped = open("/proc/self/uid_map").read().split()
outside = int(mapped[mapped.index(str(os.getuid())) + 1])
if outside == 0:
    print("as the machine's root: not held", flush=True)
    raise SystemExit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
r, w = os.pipe()
fds = [os.dup(r) for _ in range(min(hard, 20000) // 2 - 20)]
polls, watches = [], 0
try:
    while True:
        polls.append(select.epoll())
        for fd in fds:
            polls[-1].register(fd, select.EPOLLIN)
            watches += 1
except OSError as exc:
    print("stopped", exc)
print("held", watches, "watches", flush=True)
"""


@pytest.mark.slow
def test_a_run_that_holds_every_epoll_watch_leaves_root_its_own(tmp_path) -> None:
    """The kernel counts epoll watches by user, up to fs.epoll.max_user_watches, and refuses one more (ENOSPC) to any
    process of that user, root's too: no capability passes. A run as root (a pids group capping it) that held them
    all, within its memory share, had every root process of the machine refused one (asyncio's loop, a coding agent's
    runtime, systemd). BROKE (shown as another user: not run as root here), fixed: each run is a user of its own."""

    def watch_one() -> str:
        r, w = os.pipe()
        poll = select.epoll()
        try:
            poll.register(r, select.EPOLLIN)
            return "watched"
        except OSError as exc:
            return f"refused {exc}"
        finally:
            poll.close()
            os.close(r)
            os.close(w)

    # Asked all along, from before the run holds them until it has held them for 2 s: how long filling takes grows
    # with the machine's memory (5.5 M watches on a 24 GiB machine, ~8 s; 29 M on a GPU host's 128 GiB, over 30 s).
    filling = WATCHES / 200_000
    held, (filled, holding) = _beside(EPOLL_WATCHES, tmp_path, watch_one, timeout=30 + filling, every=0.5)
    assert "not held" not in held, held
    assert "held" in held and int(held.split("held")[1].split()[0]) > 100_000, held
    assert set(filled + holding) == {"watched"} and filled and len(holding) == 4, (filled, holding)


# Queues real-time signals to itself, blocked, as many as the kernel lets it (RLIMIT_SIGPENDING), which it counts
# along the chain of user namespaces: in the run's, and in the one above for whoever made the run's.
SIGNALS_PENDING = """
import signal, threading, time
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
queued = 0
try:
    while queued < 1_000_000:
        signal.pthread_kill(threading.get_ident(), signal.SIGRTMIN)
        queued += 1
except OSError as exc:
    print("stopped", exc)
print("held", queued, "signals", flush=True)
"""


def test_a_run_that_queues_every_signal_it_may_leaves_root_its_own(tmp_path) -> None:
    """The kernel counts queued signals (and POSIX timers, which hold one each) in the run's user namespace and again
    for whoever made that namespace, refusing any process of that user one more past its RLIMIT_SIGPENDING, root's
    too. The evaluator, root, made it: a run as `nobody` that queued 96,360 real-time signals (8 MB) had every root
    process of the machine refused a timer (timer_create: EAGAIN) and a real-time signal (glibc's pthread_cancel and
    set*id broadcast use them). BROKE, fixed: the run's namespace is made by its own user (run_user.namespace)."""

    def make_timers() -> str:  # a few: the run stops one short of the most or at it, by what root had queued then
        libc = ctypes.CDLL(None, use_errno=True)
        timers: list[ctypes.c_void_p] = []
        try:
            while len(timers) < 16:
                timer = ctypes.c_void_p()
                if libc.timer_create(1, None, ctypes.byref(timer)) != 0:  # CLOCK_MONOTONIC, SIGALRM
                    return f"refused timer {len(timers) + 1}: {os.strerror(ctypes.get_errno())}"
                timers.append(timer)
            return "made"
        finally:
            for timer in timers:
                libc.timer_delete(timer)

    held, made = _beside(SIGNALS_PENDING, tmp_path, make_timers)
    assert "held" in held and int(held.split("held")[1].split()[0]) > 1000, held
    assert made == "made", made
