"""The experiment's process: started confined where the machine allows it, stopped with all it started.

The process is `python -m autoresearch.harness.boot` in a fresh, empty run directory (the "box"),
inside the sandbox (evaluator/sandbox.py: no network, no view of the workspace, the data or other
processes, writes only to the box and its own /tmp). It imports torch at once and
waits on the channel for "go", so a run can be started while the previous one trains. Where no
sandbox can be made it runs as a plain child; this process then becomes a child subreaper, so
whatever the experiment detaches (a double fork, `setsid`) is still its descendant and is killed
with it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import BinaryIO, NoReturn

import psutil

from autoresearch import switches
from autoresearch.anchor import NAME as ANCHOR_NAME
from autoresearch.anchor import command as anchored
from autoresearch.evaluator import joining, memory, promises, run_group, run_user, sandbox, syscalls, tasks
from autoresearch.evaluator.run_env import box_environment, confined_environment
from autoresearch.evaluator.run_group import RunGroup
from autoresearch.evaluator.run_output import Output
from autoresearch.wire import CHANNEL_ENV, Channel

PR_SET_CHILD_SUBREAPER = 36
FORK_ENV = switches.FORK_SERVER


class ExperimentProcess:
    """train.py's process, forked from this one into a fresh sandbox, or started as a new process.

    Forked (the default on Linux): this process has imported torch, the harness and the compiler and
    rehearsed the export (harness/boot.py `prepare`), and nothing secret is in its memory yet, so the
    fork starts at once and knows nothing. bubblewrap makes the sandbox around an anchor process; the
    fork joins it (evaluator/joining.py), forks once more to be inside its PID namespace, drops every
    capability, and becomes the experiment. Where that never works here (the loop's probe:
    evaluator/anchor_probe.py), or `AUTORESEARCH_FORK_SERVER=0`, the experiment is `python -m
    autoresearch.harness.boot` started inside the sandbox instead (by our anchor, as its init, where the loop's
    bubblewrap makes anchors); where it worked at the loop's start and fails for a run, the loop stops. Either way
    it runs under the SIGCHLD filter (evaluator/syscalls.py). It sees what `view` says besides the root
    (sandbox.View: the workspace and data hidden, the shared compile caches read-only, its own layer of them).
    """

    def __init__(self, box: Path, env: dict[str, str], view: sandbox.View):
        self.unconfined_reason = sandbox.evaluators_reason()
        self.unfiltered_reason = syscalls.evaluators_reason()  # FilterUnavailable where the loop loads it
        self._anchor: subprocess.Popen | None = None
        # At most so many tasks at once (evaluator/tasks.py): by its group, entered before it starts anything, or by
        # RLIMIT_NPROC, which `task_limit` asks the harness to set in the run's own user namespace. Its share of
        # memory (evaluator/memory.py): by its group alone. A group the loop found it could make is made, or the run
        # is not trained (run_group.check).
        self.tasks, self.memory = tasks.run_tasks(), memory.run_memory()
        limits = sandbox.run_limits()
        self.group = RunGroup.make(limits)
        run_group.check(self.group, limits)
        self._group_refused = self._group_killed = False  # what its group counted, read before it is removed
        # A root loop's run as a user of its own, where the loop found one can be made here (run_user.py)
        own_user = self.unconfined_reason is None and promises.USER in promises.promised()
        self.run_uid = run_user.RUN_UID if own_user else None
        if self.run_uid is not None:
            run_user.give([box])  # made by root for root alone; again once the compile caches' layer is filled
        by_limit = tasks.by_limit(self.run_uid is not None)
        self.task_limit = self.tasks if self.tasks and self.unconfined_reason is None and by_limit else None
        self.join_error: str | None = None  # why the experiment could not be forked into its sandbox
        ours, theirs = socket.socketpair()
        env = {**env, CHANNEL_ENV: str(theirs.fileno()), "PYTHONUNBUFFERED": "1"}
        if self.unconfined_reason is not None:
            _become_subreaper()
        started = None
        if not switches.switched(FORK_ENV) and sys.platform.startswith("linux"):
            started = self._fork(box, view, env, theirs.fileno())
        self.forked = started is not None
        self.proc, stdout = started or self._start(box, view, env, theirs.fileno())
        theirs.close()
        from autoresearch.evaluator.program import MAX_DOCUMENT_BYTES  # torch's: the loop imports this module too

        # What it may send is read into this process, outside its own group (within the evaluator's share, referee.py
        # `_hold_the_share`): the graph and the weights alone, each up to its most.
        self.channel = Channel(ours, payloads={"model": MAX_DOCUMENT_BYTES, "weights": memory.most_weights()})
        self.output = Output(stdout)
        self._ended = threading.Event()  # set once its process has ended and been waited for
        self._channel_lock = threading.Lock()  # its shutdown (on the experiment's exit) and its close (`stop`)
        # When the experiment ends, wake whoever waits on the channel (a leftover child could keep it open).
        threading.Thread(target=self._close_on_exit, daemon=True, name="experiment-exit").start()

    @property
    def confined(self) -> bool:
        return self.unconfined_reason is None

    def _start(self, box, view, env, channel_fd: int) -> tuple[subprocess.Popen, BinaryIO]:
        argv = [sys.executable, "-m", "autoresearch.harness.boot"]
        fds, filter_here, userns = [channel_fd], False, 0
        if self.unconfined_reason is None:
            seccomp = syscalls.bpf_fd() if self.unfiltered_reason is None else None
            fds += [seccomp] if seccomp is not None else []
            if self.run_uid is not None:
                userns = run_user.namespace()
                fds.append(userns)
                argv += [run_user.AS_USER, str(self.run_uid)]
            # Where the loop's bubblewrap makes anchors, the anchor starts it, as its init: under bubblewrap's own
            # (AUTORESEARCH_FORK_SERVER=0) the run traced and wrote that init (red team).
            own_init = promises.ANCHOR in promises.promised()
            if own_init:
                argv = anchored(argv)
            argv = _confined(argv, box, view, env, seccomp, own_init, userns)
        else:
            filter_here = self.unfiltered_reason is None

        def preexec() -> None:
            _enter_run(self.group)
            if filter_here:
                syscalls.install()

        proc = subprocess.Popen(
            argv,
            cwd=box,
            env=box_environment(env, box),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=fds,
            preexec_fn=preexec,  # enters the group; unconfined, loads the filter before exec
        )
        for fd in fds[1:]:
            os.close(fd)
        return proc, proc.stdout

    def _fork(self, box, view, env, channel_fd: int) -> tuple[Forked, BinaryIO] | None:
        """Fork the experiment into a sandbox of its own; None (and nothing left running) if it cannot join."""
        from autoresearch.harness import boot

        boot.prepare()
        anchor = None
        if self.unconfined_reason is None:
            self._anchor = start_anchor(box, view, env, self.unfiltered_reason is None, self.group, self.run_uid)
            anchor = anchor_pid(self._anchor)
            if anchor is None:
                kill_tree(self._anchor)
                self._anchor = None
                if (why := sandbox.probe()) is not None:  # no fault of the run's: the loop stops, saying why
                    raise sandbox.SandboxUnavailable(why)
                if promises.ANCHOR in promises.promised():  # the loop's bubblewrap makes anchors: this one failed
                    raise sandbox.SandboxUnavailable(
                        "the run's sandbox could not be made around its anchor (bwrap --as-pid-1), as it could at the "
                        "loop's start"
                    )
                return None  # a bubblewrap without --as-pid-1: the experiment is started as a new process
        out_r, out_w = os.pipe()
        ready_r, ready_w = os.pipe()
        confined = self.unconfined_reason is None
        box_env = confined_environment(env, box) if confined and view.gpu else box_environment(env, box)
        pid = os.fork()
        if pid == 0:
            filtered = self.unfiltered_reason is None
            _become_experiment(anchor, self.group, box, box_env, channel_fd, out_w, ready_w, filtered, self.run_uid)
        os.close(out_w)
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as ready:
            answer = ready.read()
        forked = Forked(pid)
        if answer == b"ok":
            return forked, os.fdopen(out_r, "rb")
        os.close(out_r)
        forked.kill()
        if self._anchor is not None:
            kill_tree(self._anchor)
            self._anchor = None
        self.join_error = answer.decode(errors="replace") or "it ended without a word"
        if anchor is not None and promises.ANCHOR in promises.promised():  # as the loop's probe was: not this one
            raise sandbox.SandboxUnavailable(
                f"the run could not be forked into its sandbox, as a probe was at the loop's start: {self.join_error}"
            )
        return None  # a kernel that refuses to join (an old one, a setuid bubblewrap): started as a new process

    def _close_on_exit(self) -> None:
        self.proc.wait()
        self._ended.set()
        with self._channel_lock, contextlib.suppress(OSError):  # not on a number `stop` closed and another took since
            self.channel.sock.shutdown(socket.SHUT_RDWR)

    def ends_by_itself(self, within: float) -> bool:
        """Whether the experiment ends within `within` seconds unstopped; then `stop` returns its own exit code,
        not the one of the stop's kill (which, confined, can reach the process reporting it before it reports)."""
        return self._ended.wait(within)

    def stop(self) -> int:
        """Kill the experiment and everything it started; its exit code (negative: the signal)."""
        if self._anchor is not None:  # its PID namespace holds the experiment: all in it die with it
            kill_tree(self._anchor)
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)  # bwrap takes its PID namespace, and all in it, along
        # Unconfined, what it left running was reparented to this process (a subreaper): all our children die.
        # Confined, its PID namespace took everything along, and our own children (the compiler's worker pool,
        # compiling the graph ahead: evaluator/ahead.py) must live on.
        if not self.confined:
            for child in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
        code = self.proc.wait()
        # The channel goes with it. Data it sent and was never read (after its weights, a payload refused) may carry
        # file descriptors (SCM_RIGHTS): they stay open in this socket's queue until it closes, where a train.py had
        # its evaluator hold, while it scores, a file it unlinked (the disk's room with it: referee.py looks at that).
        with self._channel_lock:
            self.channel.close()
        self.output.finish()
        if self.group is not None:
            self._group_refused = self._group_refused or tasks.refused(self.group)
            self._group_killed = self._group_killed or memory.killed(self.group)
            self.group.remove()
        return code

    def reached_task_cap(self) -> bool:
        """Whether the run was refused a process or thread for its cap of `tasks` (as far as can be told: by its
        group's count; under RLIMIT_NPROC, by the error its output ends with)."""
        if self._group_refused:
            return True
        return self.task_limit is not None and any(e in self.output.last_line() for e in _TASK_REFUSED)

    def killed_for_memory(self) -> bool:
        """Whether the kernel killed a process of the run for its share of memory (its group's count)."""
        return self._group_killed

    def exit_code(self) -> int | None:
        return self.proc.poll()


_TASK_REFUSED = ("Resource temporarily unavailable", "can't start new thread")  # fork's and a thread's EAGAIN


class Forked:
    """A child made by os.fork, with the part of Popen's interface the evaluator uses."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self) -> int:
        with self._lock:  # one thread reaps; the others wait for it
            if self.returncode is None:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.send_signal(signal.SIGKILL)
        self.wait()


def _confined(argv: list[str], box: Path, view: sandbox.View, env: dict[str, str], seccomp: int | None,
              own_init: bool = False, userns: int = 0) -> list[str]:  # fmt: skip
    return sandbox.command(argv, workdir=box, hidden=view.hidden, readable=view.readable, binds=view.binds, env=env,
                           gpu=view.gpu, seccomp_fd=seccomp, own_init=own_init, userns_fd=userns)  # fmt: skip


def _enter_run(group: RunGroup | None) -> None:
    """In a run's first process, before it starts anything: into the run's group, and the kernel's first to kill
    for memory there (memory.kill_first)."""
    memory.kill_first()
    if group is not None:
        group.enter()


def start_anchor(
    box: Path, view: sandbox.View, env: dict[str, str], filtered: bool, group: RunGroup | None, uid: int | None = None
) -> subprocess.Popen:
    """A fresh sandbox around the anchor (autoresearch/anchor.py: pid 1, bwrap --as-pid-1, which the experiment joins;
    its limits are not the experiment's to set, evaluator/syscalls.py refuses prlimit on another process), in the run's
    group; says "ready" once it is made. Under the filter too, as the experiment is. With `uid`, in a user namespace
    where the experiment becomes that user."""
    seccomp = syscalls.bpf_fd() if filtered else None
    userns = run_user.namespace() if uid is not None else 0
    argv = _confined(anchored(), box, view, env, seccomp, True, userns)
    fds = [fd for fd in (seccomp, userns) if fd]
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            pass_fds=fds,
            preexec_fn=functools.partial(_enter_run, group),
        )
    finally:
        for fd in fds:
            os.close(fd)


def anchor_pid(anchor: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """The pid of the anchor once it runs inside the finished sandbox; None if it never does."""
    if anchor.stdout.readline() != b"ready\n":
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process(anchor.pid).children(recursive=True):
                if proc.name() == ANCHOR_NAME:
                    return proc.pid
        time.sleep(0.005)
    return None


def _become_experiment(anchor: int | None, group: RunGroup | None, box: Path, env: dict[str, str],
                       channel_fd: int, out_fd: int, ready_fd: int, filtered: bool,
                       uid: int | None = None) -> NoReturn:  # fmt: skip
    """In the child of os.fork: enter the run's group, join the sandbox, fork into its PID namespace, wait for that
    process and exit as it did. The inner process drops its privileges, says "ok" on `ready_fd` and runs the
    experiment."""
    try:
        _enter_run(group)  # before it joins the sandbox, where /sys is read-only
        if anchor is not None:
            joining.join(anchor)
        inner = os.fork()
        if inner == 0:
            _run_experiment(anchor is not None, box, env, channel_fd, out_fd, ready_fd, filtered, uid)
        os.close(ready_fd)
        os.close(out_fd)
        os.close(channel_fd)
        code = os.waitstatus_to_exitcode(os.waitpid(inner, 0)[1])
        if code < 0:  # end as it ended: killed by the same signal (SIGKILL has no handler to reset)
            if -code != signal.SIGKILL:
                signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code & 0xFF)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(ready_fd, f"{type(exc).__name__}: {exc}".encode())
        os._exit(126)


def _run_experiment(confined: bool, box: Path, env: dict[str, str], channel_fd: int, out_fd: int, ready_fd: int,
                    filtered: bool, uid: int | None = None) -> NoReturn:  # fmt: skip
    code = 1
    try:
        os.setsid()  # the run cannot push input into a terminal of ours (TIOCSTI)
        if confined:
            joining.drop_privileges(uid)
        if filtered:
            syscalls.install()
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.write(ready_fd, b"ok")
        keep = {0, 1, 2, channel_fd}
        for fd in map(int, os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []):
            if fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(box)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a new Python process
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from autoresearch.harness import boot

        boot.run(Channel(socket.socket(fileno=channel_fd)))
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:  # reported as `python train.py` would, then exit 1
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()  # what a normal interpreter exit does
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def kill_tree(proc, wait: float = 10.0) -> None:
    """Kill a process at once, with its process group (if it leads one) and every process it started (one that
    left the group too), then reap it. `proc` is a Popen, or anything with its pid and wait(timeout). Nothing
    of a run is worth a grace period: its result is written by the time it ends by itself."""
    try:
        started = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        started = []
    with contextlib.suppress(ProcessLookupError):
        kill = os.killpg if os.getpgid(proc.pid) == proc.pid else os.kill
        kill(proc.pid, signal.SIGKILL)
    for child in started:
        with contextlib.suppress(psutil.Error):
            child.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=wait)  # a process leaving the GPU can take a moment


def _become_subreaper() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
