"""Verify, don't trust: what an agent's turn or a training run changed that it may not, put back.

Around each untrusted step the loop records the workspace (workspace/integrity.py: git's refs, index,
hooks and config, every file but train.py), the loop's own records (the ledger's rows and file, and
results.tsv, which integrity leaves to the loop) and the installed package's source files. Afterwards it compares, puts
back what it can and says what changed. Where train.py runs confined none of this can happen; this is
what still holds where it cannot be confined, and against an agent, which is never confined.

An agent's turn is judged by its train.py alone: what its tools leave besides (commits, branches, staged
files, git config, new files, lines added to .gitignore) is put back and reported as litter, not held
against it; a change to any file that was there before rejects the proposal. See integrity.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import autoresearch
from autoresearch.errors import AutoresearchError
from autoresearch.files import read_regular, special_files
from autoresearch.loop.environment import Environment
from autoresearch.loop.ledger import Ledger
from autoresearch.workspace import integrity, snapshot_file
from autoresearch.workspace.contents import content_id
from autoresearch.workspace.contents import quarantine as set_aside
from autoresearch.workspace.git import Git, GitError
from autoresearch.workspace.quarantine import ALL_YOURS, YOURS, fresh_folder, limit_bytes, prune
from autoresearch.workspace.workspace import TRAIN_PY, WorkspaceMoved, folder_identity

# Each package file's SHA-256 by its signature (path, inode, size, mtime_ns, ctime_ns): a file whose signature holds
# has the same bytes (a write changes its ctime, which no process can set back), so it is read once, not twice a turn.
_file_digests: dict[tuple, bytes] = {}
# The report (autoresearch.report's PLOT_NAME and REPORT_NAME, not imported here: matplotlib), which the loop writes
# as it exits: the loop's own (integrity.LOOP_OWN), so no step is blamed for it, but one a step wrote is not left
REPORTS = ("report.md", "progress.png")


def package_digest() -> str:
    """SHA-256 over the installed package's Python files (names and contents): the loop, the judge and the
    evaluator."""
    root = Path(autoresearch.__file__).parent
    whole, seen = hashlib.sha256(), {}
    for path in sorted(root.rglob("*.py")):
        try:
            st = path.stat()
            key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            digest = _file_digests.get(key) or hashlib.sha256(path.read_bytes()).digest()
        except OSError:  # gone meanwhile: as it differs
            key, digest = (str(path),), b"unreadable"
        seen[key] = digest
        whole.update(path.relative_to(root).as_posix().encode() + b"\0" + digest)
    _file_digests.clear()
    _file_digests.update(seen)
    return whole.hexdigest()


def package_hint() -> str:
    """What to do once the package's own files changed under a loop: reinstall it from where it came, or, installed
    from a checkout (`pip install -e`), whose files are yours to edit, look at what changed there."""
    try:
        installed = json.loads(metadata.distribution("autoresearch").read_text("direct_url.json") or "{}")
    except (metadata.PackageNotFoundError, ValueError):
        installed = {}
    installed = installed if isinstance(installed, dict) else {}
    if isinstance(info := installed.get("dir_info"), dict) and info.get("editable"):
        checkout = Path(autoresearch.__file__).parent
        return (
            f"autoresearch is installed from your checkout (pip install -e): if you edited {checkout} yourself, run "
            f"again; if you did not, see what changed there (git -C {checkout} status) and undo it first"
        )
    source = installed.get("url") if isinstance(installed.get("url"), str) else "autoresearch"
    return f"reinstall autoresearch (pip install --force-reinstall --no-deps {source}) before going on"


@dataclass
class Verdict:
    changed: list[str] = field(default_factory=list)  # what may not change and did (put back where possible)
    human: list[str] = field(default_factory=list)  # program.md or prompts/ edited meanwhile: put back, reported
    litter: list[str] = field(default_factory=list)  # an agent's tooling: put back, reported, not held against it
    not_restored: list[str] = field(default_factory=list)  # changed, not put back: an ignored file's bytes
    package_changed: bool = False  # the installed package itself: cannot be put back
    environment: list[str] = field(default_factory=list)  # what changed where runs read Python, or PATH: environment.py
    quarantine: str | None = None  # where what was moved away lies, relative to the workspace, if anything was
    pruned: list[str] = field(default_factory=list)  # the quarantine's oldest folders, emptied to stay in its bound

    def put_back(self) -> str:
        """How what changed was put back, in words: "put back", and what could not be."""
        return f"put back, but for {', '.join(self.not_restored[:8])}" if self.not_restored else "put back"

    def reason(self) -> str | None:
        if self.package_changed:
            return "the autoresearch package's own files changed"
        if self.environment:
            return f"the Python environment the runs read (or PATH) changed: {', '.join(self.environment[:8])}"
        if self.changed:
            return f"changed files outside train.py: {', '.join(self.changed[:8])}"
        return None

    def tidied(self) -> str | None:
        """What an agent left that was put back without holding it against the agent, in one line."""
        if not self.litter:
            return None
        more = f" and {len(self.litter) - 8} more" if len(self.litter) > 8 else ""
        kept = f" (kept in {self.quarantine})" if self.quarantine else ""
        return f"put back after the agent: {', '.join(self.litter[:8])}{more}{kept}"


class Watch:
    """One snapshot before an untrusted step; `check()` after it."""

    def __init__(
        self,
        git: Git,
        ledger: Ledger,
        quarantine: Path,
        train_py: bytes | None = None,
        human: bool = True,
        agent: bool = False,
        keep: Path | None = None,
        environment: Environment | None = None,
    ):
        """`train_py`: the bytes train.py must still hold afterwards (a run), or None (an agent edits it).
        `human`: an edit of program.md or prompts/ is the person's, put back and reported (during a run);
        without, it counts like any other file (an agent's turn: the agent may edit train.py only).
        `agent`: an agent's turn, whose tools' litter is put back but not held against it.
        `keep`: where the snapshot is saved for the next start after a kill (put_back_left), until the loop has
        recorded what the step came to and deletes it.
        `environment`: the files the runs read outside the workspace, to check too (an agent's turn)."""
        self.git, self.ledger, self.train_py, self.human, self.agent = git, ledger, train_py, human, agent
        self.quarantines = quarantine
        self.quarantine = quarantine / time.strftime("%Y%m%d-%H%M%S")  # made afresh by check()
        self.started_ns = time.time_ns()  # a file whose ctime is later was written during the step
        self.home = folder_identity(git.root)
        self.before = integrity.take(git, exclude=frozenset({TRAIN_PY}), human=human)
        self.keep = keep
        if keep is not None:
            snapshot_file.save(self.before, git, keep)
        self.tsv = ledger.workspace / "results.tsv"
        self.tsv_id = content_id(self.tsv)
        self.reports = {name: content_id(ledger.workspace / name) for name in REPORTS}
        self.rows = ledger.state()
        self.package = package_digest()
        self.environment = environment
        self.environment_start = environment.start() if environment is not None else None

    def check(self) -> Verdict:
        """What the step changed, put back. WorkspaceMoved where the workspace's folder was moved or deleted meanwhile:
        "putting back" every file at its path made a second workspace there, which the loop went on in (helper 128).
        Nothing is written then: the snapshot kept for the next start stays in the folder, wherever it is now."""
        if folder_identity(self.git.root) != self.home:
            raise WorkspaceMoved(self.git.root)
        try:
            return self._check()
        finally:
            if self.keep is not None:
                self._keep_again()

    def _keep_again(self) -> None:
        """The saved snapshot lies in .autoresearch/, which the agent could write: it may be the agent's by now, and
        the next start would put the workspace back as it says (after a stop on an error here, or a kill before the
        row is written). Saved again from the one in memory, or else deleted: the next start then refuses a
        workspace it cannot vouch for rather than trust the agent's."""
        try:
            snapshot_file.save(self.before, self.git, self.keep, store_blobs=False)  # stored before the turn
        except Exception:
            with contextlib.suppress(OSError):
                self.keep.unlink(missing_ok=True)

    def _check(self) -> Verdict:
        expected = {TRAIN_PY: self.train_py} if self.train_py is not None else None
        self.quarantine = fresh_folder(self.quarantines, self.quarantine.name)
        found = integrity.put_back(
            self.before,
            self.git,
            self.quarantine,
            frozenset({TRAIN_PY}),
            human=self.human,
            expected=expected,
            agent=self.agent,
        )
        verdict = Verdict(
            changed=list(found.changed),
            human=list(found.human),
            litter=list(found.litter),
            not_restored=list(found.not_restored),
        )
        if why := self.ledger.put_back(self.rows, self.quarantine):
            verdict.changed.append(why.replace("the ledger", "ledger.sqlite"))
        now = content_id(self.tsv)  # not read as it comes: a FIFO put there would never end
        if now != self.tsv_id:
            verdict.changed.append(f"{'changed' if now is not None else 'deleted'} results.tsv")
            self.ledger.write_tsv()
        if written := [name for name, was in self.reports.items() if content_id(self.ledger.workspace / name) != was]:
            verdict.litter.append(report_again(self.ledger.workspace, self.quarantine, written))
        verdict.package_changed = package_digest() != self.package
        if self.environment is not None and self.environment_start is not None:
            verdict.environment = self.environment.changes(self.environment_start)
        if any(self.quarantine.iterdir()):
            if found.human:  # named so: of this folder, the person's edit stays (workspace/quarantine.py)
                self.quarantine = self.quarantine.rename(self.quarantine.with_name(self.quarantine.name + YOURS))
            verdict.quarantine = os.path.relpath(self.quarantine, self.ledger.workspace)
            verdict.pruned = prune(self.quarantines, self.quarantine, limit_bytes())
        else:  # nothing put aside: no folder left for it
            self.quarantine.rmdir()
            with contextlib.suppress(OSError):  # others there
                self.quarantines.rmdir()
        return verdict

    def persons(self, verdict: Verdict) -> None:
        """All this run's step set aside is a person's (the workspace changed beside a confined run, which cannot reach
        it: their train.py, a file of theirs, their `git stash`): its folder is named so (ALL_YOURS), and stays whole
        however the quarantine is emptied (workspace/quarantine.py). The loop says it kept it there: the next step past
        the quarantine's bound (a turn that left gigabytes) emptied it (BROKE, red team)."""
        if verdict.quarantine and self.quarantine.is_dir() and not self.quarantine.name.endswith(ALL_YOURS):
            name = self.quarantine.name.removesuffix(YOURS) + ALL_YOURS
            self.quarantine = self.quarantine.rename(self.quarantine.with_name(name))
            verdict.quarantine = os.path.relpath(self.quarantine, self.ledger.workspace)


def report_again(workspace: Path, quarantine: Path, written: list[str]) -> str:
    """The report a step changed (REPORTS' `written`), set aside in `quarantine` and written again from the ledger; in
    words. The loop writes it only as it exits: one an agent's turn wrote (a best it never measured) stood all night,
    and where the loop never exits (killed, out of memory), it was what the person found in the morning (red team).
    Not held against the step: a person's `autoresearch report` meanwhile changes it too."""
    from autoresearch.report import make_report  # matplotlib: only where a step wrote a report

    for name in written:
        set_aside(workspace, name, quarantine, tidy=False)
    try:
        make_report(workspace)
    except (AutoresearchError, OSError):  # a full disk: the loop's exit writes it, or `autoresearch report`
        return f"{' and '.join(written)} (set aside, not written again)"
    return f"{' and '.join(written)} (written again from the ledger)"


LOOP_REFS = "refs/autoresearch/"  # the loop's own: no person's commit is kept from them
LEFT_REFS = "refs/left/"  # what a bundle of put_back_left names each ref it keeps (HEAD, detached: refs/left/HEAD)
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def put_back_left(
    git: Git, quarantine: Path, kept: Path, bundles: Path
) -> tuple[list[str], Path | None, list[str]] | None:
    """After a kill during an agent's turn (its Watch `kept` its snapshot there): put the workspace back as the turn
    found it, but for train.py and the person's program.md and prompts/ (edited since, perhaps), moving what changed
    into `quarantine`. What that was, the bundle (in a new folder in `bundles`) where the refs moved since, and the
    HEADs (the worktrees' too) left detached elsewhere, keep what they pointed at (a commit made after the kill may be
    the person's: out of the object store, which the loop reads into its memory, none of the turn's stays there), and
    the objects of the history that could not be put back (their bytes died with the loop); None if the snapshot cannot
    be read."""
    bundle = None
    before = snapshot_file.load(kept)
    if before is None:
        return None
    before.human = integrity.human_contents(git.root, before)  # as they are now: not put back
    unkept = []
    if special := special_files(git.git_dir):  # git would wait on a FIFO for ever, at every start
        unkept.append(f"no commit moved to since was kept: .git held {special[0]}, no file")
    elif moved := {**_moved_refs(git, before), **_detached_heads(git, before)}:
        bundle = _bundle(git, moved, fresh_folder(bundles, quarantine.name) / "left.bundle")
        unkept += [] if bundle else [f"no commit of {', '.join(sorted(moved))} was kept: git could read none"]
    found = integrity.put_back(before, git, quarantine, frozenset({TRAIN_PY}), human=True, agent=True)
    lost = [what for what in found.not_restored if what.startswith(".git/objects")]
    gone = [what for what in found.not_restored if what not in lost]  # their bytes died with the loop
    put = [what for what in (*found.changed, *found.litter) if what.split(" ", 1)[-1] not in gone]
    return [*put, *(f"not {what}: it could not be written back" for what in gone), *unkept], bundle, lost


def _moved_refs(git: Git, before: integrity.Snapshot) -> dict[str, str]:
    """The refs (not the loop's own) that point elsewhere than the snapshot `before` says: name -> object."""
    return {r: sha for r, sha in git.refs().items() if before.refs.get(r) != sha and not r.startswith(LOOP_REFS)}


def _detached_heads(git: Git, before: integrity.Snapshot) -> dict[str, str]:
    """HEAD and the worktrees' HEADs that name a commit other than the snapshot `before` says, no ref of it either
    (a commit made there after the kill may be the person's): their path under .git -> commit. Read as files: git
    would read the objects."""
    found = {}
    worktrees = git.git_dir / "worktrees"
    names = sorted(p.name for p in worktrees.iterdir()) if worktrees.is_dir() and not worktrees.is_symlink() else []
    for rel in ["HEAD", *(f"worktrees/{name}/HEAD" for name in names)]:
        try:
            text = read_regular(git.git_dir / rel, 128).decode().strip()
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        old = before.contents.get((before.git_files.get(rel) or [None])[0], b"").decode(errors="replace").strip()
        if _COMMIT.fullmatch(text) and text != old and text not in before.refs.values():
            found[rel] = text
    return found


def _bundle(git: Git, refs: dict[str, str], path: Path) -> Path | None:
    """A bundle at `path` of the commits `refs` (name -> commit) point at, each under LEFT_REFS + its name; made in a
    repository of its own that borrows this one's objects, so that no other ref can make a name ambiguous (git leaves
    such a ref out: red team) and a ref to a broken commit (the agent's) leaves the others in. None if none can."""
    with tempfile.TemporaryDirectory() as spare_dir:
        spare = Git(Path(spare_dir))
        spare.init("left")
        (spare.git_dir / "objects" / "info" / "alternates").write_text(f"{git.git_dir / 'objects'}\n")
        for name, commit in refs.items():
            with contextlib.suppress(GitError):  # a commit git cannot walk (the agent's, broken) is left out
                spare("rev-list", "--objects", commit)
                spare("update-ref", LEFT_REFS + name.removeprefix("refs/"), commit)
        with contextlib.suppress(GitError):
            if spare.refs():
                spare("bundle", "create", "-q", str(path), "--all")
                return path
    with contextlib.suppress(OSError):
        path.parent.rmdir()
    return None
