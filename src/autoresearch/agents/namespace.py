"""The namespaces a shell agent's turn runs in: what it cannot see, what it cannot write (agents/places.py names them),
what it cannot move, and that nothing it starts outlives the turn (agents/command_agent.py runs the command in them;
README, "What is covered")."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from autoresearch import anchor
from autoresearch.agents import egress, fence, forwarder
from autoresearch.agents.places import (
    SSH_AGENT,
    STATE,
    TEMPORARY,
    agent_writable,
    hidden_places,
    read_only_places,
)
from autoresearch.agents.server_sockets import RUNTIME_FOLDERS
from autoresearch.evaluator import shown
from autoresearch.files import holds, program_path
from autoresearch.loop.ray_cluster import AUTH_TOKEN

AGENT_FILES = Path(STATE) / "agents"  # <workspace>/.autoresearch/agents/<name>/: a coding agent's own files, writable
CACHE = "cache"  # in AGENT_FILES: XDG_CACHE_HOME and npm's cache for every agent's tools

# Where a user namespace can be made (Linux, unless a container forbids it), the agent runs in a network namespace of
# its own, whose one way out is the loop's proxy (agents/egress.py: the model APIs, no other host), and a PID namespace
# of its own: when it ends the kernel kills everything it left, a process that left its group (setsid, a daemon)
# too, which could otherwise edit train.py, the ledger or a result after the loop has checked the turn. Its own
# /proc, so that /proc/<pid> is the process getpid() names (Codex waited for ever on the outer one's). The agent
# runs in a second user namespace, with a mount namespace of its own: there every mount it was given is locked, so
# that it cannot unmount its /proc (root in the first one, it could) and see the machine's, whose processes (the
# loop's, the evaluators', the user's) it could then read, or name in a pid file for the next start to kill. In
# the first, an empty tmpfs covers the user's runtime folder and the system bus's (locked in the second too): their
# sockets (the user's bus, systemd's private socket, the system bus) let `systemd-run` start a process outside
# the namespace, which outlives the turn. As root, every user's runtime folder: through another user's systemd the
# agent's command ran as that user, outside. XDG_RUNTIME_DIR still names a folder the agent can write. So are the
# places that hold the data (evaluator/hidden.py: a folder under an empty tmpfs, a file under /dev/null): an agent
# that read the validation text could write it into train.py. And Ray's folder and token files: a task it sent the
# loop's Ray would run outside, as the user (loop/ray_cluster.py). A place that cannot be hidden stops the agent.
# First, every folder above a hidden or read-only place is bound onto itself: a mount point cannot be renamed, and
# `mv ~/.local ~/.local.old; mkdir -p ~/.local/bin` left a read-only folder of PATH under another name and a writable
# one of the agent's at its path (red team); so could a venv in the home be swapped for another. Where the loop runs
# as root, / itself is read-only, its folders bound onto themselves first (`_root_folders`): where /usr is merged,
# /bin, /sbin, /lib and /lib64 are links in /, and an agent replaced /lib64 with a folder of its own, dynamic linker
# and all, which every program started outside then ran, as root (red team).
# Each tmpfs the agent's namespace is given, where what it writes is memory, not disk: one that is full is "No space
# left on device" to it. Unbounded, each held half the machine's memory, which no process gives back before the turn
# ends: an agent that filled /tmp and /var/tmp (or the runtime folder, a hidden place's tmpfs) left the loop and the
# evaluators less than they need, and the kernel's OOM killer kills one of them, not the agent (red team). The
# temporary folders hold TEMPORARY_MEMORY percent of it together; each tmpfs that hides a place or covers a runtime
# folder, EMPTY.
TEMPORARY_MEMORY = 25
EMPTY = "size=1%,nr_inodes=65536"
# `x PATH`, a shell function of _HIDE's: PATH as findmnt escapes it, each \xHH made that byte again. A command
# substitution drops the newlines its output ends with, so each byte's, and the caller's, has a "." after it (a
# newline in a mount point's path was dropped, and another path remounted, which could leave the first writable).
DECODE = (
    r'x() { s=$1; o=; while :; do case $s in *\\x[0-9a-f][0-9a-f]*) o=$o${s%%\\x*}; s=${s#*\\x}; h=${s%"${s#??}"}; '
    r's=${s#??}; c=$(printf "\\$(printf %o "0x$h")."); o=$o${c%.};; *) break;; esac; done; printf "%s" "$o$s"; }; '
)
# The links `on_the_way` finds, each made a mount point (bound onto itself by its O_PATH descriptor, as `mount`, which
# follows a link, cannot): a link that is one can be neither removed nor replaced (EBUSY). Given their count, then them.
PIN_LINKS = """import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for link in sys.argv[2 : 2 + int(sys.argv[1])]:
    try:
        fd = os.open(link, os.O_PATH | os.O_NOFOLLOW)
    except OSError as err:
        sys.exit(f"autoresearch: could not pin the link {link}: {err.strerror}")
    at = f"/proc/self/fd/{fd}".encode()
    if libc.mount(at, at, None, 4096, None) != 0:  # MS_BIND
        sys.exit(f"autoresearch: could not pin the link {link}: {os.strerror(ctypes.get_errno())}")
    os.close(fd)
"""
_HIDE = (
    "m=$1 f=$2 un=$3 mk=$4 u=$5 g=$6 py=$7 an=$8; shift 8; w=$PWD; "
    f"e=mode=0700,{EMPTY}; "  # each empty tmpfs's options
    # Where the namespace has a network of its own (`isolated`), its one way out, first (`network_words`): the
    # forwarder connects to the loop's proxy by its socket's path, which the mounts below may cover.
    'n=$1; shift; if [ "$n" = 4 ]; then "$py" -I -S "$1" "$2" "$3" "$4" || exit 1; shift 4; fi; '
    # The temporary folders (`temporary_folders`): each an overlay of itself, whose writes are the turn's alone (on an
    # empty tmpfs over it, made with the folder's mode, of a bounded size: `s`), and in it, bound back from the folder
    # as it is (the working directory, below those mounts; `-c`: the path taken as given), the places under it the
    # agent writes for real.
    'n=$1 s=$2; shift 2; while [ "$n" -gt 0 ]; do t=$1 o=$2 k=$3; shift 3; n=$((n - 1)); '
    'cd "$t" && "$m" -t tmpfs -o "mode=0700,$s" tmpfs "$t" && "$mk" "$t/.l" "$t/.w" && "$mk" -m "$o" "$t/.u" && '
    '"$m" -c --bind . "$t/.l" && "$m" -t overlay -o "lowerdir=$t/.l,upperdir=$t/.u,workdir=$t/.w,userxattr" '
    'overlay "$t" || { echo "autoresearch: could not give the agent a $t of its own" >&2; exit 1; }; '
    'while [ "$k" -gt 0 ]; do p=$1; shift; k=$((k - 1)); "$m" -c --rbind "./${p#"$t"/}" "$p" || { '
    'echo "autoresearch: could not let the agent write $p" >&2; exit 1; }; done; done; cd "$w" || exit 1; '
    'n=$1; shift; while [ "$n" -gt 0 ]; do a=$1; shift; n=$((n - 1)); '
    'if [ -d "$a" ]; then "$m" --rbind "$a" "$a"; fi || { echo "autoresearch: could not pin $a" >&2; exit 1; }; done; '
    # Each link on the path you named the workspace by (`on_the_way`), bound onto itself too: the anchor's python
    # opens it (O_PATH, not followed) and mounts it by its descriptor, which `mount` would follow.
    f'n=$1; shift; if [ "$n" -gt 0 ]; then "$py" -I -S -c \'{PIN_LINKS}\' "$n" "$@" || exit 1; fi; shift "$n"; '
    # As root, / itself read-only (its folders were bound onto themselves above), and /dev, the machine's device
    # nodes, which root owns: a turn made and deleted files there, as it could /dev/null or a GPU's node (red team).
    # Only that mount: its device nodes stay writable (a read-only file system does not stop a write to a device),
    # and so do the mounts within it (/dev/shm, /dev/pts). Then the working directory found anew.
    'if [ "$u" = 0 ]; then "$m" -o remount,bind,ro / && "$m" --rbind /dev /dev && "$m" -o remount,bind,ro /dev && '
    'cd "$PWD" || { echo "autoresearch: could not make / and /dev read-only for the agent" >&2; exit 1; }; fi; '
    # The message queues of its IPC namespace at /dev/mqueue (`_namespaces`), where yours are mounted: there a queue
    # it made was yours, and outlived its turn (red team).
    'if [ -d /dev/mqueue ]; then "$m" -t mqueue mqueue /dev/mqueue || { '
    'echo "autoresearch: could not give the agent message queues of its own" >&2; exit 1; }; fi; '
    # The runtime folders (RUNTIME_FOLDERS): yours, and as root every user's (their systemd's private socket).
    'n=$1; shift; r="/run/user/$u"; if [ "$u" = 0 ]; then r="/run/user/*"; fi; for d in $r /run/dbus; do '
    'if [ -d "$d" ]; then "$m" -t tmpfs -o "$e" tmpfs "$d" || exit 1; fi; done; '  # not hidden: not this way
    'while [ "$n" -gt 0 ]; do p=$1; shift; n=$((n - 1)); '
    'if [ -d "$p" ]; then "$m" -t tmpfs -o "$e" tmpfs "$p"; elif [ -e "$p" ]; then "$m" --bind /dev/null "$p"; '
    'fi || { echo "autoresearch: could not hide $p from the agent" >&2; exit 1; }; done; '
    # findmnt escapes a space (a blank, a backslash, what is not printable) in a path as \xHH: `x` decodes it.
    + DECODE
    + 'n=$1; shift; while [ "$n" -gt 0 ]; do p=$1; shift; n=$((n - 1)); '
    'if [ -e "$p" ]; then "$m" --rbind "$p" "$p" && "$m" -o remount,bind,ro "$p" && '
    't=$("$f" -rn -o TARGET -R "$p") && printf "%s\\n" "$t" | while IFS= read -r t; do t=$(x "$t"; echo .); t=${t%.}; '
    # (but for one no path reaches: what a temporary folder's overlay covers; nor a link pinned, which `mount` follows)
    '[ -L "$t" ] || [ ! -e "$t" ] || "$m" -o remount,bind,ro "$t" || { '
    'echo "autoresearch: could not make $t read-only for the agent" >&2; exit 1; }; '
    'done; fi || { echo "autoresearch: could not make $p read-only for the agent" >&2; exit 1; }; done; '
    # Within a read-only place, a folder the agent writes after all (a coding agent's own files in the state).
    'n=$1; shift; while [ "$n" -gt 0 ]; do p=$1; shift; n=$((n - 1)); '
    'if [ -d "$p" ]; then "$m" --rbind "$p" "$p" && "$m" -o remount,bind,rw "$p"; '
    'fi || { echo "autoresearch: could not let the agent write $p" >&2; exit 1; }; done; '
    # The working directory found anew: the workspace made writable again in a read-only home is a mount over it. The
    # anchor (`anchor.command`, its python and source) is the namespace's init from here, and starts the rest.
    'cd "$PWD" || exit 1; exec "$py" -I -S -c "$an" "$un" --user --map-user="$u" --map-group="$g" --mount "$@"'
)


def _namespaces() -> tuple[tuple[str, ...], ...]:
    """The ways to start the agent in its namespaces, best first: with the buses and the data hidden (util-linux
    2.36 or later, for --map-user; `with_hidden` adds the places), else without."""
    # Found once (`pid_namespace`), as git is (workspace/git.py), in PATH's absolute folders: run by name from the
    # script, a `mount` the agent left in a working directory that PATH names ran as you, the data not hidden yet.
    # One not found there is not run by name either (a relative folder of PATH would find the agent's): no such way.
    unshare, mount, findmnt, mkdir = (program_path(name) for name in ("unshare", "mount", "findmnt", "mkdir"))
    if unshare is None:
        return ()
    # An IPC namespace too: System V shared memory and POSIX message queues are the namespace's, not a folder's, and a
    # segment an agent made in yours outlived its turn (memory nothing freed but a reboot, under a key a program of
    # yours may attach to: red team). Its own is gone with the turn.
    outer = (unshare, "--user", "--pid", "--ipc", "--fork", "--mount-proc", "--kill-child")
    # The namespace's init is an anchor of ours (autoresearch/anchor.py), in the first user namespace: the agent, in
    # the second, can neither trace it nor write its memory, and so cannot have it drop the parent-death signal that
    # ends the namespace with the loop (red team: the turn's shell, the init before, was made to, and outlived a loop
    # killed outright).
    ids = (str(os.getuid()), str(os.getgid()), anchor.command()[0], anchor.SOURCE)  # and the anchor's python, source
    hidden = (*outer, "--map-root-user", "/bin/sh", "-c", _HIDE, "sh", mount, findmnt, unshare, mkdir, *ids)
    # A network namespace too, whose one way out is the loop's proxy (agents/egress.py): the model APIs, no other host.
    isolated = (outer[0], "--net", *hidden[1:])
    plain = (*outer, "--map-current-user", *anchor.command([unshare, *PID_NAMESPACE_INNER[1:]]))
    return (isolated, hidden, plain) if mount and findmnt and mkdir else (plain,)


def with_hidden(
    way: tuple[str, ...],
    places: list[Path],
    read_only: list[Path] = (),
    writable: list[Path] = (),
    pinned: list[Path] = (),
    temporary: list[Temporary] = (),
    links: list[Path] = (),
    network: tuple[str, ...] = (),
) -> tuple[str, ...]:
    """`way` (one of `_namespaces()`, or none) with `places` hidden from the agent, `read_only` made read-only for
    it, `writable` (folders inside those) writable again, `pinned` folders and then `links` made mount points first,
    which cannot be renamed (nor a link replaced), and, before all that, the `temporary` folders made its own, where
    that way can do so, and before those, its `network` (`network_words`) where the way has one of its own."""
    if _HIDE not in way:
        return way
    network = network if "--net" in way else ()
    own = [str(len(network)), *network]
    own += [str(len(temporary)), f"size={max(1, TEMPORARY_MEMORY // max(1, len(temporary)))}%,nr_inodes=1m"]
    for folder in temporary:
        own += [str(folder.path), folder.mode, str(len(folder.real)), *map(str, folder.real)]
    lists = (pinned, links, places, read_only, writable)
    return (*way, *own, *(word for paths in lists for word in (str(len(paths)), *map(str, paths))))


@dataclass(frozen=True)
class Temporary:
    """A temporary folder made the agent's own (see _HIDE): its real path, its mode (octal, as `mkdir -m` takes it),
    and the places under it that the agent writes for real (the workspace), bound back."""

    path: Path
    mode: str
    real: tuple[Path, ...] = ()


def temporary_folders(
    env: Mapping[str, str], workspace: Path | None = None, writable: list[Path] = (), read_only: list[Path] = ()
) -> list[Temporary]:
    """TEMPORARY and `$TMPDIR`, those that are folders (not links: /var/tmp may name /tmp), not inside one another,
    nor the workspace or inside it, nor inside a read-only place unless made writable again itself (as root, /var/tmp
    in a read-only /var; a `$TMPDIR` in your home stays as it is), at real paths an overlay's options can name, with
    nothing mounted in them. In each, the workspace and the `writable` places that lie in it (outermost)."""
    inside = [workspace.resolve()] if workspace is not None else []
    mounted = _mount_points()
    named = [Path(p) for p in (*TEMPORARY, env.get("TMPDIR", "")) if os.path.isabs(p)]
    found: list[Temporary] = []
    for folder in named:
        if folder.is_symlink() or not folder.is_dir():
            continue
        real = folder.resolve()
        if not re.fullmatch(r"[\w/.@+-]+", str(real)) or any(holds(w, real) for w in inside):
            continue
        if any(holds(f.path, real) or holds(real, f.path) for f in found):
            continue
        if any(holds(p, real) for p in read_only) and real not in writable:  # a mount in it would stay read-only
            continue
        # In a user namespace, the kernel binds a folder, or makes it an overlay's layer, only with what is mounted in
        # it (locked there): one with a mount in it (a running AppImage's in /tmp, an sshfs of yours) failed every turn
        # from then on, and the loop lost the night. It stays yours meanwhile, as where no overlay can be made.
        if _holds_a_mount(real, mounted):
            continue
        kept = [p for p in (*inside, *writable) if p != real and holds(real, p)]
        found.append(Temporary(real, f"{stat.S_IMODE(real.stat().st_mode):o}", tuple(shown.outermost(kept))))
    return found


def _holds_a_mount(folder: Path, mounted: list[Path]) -> bool:
    return any(m != folder and holds(folder, m) for m in mounted)


def shared_for_a_mount() -> list[Path]:
    """The folders of TEMPORARY the agent shares with you now, for something mounted in them (`temporary_folders`)."""
    mounted = _mount_points()
    folders = [Path(p).resolve() for p in TEMPORARY if Path(p).is_dir() and not Path(p).is_symlink()]
    return [folder for folder in folders if _holds_a_mount(folder, mounted)]


def _mount_points() -> list[Path]:
    """Where something is mounted here (/proc/self/mountinfo, its escapes undone)."""
    return [where for _, _, where in _mounts()]


def _mounts() -> list[tuple[str, Path, Path]]:
    """What is mounted here, in the order mounted (/proc/self/mountinfo, its escapes undone): each mount's file
    system (its device numbers), the folder of that file system it shows, and where."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    undo = functools.partial(re.sub, r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)))
    return [(f[2], Path(undo(f[3])), Path(undo(f[4]))) for f in (line.split() for line in lines) if len(f) > 4]


def other_paths(places: list[Path], workspace: Path) -> list[Path]:
    """The other paths `places` are reached by, where their file system is mounted at another path too (a disk
    bound at /data and at /srv/data, a home bound from /mnt/disk/home): a mount over a place (a tmpfs that hides it,
    a read-only bind) covers that path alone, and through the other the agent read the data it hides and wrote the
    ledger (red team). Not one that holds the workspace, which the agent works in."""
    mounts, inside, found = _mounts(), workspace.resolve(), []
    for place in map(Path, map(os.path.realpath, places)):  # mount points are real paths
        holding = [m for m in mounts if holds(m[2], place)]
        if not holding:
            continue
        device, shown, where = max(reversed(holding), key=lambda m: len(m[2].parts))  # the last mounted, deepest
        within = shown / place.relative_to(where)  # its path in its file system
        for other, root, at in mounts:
            if other == device and holds(root, within) and (alias := at / within.relative_to(root)) != place:
                found.append(alias)
    return [p for p in dict.fromkeys(found) if not holds(p, inside) and os.path.lexists(p)]


@functools.cache
def temporary_unavailable() -> str | None:
    """Why the agent cannot have temporary folders of its own here (no namespace that hides places; an overlay this
    kernel does not mount in one: before Linux 5.11), else None."""
    way = pid_namespace()
    if _HIDE not in way:
        return "no user namespace can be made here"
    folders = temporary_folders({})
    try:
        done = subprocess.run([*with_hidden(way, [], temporary=folders), "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    if done.returncode != 0:
        return done.stderr.decode(errors="replace").strip().splitlines()[-1] if done.stderr.strip() else "it failed"
    return None


def on_the_way(named: Path) -> tuple[list[Path], list[Path]]:
    """What the path you named the workspace by goes through, found as the kernel does: each link on it or in a link's
    target, at its real path (the folder that holds it resolved, its own name kept), and each folder, a real path.
    The loop works by the real path, which the pins hold (`_above`); a link on yours, in a folder the agent may write,
    was turned by a turn to a copy of the workspace with a forged ledger, and the next start by the same path opened
    the copy (red team). Pinned (see _HIDE, PIN_LINKS), each link stays, and each folder stays where it is."""
    links: list[Path] = []
    folders: list[Path] = []
    hops = 0

    def walk(at: str, path: str) -> str:
        nonlocal hops
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":  # `at` is a real path: its parent is the folder's
                at = os.path.dirname(at)
                continue
            here = os.path.join(at, part)
            target = None
            if os.path.islink(here) and (hops := hops + 1) <= 40:  # the kernel's bound on links followed
                with contextlib.suppress(OSError):
                    target = os.readlink(here)
            kernels = here.startswith("/proc/")  # the kernel's (/proc/self/cwd), and another /proc in the namespace
            if not kernels:
                (folders if target is None else links).append(Path(here))
            at = here if target is None else walk("/" if target.startswith("/") else at, target)
        return at

    walk("/", str(named.absolute()))
    return list(dict.fromkeys(links)), list(dict.fromkeys(folders))


def _above(places: list[Path], workspace: Path, folders: list[Path] = ()) -> list[Path]:
    """The folders above `places`, `folders` (`on_the_way`'s), and the workspace with the folders that hold it,
    outermost first, to be bound onto themselves (see _HIDE): a mount point cannot be renamed. A workspace on a disk
    the agent may write (not your home, which is read-only to it, nor /tmp, its own there) was moved aside by its turn
    (`mv ws ws.real`) and a copy left at its path, whose ledger the agent wrote: the next start trusted it (red team).
    Not the mount points already (the root, /home on autofs: binding an autofs could wait on it). The agent's working
    directory is found anew once every mount is made."""
    inside = workspace.resolve()
    found = {inside, *inside.parents, *(parent for place in places for parent in Path(place).absolute().parents)}
    found |= set(folders)
    mounted = set(_mount_points())  # not os.path.ismount: a btrfs subvolume is one to it, and was moved (red team)
    return sorted((p for p in found if p not in mounted), key=lambda p: len(p.parts))


def _root_folders() -> list[Path]:
    """Where the loop runs as root, the folders in / (not links, nor mount points already, which / being read-only
    leaves as they are): bound onto themselves before / is made read-only (see _HIDE), they stay writable."""
    if os.getuid() != 0:
        return []
    mounted = set(_mount_points())
    return sorted(p for p in Path("/").iterdir() if p.is_dir() and not p.is_symlink() and p not in mounted)


PID_NAMESPACE_INNER = ("unshare", "--user", "--map-current-user", "--mount")


@functools.cache
def pid_namespace() -> tuple[str, ...]:
    """The first of `_namespaces()` that can be made here, else nothing (the agent's process group is all that is
    killed)."""
    for way in _namespaces():
        try:
            if subprocess.run([*with_hidden(way, []), "true"], capture_output=True, timeout=30).returncode == 0:
                return way
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ()


def isolates_network() -> bool:
    """Whether the agent's namespace here has a network of its own, whose one way out is the loop's proxy."""
    return "--net" in pid_namespace()


def network_words(proxy: Path, env: Mapping[str, str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """What starts the way out of the agent's network (agents/forwarder.py, connecting to the loop's `proxy`
    socket), and the variables that send its connections there."""
    ends = egress.local_endpoints(env)
    port = egress.proxy_port(ends)
    words = (str(Path(forwarder.__file__).resolve()), str(proxy), str(port), ",".join(ends))
    return words, egress.turn_environment(port, ends)


def can_pin() -> bool:
    """Whether the agent's namespace here pins what it is given to (`_HIDE`: the folders, the links on your path)."""
    return _HIDE in pid_namespace()


def entered(
    workspace: Path, env: Mapping[str, str], named: Path | None = None, proxy: Path | None = None
) -> tuple[tuple[str, ...], dict[str, str]]:
    """The words that start a command in the agent's namespaces (none where none can be made) and behind its fence
    (agents/fence.py: the TCP ports, abstract sockets and signals it may reach), each link and folder on `named`, the
    path you named the workspace by (Workspace.named), pinned there (`on_the_way`), and its environment: `env` without
    the token of the loop's Ray, if it has one, nor your SSH agent, with its tools' caches (XDG_CACHE_HOME, npm's) in
    its own files. Where the namespaces have a network of their own, its way out to the loop's `proxy` socket
    (agents/egress.py), and the variables that send its connections there (none: no way out). ValueError for an
    AUTORESEARCH_AGENT_PORTS that lists something other than ports, or an AUTORESEARCH_AGENT_WRITABLE something other
    than folders in your home."""
    own = workspace / AGENT_FILES  # a coding agent's history and caches
    if (workspace / STATE).is_dir() and not (workspace / STATE).is_symlink() and not own.is_symlink():
        with contextlib.suppress(OSError):  # where its tools cache what they fetch (`npx`, `pip`): home is read-only
            (own / CACHE).mkdir(parents=True, exist_ok=True)
    writable = [own.resolve()] if own.is_dir() and not own.is_symlink() else []
    caches = {"XDG_CACHE_HOME": str(own / CACHE), "npm_config_cache": str(own / CACHE / "npm")} if writable else {}
    # Its runtime folder (XDG_RUNTIME_DIR) and the system bus's: an empty tmpfs each (_HIDE), in a read-only /run
    runtime = [Path(RUNTIME_FOLDERS[0]) / str(os.getuid()), Path(RUNTIME_FOLDERS[1])]
    writable += [p for p in runtime if p.is_dir() and not p.is_symlink()]
    hidden, read_only = hidden_places(workspace, env), read_only_places(workspace, env)
    hidden, read_only = hidden + other_paths(hidden, workspace), read_only + other_paths(read_only, workspace)
    inside = workspace.resolve()
    if any(holds(place, inside) for place in read_only):  # in your home: the agent's to write, its state not
        writable.insert(0, inside)
    writable += agent_writable(env, workspace)
    if (temporary := Path("/var/tmp")).is_dir() and not temporary.is_symlink() and Path("/var") in read_only:
        writable.append(temporary)  # its temporary files, in a read-only /var (with the sockets there still hidden)
    links, folders = on_the_way(named) if named is not None else ([], [])
    pinned = [*_root_folders(), *_above([*hidden, *read_only, *links], workspace, folders)]
    temporary = temporary_folders(env, workspace, writable, read_only) if temporary_unavailable() is None else []
    network, routed = network_words(proxy, env) if proxy is not None else ((), {})
    way = with_hidden(
        pid_namespace(), hidden, read_only, writable, list(dict.fromkeys(pinned)), temporary, links, network
    )
    env = {name: value for name, value in env.items() if name not in (AUTH_TOKEN, SSH_AGENT)} | caches | routed
    return (*way, *fence.launcher(env)), env
