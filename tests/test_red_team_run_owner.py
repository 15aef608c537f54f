"""Red team (helper 113): the owner of a run's user namespace. The kernel gives a process outside a user namespace
whose user is the namespace's owner every capability in it, and a run's namespace maps the machine's root (for
bubblewrap to set the sandbox up): made by the run's own user (run_user.host_uid), any process of that user outside
the namespace was the machine's root. The run is made as an evaluator makes it (sandbox.as_run_user), in a process of
its own."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import time

import pytest

from autoresearch.evaluator import promises, run_user, sandbox

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.getuid() != 0, reason="the runs of a loop run as root")]

HELD_S = 12  # seconds the run lives at most, once it has left its file: the test lets it go (SIGUSR1) sooner
ANOTHER_USER = 54321  # a user of the machine with no privilege, who runs what the run left

# The run copies a tool that enters a namespace into its box, set-user-ID and set-group-ID: its own user's and group's
# outside, as every file it makes is.
LEAVE_A_SETUID_NSENTER = f"""
import os, shutil, signal
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
shutil.copy("{shutil.which("nsenter") or "/usr/bin/nsenter"}", "enter")
os.chmod("enter", 0o6755)
print("left", oct(os.stat("enter").st_mode), flush=True)
signal.sigtimedwait([signal.SIGUSR1], {HELD_S})
"""


def _run(out: str) -> None:
    ran = sandbox.as_run_user(LEAVE_A_SETUID_NSENTER)
    with open(out, "w") as f:
        f.write(ran if isinstance(ran, str) else ran.stdout + ran.stderr)


def _the_run(evaluator: int, deadline: float) -> int | None:
    """A process of the run made by `evaluator` (its own user outside) that has left its file, once there is one."""
    user = run_user.HOST_BASE + evaluator
    while time.monotonic() < deadline:
        for name in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.stat(f"/proc/{name}").st_uid == user and os.path.exists(f"/proc/{name}/cwd/enter"):
                    return int(name)
            except OSError:
                continue
        time.sleep(0.2)
    return None


@pytest.mark.skipif(shutil.which("nsenter") is None, reason="the run's tool (util-linux's nsenter) is not here")
def test_a_set_user_id_file_a_run_leaves_gives_whoever_runs_it_nothing_in_the_runs_namespace(tmp_path) -> None:
    """A run's namespace was made by the run's own user, outside (run_user.host_uid), so that what the kernel counts
    for its maker is the run's own. But the kernel gives a process of the owner's user outside the namespace every
    capability in it, and the namespace maps root: a run left `nsenter` set-user-ID (and -group-ID) in its box (its
    own file), and a user of the machine without privilege (54321) who ran it, while the run lived, entered the run's
    namespace as the machine's root, and wrote a file of root's (mode 0600; /etc/shadow read too). A loop's boxes are
    0711 in the workspace's state folder, 0755 under a umask of 022: any user of the machine reaches them. BROKE,
    fixed: the namespace is made by another user of the evaluator's own (run_user.owner_uid), which it does not map,
    so that no file or process of the run is ever its."""
    if promises.USER not in sandbox.can_promise(dict(os.environ)):
        pytest.skip("runs are not a user of their own here")
    roots = tmp_path / "roots"
    roots.write_text("root's\n")
    roots.chmod(0o600)
    held = tmp_path / "held"
    evaluator = multiprocessing.get_context("fork").Process(target=_run, args=(str(held),))
    evaluator.start()
    pid = None
    try:
        pid = _the_run(evaluator.pid, time.monotonic() + HELD_S)
        assert pid is not None, "the run left no file"
        box = os.readlink(f"/proc/{pid}/cwd")  # bound at its own path: the file outside, where no nosuid holds it
        if os.statvfs(box).f_flag & os.ST_NOSUID:
            pytest.skip("the boxes' filesystem is mounted nosuid here")
        left = os.open(os.path.join(box, "enter"), os.O_PATH)  # its folder root's alone here
        assert os.stat(left).st_mode & 0o6000 == 0o6000 and os.stat(left).st_uid == run_user.HOST_BASE + evaluator.pid

        def become_another_user() -> None:
            os.setgroups([])
            os.setresgid(ANOTHER_USER, ANOTHER_USER, ANOTHER_USER)
            os.setresuid(ANOTHER_USER, ANOTHER_USER, ANOTHER_USER)

        entered = subprocess.run(
            ["enter", "-U", "-t", str(pid), "sh", "-c", f"echo entered >> {roots}"],
            executable=f"/proc/self/fd/{left}",
            pass_fds=[left],
            preexec_fn=become_another_user,
            env={"PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        os.close(left)
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGUSR1)  # tried: the run may end
        evaluator.join(60)
        if evaluator.is_alive():
            evaluator.kill()
    assert "left" in held.read_text(), held.read_text()
    assert roots.read_text() == "root's\n", entered.stdout + entered.stderr
    # Refused the run's namespace as a process of any other user outside it is (its user and group the run's, it
    # holds no capability in the namespace: neither to read the run's /proc/PID/ns nor to enter it)
    said = entered.stdout + entered.stderr
    assert entered.returncode != 0 and ("Permission denied" in said or "Operation not permitted" in said), said
