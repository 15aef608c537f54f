"""Red team (helper 111): a root loop's runs as a user of their own (evaluator/run_user.py), attacked from inside
their sandboxes, each run made as an evaluator makes it, in a process of its own."""

from __future__ import annotations

import multiprocessing
import os
import textwrap
import time

import pytest

from autoresearch.evaluator import sandbox

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="only a loop run as root runs its runs as a user of their own")


def _run_as_evaluator(code: str, out: str) -> None:
    """In a process of its own (an evaluator): `code` run as the run's own user in a sandbox it makes; its output
    written to `out`."""
    ran = sandbox.as_run_user(textwrap.dedent(code))
    with open(out, "w") as f:
        f.write(ran if isinstance(ran, str) else ran.stdout + ran.stderr)


# Keeps more descriptors in flight in a unix socket than a run may have open (RLIMIT_NOFILE) for HELD_S seconds, which
# the kernel counts by the sender's user, in any namespace.
HELD_S = 8
HOLD = f"""
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
time.sleep({HELD_S})
"""

# Sends one descriptor, as a DataLoader's workers and multiprocessing's fork server do.
SEND_ONE = """
import array, socket
ours, theirs = socket.socketpair()
try:
    ours.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0]))])
    print("sent", flush=True)
except OSError as exc:
    print("refused", exc, flush=True)
"""


def test_a_run_that_keeps_descriptors_in_flight_leaves_another_workers_run_its_own_to_send(tmp_path) -> None:
    """The kernel counts the descriptors in flight in unix sockets by user (its user_struct: not by namespace), and
    refuses a user past its RLIMIT_NOFILE more (ETOOMANYREFS). Every run was the machine's nobody outside its
    namespace: one run that kept 20,000 in flight had the next descriptor every other worker's run sent refused.
    BROKE, fixed: each evaluator's run is a user of its own outside its namespace (run_user.host_uid)."""
    assert sandbox.users_reason() is None
    context = multiprocessing.get_context("fork")
    holder = context.Process(target=_run_as_evaluator, args=(HOLD, str(tmp_path / "held")))
    holder.start()
    try:
        time.sleep(HELD_S / 2)  # its descriptors in flight within a second
        sender = context.Process(target=_run_as_evaluator, args=(SEND_ONE, str(tmp_path / "sent")))
        sender.start()
        sender.join(60)
    finally:
        holder.join(60)
        if holder.is_alive():
            holder.kill()
    assert "held" in (tmp_path / "held").read_text(), (tmp_path / "held").read_text()
    assert "sent" in (tmp_path / "sent").read_text(), (tmp_path / "sent").read_text()
