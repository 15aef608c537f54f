"""A shell agent's turn against the namespaces it runs in (agents/namespace.py): what it reaches that runs outside
them, and what of the system it can still change when the loop runs as root.

Each test runs one scripted `command` agent turn through the real loop with the fake executor (test_agent_turn.py's
`take_turn`), then checks that nothing the agent reached ran outside its turn, or changed."""

from __future__ import annotations

import contextlib
import os
import platform
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
from loop_support import FakeExecutor, agent_channel, make_loop, make_workspace
from test_agent_turn import assert_the_loop_owns_the_workspace, score, set_lr, take_turn, turn_stops_the_loop

from autoresearch.agents import fence, namespace, places, turn_cgroups
from autoresearch.agents.command_agent import CommandAgent
from autoresearch.agents.namespace import pid_namespace, with_hidden
from autoresearch.errors import ConfigError
from autoresearch.evaluator import shown
from autoresearch.evaluator.hidden import workspace_data_places
from autoresearch.vocabulary import Kind, Status
from autoresearch.workspace.workspace import Workspace

pytestmark = pytest.mark.slow  # a real agent turn in its namespaces each: not in the fast subset

HIDES = with_hidden(pid_namespace(), []) != pid_namespace()
# The agent's /tmp, /var/tmp and /dev/shm are its own (an overlay each), what it writes there gone with its turn, where
# they can be made so (not before Linux 5.11); elsewhere it shares them.
OWN_TEMPORARY = namespace.temporary_unavailable() is None


@pytest.mark.skipif(not HIDES, reason="no namespace here can hide a place")
@pytest.mark.skipif(shutil.which("tmux") is None, reason="no tmux here")
@pytest.mark.parametrize("named", ["by $TMUX", "by default"])
def test_an_agent_cannot_have_your_tmux_server_run_a_process_outside_its_namespace(
    workspace, tmp_path, monkeypatch, named
):
    """BROKE, fixed: a loop left running overnight in tmux (or screen) hands its agent the server's socket, in
    `$TMUX` and at tmux's default path: `tmux run-shell -b` from the agent's shell ran a command in the server, as
    you, outside the agent's namespaces, where the data can be read and nothing ends with the turn (it wrote a file
    after the turn was over). The agent's namespace now hides the socket `$TMUX` names, the folder `$TMUX_TMPDIR` names,
    and every socket within three folders of /tmp (tmux's default)."""
    sockets = Path(tempfile.mkdtemp(prefix="tmux", dir="/tmp"))  # a socket's path is short (108 bytes)
    monkeypatch.setenv("TMUX_TMPDIR", str(sockets))
    monkeypatch.delenv("TMUX", raising=False)
    socket = sockets / f"tmux-{os.getuid()}" / "default"  # tmux's default
    if named == "by $TMUX":  # the loop runs in the server, at a path of the user's choice that only $TMUX names
        socket = sockets / "elsewhere"
        monkeypatch.setenv("TMUX", f"{socket},1,0")
    ran = tmp_path / "ran-outside"
    try:
        server = ["-S", str(socket)] if named == "by $TMUX" else []
        subprocess.run(["tmux", *server, "new-session", "-d", "sleep 600"], check=True, env=dict(os.environ))
        assert socket.exists()
        outside = f"tmux run-shell -b 'sleep 2; touch {ran}' 2>/dev/null || true"
        exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{outside}\necho x")
        assert exp.status == Status.KEEP, exp.reason
        time.sleep(3)  # the turn is over: a process it left outside would write now
        assert not ran.exists(), "the agent's command ran in your tmux server, outside its namespace"
        assert_the_loop_owns_the_workspace(workspace, exp, before)
    finally:
        subprocess.run(["tmux", "-S", str(socket), "kill-server"], capture_output=True)
        shutil.rmtree(sockets, ignore_errors=True)


def server_folder(where: str) -> Path:
    """A new folder for a server's socket (a socket's path is short: 108 bytes): in /tmp, or, for a loop run as root,
    four folders deep in another user's runtime folder, where systemd's private socket is (beyond the walk's depth)."""
    if where in ("in /tmp", "in /var/tmp"):
        return Path(tempfile.mkdtemp(prefix="server", dir=where.removeprefix("in ")))
    folder = Path("/run/user") / str(60000 + os.getpid() % 5000) / "systemd"
    folder.mkdir(parents=True)
    return folder


@pytest.mark.skipif(not HIDES, reason="no namespace here can hide a place")
@pytest.mark.parametrize(
    "where",
    [
        "in /tmp",
        "in /var/tmp",  # a folder the agent writes in a read-only /var: the sockets there stay hidden
        pytest.param(
            "in another user's runtime folder",
            marks=pytest.mark.skipif(
                os.geteuid() != 0 or not os.path.isdir("/run/user"), reason="a loop run as root, /run/user"
            ),
        ),
    ],
)
def test_an_agent_cannot_reach_a_server_of_yours_that_runs_what_it_is_sent_through_a_socket(workspace, tmp_path, where):
    """BROKE, fixed: a server of yours that runs what it is sent, listening on a socket in /tmp (an emacs server's
    `/tmp/emacs<uid>/server`, VS Code's, a forwarded SSH agent's, X11's), ran the agent's command outside its
    namespace. No variable names this one: the agent found it by listing /tmp. Every socket within three folders
    of /tmp, /var/tmp, /dev/shm and /run is now hidden from the agent (/dev/null bound over it). As root, so was
    another user's systemd (`/run/user/<uid>/systemd/private`, four folders deep): every user's runtime folder is
    now an empty tmpfs for an agent of a loop run as root, as yours always was."""
    folder = server_folder(where)
    address, ran = folder / "server", tmp_path / "ran-outside"
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(address))
    listening.listen()
    heard: list[bytes] = []
    threading.Thread(target=run_what_it_is_sent, args=(listening, heard), daemon=True).start()
    send = sending(address, f"touch {ran}")
    try:
        with socket.socket(socket.AF_UNIX) as probe:  # the server answers anyone who reaches it: the test can fail
            probe.connect(str(address))
            probe.sendall(b"true")
        exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{sys.executable} -c {shlex.quote(send)} || true")
        assert exp.status == Status.KEEP, exp.reason
        time.sleep(0.5)
        said = [command for command in heard if command]  # the loop's probe (is it served?) says nothing
        assert said == [b"true"] and not ran.exists(), "the agent's command ran in a server of yours, outside"
        assert_the_loop_owns_the_workspace(workspace, exp, before)
    finally:
        listening.close()
        shutil.rmtree(folder if where != "in another user's runtime folder" else folder.parent, ignore_errors=True)


def run_what_it_is_sent(listening: socket.socket, heard: list[bytes]) -> None:
    """A server that runs each command it is sent, as you (what an emacs server is to `emacsclient -e
    '(shell-command ...)'`), noting it in `heard`; until `listening` is closed."""
    with contextlib.suppress(OSError):
        while True:
            connection, _ = listening.accept()
            with connection:
                heard.append(command := connection.recv(4096))
                subprocess.run(command.decode(), shell=True)


def sending(address: Path, command: str) -> str:
    """Python that sends `command` to the server on the Unix socket at `address`."""
    return f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(address)!r}); s.sendall(b{command!r})"


ROOT_LINKS = [d for d in shown.SYSTEM_DIRS if os.path.islink(d) and os.path.dirname(d) == "/"]


@pytest.mark.skipif(not HIDES, reason="no namespace here can make a place read-only")
@pytest.mark.skipif(os.geteuid() != 0, reason="the loop runs as root: only root can change /")
@pytest.mark.skipif(not ROOT_LINKS, reason="no system folder here is a link in / (merged /usr)")
def test_an_agent_of_a_loop_run_as_root_cannot_replace_the_systems_links_in_the_root(workspace, tmp_path):
    """BROKE, fixed: where /usr is merged, /bin, /sbin, /lib and /lib64 are links in /, and / held the workspace, so
    it was not made read-only: an agent of a loop run as root could `rm /lib64 && mkdir /lib64` and put its own
    dynamic linker there (every program the loop, git and the evaluators start runs it, as root, outside any
    namespace), or its own /bin/sh. The read-only /usr/lib64 it links to did not stop that. Now / itself is read-only
    in the agent's namespace (its folders are not: each is bound onto itself first, the workspace's with them).
    Each link is renamed onto itself here, which changes nothing where it is allowed."""
    seen = agent_channel(workspace) / "seen"
    rename = (
        "import os, sys\nfor d in sys.argv[1:]:\n"
        " try: os.rename(d, d); print(d, 'renamed')\n except OSError as e: print(d, e.strerror)"
    )
    planted = agent_channel(workspace) / "planted"
    tries = f"{sys.executable} -c {shlex.quote(rename)} {' '.join(ROOT_LINKS)} > {seen}; touch {planted} 2>> {seen}"
    exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{tries}\necho x")
    assert exp.status == Status.KEEP, exp.reason
    said = seen.read_text().splitlines()
    assert said == [f"{d} Read-only file system" for d in ROOT_LINKS], said
    assert planted.exists()  # a folder on /'s filesystem (the workspace's) is still the agent's to write
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.skipif(not HIDES, reason="no namespace here can make a place read-only")
def test_a_folder_of_path_that_is_a_link_swapped_by_the_agent_stops_the_loop(workspace, tmp_path, monkeypatch):
    """BROKE, fixed: a folder of PATH that is a link (`~/bin` -> `~/dotfiles/bin`) was made read-only where it
    leads, but the link itself lies in your home, the agent's to write: `rm ~/bin && mkdir ~/bin` and a `git` there,
    which the loop's next start (and your shell) found first and ran, as you. The check after the turn walked only
    where the link had led, and saw nothing. It now walks the folder as PATH names it too: the swap stops the loop.
    (Your home is read-only to the agent now, and its /tmp its own: the link lies here in a /tmp it shares, as where
    that cannot be made (before Linux 5.11), standing for any folder of yours it writes.)"""
    monkeypatch.setattr(namespace, "temporary_unavailable", lambda: "no overlay here (the test's)")
    home = tmp_path / "home"
    (home / "dotfiles" / "bin").mkdir(parents=True)
    (home / "bin").symlink_to(home / "dotfiles" / "bin")
    monkeypatch.setenv("PATH", f"{home / 'bin'}{os.pathsep}{os.environ['PATH']}")
    planted = "#!/bin/sh\\necho planted\\n"
    swap = f"rm {home}/bin && mkdir {home}/bin && printf '{planted}' > {home}/bin/git && chmod +x {home}/bin/git"
    turn_stops_the_loop(workspace, tmp_path, f"{set_lr(0.2)}\n{swap}\necho x", r"folder of PATH.*home/bin/git")
    assert (home / "bin" / "git").is_file()  # the swap is in reach (the link is in your home): it is seen


@pytest.mark.skipif(not HIDES, reason="no namespace here can pin a folder")
@pytest.mark.parametrize("moved", ["the workspace", "the folder that holds it"])
def test_an_agent_cannot_move_the_workspace_aside_and_leave_a_copy_of_its_own_in_its_place(
    workspace, tmp_path, monkeypatch, moved
):
    """BROKE, fixed (helper 134): on a disk the agent may write (not your home, read-only to it; nor /tmp, its own),
    a turn did `mv ws ws.real; cp -a ws.real ws` and wrote the copy's ledger (the original's is read-only to it). The
    loop stopped, saying the workspace was moved, and the next start at the same path trusted the copy: its best, its
    noise. The workspace and every folder that holds it are now mount points in the agent's namespace, which cannot
    be renamed: the `mv` fails and the turn is judged as any other. (Here /tmp is shared, standing for that disk.)"""
    monkeypatch.setattr(namespace, "temporary_unavailable", lambda: "no overlay here (the test's)")
    target = workspace.root if moved == "the workspace" else workspace.root.parent
    turn_swaps_in_a_forged_copy(workspace, tmp_path, target)


def turn_swaps_in_a_forged_copy(ws, tmp_path: Path, target: Path) -> None:
    """One turn that moves `target` (the workspace, or a folder that holds it) aside, copies it back to its path and
    forges the copy's ledger (a best of 0.1, its seals dropped), else says it was refused: it must be refused, the
    workspace stay the folder it was, and the turn be judged as any other."""
    aside, refused = shlex.quote(f"{target}.real"), agent_channel(ws) / "refused"
    ledger = shlex.quote(str(ws.state / "ledger.sqlite"))  # the copy's, once the copy is at the path
    forge = "c = sqlite3.connect(sys.argv[1]); c.execute('UPDATE experiments SET val_bpb = 0.1'); "
    forge += "c.execute('DROP TABLE seals'); c.commit()"
    swap = (
        f"if mv {shlex.quote(str(target))} {aside}; then cp -a {aside} {shlex.quote(str(target))}; "
        f'{shlex.quote(sys.executable)} -c "import sqlite3, sys; {forge}" {ledger}; '
        f"else echo refused > {shlex.quote(str(refused))}; fi"
    )
    identity = os.stat(ws.root).st_ino
    exp, before = take_turn(ws, tmp_path, f"{set_lr(0.2)}\n{swap}\necho LR 0.2")
    assert refused.read_text() == "refused\n" and not Path(f"{target}.real").exists()
    assert os.stat(ws.root).st_ino == identity
    assert exp.kind == Kind.EXPERIMENT and exp.status == Status.KEEP and exp.val_bpb > 0.5
    assert_the_loop_owns_the_workspace(ws, exp, before)


# Renames argv[1] to argv[2] (or swaps them: "exchange") where no pin is: a child opens the folder that holds it, then,
# in a user and mount namespace of its own ("new", else in the turn's own, as root), pivots into a tmpfs and detaches
# the old root, every pin with it (the kernel asks whether a folder is a mount point in the caller's namespace only),
# and renames through the folder's descriptor. It prints what became of it.
PIVOT_AWAY = """import ctypes, os, sys, tempfile
target, aside, how = sys.argv[1:4]
libc = ctypes.CDLL(None, use_errno=True)
def check(result, what):
    if result != 0:
        raise OSError(ctypes.get_errno(), what)
holder = os.open(os.path.dirname(target), os.O_RDONLY | os.O_DIRECTORY)
uid, gid = os.getuid(), os.getgid()
try:
    if "new" in how:
        check(libc.unshare(0x10000000 | 0x20000), "unshare")  # CLONE_NEWUSER | CLONE_NEWNS
        open("/proc/self/setgroups", "w").write("deny")
        open("/proc/self/uid_map", "w").write(f"0 {uid} 1")
        open("/proc/self/gid_map", "w").write(f"0 {gid} 1")
    check(libc.mount(None, b"/", None, 0x4000 | 0x40000, None), "private")  # MS_REC | MS_PRIVATE
    new = tempfile.mkdtemp()
    check(libc.mount(b"none", new.encode(), b"tmpfs", 0, None), "tmpfs")
    os.mkdir(f"{new}/old")
    check(libc.syscall(155 if os.uname().machine == "x86_64" else 41, new.encode(), f"{new}/old".encode()), "pivot")
    os.chdir("/")
    check(libc.umount2(b"/old", 2), "umount")  # MNT_DETACH
    names = os.path.basename(target).encode(), os.path.basename(aside).encode()
    check(libc.renameat2(holder, names[0], holder, names[1], 2 if "exchange" in how else 0), "rename")
    print("moved")
except OSError as err:
    print("refused at", err.strerror, os.strerror(err.errno))
"""


@pytest.mark.skipif(not HIDES, reason="no namespace here can pin a folder")
@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="the fence's filter is for these")
@pytest.mark.parametrize(
    "moved, how",
    [
        ("the workspace", "renamed, in a new namespace"),
        ("the workspace", "exchanged with a copy, in a new namespace"),
        ("the folder that holds it", "renamed, in a new namespace"),
        ("its state", "exchanged with a copy, in a new namespace"),  # not even the workspace moved
        pytest.param(
            "the workspace",
            "exchanged with a copy, in its own namespace",
            marks=pytest.mark.skipif(os.geteuid() != 0, reason="a loop run as root: the agent is root in its own"),
        ),
    ],
)
def test_an_agent_cannot_move_the_workspace_aside_from_a_mount_namespace_it_pivoted_out_of_its_pins(
    workspace, tmp_path, monkeypatch, moved, how
):
    """BROKE, fixed: the kernel refuses to rename a mount point only where it is one in the caller's own mount
    namespace. Every mount the agent is given is locked, its namespace's root too, and so is every copy of them in a
    namespace it makes; but pivot_root moves the lock onto the new root. In a user and mount namespace of its own (or,
    as root, in its own), a turn pivoted into a tmpfs and detached the old root, every pin with it, then renamed the
    workspace (or the folder that holds it) through a descriptor of the folder above, or swapped it with a copy whose
    ledger it had forged: the loop stopped, the workspace moved, and the next start at its path trusted the copy. (Its
    state, swapped so, the check after the turn put back; other workers met the forged ledger meanwhile.)
    pivot_root is now refused to the agent (agents/fence.py): the rename fails and the turn is judged as any other.
    (Here /tmp is shared, standing for a disk the agent may write.)"""
    monkeypatch.setattr(namespace, "temporary_unavailable", lambda: "no overlay here (the test's)")
    target = {"the workspace": workspace.root, "its state": workspace.state}.get(moved, workspace.root.parent)
    aside, said = Path(f"{target}.real"), tmp_path / "said"  # /tmp is shared here
    forge = "sqlite3.connect(sys.argv[1]).execute('UPDATE experiments SET val_bpb = 0.1').connection.commit()"
    copy = (
        f"cp -a {shlex.quote(str(target))} {shlex.quote(str(aside))}\n"
        f'{shlex.quote(sys.executable)} -c "import sqlite3, sys; {forge}" '
        f"{shlex.quote(str(aside / (workspace.state / 'ledger.sqlite').relative_to(target)))}\n"
        if "exchange" in how
        else ""
    )
    words = (sys.executable, "-c", PIVOT_AWAY, str(target), str(aside), how)
    identity = os.stat(workspace.root).st_ino
    exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{copy}{shlex.join(words)} > {said}\necho LR 0.2")
    assert said.read_text() == "refused at pivot Operation not permitted\n"
    assert os.stat(workspace.root).st_ino == identity
    assert exp.kind == Kind.EXPERIMENT and exp.status == Status.KEEP and exp.val_bpb > 0.5
    assert_the_loop_owns_the_workspace(workspace, exp, before)
    assert not aside.exists() or "exchange" in how


# What a turn does to a link on the path you name the workspace by (`links/current` -> `../alias` -> <tmp_path>): it
# points the path at `fake`, its copy of the workspace.
TURN_THE_LINK = {
    "the link replaced": "ln -sfn {fake} {links}/current",
    "the link moved aside": "mv {links}/current {links}/current.old && ln -s {fake} {links}/current",
    "the folder that holds it moved aside": "mv {links} {links}.old && mkdir {links} && ln -s {fake} {links}/current",
    "a link in its target replaced": "ln -sfn {fake} {alias}",
    "the link replaced, named by $PWD": "ln -sfn {fake} {links}/current",
}


@pytest.mark.skipif(not HIDES, reason="no namespace here can pin a folder")
@pytest.mark.parametrize("how", list(TURN_THE_LINK))
def test_a_link_on_the_path_you_name_the_workspace_by_cannot_be_turned_to_a_copy_of_the_agents(
    workspace, tmp_path, monkeypatch, how
):
    """BROKE, fixed (helper 136): you name the workspace through a link in a folder the agent may write
    (`/data/current -> run5`, then `autoresearch run --workspace /data/current/ws`, or from a shell `cd`'d there,
    whose $PWD keeps the link). The loop opens it by its real path, which is pinned; the link was not, and `mount
    --bind` cannot pin one (it follows it). A turn copied the workspace, forged the copy's ledger (its seals are
    digests of the rows, in the same file: dropped, it is sealed anew as found) and turned the link to the copy. The
    loop saw nothing (its path is the real one, unchanged), and the next start by the same words opened the copy: its
    best, 0.1. Each link on the path you named (and in a link's target), and each folder it passes, is now a mount
    point in the agent's namespace: the link can be neither replaced nor moved, nor the folder that holds it. (Here
    /tmp is shared, standing for that disk.)"""
    monkeypatch.setattr(namespace, "temporary_unavailable", lambda: "no overlay here (the test's)")
    links, alias, fake, refused = tmp_path / "links", tmp_path / "alias", tmp_path / "copy", tmp_path / "refused"
    links.mkdir()
    alias.symlink_to(tmp_path)
    (links / "current").symlink_to("../alias")
    named = links / "current" / "ws"  # the workspace to you
    if "$PWD" in how:  # `cd /data/current/ws && autoresearch run`
        monkeypatch.chdir(named)
        monkeypatch.setenv("PWD", str(named))
    ws = Workspace(Path(".") if "$PWD" in how else named)
    assert ws.root == workspace.root and ws.named == named
    forge = "c = sqlite3.connect(sys.argv[1]); c.execute('UPDATE experiments SET val_bpb = 0.1'); "
    forge += "c.execute('DROP TABLE seals'); c.commit()"
    turn_it = TURN_THE_LINK[how].format(fake=fake, links=links, alias=alias)
    turn = (
        f"mkdir {fake} && cp -a {workspace.root} {fake}/ws\n"
        f'{shlex.quote(sys.executable)} -c "import sqlite3, sys; {forge}" {fake}/ws/.autoresearch/ledger.sqlite\n'
        f"{{ {turn_it}; }} 2>/dev/null || echo refused > {refused}\necho LR 0.2"
    )
    exp, before = take_turn(ws, tmp_path, f"{set_lr(0.2)}\n{turn}")
    assert refused.read_text() == "refused\n"
    assert exp.kind == Kind.EXPERIMENT and exp.status == Status.KEEP and exp.val_bpb > 0.5
    assert Workspace(named).root == workspace.root, "the next start by the same path opens the agent's copy"
    assert_the_loop_owns_the_workspace(workspace, exp, before)


# Lists each folder argv[2:] names, then writes the ledger argv[1]: what it reached.
THROUGH_THE_OTHER_PATH = """import os, sqlite3, sys
for folder in sys.argv[2:]:
    try:
        print(folder, sorted(os.listdir(folder)))
    except OSError as err:
        print(folder, err.strerror)
try:
    c = sqlite3.connect(sys.argv[1])
    c.execute("UPDATE experiments SET val_bpb = 0.1")
    c.commit()
    print("ledger written")
except sqlite3.Error as err:
    print("ledger:", err)
"""


@pytest.mark.skipif(not HIDES, reason="no namespace here can hide a place")
@pytest.mark.skipif(os.geteuid() != 0, reason="the disk is mounted a second time, as root")
def test_a_disk_mounted_at_two_paths_hides_the_data_and_keeps_the_ledger_read_only_at_both(workspace, tmp_path):
    """BROKE, fixed: a place is hidden (a tmpfs over it) or made read-only (a bind) at its path; where its file system
    is mounted at another path too (a disk bound at /data and at /srv/data, a home bound from /mnt/disk/home), the
    agent reached it there: it listed the prepared data, which it could read, and wrote the ledger (which the check
    after the turn put back; other workers met it meanwhile), as it could write your ~/.bashrc. The other paths of
    every hidden and read-only place are now hidden and read-only too (agents/namespace.py, `other_paths`). (pytest's
    base folder, which holds the data and the workspace, is mounted again in the test's folder; /tmp, which then holds
    a mount, is shared.)"""
    top, alias = tmp_path.parent, tmp_path / "alias"
    alias.mkdir()
    if subprocess.run(["mount", "--bind", str(top), str(alias)], capture_output=True).returncode != 0:
        pytest.skip("no bind mount can be made here")
    try:
        other = lambda path: alias / path.relative_to(top)
        data = [other(p) for p in workspace_data_places(workspace.root) if top in p.parents]
        assert data and all(p.is_dir() for p in data)  # the data, reached by the other path outside the turn
        said = agent_channel(workspace) / "said"
        words = (
            sys.executable,
            "-c",
            THROUGH_THE_OTHER_PATH,
            str(other(workspace.state / "ledger.sqlite")),
            *map(str, data),
        )
        exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{shlex.join(words)} > {said}\necho LR 0.2")
    finally:
        subprocess.run(["umount", "-l", str(alias)], check=True)
    reached = said.read_text().splitlines()
    assert all(line.endswith(("[]", "No such file or directory")) for line in reached[:-1]), reached
    assert reached[-1] == "ledger: attempt to write a readonly database", reached
    assert exp.status == Status.KEEP, exp.reason
    assert_the_loop_owns_the_workspace(workspace, exp, before)


FLOOD = """import os, socket, sys
top = sys.argv[1]  # each socket within three folders of /tmp, at a path of some 700 bytes: 3000 of them, 2 MiB
deep = os.path.join(top, "B" * 250)
os.makedirs(deep)
os.chdir(deep)
for i in range(3000):
    with socket.socket(socket.AF_UNIX) as s:
        s.bind("s")  # left behind: no server listens on it once the turn is over
    os.rename("s", f"{i:06d}" + "C" * 244)
"""


@pytest.mark.skipif(not HIDES, reason="no namespace here can hide a place")
@pytest.mark.floods_tmp
def test_sockets_an_agent_leaves_in_tmp_do_not_stop_the_next_turn(workspace, tmp_path):
    """BROKE, fixed: every socket within three folders of /tmp was hidden from the agent, each a word of the command
    that starts the next turn: 3000 sockets that one turn left in /tmp, at long paths, made it longer than the kernel
    takes (ARG_MAX, 2 MiB), and the next turn did not start (OSError, which stopped the loop); fewer made each turn
    slow (a mount each). A socket no server listens on runs nothing: only those that answer are hidden now. And the
    agent's /tmp is now its own: what a turn leaves there is gone with it. The next turn here meets as many left by
    the test instead, as a program of yours leaves them, or a turn where its /tmp cannot be its own (before Linux
    5.11)."""
    top = Path(tempfile.mkdtemp(prefix="flood" + "A" * 230, dir="/tmp"))
    top.rmdir()  # the agent's to make
    try:
        flood = [sys.executable, "-c", FLOOD, str(top)]
        loop = make_loop(workspace, FakeExecutor(score), baseline_runs=2)
        loop.baseline()
        for turn, script in enumerate([f"{set_lr(0.2)}\n{shlex.join(flood)}\necho x", f"{set_lr(0.3)}\necho y"]):
            if turn == 1:
                assert top.exists() != OWN_TEMPORARY  # what the first turn left in /tmp went with it, its /tmp its own
                if not top.exists():
                    subprocess.run(flood, check=True)  # as many left there by another, for the next turn
            path = tmp_path / f"agent{turn}.sh"
            path.write_text(f"set -e\n{script}\n")
            started = time.monotonic()
            loop.run(CommandAgent(f"sh {shlex.quote(str(path))}", timeout_s=60), max_experiments=1)
            exp = loop.ledger.all()[-1]
            assert exp.status != Status.CRASH, exp.reason
        assert time.monotonic() - started < 20, "the next turn hid every socket the last one left, one mount each"
        assert sum(1 for _ in (top / ("B" * 250)).iterdir()) == 3000
    finally:
        shutil.rmtree(top, ignore_errors=True)


SERVE_MANY = """import os, resource, socket, sys, time
top = sys.argv[1]  # as FLOOD, but served: another worker's agent, in its turn while this one's starts
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 1024 by default on some machines: 4000 are needed
resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 8192, hard))
deep = os.path.join(top, "B" * 250)
os.makedirs(deep)
os.chdir(deep)
held = []
for i in range(4000):
    s = socket.socket(socket.AF_UNIX)
    s.bind(f"{i:06d}" + "C" * 100)
    s.listen()
    held.append(s)
print("listening", flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not HIDES, reason="no namespace here can hide a place")
@pytest.mark.floods_tmp
def test_thousands_of_served_sockets_in_tmp_fail_the_turn_not_the_loop(workspace, tmp_path):
    """BROKE, fixed: while one worker's agent listened on 4000 sockets within three folders of /tmp, at long paths,
    another worker's turn started: each socket a word of its command, longer than the kernel takes (ARG_MAX), and
    the OSError stopped the loop. That turn fails now (it cannot start with them all hidden); the loop goes on."""
    top = Path(tempfile.mkdtemp(prefix="flood" + "A" * 230, dir="/tmp"))
    top.rmdir()
    server = subprocess.Popen([sys.executable, "-c", SERVE_MANY, str(top)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "listening\n"
        exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\necho x")
        assert exp.status == Status.CRASH and "longer than the system takes" in exp.reason, exp.reason
        assert_the_loop_owns_the_workspace(workspace, exp, before)
        # A loop run as root: the turn had entered its cgroups before its exec failed, and left them until the loop's
        # end (another test's turn then found it there).
        assert [g for outer in turn_cgroups.turn_groups("") for g in outer.glob("turn-*")] == []
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(top, ignore_errors=True)


class RunsWhatItIsSent:
    """A server of yours that runs what it is sent, as a Jupyter kernel runs a cell: on a TCP port of 127.0.0.1, or on
    an abstract socket (no file: X11's, some D-Bus sessions'). `heard`: what each connection sent."""

    def __init__(self, family: int, address: object):
        self.listening = socket.socket(family)
        self.listening.bind(address)
        self.listening.listen()
        self.address = self.listening.getsockname()
        self.heard: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.listening.accept()
                with connection:
                    self.heard.append(command := connection.recv(4096))
                    subprocess.run(command.decode(), shell=True)

    def reached_from_outside(self) -> bool:
        with socket.socket(self.listening.family) as probe:  # it answers anyone who reaches it: the test can fail
            probe.connect(self.address)
            probe.sendall(b"true")
        time.sleep(0.2)
        return self.heard == [b"true"]

    def sender(self, command: str) -> str:
        """A shell line by which the agent sends `command` (and says on stdout whether it could connect)."""
        family = "socket.AF_UNIX" if self.listening.family == socket.AF_UNIX else "socket.AF_INET"
        send = (
            f"import socket; s = socket.socket({family})\n"
            f"try: s.connect({self.address!r}); s.sendall({command.encode()!r}); print('sent')\n"
            "except OSError as e: print('refused:', e.strerror)"
        )
        return f"{sys.executable} -c {shlex.quote(send)}"


@pytest.mark.skipif(fence.unavailable_reason() is not None, reason="no Landlock here that restricts TCP (Linux 6.7)")
def test_an_agent_cannot_reach_a_server_of_yours_on_a_tcp_port_of_this_machine(workspace, tmp_path, monkeypatch):
    """BROKE, fixed: the agent shares your network, and a Jupyter server of yours (its token in your home, which the
    agent reads), a Ray dashboard's job API or a Docker daemon on TCP runs what it is sent, as you, outside the
    agent's namespace. Its turn is now fenced by Landlock (agents/fence.py): TCP connections only to DNS, HTTP, HTTPS
    and the ports of the endpoints its environment names, which it still reaches (here OPENAI_BASE_URL's)."""
    jupyter = RunsWhatItIsSent(socket.AF_INET, ("127.0.0.1", 0))
    endpoint = RunsWhatItIsSent(socket.AF_INET, ("127.0.0.1", 0))
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{endpoint.address[1]}/v1")
    ran, said = tmp_path / "ran-outside", agent_channel(workspace) / "said"
    assert jupyter.reached_from_outside() and endpoint.reached_from_outside()
    tries = f"{jupyter.sender(f'touch {ran}')} > {said}\n{endpoint.sender('echo hello')} >> {said}"
    exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{tries}\necho x")
    assert exp.status == Status.KEEP, exp.reason
    time.sleep(0.5)
    assert said.read_text() == "refused: Permission denied\nsent\n"
    assert jupyter.heard == [b"true"] and not ran.exists(), "the agent's command ran in a server of yours, outside"
    assert endpoint.heard == [b"true", b"echo hello"]  # the endpoint its environment names: reached
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.skipif(
    fence.abi() < fence.SCOPE_ABI and not namespace.isolates_network(),
    reason="no Landlock here that scopes abstract sockets (Linux 6.12), nor a network namespace of the agent's own",
)
def test_an_agent_cannot_reach_a_server_of_yours_on_an_abstract_socket(workspace, tmp_path):
    """BROKE, fixed: an abstract socket has no file to hide (X11's `@/tmp/.X11-unix/X0`, a D-Bus session's at
    `unix:abstract=`), and a server on one that ran what it was sent ran the agent's command outside its namespace.
    Landlock now scopes the turn's abstract sockets to itself (agents/fence.py: refused), and in a network namespace
    of its own (agents/egress.py) the abstract sockets are the namespace's: none is there."""
    server = RunsWhatItIsSent(socket.AF_UNIX, f"\0autoresearch-test-{os.getpid()}")
    ran, said = tmp_path / "ran-outside", agent_channel(workspace) / "said"
    assert server.reached_from_outside()
    exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{server.sender(f'touch {ran}')} > {said}\necho x")
    assert exp.status == Status.KEEP, exp.reason
    time.sleep(0.5)
    assert said.read_text() in ("refused: Operation not permitted\n", "refused: Connection refused\n")
    assert server.heard == [b"true"] and not ran.exists(), "the agent's command ran in a server of yours, outside"
    assert_the_loop_owns_the_workspace(workspace, exp, before)


SIDE_DOORS = {  # TCP connections Landlock's rule never sees (Linux 6.18): how the agent's Python opens one
    "TCP Fast Open": "s = socket.socket(); s.sendto({command!r}, socket.MSG_FASTOPEN, {address!r})",
    "TCP Fast Open, IPv6": "s = socket.socket(socket.AF_INET6); s.sendto({command!r}, 0x20000000, ('::1', {port}))",
    "an MPTCP socket": "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262); s.connect({address!r}); "
    "s.sendall({command!r})",
}


@pytest.mark.skipif(fence.unavailable_reason() is not None, reason="no Landlock here that restricts TCP (Linux 6.7)")
@pytest.mark.parametrize("door", SIDE_DOORS)
def test_an_agent_cannot_reach_a_server_of_yours_on_a_tcp_port_by_a_side_door(workspace, tmp_path, door):
    """BROKE, fixed: Landlock's TCP rule sees connect() on a TCP socket, and nothing else: `sendto` with
    MSG_FASTOPEN (TCP Fast Open) connects as it sends, and a socket of protocol IPPROTO_MPTCP (Multipath TCP) is
    no TCP socket to it, and both reached a server of yours on a port the fence had closed (a Jupyter server's),
    which ran the agent's command outside its namespace. The fence now also installs a seccomp filter
    (agents/fence.py): no MSG_FASTOPEN, no socket of another protocol than TCP, UDP or ICMP (MPTCP, SMC, SCTP), no
    io_uring (whose operations make sockets and send without the system calls the filter sees)."""
    family = socket.AF_INET6 if "IPv6" in door else socket.AF_INET
    jupyter = RunsWhatItIsSent(family, ("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    ran, said = tmp_path / "ran-outside", agent_channel(workspace) / "said"
    assert jupyter.reached_from_outside()
    address = jupyter.address[:2]
    line = SIDE_DOORS[door].format(command=f"touch {ran}".encode(), address=address, port=address[1])
    send = f"import socket\ntry:\n {line}; print('sent')\nexcept OSError as e: print('refused:', e.strerror)"
    exp, before = take_turn(
        workspace, tmp_path, f"{set_lr(0.2)}\n{sys.executable} -c {shlex.quote(send)} > {said}\necho x"
    )
    assert exp.status == Status.KEEP, exp.reason
    time.sleep(0.5)
    assert said.read_text().startswith("refused:"), said.read_text()
    assert jupyter.heard == [b"true"] and not ran.exists(), "the agent's command ran in a server of yours, outside"
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.skipif(not HIDES, reason="no namespace here can make a place read-only")
@pytest.mark.skipif(os.geteuid() != 0, reason="the loop runs as root: only root can write /run")
@pytest.mark.skipif(not os.path.isdir("/run"), reason="no /run here")
def test_an_agent_of_a_loop_run_as_root_cannot_configure_what_root_runs_in_run(workspace, tmp_path):
    """BROKE, fixed: /run (a tmpfs mount point, or a folder of / bound onto itself) stayed writable for the agent of
    a loop run as root, and what runs as root outside reads its configuration there: modprobe (`/run/modprobe.d`:
    an `install` line runs a command as root when the module is asked for, which a socket of its family does,
    from the agent too), udev (`/run/udev/rules.d`: RUN+= on the next device event), systemd (`/run/systemd/system`:
    a drop-in to a service). Now /run is read-only in the agent's namespace, but for its own runtime folder
    (XDG_RUNTIME_DIR's, an empty tmpfs)."""
    planted = [
        Path("/run/modprobe.d") / f"autoresearch-test-{os.getpid()}.conf",
        Path(f"/run/autoresearch-{os.getpid()}"),
    ]
    seen, own = agent_channel(workspace) / "seen", Path(f"/run/user/{os.getuid()}/autoresearch-test")
    tries = "; ".join(
        f"{{ mkdir -p {p.parent} && echo 'install smc /bin/touch {tmp_path}/ran' > {p} && echo {p} written; }} "
        f">> {seen} 2>&1 || true"
        for p in planted
    )
    tries += f"; touch {own} && echo own written >> {seen} || true" if own.parent.is_dir() else ""
    made = not os.path.exists("/run/modprobe.d")
    try:
        exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{tries}\necho x")
        assert exp.status == Status.KEEP, exp.reason
        assert not any(p.exists() for p in planted), seen.read_text()
        assert "written" not in seen.read_text().replace("own written", ""), seen.read_text()
        if own.parent.is_dir():
            assert "own written" in seen.read_text()  # its runtime folder is still its own to write
        assert_the_loop_owns_the_workspace(workspace, exp, before)
    finally:
        for p in planted:
            with contextlib.suppress(OSError):
                p.unlink()
        if made:
            with contextlib.suppress(OSError):
                Path("/run/modprobe.d").rmdir()


KERNEL_SETTINGS = [  # each written back with the value it has: a no-op where the write is let through
    "/proc/sys/kernel/core_pattern",
    "/proc/irq/default_smp_affinity",
    f"/sys/devices/system/cpu/cpu{max(os.sched_getaffinity(0))}/online",
    "/sys/kernel/mm/ksm/run",
]


@pytest.mark.skipif(not HIDES, reason="no namespace here can make a place read-only")
@pytest.mark.skipif(os.geteuid() != 0, reason="the loop runs as root: only root can write the kernel's settings")
def test_an_agent_of_a_loop_run_as_root_cannot_change_the_kernels_settings(workspace, tmp_path):
    """BROKE, fixed (red team): /sys and the settings in the turn's /proc were writable for the agent of a loop run as
    root, whose user namespace maps root to root, and writing them checks the file's owner only. Pinned to the CPUs
    set aside for agents, it moved itself into a cpuset of the runs' CPUs (a victim there took 2.0 x as long), took
    its own CPU offline to be moved onto theirs (2.0 x), and sent the interrupts and the kernel's unbound work to
    them (1.3 x); and /proc/sys/kernel/core_pattern, had it set a program there, would run it as root, outside every
    namespace, at the next crash of any process. Now /sys, /proc/sys, /proc/irq, /proc/bus, /proc/fs and
    /proc/sysrq-trigger are read-only in the agent's namespace. (A cgroup filesystem it mounts afresh, in user and
    cgroup namespaces of its own, still took it into a cpuset of the runs' CPUs: README, "Many GPUs".)"""
    there = [f for f in KERNEL_SETTINGS if os.path.isfile(f)]
    seen = agent_channel(workspace) / "seen"
    tries = "; ".join(
        f"{{ v=$(cat {f}) && printf '%s\\n' \"$v\" > {f} && echo written {f}; }} >> {seen} 2>&1 || true" for f in there
    )
    exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{tries}\necho x")
    assert exp.status == Status.KEEP, exp.reason
    said = seen.read_text()
    assert "written" not in said and said.count("Read-only file system") == len(there), said
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.skipif(not HIDES, reason="no namespace here can make a place read-only")
@pytest.mark.skipif(os.geteuid() != 0, reason="the loop runs as root: only root can write /var")
def test_an_agent_of_a_loop_run_as_root_cannot_leave_what_root_runs_later_in_var(workspace, tmp_path):
    """BROKE, fixed: /var was writable for the agent of a loop run as root, and a maintainer script it wrote in
    /var/lib/dpkg/info (`touch /var/lib/dpkg/info/zz.postinst`) runs as root at the next `apt`, outside its turn (red
    team). Now /var is read-only in its namespace, but for /var/tmp, its to write as /tmp is: a copy of its own, what
    it writes there gone at the end of its turn."""
    planted = Path("/var/lib") / f"autoresearch-test-{os.getpid()}"
    own = Path(tempfile.mkdtemp(prefix="agent", dir="/var/tmp")) / "written"
    seen = agent_channel(workspace) / "seen"
    tries = f"{{ touch {planted} && echo planted; }} >> {seen} 2>&1 || true; touch {own} && echo own >> {seen} || true"
    try:
        exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{tries}\necho x")
        assert exp.status == Status.KEEP, exp.reason
        said = seen.read_text()
        assert not planted.exists() and "Read-only file system" in said and "planted" not in said, said
        assert said.endswith("own\n"), said  # /var/tmp is still its own to write
        assert own.exists() != OWN_TEMPORARY  # for its turn: the real /var/tmp is as it was
        assert_the_loop_owns_the_workspace(workspace, exp, before)
    finally:
        with contextlib.suppress(OSError):
            planted.unlink()
        shutil.rmtree(own.parent, ignore_errors=True)


@pytest.mark.skipif(not HIDES, reason="no namespace here can make a place read-only")
def test_an_agent_cannot_write_your_home_but_its_workspace_there(workspace, tmp_path, monkeypatch):
    """BROKE, fixed: the agent wrote your home as you can, and a `~/.bashrc` line, a `~/.config/autostart` entry or a
    systemd user unit it wrote runs at your next shell or login, outside its turn (red team). Now your home is
    read-only in its namespace, but for the workspace in it (its state still read-only): here the home holds the
    workspace, and a path relative to its working directory (`../`) meets the read-only home too."""
    monkeypatch.setenv("HOME", str(tmp_path))  # the workspace is tmp_path / "ws"
    seen = agent_channel(workspace) / "seen"
    tries = [
        f"echo evil >> {tmp_path}/.bashrc",
        "echo evil >> ../.profile",
        f"mkdir -p {tmp_path}/.config/systemd/user",
        f"mv {workspace.root} {tmp_path}/moved",
        "echo planted > .autoresearch/planted",
        "echo notes > notes.txt",
    ]
    script = "\n".join(f"{{ {line} && echo '{line}: written'; }} >> {seen} 2>&1 || true" for line in tries)
    exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{script}\necho x")
    assert exp.status == Status.KEEP, exp.reason
    said = seen.read_text()
    assert said.count("Read-only file system") == 5 and said.count(": written") == 1, said
    assert f"{tries[-1]}: written" in said  # the workspace is still its own to write (notes.txt: put back)
    assert not (tmp_path / ".bashrc").exists() and not (tmp_path / ".profile").exists()
    assert not (tmp_path / ".config").exists() and not (workspace.root / ".autoresearch" / "planted").exists()
    assert not (workspace.root / "notes.txt").exists()
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.skipif(not HIDES, reason="no namespace here can make a place read-only")
@pytest.mark.parametrize("link", ["the file", "the folder"])
def test_an_agent_cannot_have_the_loop_write_your_home_through_its_own_files(workspace, tmp_path, monkeypatch, link):
    """BROKE, fixed: a coding agent's own files (.autoresearch/agents/<name>/) are the agent's to write, and the loop
    writes there too, outside its namespace, before the next turn (aider's model-metadata.json): a link the agent
    left there, for the file or for the folder, had the loop write through it into your read-only home (a JSON over
    your ~/.bashrc, say). Now the loop makes that folder anew where it is a link, and replaces the file it writes."""
    home = tmp_path / "home"
    home.mkdir()
    bashrc = home / ".bashrc"
    bashrc.write_text("# yours\n")
    monkeypatch.setenv("HOME", str(home))
    own = workspace.root / ".autoresearch" / "agents" / "aider"
    plant = (
        f"rm -rf {own} && ln -s {home} {own}"
        if link == "the folder"
        else f"mkdir -p {own} && ln -sf {bashrc} {own}/model-metadata.json"
    )
    exp, _ = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{plant}\necho planted")
    assert exp.status == Status.KEEP, exp.reason
    # The next turn is aider's (any program called aider: the loop writes before it starts)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aider").write_text("#!/bin/sh\ncat > /dev/null\necho 'Hypothesis: nothing'\n")
    (bin_dir / "aider").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # its preflight asks here for the models, not OpenAI
    from autoresearch.agents.coding_agent import CodingAgent
    from autoresearch.agents.recipes.aider import Aider

    make_loop(workspace, FakeExecutor(score)).run(CodingAgent(Aider(), timeout_s=60), max_experiments=1)
    assert bashrc.read_text() == "# yours\n"
    assert sorted(p.name for p in home.iterdir()) == [".bashrc"]
    assert (own / "model-metadata.json").is_file() and not own.is_symlink()


@pytest.mark.skipif(not HIDES, reason="no namespace here can make a place read-only")
def test_an_agent_cannot_write_your_login_home_when_home_names_another(workspace, tmp_path, monkeypatch):
    """BROKE, fixed: only $HOME was read-only to the agent, and a loop started with another HOME (`sudo` keeping
    yours, a service's or a script's HOME) left your home of the user database (/etc/passwd: where your shell starts
    and reads ~/.bashrc) writable; and, as root, every other user's home (/home/<them>, a folder of / bound onto
    itself: writable), whose ~/.bashrc runs as them at their next login. Now both are read-only for it too."""
    import pwd

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    login = Path(pwd.getpwuid(os.getuid()).pw_dir)
    targets = [login / f"autoresearch-test-{os.getpid()}"] if login.is_dir() and login != Path("/") else []
    if os.getuid() == 0:  # another user of this machine, with a login shell
        theirs = tmp_path / "alice"
        theirs.mkdir()
        alice = pwd.struct_passwd(("alice", "x", 4242, 4242, "", str(theirs), "/bin/bash"))
        real = pwd.getpwall
        monkeypatch.setattr(pwd, "getpwall", lambda: [*real(), alice])
        targets.append(theirs / ".bashrc")
    if not targets:
        pytest.skip("no home of yours in the user database")
    seen = agent_channel(workspace) / "seen"
    tries = "\n".join(f"{{ touch {t} && echo '{t}: written'; }} >> {seen} 2>&1 || true" for t in targets)
    try:
        exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{tries}\necho x")
        assert exp.status == Status.KEEP, exp.reason
        said = seen.read_text()
        assert not any(t.exists() for t in targets) and said.count("Read-only file system") == len(targets), said
        assert_the_loop_owns_the_workspace(workspace, exp, before)
    finally:
        for t in targets:
            with contextlib.suppress(OSError):
                t.unlink()


@pytest.mark.skipif(not HIDES, reason="no namespace here can make a place read-only")
@pytest.mark.parametrize(
    "link",
    [".git/refs/heads", ".git/index", ".git/packed-refs", ".git/refs"],
)
def test_an_agent_cannot_have_the_loop_s_git_write_your_home_through_a_link_in_git(
    workspace, tmp_path, monkeypatch, link
):
    """BROKE, fixed: where git writes under .git (refs/, objects/, logs/, the index, packed-refs) a link the agent
    left was followed by the loop's own git after the turn, outside its namespace: `.git/refs/heads` a link to your
    home, read-only to the agent, and the loop's putting back of its branch wrote `~/autoresearch/<tag>` there; the
    index or packed-refs a link to a file of yours (or refs/ gone), and the loop stopped. Now those links are set
    aside before the loop's first git command, and the turn is judged."""
    monkeypatch.setenv("HOME", str(tmp_path))  # the workspace is tmp_path / "ws"
    (tmp_path / ".bashrc").write_text("# yours\n")
    target = tmp_path if link.startswith(".git/refs") else tmp_path / ".bashrc"
    plant = f"rm -rf {link} && ln -s {target} {link}"
    exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{plant}\necho x")
    assert exp.status == Status.KEEP, exp.reason
    assert f"{link} left as a link" in exp.reason
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bashrc", "agent.sh", "ws"]
    assert (tmp_path / ".bashrc").read_text() == "# yours\n"
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.skipif(not HIDES, reason="no namespace here can hide a place")
def test_an_agent_cannot_leave_code_in_your_inductor_cache_in_tmp(workspace, tmp_path):
    """BROKE, fixed: /tmp is the agent's to write, and torch.compile outside the loop (yours, later, as you) reads
    Inductor's default cache there, /tmp/torchinductor_<you>: it imports a generated module it finds already written
    and unpickles its graph cache's entries, so what the agent left there ran as you outside its turn (red team). In
    its namespace that folder is now an empty tmpfs: its own torch.compile still writes one, which goes with it. And
    /tmp itself is now its own: what it writes anywhere there (a module where your `python` started in /tmp imports
    it) is gone at the end of its turn."""
    import getpass
    import re

    cache = Path("/tmp") / ("torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", getpass.getuser()))
    planted = cache / f"autoresearch-test-{os.getpid()}.py"
    beside = Path("/tmp") / f"autoresearch-test-{os.getpid()}-{time.time_ns()}.py"
    seen = agent_channel(workspace) / "seen"
    tries = "\n".join(
        f"{{ {write} && echo written; }} >> {seen} 2>&1 || true"
        for write in (f"mkdir -p {cache} && echo 'import os' > {planted}", f"echo 'import os' > {beside}")
    )
    made = not cache.exists()
    try:
        exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{tries}\necho x")
        assert exp.status == Status.KEEP, exp.reason
        assert seen.read_text() == "written\nwritten\n"  # its own, for its turn
        assert not planted.exists() and beside.exists() != OWN_TEMPORARY
        assert_the_loop_owns_the_workspace(workspace, exp, before)
    finally:
        for path in (planted, beside):
            with contextlib.suppress(OSError):
                path.unlink()
        if made:
            with contextlib.suppress(OSError):
                cache.rmdir()


@pytest.mark.skipif(not HIDES, reason="no namespace here can make a place read-only")
def test_the_folders_of_your_home_you_list_are_the_agents_to_write_and_no_more(workspace, tmp_path, monkeypatch):
    """A CLI agent that keeps its sessions in your home (`~/.gemini`) may write there when you list the folder in
    AUTORESEARCH_AGENT_WRITABLE (made where missing); the rest of your home stays read-only to it."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AUTORESEARCH_AGENT_WRITABLE", "~/.gemini:~/.local/share/opencode")
    seen = agent_channel(workspace) / "seen"
    tries = [f"echo s > {home}/.gemini/session", f"echo s > {home}/.local/share/opencode/s"]
    tries.append(f"echo x >> {home}/.bashrc")
    script = "\n".join(f"{{ {line} && echo written; }} >> {seen} 2>&1 || true" for line in tries)
    exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{script}\necho x")
    assert exp.status == Status.KEEP, exp.reason
    assert_the_loop_owns_the_workspace(workspace, exp, before)
    said = seen.read_text()
    assert said.count("written") == 2 and "Read-only file system" in said, said
    assert (home / ".gemini" / "session").read_text() == "s\n" and not (home / ".bashrc").exists()


@pytest.mark.skipif(not HIDES, reason="no namespace here can make a place read-only")
@pytest.mark.parametrize("listed", ["~", "~/.local"])
def test_a_folder_you_list_that_holds_what_stays_read_only_stops_the_loop(workspace, tmp_path, monkeypatch, listed):
    """BROKE, fixed: AUTORESEARCH_AGENT_WRITABLE took your home itself (`~`: it is "in" your home), and a folder
    of it that holds a place that must stay read-only (`~/.local`, which holds ~/.local/bin, a folder of PATH, and
    your user site-packages): the home is made read-only as one mount, those places with it, and the listed folder
    made writable again carried them. The agent wrote ~/.bashrc (run at your next shell, as you) and a `git` in
    ~/.local/bin (run by the loop's own check of that turn, outside). Such a listing now stops the loop."""
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{home}/.local/bin:{os.environ['PATH']}")
    monkeypatch.setenv("AUTORESEARCH_AGENT_WRITABLE", listed)
    tries = f"echo x >> {home}/.bashrc || true\necho x > {home}/.local/bin/git || true"
    with pytest.raises(Exception, match="AUTORESEARCH_AGENT_WRITABLE lists"):
        take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{tries}\necho x")
    assert not (home / ".bashrc").exists() and not (home / ".local" / "bin" / "git").exists()


def test_a_folder_you_list_inside_another_cannot_be_swapped_for_a_link_by_the_agent(tmp_path, monkeypatch):
    """BROKE, fixed: a listed folder inside another (`~/.gemini:~/.gemini/tmp`) lies where the agent writes, and
    each turn's start took it as it found it: the agent replaced `~/.gemini/tmp` with a link to `~/.config` (to your
    systemd user units, run at your next login), which its next turn then had writable (and a worker's agent that
    swapped it between another's check and its mount had wherever the link led, /etc as root). A listed folder inside
    another listed one, or inside the workspace, is now refused."""
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    env = {**os.environ, "AUTORESEARCH_AGENT_WRITABLE": "~/.gemini:~/.gemini/tmp"}
    with contextlib.suppress(ValueError):
        places.agent_writable(env)
    with contextlib.suppress(FileNotFoundError):
        (home / ".gemini" / "tmp").rmdir()
    (home / ".gemini" / "tmp").symlink_to(home / ".config")  # as the agent would, in the folder it writes
    with pytest.raises(ValueError, match="inside another"):
        assert home / ".config" not in places.agent_writable(env)


@pytest.mark.skipif(fence.unavailable_reason() is not None, reason="no Landlock here that restricts TCP (Linux 6.7)")
def test_behind_the_fence_a_tcp_socket_cannot_take_an_upper_layer_but_keeps_its_other_options():
    """Where an smc module still offers SMC as a TCP upper layer (kernels before ~6.10), `setsockopt(TCP_ULP, "smc")`
    made a TCP socket SMC's, which connects from the kernel, unseen by Landlock (red team; not shown on this kernel).
    The fence's filter refuses TCP_ULP; every other option of a socket stays the agent's to set."""
    probe = (
        "import socket\ns = socket.socket()\n"
        "try: s.setsockopt(socket.IPPROTO_TCP, 31, b'smc'); print('ulp set')\n"
        "except OSError as e: print('ulp', e.errno)\n"
        "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "print('others', s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))"
    )
    fenced = subprocess.run([*fence.launcher({}), sys.executable, "-c", probe], capture_output=True, text=True)
    assert fenced.stdout.split("\n")[:2] == ["ulp 1", "others 1"], fenced.stdout + fenced.stderr


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="no seccomp filter for this architecture")
def test_behind_the_fence_a_socket_is_of_the_families_an_agent_needs_and_no_other():
    """A socket of any family but INET's was allowed (red team): AF_VSOCK's reaches the host of a VM, whose agents
    (this machine's own init listens on one) run what they are sent. Unix's and netlink's (getaddrinfo asks it for the
    machine's addresses) stay the agent's, and TCP, UDP and ICMP sockets of INET's and INET6's."""
    probe = (
        "import socket\n"
        "S = socket.SOCK_STREAM\n"
        "for family, kind in ((40, S), (socket.AF_UNIX, S), (socket.AF_NETLINK, socket.SOCK_RAW), "
        "(socket.AF_INET, socket.SOCK_DGRAM), (socket.AF_INET6, S)):\n"
        "    try: socket.socket(family, kind).close(); print(family, 'made')\n"
        "    except OSError as e: print(family, e.errno)\n"
        "socket.getaddrinfo('localhost', 80)\n"
        "print('resolved')"
    )
    fenced = subprocess.run([*fence.launcher({}), sys.executable, "-c", probe], capture_output=True, text=True)
    lines = fenced.stdout.split("\n")
    assert lines[:6] == ["40 97", "1 made", "16 made", "2 made", "10 made", "resolved"], fenced.stdout + fenced.stderr


# The path you name the workspace by, spelled another way (`links/current` -> `../alias` -> <tmp_path>), and what a
# turn does to point it at `fake`, its copy of the workspace.
SPELLED = {
    "with // and ./": ("/{links}/./current//ws/", "ln -sfn {fake}/current {links}/current"),
    "through a folder that is not there, then ..": (
        "{links}/gone/../current/ws",
        "mkdir -p {fake}/deep && ln -s {fake}/deep {links}/gone",
    ),
    "through a link to a folder that is not there, then ..": (
        "{links}/inner/ws",  # inner -> gone/../current
        "mkdir -p {fake}/deep && ln -s {fake}/deep {links}/gone",
    ),
}


@pytest.mark.skipif(not HIDES, reason="no namespace here can pin a folder")
@pytest.mark.parametrize("how", list(SPELLED))
def test_a_path_to_the_workspace_spelled_another_way_cannot_be_turned_to_a_copy_of_the_agents(
    workspace, tmp_path, monkeypatch, how
):
    """BROKE, fixed (helper 140): `--workspace /data/gone/../current/ws`, a folder on it not there. The loop opened it
    by resolve(), which steps back out of `gone` as if it were, but `gone` could not be pinned; a turn made it a link
    to a folder of its copy (`/data/gone -> /data/copy/deep`), and the next start by the same words opened the copy
    (the kernel, and resolve() too now, step back to /data/copy). A path the kernel cannot walk to the workspace is
    now refused at the start. The same path with `//`, `./` and a `/` at its end is pinned as any other."""
    monkeypatch.setattr(namespace, "temporary_unavailable", lambda: "no overlay here (the test's)")
    links, alias, fake, refused = tmp_path / "links", tmp_path / "alias", tmp_path / "copy", tmp_path / "refused"
    links.mkdir()
    alias.symlink_to(tmp_path)
    (links / "current").symlink_to("../alias")
    (links / "inner").symlink_to("gone/../current")
    spelled, turn_it = (s.format(links=links, fake=fake) for s in SPELLED[how])
    named = Path(spelled)
    if "not there" in how:
        with pytest.raises(ConfigError, match="does not lead to"):
            Workspace(named)
        return
    ws = Workspace(named)
    assert ws.root == workspace.root
    forge = "c = sqlite3.connect(sys.argv[1]); c.execute('UPDATE experiments SET val_bpb = 0.1'); "
    forge += "c.execute('DROP TABLE seals'); c.commit()"
    ledger = (workspace.state / "ledger.sqlite").relative_to(workspace.root)
    turn = (
        f"mkdir -p {fake}/current && cp -a {workspace.root} {fake}/current/ws\n"
        f'{shlex.quote(sys.executable)} -c "import sqlite3, sys; {forge}" {fake / "current/ws" / ledger}\n'
        f"{{ {turn_it}; }} 2>/dev/null || echo refused > {refused}\necho LR 0.2"
    )
    exp, before = take_turn(ws, tmp_path, f"{set_lr(0.2)}\n{turn}")
    assert not (fake / "current" / "ws").exists() or Workspace(named).root == workspace.root, (
        "the next start by the same path opens the agent's copy"
    )
    assert exp.kind == Kind.EXPERIMENT and exp.status == Status.KEEP and exp.val_bpb > 0.5
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.skipif(not HIDES, reason="no namespace here can pin a folder")
@pytest.mark.skipif(os.geteuid() != 0, reason="a btrfs is mounted, as root")
@pytest.mark.skipif(shutil.which("mkfs.btrfs") is None, reason="no mkfs.btrfs here")
def test_an_agent_cannot_move_aside_a_btrfs_subvolume_that_holds_the_workspace(tmp_path, tiny_prepared, monkeypatch):
    """BROKE, fixed (helper 140): the folders that hold the workspace are pinned but for the mount points already,
    told by os.path.ismount, which takes a btrfs subvolume (a device number of its own) for one. With the workspace in
    a subvolume (`btrfs subvolume create /data/runs`, a snapshot), a turn did `mv /data/runs /data/runs.real`, copied
    it back and forged the copy's ledger: the next start at the same path opened the copy. A mount point is now one
    that /proc/self/mountinfo lists."""
    monkeypatch.setattr(namespace, "temporary_unavailable", lambda: "no overlay here (the test's)")
    image = tmp_path / "disk.img"
    with open(image, "wb") as made:
        made.truncate(200 << 20)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    # Mounted in /mnt, not /tmp: a mount in /tmp leaves /tmp the agents' to share, for other tests' turns meanwhile
    disk = Path(tempfile.mkdtemp(prefix="autoresearch-test-btrfs-", dir="/mnt" if os.path.isdir("/mnt") else None))
    if subprocess.run(["mount", "-o", "loop", str(image), str(disk)], capture_output=True).returncode != 0:
        pytest.skip("no loop device here")
    try:
        runs = disk / "runs"
        subprocess.run(["btrfs", "subvolume", "create", str(runs)], check=True, capture_output=True)
        turn_swaps_in_a_forged_copy(make_workspace(runs / "ws", tiny_prepared), tmp_path, runs)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
        disk.rmdir()
