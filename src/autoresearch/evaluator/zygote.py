"""The fork server: `python -m autoresearch.evaluator.zygote FD`, one per loop, forks every run's evaluator.

Importing torch, its compiler and the evaluator, and rehearsing the model's export, costs ~7 CPU-seconds
(measured on 2 cores); a process that does it once and forks each run's evaluator from then on saves
all of it, and the evaluator forks the experiment in turn (evaluator/confined.py). Nothing of a run
is ever in this process: it holds no data and no secret (the loop starts it with the evaluator's
environment, sandbox.evaluator_env), never touches CUDA (a CUDA context does not survive a fork) and
never runs an OpenMP parallel region (whose threads do not survive one either).

Protocol on the socket FD, one JSON object per message: the loop sends {"argv": [...]} with two file
descriptors (the evaluator's stdin, and where its stdout and stderr go); this process answers
{"pid": N} once forked ({"refused": WHY} where the kernel refused the fork), and {"pid": N, "exit": CODE} (as
Popen.returncode) when that evaluator ended.
It exits when the loop closes the socket.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import socket
import sys
import time
import traceback

from autoresearch.errors import AutoresearchError
from autoresearch.evaluator import cores


def serve(sock: socket.socket) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the loop's: it stops its runs itself
    from autoresearch.evaluator import referee
    from autoresearch.harness import boot

    boot.prepare()
    if not _forks_can_compute():
        sys.exit("autoresearch fork server: a forked process hangs in torch's thread pool here; not forking")
    sock.sendall(json.dumps({"ready": True}).encode() + b"\n")
    running: set[int] = set()
    while True:
        readable = select.select([sock], [], [], 0.1)[0]
        for pid in list(running):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                running.discard(pid)
                _reply(sock, {"pid": pid, "exit": os.waitstatus_to_exitcode(status)})
        if not readable:
            continue
        message, fds, _, _ = socket.recv_fds(sock, 1 << 16, 2)
        if not message:
            return  # the loop is gone: its runs are killed by their pid files' owner, not by us
        request = json.loads(message)
        try:
            pid = os.fork()
        except OSError as exc:  # EAGAIN: your limit of tasks, which a run counts toward, met meanwhile
            for fd in fds:
                os.close(fd)
            _reply(sock, {"refused": str(exc)})
            continue
        if pid == 0:
            _evaluator(sock, referee.main, request["argv"], fds)
        for fd in fds:
            os.close(fd)
        running.add(pid)
        _reply(sock, {"pid": pid})


def _forks_can_compute(timeout: float = 30.0) -> bool:
    """Whether a fork of this process can run torch's parallel kernels and touch CUDA: it cannot if this
    process ran an OpenMP parallel region (its threads are gone in the fork, and it hangs) or made a CUDA
    context."""
    import torch

    pid = os.fork()
    if pid == 0:
        bad = torch.cuda.is_available() and torch.cuda._is_in_bad_fork()
        torch.ones(1 << 20).add_(1)  # large enough for a parallel region
        os._exit(1 if bad else 0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


def _reply(sock: socket.socket, message: dict) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def _evaluator(sock: socket.socket, main, argv: list[str], fds: list[int]) -> None:
    """In the fork: become `python -m autoresearch.evaluator.referee ARGV`, in a session of its own. An exception
    nothing caught ends it with 1, as it ends `python -m`: never 2, its setup error, which stops the loop (a train.py
    that broke its evaluator so, with a number too large for a float in a frame, stopped every start; red team)."""
    code = 1
    try:
        sock.close()
        os.setsid()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        stdin, out = fds
        os.dup2(stdin, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(stdin)
        os.close(out)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
        sys.argv = ["autoresearch.evaluator.referee", *argv]
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def main() -> None:
    # Started without the working directory on sys.path (sandbox.module_command)
    # On the worker's CPUs before anything starts a thread: every evaluator forked inherits them. Where they cannot
    # be had, each evaluator's own pin says so (referee.py `main`), as the loop's error.
    with contextlib.suppress(AutoresearchError):
        cores.pin()
    serve(socket.socket(fileno=int(sys.argv[1])))
    # The loop closed the socket: nothing is left to do. The interpreter's teardown, with torch and its compiler
    # imported, would take a CPU-second, which the loop's close waited for (STOP_WAIT_S) before it killed this
    # process anyway; this process holds nothing to write or wait for but its own output, flushed first.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
