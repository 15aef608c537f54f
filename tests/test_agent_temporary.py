"""The temporary folders a shell agent's turn gets of its own (agents/namespace.py: `temporary_folders`): it reads
what is in /tmp, /var/tmp and /dev/shm, and what it writes there is gone when its turn ends."""

from __future__ import annotations

import ctypes
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from loop_support import agent_channel
from test_agent_turn import assert_the_loop_owns_the_workspace, set_lr, take_turn
from test_red_team_namespace import run_what_it_is_sent, sending

from autoresearch.agents import namespace, places
from autoresearch.agents.base import preflight
from autoresearch.agents.command_agent import CommandAgent
from autoresearch.files import holds
from autoresearch.vocabulary import Status

OWN = namespace.temporary_unavailable() is None


@pytest.mark.slow  # a real agent turn in its namespaces
@pytest.mark.skipif(not OWN, reason="no namespace here can give the agent temporary folders of its own")
def test_what_an_agent_writes_in_the_temporary_folders_is_gone_after_its_turn(workspace, tmp_path):
    """BROKE, fixed: /tmp, /var/tmp and /dev/shm were the agent's to write as they are yours, and a file it left there
    was loaded later by a program of yours that looks there (a `json.py` beside a `python` you start in /tmp;
    Inductor's default cache, which was hidden on its own). Now each is an overlay of itself in its namespace: it reads
    what is there, what it writes, changes or deletes there is its own for the turn, and none of it reaches the
    folder. Unmounting its copy does not uncover the folder. The workspace here lies in /tmp: its edit of train.py
    is made for real."""
    assert holds(Path("/tmp"), workspace.root.resolve())
    folders = [Path(tempfile.mkdtemp(prefix="autoresearch-own-", dir=t)) for t in namespace.TEMPORARY]
    lines = [set_lr(0.2), "umount /tmp /var/tmp /dev/shm 2>/dev/null || true; umount -l /tmp 2>/dev/null || true"]
    for folder in folders:
        (folder / "note").write_text("yours\n")
        (folder / "other").write_text("kept\n")
        lines += [
            f'seen="$seen $(cat {folder}/note)"',  # what is there
            f"echo agent > {folder}/note && rm {folder}/other && mkdir {folder}/made",
            f"echo 'raise SystemExit(\"planted\")' > {folder}/json.py",
            f'seen="$seen $(cat {folder}/note)"',  # its own copy
        ]
    lines.append('echo "saw$seen"')
    try:
        exp, before = take_turn(workspace, tmp_path, "\n".join(lines))
        assert exp.status == Status.KEEP, exp.reason
        assert "saw yours agent yours agent yours agent" in exp.description, exp.description
        for folder in folders:
            assert sorted(p.name for p in folder.iterdir()) == ["note", "other"], folder
            assert (folder / "note").read_text() == "yours\n" and (folder / "other").read_text() == "kept\n"
        assert_the_loop_owns_the_workspace(workspace, exp, before)
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow  # a real agent turn in its namespaces
@pytest.mark.skipif(not OWN, reason="no namespace here can give the agent temporary folders of its own")
def test_a_server_that_listens_in_tmp_from_the_middle_of_the_turn_is_out_of_the_agents_reach(workspace, tmp_path):
    """BROKE, fixed: the sockets in /tmp are hidden as a turn starts, and one a server made while the agent worked
    (an emacs server started, a tmux session opened meanwhile) was in its reach at its path: it ran the agent's command
    outside its namespace. Through the agent's own /tmp (an overlay), no socket made outside it is reached."""
    folder = Path(tempfile.mkdtemp(prefix="server", dir="/tmp"))  # there before the turn, empty: nothing to hide
    address, ran = folder / "server", tmp_path / "ran-outside"
    started = agent_channel(workspace) / "started"  # written for real, and not an edit of the workspace
    listening = socket.socket(socket.AF_UNIX)
    heard: list[bytes] = []

    def serve() -> None:  # once the turn has started, what an emacs server is to `emacsclient -e '(shell-command ...)'`
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        listening.bind(str(address))
        listening.listen()
        run_what_it_is_sent(listening, heard)

    threading.Thread(target=serve, daemon=True).start()
    send = sending(address, f"touch {ran}")
    script = [
        set_lr(0.2),
        f"touch {started}",
        f"for i in $(seq 100); do [ -S {address} ] && break; sleep 0.05; done",
        f"{sys.executable} -c {shlex.quote(send)} || true",
        "echo x",
    ]
    try:
        exp, before = take_turn(workspace, tmp_path, "\n".join(script))
        assert exp.status == Status.KEEP, exp.reason
        with socket.socket(socket.AF_UNIX) as probe:  # the server answers anyone who reaches it: the test can fail
            probe.connect(str(address))
            probe.sendall(b"true")
        time.sleep(0.5)
        # (an empty one: a probe of whether it is served, by an agent turn starting meanwhile: `server_sockets._served`)
        assert [h for h in heard if h] == [b"true"] and not ran.exists(), "the agent's command ran outside"
        assert_the_loop_owns_the_workspace(workspace, exp, before)
    finally:
        listening.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_the_temporary_folders_made_the_agents_own(tmp_path, monkeypatch):
    """TEMPORARY and `$TMPDIR`, each a folder (not a link: /var/tmp may name /tmp) at a path an overlay's options can
    name, with its mode; not one that lies in another, in the workspace, or in a place that stays read-only to the
    agent (a `$TMPDIR` in your home; but root's /var/tmp, in a read-only /var, is made writable again). The workspace
    and the folders the agent writes for real that lie in one are bound back, outermost."""
    tmp, shm, var = tmp_path / "tmp", tmp_path / "shm", tmp_path / "var"
    home = tmp / "home"
    workspace, listed, scratch = home / "ws", home / ".gemini", tmp_path / "scratch"
    for folder in (workspace / ".autoresearch" / "agents", listed, shm, var / "tmp", scratch, tmp_path / "a,b"):
        folder.mkdir(parents=True)
    tmp.chmod(0o1777)
    (tmp_path / "link").symlink_to(tmp)
    monkeypatch.setattr(namespace, "TEMPORARY", (str(tmp), str(tmp_path / "link"), str(shm)))

    def found(tmpdir: object = None, read_only: list[Path] = (), writable: list[Path] = ()) -> dict[Path, tuple]:
        env = {"TMPDIR": str(tmpdir)} if tmpdir else {}
        return {f.path: f.real for f in namespace.temporary_folders(env, workspace, writable, read_only)}

    assert found() == {tmp: (workspace,), shm: ()}
    agents = workspace / ".autoresearch" / "agents"
    assert found(None, [home], [workspace, agents, listed]) == {tmp: (listed, workspace), shm: ()}
    assert found(scratch) == {tmp: (workspace,), shm: (), scratch: ()}
    assert found(var / "tmp", [var]) == found(tmp / "sub") == found(agents) == found(listed, [home]) == found()
    assert found(var / "tmp", [var], [var / "tmp"])[var / "tmp"] == ()  # as root: /var/tmp in a read-only /var
    inner = scratch / ".gemini" / "tmp"  # in a folder made writable again in a read-only home: a mount in it stays so
    inner.mkdir(parents=True)
    assert found(inner, [scratch], [scratch / ".gemini"]) == found()
    assert found("relative") == found(tmp_path / "a,b") == found()
    assert {f.path: f.mode for f in namespace.temporary_folders({})}[tmp] == "1777"


def test_preflight_warns_where_the_agent_cannot_have_temporary_folders_of_its_own(workspace, monkeypatch):
    """Where this kernel cannot mount them (an overlay in a user namespace: Linux 5.11 or later), `run` says so before
    the baseline trains, and the agent's turns work with your temporary folders, as before."""
    monkeypatch.setattr(namespace, "temporary_unavailable", lambda: "overlay: Operation not permitted")
    said: list[str] = []
    preflight(CommandAgent("true", timeout_s=10), workspace.root, said.append)
    assert any("temporary folders of its own (overlay: Operation not permitted)" in s for s in said), said
    monkeypatch.setattr(namespace, "temporary_unavailable", lambda: None)
    monkeypatch.setattr(namespace, "_mount_points", lambda: [Path("/tmp").resolve() / "an-appimage-mount"])
    said.clear()
    preflight(CommandAgent("true", timeout_s=10), workspace.root, said.append)
    assert any(f"shares {Path('/tmp').resolve()} with you while something is mounted in it" in s for s in said), said
    monkeypatch.setattr(namespace, "temporary_unavailable", lambda: "overlay: Operation not permitted")
    given = []
    real = namespace.with_hidden
    monkeypatch.setattr(namespace, "with_hidden", lambda *args: given.append(args[5]) or real(*args))
    namespace.entered(workspace.root, {"PATH": "/usr/bin:/bin"})
    assert given == [[]]


def _in_the_agents_namespace(workspace: Path, command: str) -> subprocess.CompletedProcess:
    """`command` run by sh in the namespaces of a shell agent's turn in `workspace` (as `entered` makes them)."""
    words, env = namespace.entered(workspace, dict(os.environ))
    return subprocess.run([*words, "sh", "-c", command], cwd=workspace, env=env, capture_output=True, text=True)


@pytest.mark.slow
@pytest.mark.skipif(not OWN, reason="no namespace here can give the agent temporary folders of its own")
def test_the_memory_the_agents_own_folders_take_is_bounded(workspace):
    """BROKE, fixed: the copy of each temporary folder was written in a tmpfs of half the machine's memory, as was each
    empty tmpfs that hides a place or covers the runtime folder. An agent that filled /tmp and /var/tmp held more
    memory than the machine has, which no process gives back before its turn ends, and the kernel's OOM killer
    killed the loop or an evaluator instead (an honest one's large download into /tmp too). Now its temporary
    folders hold a quarter of the memory together, and each other tmpfs of its namespace one hundredth."""
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    runtime = [Path(namespace.RUNTIME_FOLDERS[0]) / str(os.getuid()), Path(namespace.RUNTIME_FOLDERS[1])]
    others = [str(p) for p in [*places._inductor_defaults(), *runtime] if p.is_dir()]
    done = _in_the_agents_namespace(workspace.root, f"df -k --output=size {' '.join([*namespace.TEMPORARY, *others])}")
    assert done.returncode == 0, done.stderr
    sizes = [int(word) * 1024 for word in done.stdout.split()[1:]]
    temporary, rest = sizes[: len(namespace.TEMPORARY)], sizes[len(namespace.TEMPORARY) :]
    assert sum(temporary) <= memory / 4 + 2**20 * len(temporary), (temporary, memory)
    assert rest and max(rest) <= memory / 100 + 2**20, (rest, memory)


@pytest.mark.slow
def test_shared_memory_the_agent_leaves_is_gone_after_its_turn(workspace):
    """BROKE, fixed: System V shared memory (and POSIX message queues) belong to an IPC namespace, not to a folder,
    and the agent's was yours: a segment it made (`ipcmk -M`) outlived its turn, holding memory nothing freed but a
    reboot (as much as it liked: no limit), under a key a program of yours may attach to later. Now its turn has an
    IPC namespace of its own, and what it made there is gone with it."""
    if _in_the_agents_namespace(workspace.root, "true").returncode != 0 or not namespace.pid_namespace():
        pytest.skip("no namespace can be made here")
    libc = ctypes.CDLL(None, use_errno=True)
    key = secrets.randbits(30) + 1
    make = f"import ctypes; print(ctypes.CDLL(None).shmget({key}, 1 << 20, 0o1600))"
    done = _in_the_agents_namespace(workspace.root, f"{shlex.quote(sys.executable)} -c {shlex.quote(make)}")
    assert done.returncode == 0 and int(done.stdout) >= 0, (done.stdout, done.stderr)
    left = libc.shmget(key, 0, 0)
    if left >= 0:
        libc.shmctl(left, 0, None)  # IPC_RMID
    assert left < 0, "the agent's shared memory segment outlived its turn"


@pytest.mark.skipif(not OWN, reason="no namespace here can give the agent temporary folders of its own")
def test_something_mounted_in_a_temporary_folder_does_not_fail_the_turn(tmp_path):
    """BROKE, fixed: in a user namespace the kernel binds a folder, or makes it an overlay's layer, only with what is
    mounted in it, and a temporary folder with a mount in it (a running AppImage's FUSE mount in /tmp, an sshfs of
    yours there) failed every turn from then on ("could not give the agent a /tmp of its own"): the loop lost the
    night. Now such a folder stays yours while something is mounted in it, as where no overlay can be made."""
    folder, mounted = tmp_path / "tmp", tmp_path / "tmp" / "mounted"
    mounted.mkdir(parents=True)
    turn = (  # in a namespace of the test's own, where the mount is one the agent's namespace cannot take apart
        "import subprocess, sys; from autoresearch.agents import namespace as n; "
        f"n.TEMPORARY = ({str(folder)!r},); found = n.temporary_folders({{}}); "
        "way = n.with_hidden(n._namespaces()[0], [], temporary=found); "
        f"sys.exit(subprocess.run([*way, 'sh', '-c', 'cat mounted/file'], cwd={str(folder)!r}).returncode)"
    )
    mount = (
        f"mount -t tmpfs tmpfs {mounted} && echo yours > {mounted}/file && exec {sys.executable} -c {shlex.quote(turn)}"
    )
    done = subprocess.run(["unshare", "-r", "-m", "sh", "-c", mount], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "yours\n", (done.stdout, done.stderr)


@pytest.mark.skipif(not OWN, reason="no namespace here can give the agent temporary folders of its own")
def test_a_message_queue_the_agent_leaves_is_gone_after_its_turn(workspace):
    """BROKE, fixed: /dev/mqueue, where systemd mounts your POSIX message queues, stayed yours in the agent's IPC
    namespace: a queue it made there (`touch /dev/mqueue/q`) outlived its turn, for a program of yours that opens it
    by that name. Now its own IPC namespace's queues are mounted there. A queue made with mq_open, as programs make
    them (no /dev/mqueue needed: where none is mounted, as on this machine, it is the whole test), is gone too."""
    name = f"autoresearch-{secrets.token_hex(4)}"
    libc = ctypes.CDLL(None, use_errno=True)
    opened = f"import ctypes, os; assert ctypes.CDLL(None).mq_open(b'/{name}', os.O_CREAT | os.O_RDWR, 0o600, 0) >= 0"
    made = f"{shlex.quote(sys.executable)} -c {shlex.quote(opened)}"
    mounted = os.path.isdir("/dev/mqueue")
    if mounted:
        made += f" && touch /dev/mqueue/{name}-file && ls /dev/mqueue"
    done = _in_the_agents_namespace(workspace.root, made)
    left = Path("/dev/mqueue", f"{name}-file")
    try:
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert not mounted or f"{name}-file" in done.stdout, done.stdout
        assert not left.exists(), "the agent's message queue outlived its turn"
        assert libc.mq_open(f"/{name}".encode(), os.O_RDWR) < 0, "the agent's message queue outlived its turn"
    finally:
        left.unlink(missing_ok=True)
        libc.mq_unlink(f"/{name}".encode())


@pytest.mark.skipif(not OWN, reason="no namespace here can give the agent temporary folders of its own")
def test_the_folder_beneath_the_agents_copy_cannot_be_uncovered(workspace):
    """HOLDS: in a namespace of its own (`unshare -rm`), the agent cannot take its copy of /tmp off (`umount -l`), nor
    the copy off a clone of its whole tree (open_tree, move_mount, umount): every mount it was given is locked. What it
    writes there stays its own."""
    names = [f"autoresearch-under-{secrets.token_hex(4)}" for _ in range(2)]
    # open_tree(OPEN_TREE_CLONE | AT_RECURSIVE), move_mount(MOVE_MOUNT_F_EMPTY_PATH): numbered alike everywhere
    uncover = (
        "import ctypes, os; c = ctypes.CDLL(None); fd = c.syscall(428, -100, b'/', 0x8001); os.makedirs('/tmp/c'); "
        "c.syscall(429, fd, b'', -100, b'/tmp/c', 4); [c.umount2(b'/tmp/c/tmp', 2) for _ in range(4)]; "
        f"open('/tmp/c/tmp/{names[0]}', 'w').close()"
    )
    script = (
        f"unshare -rm {shlex.quote(sys.executable)} -c {shlex.quote(uncover)} || true; "
        f"unshare -rm sh -c 'umount -l /tmp; umount -l /tmp; touch /tmp/{names[1]}' || true"
    )
    try:
        done = _in_the_agents_namespace(workspace.root, script)
        assert done.returncode == 0, done.stderr
        assert not any(Path("/tmp", name).exists() for name in names), done.stderr
    finally:
        for name in names:
            Path("/tmp", name).unlink(missing_ok=True)
