"""The few git operations a research workspace needs, through the git command line.

Every command runs with hooks and the file-system monitor switched off: a training run or an agent may
have planted a hook or a `core.fsmonitor` command, and the loop's own git calls must never run them.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import BinaryIO

from autoresearch.errors import AutoresearchError
from autoresearch.files import entries, program_path
from autoresearch.workspace.disk import GIT_FULL_MESSAGES, DiskFullError, nearly_full

IDENTITY = ("-c", "user.name=autoresearch", "-c", "user.email=autoresearch@localhost")
# No hook, no fsmonitor command and no attribute from outside the workspace (~/.config/git/attributes could give
# train.py another encoding or line endings) acts in the loop's git calls, whatever .git/config says. Nor does
# git's automatic gc (or maintenance), which a commit starts past 6,700 loose objects (a long night with several
# workers) or where .git/config's gc.auto says (an agent can set it): the driver commits while an agent's turn is
# watched, and gc packed the new commit's objects away; the check after the turn takes a new pack away (a pack
# can shadow the history's objects), and with it the only copy of a commit the ledger names. The loop packs them
# itself instead (`Git.pack`), between steps, where nothing is watched.
SAFE = (
    "-c", f"core.hooksPath={os.devnull}", "-c", "core.fsmonitor=false", "-c", f"core.attributesFile={os.devnull}",
    "-c", "gc.auto=0", "-c", "maintenance.auto=false",
    # GIT_GRAFT_FILE (below) makes git 2.39 print four lines of advice about grafts into every error it gives
    "-c", "advice.graftFileDeprecated=false",
)  # fmt: skip
# Nor does the user's own configuration (~/.gitconfig, ~/.config/git/config), which an agent can write too: a
# filter, gpg.program with commit.gpgsign or an include there would run at every commit the loop makes.
# Nor replace refs (refs/replace/, `git replace`) nor a grafts file, through which an agent whose turn overlaps the
# driver's work (several workers) would have the loop read another object than the one named, or other parents.
NO_GLOBAL_CONFIG = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_NO_REPLACE_OBJECTS": "1", "GIT_GRAFT_FILE": os.devnull}


# Loose objects (git's estimate: those in objects/17, times 256) past which `pack` packs them: 3 an experiment, each a
# file of its own (a 4 KiB block at least), and every run and agent turn lists every object file (integrity.take).
LOOSE_OBJECTS_MAX = 768
LOOSE_REFS_MAX = 256  # loose refs under refs/autoresearch past which `pack` packs them too (one per discard)
# A git command of the loop's takes well under a second; one still running after this waits on something that will not
# come (a FIFO put in a file's place, a file system that does not answer): stopped, it is a clear error, not a hang.
TIMEOUT_S = 600


@functools.cache
def program() -> str:
    """git's path, found on PATH once, at the loop's first git command, before any agent has run: a `git` an agent
    put in a folder of PATH later (loop/environment.py: `program_folders`) is never the one the loop runs."""
    return program_path("git") or "git"


@functools.cache
def trusted_directories() -> tuple[str, ...]:
    """The `safe.directory` entries of the user's own configuration, as `-c` options: the one setting of it the
    loop's git keeps (a workspace owned by another user, as a container's mounted folder often is, is refused
    without it). Read once, before any agent has run; reading runs nothing."""
    try:
        proc = subprocess.run(
            [program(), "config", "--global", "--get-all", "safe.directory"], capture_output=True, timeout=TIMEOUT_S
        )
    except OSError:
        return ()
    except subprocess.TimeoutExpired:
        raise GitError(
            f"git config --global did not finish in {TIMEOUT_S} s, and was stopped: your git configuration does not "
            "answer",
            hint="look at ~/.gitconfig and ~/.config/git/config (a FIFO there? `ls -l`), put it right, then run again",
        ) from None
    values = proc.stdout.decode(errors="replace").splitlines() if proc.returncode == 0 else []
    return tuple(option for value in values if value for option in ("-c", f"safe.directory={value}"))


def _environment() -> dict[str, str]:
    """The environment of every git command the loop runs (NO_GLOBAL_CONFIG over its own)."""
    return {**os.environ, **NO_GLOBAL_CONFIG}


NO_COMMIT = "0" * 40
_EXP_SUBJECT = re.compile(r"^exp (\d+): ")


class GitError(AutoresearchError):
    pass


def _stuck(command: str) -> GitError:
    return GitError(
        f"git {command} did not finish in {TIMEOUT_S} s, and was stopped: something it reads does not answer",
        hint="look for a FIFO (`find .git -type p`) or a mount that hangs under the workspace's .git, "
        "put it right, then run again: nothing recorded is lost",
    )


class RefExistsError(GitError):
    pass


class Git:
    def __init__(self, root: Path, common: Path | None = None):
        """`common`: the repository whose worktree `root` is (`worktree`)."""
        self.root, self.common = root, common

    def worktree(self, path: Path) -> Git:
        """Git in a worktree of this repository (a worker's), which reads this repository's config, attributes and
        objects whatever its `commondir` file says: that file (.git/worktrees/<n>/) is in an agent's reach, and named
        a repository of the agent's, whose filter ran at the driver's checkout of the proposal (red team)."""
        return Git(path, common=self.git_dir)

    def __call__(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        return self._run(args, check, stdin.encode() if stdin is not None else None).decode(errors="replace")

    def _run(self, args: tuple[str, ...], check: bool = True, stdin: bytes | BinaryIO | None = None) -> bytes:
        try:
            proc = subprocess.run(
                [program(), *SAFE, *trusted_directories(), *args],
                cwd=self.root,
                capture_output=True,
                **({"input": stdin} if isinstance(stdin, bytes) or stdin is None else {"stdin": stdin}),
                env={**_environment(), **({"GIT_COMMON_DIR": str(self.common)} if self.common else {})},
                timeout=TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise _stuck(args[0]) from None
        except (FileNotFoundError, NotADirectoryError):
            if not self.root.is_dir():  # the folder to run in, not git, is missing
                raise GitError(
                    f"the folder {self.root} is gone (deleted or moved while autoresearch used it)",
                    hint="put it back, or start again from the workspace's root",
                ) from None
            raise GitError(
                "git is not installed", hint="install git: the workspace keeps experiments as commits"
            ) from None
        if check and proc.returncode != 0:
            err = (proc.stderr or proc.stdout).decode(errors="replace").strip()
            # git does not always say that space ran out ("couldn't write '.../5.lock'"): the file system does
            full = any(m in err.lower() for m in GIT_FULL_MESSAGES)
            if full or any(nearly_full(p) for p in (self.root, self.common) if p is not None):
                raise DiskFullError(f"git {args[0]}")
            raise GitError(f"git {' '.join(args)} failed: {err}")
        return proc.stdout

    # -- the repository -------------------------------------------------------------------------

    def init(self, branch: str) -> None:
        self("init", "-q", "-b", branch)

    def is_repo(self) -> bool:
        return (self.root / ".git").exists()

    @property
    def git_dir(self) -> Path:
        return self.root / ".git"

    def head(self) -> str:
        return self("rev-parse", "HEAD").strip()

    def branch(self) -> str:
        """The branch HEAD names ("HEAD" where it is detached), one with no commit yet too."""
        return self("symbolic-ref", "-q", "--short", "HEAD", check=False).strip() or "HEAD"

    # -- commits and refs ------------------------------------------------------------------------

    def commit(self, message: str, *paths: str) -> str:
        """Commit `paths` (all tracked changes if none) and return the new commit's hash."""
        if paths:
            self("add", "--", *paths)
        self(*IDENTITY, "commit", "-q", "--no-verify", "-m", message, *(["--", *paths] if paths else ["-a"]))
        return self.head()

    def unpack(self, pack: Path) -> bool:
        """Write the objects of the pack file `pack` that the repository lacks as loose objects, each under the name
        git computes from its bytes; whether git could read the pack."""
        try:
            with open(pack, "rb") as stream:  # not read into memory: a pack is as large as the disk allows
                self._run(("unpack-objects", "-q"), stdin=stream)
        except (OSError, GitError, DiskFullError):
            return False
        return True

    def commit_onto(self, parent: str, path: str, text: str, message: str) -> str:
        """A commit of `parent`'s tree with the top-level file `path` holding `text` (as `git add` would store it),
        made without touching the work tree, the index or the branch; its hash."""
        blob = self("hash-object", "-w", f"--path={path}", "--stdin", stdin=text).strip()
        entries, mode = [], b"100644"
        for entry in self._run(("ls-tree", "-z", parent)).split(b"\0"):
            meta, _, name = entry.partition(b"\t")
            if name == path.encode():
                mode = meta.split()[0]
            elif entry:
                entries.append(entry)
        entries.append(mode + f" blob {blob}\t{path}".encode())
        tree = self._run(("mktree", "-z"), stdin=b"\0".join(entries) + b"\0").decode().strip()
        return self(*IDENTITY, "commit-tree", tree, "-p", parent, "-m", message).strip()

    def move_to(self, commit: str, path: str) -> None:
        """Point the branch at `commit` and check out `path` from it; other files in the working tree
        (a program.md being edited, say) are left as they are."""
        self("reset", "-q", "--mixed", commit)
        self("checkout", "-q", commit, "--", path)

    def advance(self, commit: str, path: str) -> None:
        """Point the branch at `commit` (made from HEAD elsewhere, in a worktree) and check out `path` from it,
        unless `path` holds an edit of its own: a coding agent may be editing train.py for its next `submit`."""
        try:
            edited = (self.root / path).read_bytes() != self._run(("show", f"HEAD:{path}"))
        except FileNotFoundError:  # deleted (by an agent at work): nothing to keep, the checkout puts it back
            edited = False
        self("reset", "-q", "--mixed", commit)
        if not edited:
            self("checkout", "-q", commit, "--", path)

    def set_ref(self, ref: str, commit: str) -> None:
        """Create `ref` at `commit`. A ref that already points elsewhere is never moved: a discarded experiment
        kept under its id stays readable even if a lost ledger made the loop count from 1 again."""
        current = self.ref(ref)
        if current == commit:
            return
        if current is not None:
            raise RefExistsError(
                f"{ref} already points to {current[:7]}, not {commit[:7]}: an experiment id was about to be reused",
                hint="the ledger does not match the repository; run `autoresearch rebuild-ledger`",
            )
        self("update-ref", ref, commit, NO_COMMIT)  # the old value "none" makes git refuse if it appeared since

    def ref(self, ref: str) -> str | None:
        out = self("rev-parse", "-q", "--verify", f"{ref}^{{commit}}", check=False).strip()
        return out or None

    def force_ref(self, ref: str, commit: str) -> None:
        """Put `ref` back where it was (for restoring what a run changed; never for experiments' refs)."""
        self("update-ref", "--no-deref", ref, commit)

    def delete_ref(self, ref: str) -> None:
        self("update-ref", "--no-deref", "-d", ref)

    def refs(self, prefix: str = "") -> dict[str, str]:
        """Every ref (or those under `prefix`) and the object it points to."""
        out = self("for-each-ref", "--format=%(objectname) %(refname)", *([prefix] if prefix else []))
        return {name: sha for sha, name in (line.split(" ", 1) for line in out.splitlines() if line)}

    def exp_commits(self) -> dict[int, str]:
        """`exp N: ...` commits on the branch (kept experiments): N -> commit."""
        out = self("log", "--first-parent", "--format=%H %s", "HEAD", check=False)
        found = {}
        for line in out.splitlines():
            sha, _, subject = line.partition(" ")
            if m := _EXP_SUBJECT.match(subject):
                found.setdefault(int(m[1]), sha)
        return found

    def has_commit(self, commit: str) -> bool:
        return bool(self("rev-parse", "-q", "--verify", f"{commit}^{{commit}}", check=False).strip())

    def parent(self, commit: str) -> str | None:
        return self("rev-parse", "-q", "--verify", f"{commit}^", check=False).strip() or None

    def show(self, commit: str, path: str) -> str:
        return self("show", f"{commit}:{path}")

    def message(self, commit: str) -> str:
        return self("log", "-1", "--format=%s", commit).strip()

    def commit_time(self, commit: str) -> float:
        """When `commit` was made (seconds since the epoch)."""
        return float(self("log", "-1", "--format=%ct", commit).strip())

    def exp_number(self, commit: str) -> int | None:
        """N of an experiment's commit (`exp N: ...`), else None."""
        match = _EXP_SUBJECT.match(self.message(commit))
        return int(match[1]) if match else None

    def merge_file(self, base: str, ours: str, theirs: str) -> tuple[str, int]:
        """Three-way merge of one file's texts (`git merge-file`): the result and how many hunks conflict."""
        with tempfile.TemporaryDirectory(prefix="autoresearch-merge-") as tmp:
            paths = [Path(tmp) / name for name in ("ours", "base", "theirs")]
            for path, text in zip(paths, (ours, base, theirs), strict=True):
                path.write_text(text)
            try:
                proc = subprocess.run(
                    [program(), *SAFE, "merge-file", "-p", *map(str, paths)],
                    capture_output=True,
                    env=_environment(),
                    timeout=TIMEOUT_S,
                )
            except subprocess.TimeoutExpired:
                raise _stuck("merge-file") from None
        if proc.returncode < 0 or proc.returncode > 127:
            raise GitError(f"git merge-file failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode(errors="replace"), proc.returncode

    # -- the working tree and the index ----------------------------------------------------------

    def changed_paths(self) -> set[str]:
        """Tracked files that differ from HEAD, plus untracked files git does not ignore."""
        return set(self.status())

    def status(self) -> dict[str, str]:
        """`git status` as path -> two-letter code ("??" untracked); a nested repository ends with "/"."""
        out = self("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames")
        return {entry[3:]: entry[:2] for entry in out.split("\0") if entry}

    def untracked(self, excludes: tuple[str, ...]) -> list[str]:
        """Every untracked file, including those .gitignore hides, except `excludes` (gitignore patterns).

        The workspace's own ignore rules are not used: a run could edit them to hide what it wrote."""
        out = self("ls-files", "--others", "-z", *(f"--exclude={pattern}" for pattern in excludes))
        return [p for p in out.split("\0") if p]

    def tracked(self) -> set[str]:
        return set(filter(None, self("ls-files", "-z").split("\0")))

    def index_listing(self) -> str:
        """The index as flag, mode, blob and path per file: it changes when anything is staged, or marked
        assume-unchanged or skip-worktree (which hide a file's edits from `git status`)."""
        return self("ls-files", "-s", "-v", "-z")

    def reset_index(self) -> None:
        """The index as HEAD has it, without flags (`reset` would keep assume-unchanged and skip-worktree)."""
        self("read-tree", "HEAD")

    def checkout_from_index(self, path: str) -> None:
        self("checkout", "-q", "--", path)

    # -- objects ---------------------------------------------------------------------------------

    def store_blobs(self, paths: list[Path]) -> list[str]:
        """Write the files' contents into the object store, exactly as they are; their blob ids."""
        if not paths:
            return []
        out = self("hash-object", "-w", "--no-filters", "--stdin-paths", stdin="".join(f"{p}\n" for p in paths))
        return out.split()

    def read_object(self, oid: str) -> tuple[str, bytes]:
        """The kind of the object `oid` and what it holds (`write_object` writes it again)."""
        kind = self("cat-file", "-t", oid).strip()
        return kind, self._run(("cat-file", kind, oid))

    def write_object(self, data: bytes, kind: str = "blob") -> str:
        """Write `data` into the object store as an object of `kind`, exactly as it is; its id."""
        return self._run(("hash-object", "-t", kind, "-w", "--no-filters", "--stdin"), stdin=data).decode().strip()

    def loose_objects(self) -> int:
        """About how many loose objects there are (as `git gc --auto` counts: those in objects/17, times 256)."""
        try:
            return 256 * sum(1 for entry in os.scandir(self.git_dir / "objects" / "17") if len(entry.name) >= 38)
        except OSError:
            return 0

    def pack(self) -> bool:
        """Pack the loose objects and refs once there are many (LOOSE_OBJECTS_MAX, LOOSE_REFS_MAX), as the `git gc` the
        loop switches off would (see SAFE), losing nothing: every object, reachable or not, goes into a pack before
        its loose file is deleted, and packs are merged so that there are few (`--geometric`). Only where no run or
        agent's turn is watched: a new pack found after one is taken away (workspace/objects.py). Whether it packed."""
        refs = self.git_dir / "refs" / "autoresearch"
        # Walked without recursion (`files.entries`): a turn nested 1,100 empty folders there, and os.walk's
        # RecursionError stopped the loop at every verdict after it, at every later start too (red team).
        loose_refs = sum(1 for _, entry in entries(refs) if not entry.is_dir(follow_symlinks=False))
        if self.loose_objects() < LOOSE_OBJECTS_MAX and loose_refs < LOOSE_REFS_MAX:
            return False
        try:
            # -n: no objects/info/packs (for dumb transports); -d: the loose objects and packs rolled up, deleted.
            self("repack", "-q", "-d", "-n", "--geometric=2")
            self("pack-refs", "--all")
        except GitError:
            return False  # packing is a saving, never a reason to stop: the next verdict tries again
        return True

    def blob(self, blob_id: str) -> bytes | None:
        """The content of a stored blob, or None if the object store does not have it."""
        proc_out = self._run(("cat-file", "blob", blob_id), check=False)
        if not proc_out and self("cat-file", "-t", blob_id, check=False).strip() != "blob":
            return None
        return proc_out
