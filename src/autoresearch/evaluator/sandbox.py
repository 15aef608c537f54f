"""Confinement for the untrusted training process, built on bubblewrap (`bwrap`).

The confined process sees, read-only, only what it needs of the filesystem (evaluator/shown.py: the system's
programs and libraries, a few files of /etc, /sys, and its Python: the interpreter's installation and what is
on sys.path), not the home directory, /var/tmp, /opt and the like, where an agent could leave weights trained
off the budget. Within what it sees, the `hidden` directories (prepared data with its validation shard, the
workspace with its ledger, a Hugging Face cache, a local corpus) appear empty. It can write only its `workdir`
(also its cwd), the `writable` directories and a private `/tmp`. It gets a fresh `/dev` plus the NVIDIA device
nodes of its own GPUs (so CUDA works, and no other worker's GPU can be opened: gpu_nodes.py), its own `/proc`,
and a read-only `/sys`. It runs in new PID, network, IPC, UTS and cgroup namespaces with no capabilities: it
cannot see, signal or read the memory or environment of the loop and the evaluator, cannot reach any network
(its loopback is its own), cannot undo the mounts that hide the data, and everything it starts dies with it.
Its environment carries no secrets. Why: train.py is written by an LLM agent and is scored by trusted code; it
must not be able to read the validation data or weights trained off the budget, edit the record of past runs,
talk to the scorer other than through the socket it is handed, or leave anything running after its budget.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoresearch import switches
from autoresearch.errors import AutoresearchError
from autoresearch.evaluator import gpu_nodes, memory, promises, run_group, run_user, syscalls, tasks
from autoresearch.evaluator import shown as shown_paths
from autoresearch.evaluator.cores import runs_train_on_cpu
from autoresearch.evaluator.run_env import (
    PRIVATE_TMP,
    SECRET_NAME,
    box_environment,
    confined_environment,
    lies_inside,
    scrubbed_env,
)
from autoresearch.files import absolute_entries, program_path

# Where credentials usually live in a home directory: hidden from train.py (files are replaced by an empty one)
# where what is shown lies in the home, as a Python installed there (evaluator/shown.py shows no home otherwise).
CREDENTIAL_DIRS = (".ssh", ".aws", ".azure", ".gnupg", ".docker", ".kube", ".config", ".huggingface",
                   ".cache/huggingface", ".password-store", ".local/share/keyrings")  # fmt: skip
CREDENTIAL_FILES = (".netrc", ".npmrc", ".pypirc", ".git-credentials", ".gitconfig", ".bash_history",
                    ".zsh_history", ".python_history")  # fmt: skip
SYSTEM_SECRET_FILES = ("/etc/shadow", "/etc/gshadow")
# The session and system buses' sockets: through them a run could have work started outside its sandbox.
SYSTEM_SOCKET_DIRS = ("/run/user", "/run/dbus")
SWITCH_ENV = switches.SANDBOX
BWRAP_ENV = "AUTORESEARCH_BWRAP"  # bubblewrap's path, as the loop found it (`bwrap`): set in `evaluator_env`
_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap) and allow "
    "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04+ also "
    "kernel.apparmor_restrict_unprivileged_userns=0); in a container, its seccomp profile must allow them"
)


@dataclass(frozen=True)
class View:
    """What a confined process sees besides the read-only root and its workdir (`command`'s arguments)."""

    hidden: Sequence[Path] = ()  # empty inside (a file: unreadable)
    readable: Sequence[Path] = ()  # read-only, wherever they are
    binds: Sequence[tuple[Path, Path]] = ()  # (outside, inside): writable, at another path
    # Its GPUs' device nodes. Not where it trains on the CPU: the CPU clock counts no GPU's work, and a run given
    # CUDA_VISIBLE_DEVICES="" (CPU workers) was bound every node, to train on any GPU of the machine for free.
    gpu: bool = True


class SandboxUnavailable(AutoresearchError):
    """bubblewrap is missing or cannot create its namespaces here, so train.py cannot be confined."""

    def __init__(self, reason: str):
        super().__init__(f"cannot confine train.py: {reason}", hint=_HINT)


def _search_paths_absolute(env: dict[str, str]) -> dict[str, str]:
    """`env` with only the absolute entries of PATH and PYTHONPATH, for a trusted process we start: a relative one
    ('.', an empty one, which `export PYTHONPATH=$PYTHONPATH:/x` leaves where it was unset) is the working directory,
    often the workspace, where an agent writes, and an evaluator started during its turn (another worker's) imported
    the `autoresearch` it left there (red team)."""
    for name in ("PATH", "PYTHONPATH"):
        if name in env:
            env[name] = os.pathsep.join(absolute_entries(env[name]))
    return env


def evaluator_env(env: Mapping[str, str]) -> dict[str, str]:
    """What the evaluator process is started with: the experiment is forked from it, and a forked process keeps
    its parent's memory, environment block included. So: what train.py may see, our settings, and the paths
    of the Hugging Face cache (to hide it: every variable that can place it); no secret, nothing off the allow-list."""
    places = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_XET_CACHE", "XDG_CACHE_HOME")
    ours = {name: value for name, value in env.items() if name.startswith("AUTORESEARCH_") or name in places}
    evaluator = _search_paths_absolute(
        {**scrubbed_env(env), **{k: v for k, v in ours.items() if not SECRET_NAME.search(k)}}
    )
    if found := bwrap():  # as the loop found it, before any agent ran
        evaluator[BWRAP_ENV] = found
    # The run's share of memory as this process finds it, never each evaluator: one that could not read the machine's
    # memory at that moment (/proc/meminfo) took a share of none, and its run held what it liked under a loop that had
    # promised a memory group (red team).
    evaluator[memory.MEMORY_ENV] = str(memory.run_memory(env))
    evaluator[promises.ENV] = promises.said(can_promise(evaluator))  # as this process finds them, never each evaluator
    # Read once, when torch loads, and inherited by the fork. Asking whether a GPU exists does not start CUDA
    # (a CUDA context does not survive a fork). On a CPU, OpenMP's threads that wait sleep instead of spinning:
    # spinning burns CPU time, which the CPU clock counts, the more so the busier the machine. (Not where a GPU
    # trains: there is no CPU clock to protect, and waking sleeping threads only adds latency.)
    evaluator["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    if runs_train_on_cpu(env):
        evaluator.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return evaluator


# `python -m MODULE ARGS...` without the working directory on sys.path: -m puts it first, for the process's whole
# life, and the loop's is often the workspace, where an agent (a turn overlapping other workers' runs, `submit`'s
# at any time) could leave an `autoresearch` package or a `ray.py` of its own for a trusted process started or
# importing meanwhile. (-P does the same from Python 3.11 on.)
_RUN_MODULE = (
    "import sys; del sys.path[0]; import runpy; runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)


def module_command(python: str, module: str) -> list[str]:
    """The command line that runs `module` as `python -m` does, but imports nothing from the working directory."""
    return [python, "-c", _RUN_MODULE, module]


def python_needs(path: Path) -> bool:
    """Whether Python inside the sandbox needs `path` to import anything: it is one of the directories it imports
    from, or lies inside one (hiding it would break every run; a directory that holds them can be hidden). Their
    links followed: a venv reached through a link (`.venv -> /elsewhere/.venv`) is where its Python imports from
    (BROKE, fixed: a python-source corpus prepared from it, named by its real path, was hidden, and torch's lazy
    imports failed in every `python train.py`)."""
    paths = shown_paths.python_paths()
    return lies_inside(path, [*paths, *(p.resolve() for p in paths)])


def _reveals(path: Path, hidden: Sequence[Path]) -> bool:
    """Whether showing `path` would show a hidden directory (it is one, or holds one)."""
    return any(path == h or path in h.parents for h in hidden)


def _credentials(home: Path | None) -> tuple[list[Path], list[Path]]:
    """The credential (and bus socket) directories and files that exist: hidden inside the sandbox."""
    dirs, files = [Path(d) for d in SYSTEM_SOCKET_DIRS], [Path(f) for f in SYSTEM_SECRET_FILES]
    if home is not None:
        dirs += [home / d for d in CREDENTIAL_DIRS]
        files += [home / f for f in CREDENTIAL_FILES]
    dirs = [d.resolve() for d in dirs if d.is_dir()]
    files = [f.resolve() for f in files if f.is_file()]
    return dirs, files


def command(
    argv: Sequence[str],
    *,
    workdir: Path,
    writable: Sequence[Path] = (),
    readable: Sequence[Path] = (),
    binds: Sequence[tuple[Path, Path]] = (),
    hidden: Sequence[Path] = (),
    env: Mapping[str, str],
    gpu: bool = True,
    seccomp_fd: int | None = None,
    own_init: bool = False,
    userns_fd: int = 0,
) -> list[str]:
    """The argv that runs `argv` confined, in `workdir`, with `box_environment(env, ...)` (see the module
    docstring), under the seccomp filter in `seccomp_fd` if given (the caller passes the fd on). The `readable`
    directories are shown read-only even where they lie in the private /tmp or a hidden directory; each of
    `binds` (outside, inside) shows a writable directory at another path. `own_init`: the command is the PID
    namespace's init (pid 1), where bwrap's would be, and reaps what is orphaned there itself. `userns_fd` (0:
    none): the user namespace it is made in (evaluator/run_user.py; the caller passes the fd on), where the run
    becomes its own user: the capabilities to do so are left to the command, which must drop them, and every folder
    on the way to what it is shown is made 0755 (bwrap makes them 0700, for root alone)."""
    workdir = _directory(workdir)
    writable = [_directory(path) for path in writable]
    hidden = [_real(path) for path in hidden]
    for path in hidden:
        if path in (workdir, *writable):
            raise ValueError(f"{path} cannot be both hidden and writable")
    # Deny by default: the root is an empty tmpfs (bwrap's), made read-only once everything is mounted on it;
    # shown in it are the system's directories and files and what the run's Python needs (shown.py), each at its
    # own path, and the `readable` directories. (Not a Python path that is itself hidden, the workspace on
    # PYTHONPATH, say: shown after its tmpfs, it would show what that hides. One inside a hidden directory, a venv
    # in the workspace, is shown: Python needs it.)
    hidden_files = [path for path in hidden if path.is_file()]  # a one-file corpus
    hidden = [path for path in hidden if path.is_dir()]  # a missing directory has nothing to hide
    home = env.get("HOME")
    secret_dirs, secret_files = _credentials(Path(home) if home else None)
    hidden += [d for d in secret_dirs if d not in hidden and not lies_inside(workdir, [d])]
    hidden += [d for d in shown_paths.unused_site_packages() if d not in hidden and not lies_inside(workdir, [d])]
    shown = [path for path in shown_paths.readable(env) if path not in (PRIVATE_TMP, *hidden)]
    for path in map(_directory, readable):
        if _reveals(path, hidden):
            raise ValueError(f"{path} cannot be shown: it holds a hidden directory")
        shown.append(path)
    system = shown_paths.system()
    # What is to be hidden needs hiding only where something shown holds it (a venv's folder in the home, say) or
    # in the private /tmp (else the run could write there at its path, as if in it): a directory gets an empty
    # read-only tmpfs, a file is masked by /dev/null, bound nodev (unreadable), unless a hidden directory or the
    # private /tmp already holds it.
    visible = [*shown, *(path for path in system if not path.is_symlink())]
    hidden = [path for path in hidden if lies_inside(path, [*visible, PRIVATE_TMP])]
    masked_files = [path for path in (*secret_files, *hidden_files) if lies_inside(path, visible)]
    masked_files = [path for path in masked_files if not lies_inside(path, [PRIVATE_TMP, *hidden])]

    # A directory is mounted before anything inside it, so an inner mount stays visible: a hidden directory inside
    # a Python path, the workdir of a run inside the hidden workspace, a venv under /tmp inside the private /tmp.
    # Sorting by depth (stable) does it.
    mounts = [(path, _system_mount(path)) for path in system]
    mounts += [(PRIVATE_TMP, [*(["--perms", "01777"] if userns_fd else []), "--tmpfs", str(PRIVATE_TMP)])]
    mounts += [(path, ["--tmpfs", str(path)]) for path in hidden]
    mounts += [(path, ["--ro-bind", str(path), str(path)]) for path in shown]
    links = shown_paths.links(env, visible)
    mounts += [(path, ["--symlink", target, str(path)]) for path, target in links if not lies_inside(path, hidden)]
    mounts += [(path, ["--bind", str(path), str(path)]) for path in (workdir, *writable)]
    mounts += [(inside, ["--bind", str(_directory(outside)), str(inside)]) for outside, inside in binds]
    if userns_fd:  # the folders bwrap would make on the way to each (not those a bind shows)
        on_the_way = {parent for path, _ in mounts for parent in path.parents} - {Path("/"), *(p for p, _ in mounts)}
        mounts += [(path, ["--perms", "0755", "--dir", str(path)]) for path in on_the_way if _made(path, mounts)]
    mounts.sort(key=lambda mount: len(mount[0].parts))
    # Last, once bwrap has made the mount points inside them: the empty hidden directories must not be writable.
    read_only = [option for path in hidden for option in ("--remount-ro", str(path))]
    masked = [option for path in masked_files for option in ("--ro-bind", "/dev/null", str(path))]

    if gpu:  # the driver's table read, and each GPU's node tried, once
        nodes = gpu_nodes.run_nodes(env)
        box_env, devices = confined_environment(env, workdir, writable, nodes), [*nodes.paths, "/dev/dri"]
    else:
        box_env, devices = box_environment(env, workdir, writable), []
    return [
        bwrap() or "bwrap",
        # New namespaces: its own PID tree (it sees and signals nothing outside, and the death of its init kills
        # everything it started), no network, its own IPC, hostname and cgroup view. A user namespace where one
        # can be made, which is what lets an unprivileged user create the others; as root bwrap makes one too.
        *(["--userns", str(userns_fd)] if userns_fd else ["--unshare-user-try"]),
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        # Run as root, bwrap leaves the command every capability in its user namespace, enough to unmount the
        # tmpfs over a hidden directory or remount / writable: drop them all.
        "--cap-drop",
        "ALL",
        # To become the run's own user, then drop them all (joining.drop_privileges; harness/boot.py).
        *(["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"] if userns_fd else []),
        # SIGKILL to bwrap's init in the namespace when bwrap dies. bwrap exits as soon as the command does, but its
        # init keeps reaping until no process is left, so this is also what kills a daemon the command left behind
        # (the init dies, the kernel kills the rest of the PID namespace). And when the evaluator dies, so does all.
        "--die-with-parent",
        *(["--as-pid-1"] if own_init else []),
        # setsid(): the run cannot push input into our terminal (TIOCSTI).
        "--new-session",
        # A fresh /dev with the GPU nodes over it (the rest of the view is in `mounts`, below).
        "--dev",
        "/dev",
        # Its shared memory (multiprocessing's, the compiler's workers') writable by the run's own user too
        *(["--perms", "01777", "--tmpfs", "/dev/shm"] if userns_fd else []),
        *[option for node in devices for option in ("--dev-bind-try", node, node)],
        "--proc",
        "/proc",
        # Its /proc/sys is the machine's: read-only, or a run as root could set sysctls (a core_pattern that
        # runs a program outside every namespace, say).
        "--ro-bind",
        "/proc/sys",
        "/proc/sys",
        *[option for _, options in mounts for option in options],
        *read_only,
        *masked,
        "--remount-ro",  # the empty root itself, with the mount points made in it
        "/",
        *(["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []),
        "--chdir",
        str(workdir),
        "--clearenv",
        *[option for name, value in box_env.items() for option in ("--setenv", name, value)],
        "--",
        *argv,
    ]


def _made(path: Path, mounts: list[tuple[Path, list[str]]]) -> bool:
    """Whether bwrap makes the folder `path` (its root's tmpfs, or a tmpfs mounted on the way holds it), rather than
    a bind showing it as it is."""
    holding = [(mount, options) for mount, options in mounts if mount in path.parents]
    return not holding or "--tmpfs" in max(holding, key=lambda held: len(held[0].parts))[1]


def _system_mount(path: Path) -> list[str]:
    """A system directory or file at its own path: a link (merged /usr: /bin -> usr/bin) as the same link."""
    if path.is_symlink() and path.parent == Path("/"):
        return ["--symlink", os.readlink(path), str(path)]
    return ["--ro-bind", str(path), str(path)]


@functools.cache
def bwrap() -> str | None:
    """bubblewrap's path: the loop's (BWRAP_ENV: found once, before any agent ran, as git and unshare are), else
    found on PATH now. A folder of PATH is read-only in an agent's namespace, but the folder that holds it is not, and
    a mount below does not stop its rename: `mv ~/.local ~/.local.old; mkdir -p ~/.local/bin` and a `bwrap` there
    was run by an evaluator started during the turn (another worker's), as you, unconfined (red team)."""
    return os.environ.get(BWRAP_ENV) or program_path("bwrap")


@functools.cache
def unavailable_reason() -> str | None:
    """None when confinement works on this machine; else one line saying why. Probes once per process."""
    if switches.switched(SWITCH_ENV):
        return f"confinement is switched off (${SWITCH_ENV}=off)"
    return probe()


def evaluators_reason() -> str | None:
    """`unavailable_reason` as an evaluator takes it: None, without a probe of its own, where the process that started
    it promised confinement (evaluator/promises.py)."""
    if promises.SANDBOX in promises.promised() and not switches.switched(SWITCH_ENV):
        return None
    return unavailable_reason()


def can_promise(env: Mapping[str, str]) -> set[str]:
    """What this process can give every run of evaluators started with `env` (evaluator/promises.py)."""
    given: set[str] = set()
    if unavailable_reason() is None:
        given.add(promises.SANDBOX)
        if anchors_reason() is None:
            given.add(promises.ANCHOR)
        if not runs_train_on_cpu(env) and gpu_nodes.own_nodes(env).own_only:
            given.add(promises.GPUS)
    if runs_as_own_user():
        given.add(promises.USER)
    if syscalls.unavailable_reason() is None:
        given.add(promises.FILTER)
    return given | run_group.limitable(run_limits(env))


def run_limits(env: Mapping[str, str] = os.environ) -> dict[str, dict[str, str]]:
    """The limits of the cgroup of a run whose evaluator has `env` (evaluator/run_group.py): its cap of tasks and its
    share of memory, by controller."""
    return {**tasks.limits(tasks.run_tasks(env)), **memory.limits(memory.run_memory(env))}


def runs_capped(most: int) -> bool:
    """Whether every run started by this process gets its cap of `most` tasks (evaluator/tasks.py; 0: none is wanted,
    and none is missing): by RLIMIT_NPROC in its own user namespace, or by a group this process can make, or as a user
    of its own (evaluator/run_user.py)."""
    if most == 0 or (tasks.by_limit() and unavailable_reason() is None and own_user_namespace()):
        return True
    if "pids" in run_group.limitable(tasks.limits(most)):
        return True
    return runs_as_own_user()


def runs_as_own_user() -> bool:
    """Whether this process's runs are each a user of its own (evaluator/run_user.py): confined, under a loop run as
    root that wants it, where the machine allows it."""
    return unavailable_reason() is None and run_user.wanted() and users_reason() is None


def _twice(probe: Callable[[], str | None]) -> str | None:
    """What `probe` says, asked again where it said no: a probe that failed for a moment (timed out on a loaded machine,
    short of processes) took what it stands for from every run of the loop, which went on without it (CI)."""
    return probe() and probe()


@functools.cache
def users_reason() -> str | None:
    """None where a run can be made a user of its own in its sandbox here (evaluator/run_user.py), as the experiment
    is: Python started, every privilege dropped as that user, the harness imported; else why not (asked once, twice
    where it fails)."""
    return _twice(_users_probe)


def _users_probe() -> str | None:
    ran = as_run_user("import os, autoresearch.harness.boot; print(os.getuid())")
    if isinstance(ran, str):
        return ran
    if ran.stdout.split() != [str(run_user.RUN_UID)]:
        return f"a run could not be made a user of its own: it said {ran.stdout.strip()[-200:]!r}"
    return None


def as_run_user(code: str, timeout: float = 30.0) -> subprocess.CompletedProcess | str:
    """Python `code` run in a sandbox of its own as a run that is a user of its own is (evaluator/run_user.py): this
    process's search paths, every privilege dropped as that user first, for `timeout` seconds at most; or one line
    saying why it could not be."""
    try:
        userns = run_user.namespace()
    except OSError as exc:
        return str(exc)
    try:
        drop = f"from autoresearch.evaluator import joining; joining.drop_privileges({run_user.RUN_UID})\n"
        env = _search_paths_absolute(dict(os.environ))  # where autoresearch is found by PYTHONPATH alone
        return _in_sandbox([sys.executable, "-c", drop + code], userns=userns, env=env, timeout=timeout)
    finally:
        os.close(userns)


@functools.cache
def anchors_reason() -> str | None:
    """None where a run can be forked into a sandbox around an init of ours (`--as-pid-1`) here, as each forked run
    is (evaluator/anchor_probe.py); else why not (asked once, twice where it fails)."""
    return _twice(_anchors_probe)


def _anchors_probe() -> str | None:
    if (why := probe(own_init=True)) is not None:
        return why
    env = _search_paths_absolute(dict(os.environ))
    argv = module_command(sys.executable, "autoresearch.evaluator.anchor_probe")
    try:
        probed = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"a run could not be forked into a sandbox: {error}"
    if probed.returncode != 0:
        said = (probed.stdout + probed.stderr).strip().splitlines()[-1:] or [f"exit code {probed.returncode}"]
        return f"a run cannot be forked into a sandbox here: {said[0]}"
    return None


def probe(own_init: bool = False) -> str | None:
    """Whether bubblewrap makes a sandbox here now (`own_init`: with the command as its init): None, or one line
    saying why not."""
    ran = _in_sandbox(["true"], own_init)
    return ran if isinstance(ran, str) else None


@functools.cache
def own_user_namespace() -> bool:
    """Whether a confined run is in a user namespace of its own here, where RLIMIT_NPROC counts its tasks alone
    (evaluator/tasks.py). A setuid bubblewrap makes none where unprivileged user namespaces are disabled: the run is
    then in the machine's, as the loop is, and the harness sets no such limit (harness/boot.py `cap_tasks`)."""
    ran = _in_sandbox(["cat", "/proc/self/uid_map"])
    return not isinstance(ran, str) and ran.stdout.split() != tasks.MACHINE_UID_MAP


def _in_sandbox(
    argv: list[str], own_init: bool = False, userns: int = 0, env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess | str:
    """`argv` run in a sandbox with the options a real run gets, including a workdir inside a hidden directory (in
    the user namespace `userns`, if given, the workdir that user's: evaluator/run_user.py), with `env` (default: a
    PATH alone), for `timeout` seconds at most; or one line saying why bubblewrap could not make it."""
    if bwrap() is None:
        return "bubblewrap (bwrap) is not installed or not on PATH"
    with tempfile.TemporaryDirectory(prefix="autoresearch-sandbox-probe-") as tmp:
        workdir = Path(tmp, "box")
        workdir.mkdir()
        if userns:
            run_user.give([workdir])
        env = env or {"PATH": os.defpath}
        argv = command(argv, workdir=workdir, hidden=[Path(tmp)], env=env, own_init=own_init, userns_fd=userns)
        try:
            fds = [userns] if userns else []
            ran = subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, pass_fds=fds
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"bwrap could not be run: {error}"
    if ran.returncode != 0:
        detail = ran.stderr.strip().splitlines()[-1:] or [f"exit code {ran.returncode}"]
        return f"bwrap cannot create the sandbox here: {detail[0]}"
    return ran


def ensure_available() -> None:
    """Raise SandboxUnavailable, saying why and what to do, unless confinement works on this machine."""
    reason = unavailable_reason()
    if reason is not None:
        raise SandboxUnavailable(reason)


def _real(path: Path) -> Path:
    # Mount on the real path: a symlinked directory would otherwise be hidden or bound somewhere unexpected.
    return Path(path).resolve()


def _directory(path: Path) -> Path:
    path = _real(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory: a confined run can only write existing directories")
    return path
