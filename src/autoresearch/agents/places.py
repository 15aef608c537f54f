"""What a shell agent's turn may not see, and what it may not write: the places agents/namespace.py hides from it, makes
read-only to it, or lets it write after all (README, "What is covered")."""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from autoresearch.agents.server_sockets import server_sockets
from autoresearch.evaluator import compile_cache, shown
from autoresearch.evaluator.hidden import workspace_data_places
from autoresearch.files import holds
from autoresearch.loop.ray_cluster import hidden_from_agents

SSH_AGENT = "SSH_AUTH_SOCK"
STATE = ".autoresearch"  # the workspace's private state (workspace.Workspace.state)
WRITABLE_ENV = "AUTORESEARCH_AGENT_WRITABLE"  # folders of your home an agent may write after all, ":"-separated
FUSE_DEVICE = "/dev/fuse"

# The temporary folders the agent gets a copy of its own of: it reads what is there, and what it writes there is gone at
# the end of its turn. Shared, a file it left there was loaded later by a program of yours that looks there (Inductor's
# default cache; a `python` started in /tmp imports what lies beside it).
TEMPORARY = ("/tmp", "/var/tmp", "/dev/shm")


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
