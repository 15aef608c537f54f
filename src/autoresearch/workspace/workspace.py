"""An existing research workspace: its files, its git repository, its private state directory."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

from autoresearch.config.apparatus import CONFIG_NAME, Apparatus
from autoresearch.errors import AutoresearchError, ConfigError
from autoresearch.files import read_regular, write_text_atomic
from autoresearch.workspace.disk import disk_full_is_an_error
from autoresearch.workspace.git import Git

LOCK_PATIENCE_S = 0.5  # how long a loop waits for the workspace's lock before it says another process holds it

try:
    import fcntl
except ImportError:  # Windows: no locking
    fcntl = None

TRAIN_PY = "train.py"
# The largest train.py taken. The template is 17 KiB and a rich one a few times that; a larger one could carry
# weights trained elsewhere, off the budget, for the run to load (int8 weights of a small model fit in 4 MiB, the
# cap until 2026-12-02): at 256 KiB, about 260,000 int8 parameters, under a tenth of the template's smallest model.
MAX_TRAIN_PY_BYTES = 256 << 10
MAX_PROGRAM_BYTES = 4 << 20  # program.md goes into each of the agent's prompts: more than any model reads


def too_large(source: str) -> str | None:
    """Why `source` is too large to be a train.py, or None."""
    size = len(source.encode())
    if size <= MAX_TRAIN_PY_BYTES:
        return None
    return (
        f"train.py is {size >> 10} KiB, over the {MAX_TRAIN_PY_BYTES >> 10} KiB a train.py may be (the template is "
        "17 KiB): a file that large could carry weights trained outside the budget"
    )


class TrainPyUnreadable(AutoresearchError):
    """The working tree's train.py cannot be read as text."""

    def __init__(self, message: str):
        super().__init__(
            message,
            hint="`git checkout train.py` puts back the best's (remove what is in its place first), then make your "
            "change in it again",
        )


class WorkspaceMoved(AutoresearchError):
    """The workspace's folder is no longer at the path the loop opened it by: moved (`mv`) or deleted meanwhile."""

    def __init__(self, root: Path, again: str = "run `autoresearch run`"):
        """`again`: what resumes it, the command's (a `submit` for the loop one started, say)."""
        super().__init__(
            f"the workspace was moved or deleted while the loop ran: {root} is no longer the folder it started in, "
            "and nothing more is written there",
            hint=f"{again} in its new place: the experiment in flight is resumed there (a workspace deleted is not "
            "made again: its history went with it)",
        )


def folder_identity(path: Path) -> tuple[int, int] | None:
    """Which folder `path` names now (device, inode); None where nothing is there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def workspace_above(path: Path) -> Path | None:
    """The nearest folder above `path` that is a workspace (holds its autoresearch.json), or None."""
    return next((p for p in path.parents if (p / CONFIG_NAME).is_file()), None)


def named_path(root: Path) -> Path:
    """`root` as you named it, absolute, its links kept (`Workspace.named`): a relative one from the shell's logical
    working directory ($PWD, which keeps the link you `cd`'d through), where that names the working directory, else
    from the real one."""
    if root.is_absolute():
        return root
    logical = os.environ.get("PWD", "")
    with contextlib.suppress(OSError):
        if os.path.isabs(logical) and os.path.samefile(logical, "."):
            return Path(logical) / root
    return Path.cwd() / root


def _reaches(path: Path, folder: Path) -> bool:
    try:
        return os.path.samefile(path, folder)
    except OSError:
        return False


class Workspace:
    def __init__(self, root: Path):
        self.root = root.resolve()
        # The path you named it by, through links (`--workspace /data/current/ws`, or `cd` there): the loop works by
        # the real one, and an agent's namespace pins each link on this one (agents/namespace.py, `on_the_way`),
        # which the next start by the same words goes through.
        self.named = named_path(root)
        # That path as the kernel walks it, not as resolve() does: resolve() steps back out of a folder that is not
        # there (`/data/gone/../ws`), which a turn could then make, a link to its copy's (red team: the next start by
        # the same words opened the copy); and only what is there can be pinned.
        if self.root.is_dir() and not _reaches(self.named, self.root):
            raise ConfigError(
                f"{self.named} does not lead to {self.root} as the system follows it: a folder on it is not there, "
                "and `..` steps back out of it",
                hint=f"name the workspace by a path that is there (`--workspace {self.root}`)",
            )
        config = self.root / CONFIG_NAME
        if os.path.lexists(config) and not config.is_file():
            raise ConfigError(
                f"{config} is not a file (a folder, a FIFO or a broken link is in its place): it holds the workspace's "
                "settings",
                hint=f"move it away (`mv {CONFIG_NAME} {CONFIG_NAME}.away`), then `git checkout {CONFIG_NAME}` puts "
                "back the committed one",
            )
        if not config.is_file():
            above = workspace_above(self.root)
            raise ConfigError(
                f"{self.root} is not a research workspace (no {CONFIG_NAME})",
                hint=f"{above} is one: run this command there (`cd {above}`), or pass `--workspace {above}`"
                if above
                else "make one with `autoresearch init DIR`, then run this command inside it",
            )
        self.config_path = config
        self.apparatus = Apparatus.load(config)
        if (self.root / ".git").is_file() and not _turn_cut_short(self.root):
            raise _not_a_workspace_of_its_own(self.root)
        self.git = Git(self.root)
        if not self.git.is_repo():
            raise ConfigError(f"{self.root} is not a git repository", hint="make workspaces with `autoresearch init`")
        self.state = self.root / ".autoresearch"
        if os.path.lexists(self.state) and not self.state.is_dir():
            raise ConfigError(
                f"{self.state} is not a folder: it holds the loop's own state (its ledger, its runs)",
                hint="move it away (`mv .autoresearch .autoresearch.away`) and run the command again; without the "
                "ledger, `autoresearch rebuild-ledger` makes it again from results.tsv and git",
            )
        self.state.mkdir(exist_ok=True)
        self.identity = folder_identity(self.root)  # a `mv` of the folder meanwhile leaves its path to another

    def moved(self) -> bool:
        """Whether the workspace's path no longer names the folder opened (moved or deleted since)."""
        return folder_identity(self.root) != self.identity

    @property
    def train_py(self) -> Path:
        return self.root / TRAIN_PY

    def read_train_py(self) -> str:
        """The working tree's train.py, with its line endings made "\n"; TrainPyUnreadable where it is missing, no
        regular file (a folder; a FIFO, which a read would wait on for ever) or no UTF-8 text."""
        try:
            data = read_regular(self.train_py, None, follow=True)
        except FileNotFoundError:
            raise TrainPyUnreadable("train.py is missing") from None
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise TrainPyUnreadable("train.py is not a regular file (a folder or a FIFO is in its place)") from None
            raise TrainPyUnreadable(f"cannot read train.py: {exc.strerror}") from None
        try:
            return as_read(data.decode())
        except UnicodeDecodeError:
            raise TrainPyUnreadable("train.py is not UTF-8 text") from None

    def committed_train_py(self, commit: str = "HEAD") -> str:
        """train.py as committed at `commit`, read as `read_train_py` reads the file: with its line endings
        made "\n" (a train.py committed with CRLF is the same text the loop writes back with LF)."""
        return as_read(self.git.show(commit, TRAIN_PY))

    def write_train_py(self, source: str) -> None:
        """Whole or not at all: a full disk or a kill never leaves half a train.py for the next start to resume.
        One writer at a time (an flock on the state folder): `submit` and the loop it queues to wrote it at the same
        moment through the same temporary file, and one of them failed with a traceback."""
        with disk_full_is_an_error("writing train.py"), _one_writer(self.state):
            write_text_atomic(self.train_py, source, self.state / "train.py.tmp")

    def program(self) -> str:
        """program.md, the person's instructions to the agent ("" where there is none); ConfigError where it cannot be
        read as text: a folder, a FIFO (which a read would wait on for ever), bytes that are no UTF-8."""
        path = self.root / "program.md"
        try:
            data = read_regular(path, MAX_PROGRAM_BYTES, follow=True)
        except FileNotFoundError:
            return ""
        except OSError as exc:
            why = "it is not a regular file" if exc.errno == errno.EINVAL else exc.strerror
            raise _unreadable_program(path, why) from None
        except ValueError:
            raise _unreadable_program(path, f"it is over {MAX_PROGRAM_BYTES >> 20} MiB") from None
        try:
            return as_read(data.decode())
        except UnicodeDecodeError:
            raise _unreadable_program(path, "it is not UTF-8 text") from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Only one loop (or `try`) may work in a workspace at a time.

        The lock is an flock on the workspace directory itself, not on a file in it: a run (or a person) can
        delete a lock file, after which a second loop would lock a new one; the directory cannot go while
        the loop works in it without taking the whole workspace (and its git history) with it."""
        fd = self._lock_fd()
        if fd is None:  # no flock on Windows
            yield
            return
        try:
            if not _try_flock(fd, patience=LOCK_PATIENCE_S):
                raise AutoresearchError(
                    f"another autoresearch process is working in {self.root}", hint=self._holder_hint()
                )
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _holder_hint(self) -> str:
        """What to do about the loop that holds the lock: one `submit` started in the background has no terminal
        to press Ctrl-C in, so its process is named where the loop wrote it down (loop/activity.py)."""
        from autoresearch.loop.activity import read_session

        hint = "wait for it, or stop it (Ctrl-C) first; `autoresearch status` shows what it runs"
        if (session := read_session(self.state)) is not None:
            hint += f"; it is process {session.pid} (`kill {session.pid}` stops it as Ctrl-C does, losing nothing)"
        return hint

    def is_locked(self) -> bool:
        """Whether a loop (or `try`) holds the workspace's lock now."""
        fd = self._lock_fd()
        if fd is None:
            return False
        try:  # shared: two such probes at once (two `status`) do not take each other for a loop
            return not _try_flock(fd, shared=True)
        finally:
            os.close(fd)

    def _lock_fd(self) -> int | None:
        if fcntl is None:
            return None
        return os.open(self.root, os.O_RDONLY)  # not inherited by training runs (Python's default)


@contextlib.contextmanager
def _one_writer(folder: Path) -> Iterator[None]:
    """Holds an flock on `folder` (released on close, or when the process dies) while the body runs."""
    if fcntl is None:  # Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _try_flock(fd: int, patience: float = 0.0, shared: bool = False) -> bool:
    """Take the lock if it is free now or within `patience` seconds (a `status`, `wait` or `report` probing
    whether a loop runs holds it for an instant: a loop starting then is not refused for it)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        else:
            return True


def _turn_cut_short(root: Path) -> bool:
    """Whether an agent's turn was cut short here (its snapshot kept): a .git it made a file is then the turn's doing,
    put back by the next start (Recovery.recover_workspace), not a worktree's."""
    from autoresearch.loop.recovery import TURN_SNAPSHOT

    return (root / ".autoresearch" / TURN_SNAPSHOT).is_file()


def _not_a_workspace_of_its_own(root: Path) -> ConfigError:
    """`.git` a file: a checkout of another repository's (`git worktree add`, a submodule), whose refs, hooks and
    objects live there, shared with the workspace it came from (its refs/autoresearch/discarded/<n> a second ledger
    would reuse), and which the loop's checks of .git cannot take for its own."""
    try:
        gitdir = (root / (root / ".git").read_text(errors="replace").partition("gitdir:")[2].strip()).resolve()
    except OSError:
        gitdir = Path()
    if gitdir.parent.name == "worktrees" and gitdir.parent.parent.name == ".git":
        source = gitdir.parents[2]
        return ConfigError(
            f"{root} is a git worktree of the workspace {source} (`git worktree add`), not a workspace of its own: "
            "it shares that workspace's git history, which the loop keeps for one ledger only",
            hint=f"run autoresearch in {source} itself, or copy it whole for a second workspace (`cp -a {source} "
            f"NEW_DIR`, then run there); `git worktree remove {root}` removes this one",
        )
    return ConfigError(
        f"{root} is not a workspace of its own: its .git is a file naming a repository elsewhere (a git worktree "
        "or a submodule), not the workspace's own git folder",
        hint="run autoresearch in the workspace it came from, or copy that one whole (`cp -a WORKSPACE NEW_DIR`); "
        "make a new one with `autoresearch init DIR`",
    )


def _unreadable_program(path: Path, why: str) -> ConfigError:
    return ConfigError(
        f"cannot read {path}: {why}",
        hint="program.md holds your instructions to the agent: make it a UTF-8 text file (`git checkout program.md` "
        "puts back the one init wrote), or remove it to run without one",
    )


def as_read(text: str) -> str:
    """`text` with its line endings made "\n", as Python reads a file in text mode."""
    return text.replace("\r\n", "\n").replace("\r", "\n")
