"""The sockets of servers on this machine that run what they are sent, found to be hidden from an agent's turn
(agents/namespace.py): through one of them a command of the agent's would run outside its namespace."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path

from autoresearch.files import holds

# Where servers keep the sockets through which they run what they are sent: tmux's and screen's (a loop left running in
# one hands its agent the server: `tmux run-shell` ran a command there, red team), emacs's, VS Code's, a forwarded SSH
# agent's, X11's, a database's (PostgreSQL's `COPY ... TO PROGRAM`), Docker's and Podman's (a container of the agent's
# with / mounted, as root). Every socket found within SOCKET_DEPTH folders of these is hidden from the agent.
SOCKET_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm", "/run")
SOCKET_DEPTH = 3  # /tmp/screens/S-<user>/<session>
# but those the agent's own programs need to look names up and to log (systemd's resolver, user database and journal,
# nscd): they run nothing they are sent. systemd's own socket, /run/systemd/private, is hidden: as root, `systemd-run`
# starts a service through it.
NAME_SERVICES = ("/run/systemd/resolve", "/run/systemd/userdb", "/run/systemd/journal", "/run/nscd")
# Covered whole by an empty tmpfs (namespace._HIDE): not walked, nor your session's sockets probed.
RUNTIME_FOLDERS = ("/run/user", "/run/dbus")


def server_sockets(env: Mapping[str, str], workspace: Path) -> list[Path]:
    """The sockets of servers that run what they are sent (SOCKET_FOLDERS), and those your environment names
    elsewhere: tmux's (`$TMUX`, and its folder in `$TMUX_TMPDIR`), screen's (`$SCREENDIR`), Docker's and Podman's
    (`$DOCKER_HOST`, `$CONTAINER_HOST`). Not those in the workspace, which are the agent's own. Through one of them a
    command of the agent's would run outside its namespace, as you or as root, where the data can be read and nothing
    ends with its turn. (Abstract sockets, which have no file, stay in reach: README.)"""
    inside = workspace.resolve()
    named = [env.get("TMUX", "").rsplit(",", 2)[0], env.get("TMUX_TMPDIR"), env.get("SCREENDIR")]
    named += [env.get(host, "").removeprefix("unix://") for host in ("DOCKER_HOST", "CONTAINER_HOST")]
    found = [Path(p) for p in named if p and os.path.isabs(p) and os.path.exists(p)]
    for folder in SOCKET_FOLDERS:
        found += _sockets_within(Path(folder), SOCKET_DEPTH, inside)
    spared = [Path(p) for p in NAME_SERVICES]
    return [p for p in dict.fromkeys(found) if not holds(inside, p) and not any(holds(s, p) for s in spared)]


def _sockets_within(folder: Path, depth: int, workspace: Path) -> list[Path]:
    """The sockets in `folder` and its folders `depth` deep, links not followed, the workspace not walked."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except OSError:  # not ours to read: nor the agent's to connect to through it
        return found
    for entry in entries:
        path = Path(entry.path)
        with contextlib.suppress(OSError):  # gone meanwhile
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISSOCK(mode) and _served(path):
                found.append(path)
            elif stat.S_ISDIR(mode) and depth > 1 and not holds(workspace, path) and str(path) not in RUNTIME_FOLDERS:
                found += _sockets_within(path, depth - 1, workspace)
    return found


def _served(path: Path) -> bool:
    """Whether a server holds the socket at `path`: one that refuses a connection has none (the file outlived it), and
    runs nothing. Nothing is sent. Those were hidden too, one mount each, and an agent that left thousands in /tmp made
    the next turn's command longer than the kernel takes (ARG_MAX): it did not start, and the loop stopped (red team).
    Reached through /proc/self/fd, as an agent would reach one at a path longer than a socket's address takes."""
    if not hasattr(os, "O_PATH") or not os.path.isdir("/proc/self/fd"):
        return True
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        with socket.socket(socket.AF_UNIX) as probe:
            probe.setblocking(False)  # a server's full backlog: EAGAIN, served
            probe.connect(f"/proc/self/fd/{fd}")
    except ConnectionRefusedError:
        return False
    except OSError:  # another type of socket (EPROTOTYPE), not ours to connect to (EACCES): hidden all the same
        return True
    finally:
        os.close(fd)
    return True
