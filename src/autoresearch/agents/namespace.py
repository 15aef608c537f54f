"""The namespaces a shell agent's turn runs in: what it cannot see, what it cannot write, and that nothing it
starts outlives the turn (agents/command_agent.py runs the command in them; README, "What is covered")."""

from __future__ import annotations

import contextlib
import functools
import getpass
import os
import pwd
import re
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from autoresearch import anchor
from autoresearch.agents import fence
from autoresearch.agents.server_sockets import RUNTIME_FOLDERS, server_sockets
from autoresearch.evaluator import compile_cache, shown
from autoresearch.evaluator.hidden import workspace_data_places
from autoresearch.files import holds, program_path
from autoresearch.loop.ray_cluster import AUTH_TOKEN, hidden_from_agents

SSH_AGENT = "SSH_AUTH_SOCK"
STATE = ".autoresearch"  # the workspace's private state (workspace.Workspace.state)
AGENT_FILES = Path(STATE) / "agents"  # <workspace>/.autoresearch/agents/<name>/: a coding agent's own files, writable
CACHE = "cache"  # in AGENT_FILES: XDG_CACHE_HOME and npm's cache for every agent's tools
WRITABLE_ENV = "AUTORESEARCH_AGENT_WRITABLE"  # folders of your home an agent may write after all, ":"-separated

# Where a user namespace can be made (Linux, unless a container forbids it), the agent runs in a PID namespace of
# its own: when it ends the kernel kills everything it left, a process that left its group (setsid, a daemon)
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
# Where the agent may read but not write (made read-only, then locked as the hidden places are): the system, which
# is the agent's to write where the loop runs as root (/etc/ld.so.preload would load a library of its choice into
# the evaluator), /etc with it (cron, systemd units, the linker's configuration, Debian's sitecustomize), the
# cron and at spools (a job there runs outside the namespace), and what runs and the evaluator load
# (evaluator/shown.py): the Python environment, whose change would stop the loop after the turn (`pip install`
# fails at once instead), and the library directories. Each place is remounted by its own path, then every mount
# findmnt finds under it: a findmnt that cannot be run stops the agent (it listed nothing, and left all writable).
# And /run, which root's daemons read their configuration from too (written by an agent of a loop run as root,
# `/run/modprobe.d`: an `install` line ran a command as root when a module was asked for, which a socket of its
# family does; `/run/udev/rules.d`, `/run/systemd/system`: red team), but for the agent's runtime folder (`entered`).
# And /var but /var/tmp (`entered`): as root, a maintainer script it wrote in /var/lib/dpkg/info ran as root at the
# next `apt` (red team). The spools stay read-only where /var cannot be (it holds the workspace).
# And the kernel's settings: /sys (one of shown.SYSTEM_DIRS), and of the turn's own /proc what sets the machine, not
# the turn (KERNEL_SETTINGS). Writing them checks the file's owner only, and an agent of a loop run as root is root
# to them (its user namespace maps root to root): it moved itself into a cpuset of the runs' CPUs (/sys/fs/cgroup),
# took its own CPU offline to be moved onto theirs, sent the machine's interrupts and unbound kernel work there
# (/proc/irq, the workqueues' cpumask: red team, all), and could set /proc/sys/kernel/core_pattern to a program that
# the next crash of any process runs as root, outside every namespace, or reboot the machine (/proc/sysrq-trigger).
KERNEL_SETTINGS = ("/proc/sys", "/proc/irq", "/proc/bus", "/proc/fs", "/proc/sysrq-trigger")
SYSTEM_READ_ONLY = (*shown.SYSTEM_DIRS, "/etc", "/opt", "/boot", "/var", "/var/spool", "/run", *KERNEL_SETTINGS)


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
    plain = (*outer, "--map-current-user", *anchor.command([unshare, *PID_NAMESPACE_INNER[1:]]))
    return (hidden, plain) if mount and findmnt and mkdir else (plain,)


def with_hidden(
    way: tuple[str, ...],
    places: list[Path],
    read_only: list[Path] = (),
    writable: list[Path] = (),
    pinned: list[Path] = (),
    temporary: list[Temporary] = (),
    links: list[Path] = (),
) -> tuple[str, ...]:
    """`way` (one of `_namespaces()`, or none) with `places` hidden from the agent, `read_only` made read-only for
    it, `writable` (folders inside those) writable again, `pinned` folders and then `links` made mount points first,
    which cannot be renamed (nor a link replaced), and, before all that, the `temporary` folders made its own, where
    that way can do so."""
    if _HIDE not in way:
        return way
    own = [str(len(temporary)), f"size={max(1, TEMPORARY_MEMORY // max(1, len(temporary)))}%,nr_inodes=1m"]
    for folder in temporary:
        own += [str(folder.path), folder.mode, str(len(folder.real)), *map(str, folder.real)]
    lists = (pinned, links, places, read_only, writable)
    return (*way, *own, *(word for paths in lists for word in (str(len(paths)), *map(str, paths))))


# The temporary folders the agent gets a copy of its own of: it reads what is there, and what it writes there is gone at
# the end of its turn. Shared, a file it left there was loaded later by a program of yours that looks there (Inductor's
# default cache; a `python` started in /tmp imports what lies beside it).
TEMPORARY = ("/tmp", "/var/tmp", "/dev/shm")


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
    return sorted((p for p in found if not os.path.ismount(p)), key=lambda p: len(p.parts))


def _root_folders() -> list[Path]:
    """Where the loop runs as root, the folders in / (not links, nor mount points already, which / being read-only
    leaves as they are): bound onto themselves before / is made read-only (see _HIDE), they stay writable."""
    if os.getuid() != 0:
        return []
    return sorted(p for p in Path("/").iterdir() if p.is_dir() and not p.is_symlink() and not os.path.ismount(p))


def read_only_places(workspace: Path, env: Mapping[str, str]) -> list[Path]:
    """What the agent may not write (SYSTEM_READ_ONLY, what runs are shown: `shown.readable`, the experiments'
    shared compile cache, made here where missing, and the folders of PATH: `_program_folders`), outermost, real
    paths, but for a place that holds the workspace (the environment check still watches it). And your home
    (`_home`), even where it holds the workspace, which `entered` makes writable again: a `~/.bashrc` or a systemd
    user unit the agent wrote ran outside its turn, as you, at your next shell or login (red team). The shared compile
    cache is the loop's alone to write, and is checked only at the ends of a turn: a file planted there and taken
    away meanwhile left no trace, and a run of another worker that started in between linked it into its layer and
    loaded it. And the workspace's private state (`.autoresearch/`: the ledger, the runs' results and logs, the
    turn's snapshot, the inbox): the agent reads its runs' logs there, and writes nothing but a coding agent's own
    files (`entered`; what it planted there was put back after the turn, but meanwhile other workers' verdicts met
    it)."""
    places = set(_kept_read_only(workspace, env)) | set(_home(env))
    # The state last, even within a read-only place (the home): the workspace made writable again carries it.
    state = [s.resolve()] if (s := workspace / STATE).is_dir() and not s.is_symlink() else []
    return [*shown.outermost(places), *state]


def _kept_read_only(workspace: Path, env: Mapping[str, str]) -> list[Path]:
    """`read_only_places` but your home, each one: within the home they are one read-only mount with it, which a
    folder made writable again there (`agent_writable`) would carry."""
    inside = workspace.resolve()
    compiled = compile_cache.shared_root()
    compiled.mkdir(parents=True, exist_ok=True)
    places = {Path(p).resolve() for p in SYSTEM_READ_ONLY if os.path.exists(p)} | set(shown.readable(env))
    places |= {compiled.resolve(), *_would_be_read(), *_program_folders(env, workspace)}
    return sorted(p for p in places if not holds(p, inside))


NO_LOGIN = ("nologin", "false", "sync")  # the shells of users who do not log in (none: /bin/sh)


def _home(env: Mapping[str, str]) -> list[Path]:
    """Your homes, real paths, where each is a folder of its own (not /, nor a temporary folder): $HOME's, and
    yours in the user database, where your shell starts (a loop started with another HOME left it writable: `sudo`
    keeping HOME, a service's; red team). As root, every user's who has a login shell: /home/<them>, a folder of /
    bound onto itself, stayed writable, and their ~/.bashrc runs as them at their next login (red team)."""
    homes = {Path(env.get("HOME") or Path.home())}
    with contextlib.suppress(KeyError):
        homes.add(Path(pwd.getpwuid(os.getuid()).pw_dir))
    if os.getuid() == 0:  # not the system users' (their "home" is /dev, /bin, /var/mail: no one logs in there)
        homes |= {Path(user.pw_dir) for user in pwd.getpwall() if Path(user.pw_shell).name not in NO_LOGIN}
    found = {home.resolve() for home in homes if home.is_absolute()}
    return sorted(p for p in found if p.is_dir() and p != Path("/") and str(p) not in TEMPORARY)


def agent_writable(env: Mapping[str, str], workspace: Path | None = None) -> list[Path]:
    """The folders of your home that AUTORESEARCH_AGENT_WRITABLE lists (`~` expanded; made where missing), which an
    agent's turn may write after all (a CLI agent that keeps its sessions there: `~/.gemini`). ValueError for one
    that is not a folder in your home; for your home itself (`~`: your ~/.bashrc, red team); for one inside another
    listed one or inside the workspace, where the agent writes (it swapped it for a link to ~/.config, which the next
    turn took as listed: red team); and, given the workspace, for one that holds a place that stays read-only to the
    agent (`_kept_read_only`: `~/.local` holds ~/.local/bin, a folder of PATH, whose `git` the loop runs; red team)."""
    words = list(filter(None, env.get(WRITABLE_ENV, "").split(os.pathsep)))
    if not words:
        return []
    homes, found = _home(env), []
    listed = [Path(word).expanduser() for word in words]
    # Where the agent writes, as listed (normalized, links not followed: it plants them) and where that leads.
    writes = {Path(os.path.normpath(p)) for p in listed if p.is_absolute()} | {p.resolve() for p in listed}
    if workspace is not None:
        writes |= {Path(os.path.normpath(workspace.absolute())), workspace.resolve()}
    for word, path in zip(words, listed, strict=True):
        if not path.is_absolute() or not any(holds(home, path.resolve()) for home in homes):
            raise ValueError(f"{WRITABLE_ENV} lists {word!r}, which is not a folder in your home")
        given, real = Path(os.path.normpath(path)), path.resolve()
        if outer := next((w for w in sorted(writes) if w not in (given, real) and holds(w, given)), None):
            raise ValueError(
                f"{WRITABLE_ENV} lists {word!r}, which is inside another folder the agent writes ({outer})"
            )
        if any(holds(real, home) for home in homes):
            raise ValueError(f"{WRITABLE_ENV} lists {word!r}, which is your home itself, not a folder in it")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"{WRITABLE_ENV} lists {word!r}, which cannot be made a folder: {err.strerror}") from None
        found.append(path.resolve())
    kept = _kept_read_only(workspace, env) if workspace is not None else []
    for word, folder in zip(words, found, strict=True):
        if held := next((p for p in kept if holds(folder, p)), None):
            raise ValueError(f"{WRITABLE_ENV} lists {word!r}, which holds {held}, which stays read-only to the agent")
    return found


def _program_folders(env: Mapping[str, str], workspace: Path) -> list[Path]:
    """The folders of PATH an agent could put a program in that the loop would run as you (loop/environment.py:
    `program_folders`), made here where missing (empty, they change nothing): made in a turn, a `git` there ran in
    the loop's check of that very turn."""
    from autoresearch.loop.environment import program_folders

    folders = program_folders(env, workspace)
    for folder in folders:
        with contextlib.suppress(OSError):  # a folder under one not ours to write: nor an agent's
            folder.mkdir(parents=True, exist_ok=True)
    return [folder for folder in folders if folder.is_dir()]


def _would_be_read() -> list[Path]:
    """Where a Python started later (an evaluator of another worker, the loop's next start) reads code that is not
    there now (loop/environment.py: `would_be_paths`), where it can be made read-only: what exists of it, and the
    user's site-packages, made here where missing (empty, it changes nothing Python does). Made in a turn, a .pth
    file there ran in every Python started meanwhile, and taken away before its end, left the check nothing to see."""
    import site

    from autoresearch.loop.environment import would_be_paths

    if site.ENABLE_USER_SITE:
        user_site = Path(site.getusersitepackages())
        with contextlib.suppress(OSError):  # a home not of this user's to write: nor of an agent's
            user_site.mkdir(parents=True, exist_ok=True)
    return [path.resolve() for path in would_be_paths() if path.exists()]


PID_NAMESPACE_INNER = ("unshare", "--user", "--map-current-user", "--mount")
FUSE_DEVICE = "/dev/fuse"


def hidden_places(workspace: Path, env: Mapping[str, str]) -> list[Path]:
    """What an agent's turn is not shown: the data (evaluator/hidden.py), Ray's folder and token files (a task
    sent to the loop's Ray runs outside: loop/ray_cluster.py), your SSH keys and agent and your X display's cookie
    (`_login_places`), the sockets of servers that run what they are sent (agents/server_sockets.py), and the
    folder of the evaluators' own compiler caches (made here where missing, so that what is made there later is
    hidden too): an evaluator runs what its compilers find there (evaluator/compile_cache.py), and another
    worker's evaluator may be compiling while the agent works. So is Inductor's default cache in /tmp, for your
    own torch.compile later (`_inductor_defaults`). And /dev/fuse (FUSE_DEVICE): a turn mounted a file system of its
    own, served by a process of its own that never answered, and the process that then asked it stayed for good,
    past SIGKILL and the turn's end, holding what it held (red team)."""
    caches = compile_cache.evaluator_dir()
    caches.mkdir(parents=True, exist_ok=True)
    inside = workspace.resolve()
    held = [p for p in (caches, *_inductor_defaults()) if not holds(p, inside)]
    places = [
        *workspace_data_places(workspace),
        *hidden_from_agents(env),
        *_login_places(env),
        *server_sockets(env, workspace),
        *([Path(FUSE_DEVICE)] if os.path.exists(FUSE_DEVICE) else []),
    ]
    return [*places, *held]


def _inductor_defaults() -> list[Path]:
    """Inductor's default caches, in the temporary folders (`/tmp/torchinductor_<you>`, torch's
    `default_cache_dir`), made here where missing: the agent writes /tmp, and a torch.compile of yours outside the
    loop, later, imports a generated module it finds already written there and unpickles its graph cache's entries
    (red team). Hidden, the agent has an empty one of its own for its turn."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid_{os.getuid()}"
    name = "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user)
    found = []
    for folder in dict.fromkeys((Path("/tmp"), Path(tempfile.gettempdir()))):
        cache = folder / name
        with contextlib.suppress(OSError):  # a temporary folder not ours to write: nor the agent's
            cache.mkdir(mode=0o700, exist_ok=True)
        if cache.is_dir() and not cache.is_symlink():
            found.append(cache)
    return found


def _login_places(env: Mapping[str, str]) -> list[Path]:
    """Your SSH keys and your SSH agent's socket: with them `ssh localhost` (where your key logs you in) would run a
    shell outside the agent's namespace, where the data can be read and nothing ends with its turn. And your X
    display's cookie (`~/.Xauthority`, `$XAUTHORITY`): X11's abstract socket stays in reach (README), and with the
    cookie `xdotool type` would type a command into a terminal of yours. Those of every home of yours (`_home`): as
    root, every user's who logs in, whose key logs into their account (red team)."""
    homes = [Path(env.get("HOME") or Path.home()), *_home(env)]
    places = [
        *(home / name for home in homes for name in (".ssh", ".Xauthority")),
        *(Path(env[name]) for name in (SSH_AGENT, "XAUTHORITY") if env.get(name)),
    ]
    found = {p.resolve(): p.absolute() for p in reversed(places) if p.exists()}  # once each, as first named
    return list(reversed(found.values()))


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


def can_pin() -> bool:
    """Whether the agent's namespace here pins what it is given to (`_HIDE`: the folders, the links on your path)."""
    return _HIDE in pid_namespace()


def entered(
    workspace: Path, env: Mapping[str, str], named: Path | None = None
) -> tuple[tuple[str, ...], dict[str, str]]:
    """The words that start a command in the agent's namespaces (none where none can be made) and behind its fence
    (agents/fence.py: the TCP ports, abstract sockets and signals it may reach), each link and folder on `named`, the
    path you named the workspace by (Workspace.named), pinned there (`on_the_way`), and its environment: `env` without
    the token of the loop's Ray, if it has one, nor your SSH agent, with its tools' caches (XDG_CACHE_HOME, npm's) in
    its own files. ValueError for an AUTORESEARCH_AGENT_PORTS that lists something other than ports, or an
    AUTORESEARCH_AGENT_WRITABLE something other than folders in your home."""
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
    way = with_hidden(pid_namespace(), hidden, read_only, writable, list(dict.fromkeys(pinned)), temporary, links)
    env = {name: value for name, value in env.items() if name not in (AUTH_TOKEN, SSH_AGENT)} | caches
    return (*way, *fence.launcher(env)), env
