"""Verify, don't trust: what a training run or an agent changed in the workspace, and putting it back.

`take()` records, cheaply, what the loop relies on: every ref and the index (its flags too); every file under .git
that git reads and the loop's git commands do not write (HEAD, config, hooks/, info/, objects/info/, and whatever
else is there or appears: a commondir, shallow or MERGE_HEAD file redirects or stops the loop's git), with their
contents; every object file (workspace/objects.py: git does not check an object against its name as it reads
it); the files
`git status` reports, with their contents; every other untracked file, including ignored ones, by size,
times and mode; and the person's files (program.md, prompts/*.md). `put_back()` compares the workspace with
a snapshot, puts it back as it was, and says what had changed.

Order matters in `put_back`: the git files are compared and restored with plain file operations first,
so that a planted hook or `core.fsmonitor` cannot run during the loop's next git command (the loop's git
calls also switch both off). Untracked files are listed without the workspace's ignore rules (only the
loop's own output is left out), so a run cannot hide a file by editing .gitignore or .git/info/exclude.

What a run or agent wrote is moved, not deleted, into a quarantine folder under .autoresearch/: a person
can see what it did, and an edit of theirs caught in the middle is not lost. An ignored file that existed
before and was changed or deleted cannot be put back (its content is not copied before every run, it may be
large); it is reported instead.

program.md and prompts/*.md belong to the person, who may edit them while the loop runs. During a training
run such an edit cannot be told apart from the experiment's doing, so with `human=True` it is put back (the
changed text is kept in the quarantine) and reported separately, but not held against the experiment.

A coding agent's tools leave litter that says nothing about its proposal: aider commits its edit, creates a
branch, stages files, writes its identity into .git/config, appends `.aider*` to .gitignore and writes
history and cache files. With `agent=True`, such changes (anything under .git: refs, HEAD, the index,
config, hooks, reflogs, stale lock files; files that did not exist before; lines added to .gitignore) are
put back like any other and listed in `Findings.litter`, not in `Findings.changed`: the agent's train.py is
still its proposal. A change to a file that existed before (program.md, autoresearch.json, the ledger, an
ignored file, or .gitignore lines removed) stays in `changed`, which rejects the proposal.

The reflogs and ORIG_HEAD are put back last, after the loop's own git commands here have written to them:
no commit of an agent's (or of a run's) stays reachable from a ref, a reflog or ORIG_HEAD.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch import bytecode
from autoresearch.files import entries
from autoresearch.workspace import objects
from autoresearch.workspace.contents import DIRECTORY, kind, restore
from autoresearch.workspace.contents import quarantine as set_aside
from autoresearch.workspace.contents import read as read_file
from autoresearch.workspace.git import Git

# The loop's own output in a workspace (see workspace/init.py's .gitignore): never the run's doing.
# Nor is `__pycache__/` (it was: a turn kept files there from turn to turn): a byte-code cache a step writes is set
# aside as litter, whether or not it is its source compiled (an agent that tries train.py writes one; Python writes it
# again where it is missing), and one deleted is let be; any other file there is put back like any other.
LOOP_OWN = ("/.autoresearch/", "/results.tsv", "/results.tsv.tmp", "/progress.png", "/report.md")
HISTORY_GIT = ("logs", "ORIG_HEAD")  # what git's own commands write about moves; put back after the loop's
# Under .git, not guarded as files: what the loop's git writes and put_back restores its own way (refs, the index,
# reflogs) and the objects (guarded their own way: OBJECTS; objects/info, which can point git elsewhere, is guarded as a
# file). Everything else there, present or new, is: the workers' worktrees too (worktrees/<n>/HEAD, index, ...), which
# the loop changes only between steps, and a worktree of an agent's own, whose HEAD would name a commit it made.
UNGUARDED_GIT = frozenset({"objects", "refs", "packed-refs", "index", *HISTORY_GIT})
GITIGNORE = ".gitignore"
PROGRAM, PROMPTS = "program.md", "prompts"
_CLEAN = "clean"  # a path `git status` does not report: as in the index, or absent if untracked
_NOT_WALKED = frozenset({".git", ".autoresearch"})  # for folders: git's own, guarded as files, and the loop's state


@dataclass
class Snapshot:
    refs: dict[str, str]  # every ref -> object
    index: str  # sha256 of the index listing (mode, blob, path per file)
    files: dict[str, str | None]  # what `git status` reports -> content id (None: deleted)
    untracked: dict[str, list[int]]  # every untracked path, ignored ones too -> [size, mtime_ns, ctime_ns, mode]
    git_files: dict[str, list]  # under .git -> [content id, mode]
    human: dict[str, str | None]  # program.md, prompts/*.md -> content id (None: absent); empty if not watched
    history: dict[str, list] = field(default_factory=dict)  # .git/logs/**, .git/ORIG_HEAD -> [content id, mode]
    # Every file under .git/objects but info/ -> [content id, inode, size, mtime_ns, ctime_ns, mode]. Saved for the next
    # start (snapshot_file.py) without the bytes: read back, it tells what a turn cut short by a kill added, and whether
    # what it changed is still whole. None: the objects are left as they are.
    objects: dict[str, list] | None = None
    # Lock files under .git a killed git left before the step (`git pack-refs` after a verdict, say) -> [inode,
    # ctime_ns]: set aside after the step, as every lock is, but not the step's doing.
    locks: dict[str, list] = field(default_factory=dict)
    # Every folder of the workspace but .git and the loop's own: git lists no empty one, so one the step made and left
    # empty is found by these. None: folders are left as they are.
    folders: list[str] | None = None
    contents: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)  # content id -> bytes
    sources: dict[str, Path] = field(default_factory=dict, repr=False, compare=False)  # content id -> its file
    # The blobs snapshot_file.save wrote loose -> [inode, size, mtime_ns, ctime_ns] of their files: the loop's own.
    stored: dict[str, list[int]] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Findings:
    changed: list[str] = field(default_factory=list)  # what may not change and did; each was put back
    human: list[str] = field(default_factory=list)  # the person's files that changed; put back
    not_restored: list[str] = field(default_factory=list)  # changed, but could not be put back
    litter: list[str] = field(default_factory=list)  # an agent's tooling (agent=True): put back, not held against it

    def __bool__(self) -> bool:
        return bool(self.changed or self.human)

    def summary(self, limit: int = 8) -> str:
        shown = ", ".join(self.changed[:limit])
        more = f" and {len(self.changed) - limit} more" if len(self.changed) > limit else ""
        lost = f" (could not put back: {', '.join(self.not_restored[:limit])})" if self.not_restored else ""
        return shown + more + lost


# -- taking a snapshot ----------------------------------------------------------------------------


def take(git: Git, exclude: frozenset[str] = frozenset(), human: bool = True) -> Snapshot:
    """The state of the workspace, except the paths in `exclude` (train.py, which the loop itself checks).

    With `human`, program.md and prompts/*.md are recorded apart from the other files (see the module's
    docstring); without, they are files like any other."""
    skip = _skipper(exclude, human)
    git_files, contents, _ = _read_git_files(git.git_dir, guarded_git(git.git_dir))
    history, history_contents, _ = _read_git_files(git.git_dir, HISTORY_GIT)
    snap = Snapshot(
        refs=git.refs(),
        index=_sha256(git.index_listing()),
        files={},
        untracked={},
        git_files=git_files,
        human={},
        history=history,
        contents=contents | history_contents,
    )
    snap.objects = objects.record(git.git_dir, snap.contents)
    snap.locks = _locks(git.git_dir)
    snap.files = _status_contents(git.root, git.status(), skip, snap)
    snap.untracked = _signatures(git, skip)
    snap.folders = _folders(git.root)
    if human:
        snap.human = human_contents(git.root, snap)
    return snap


def _folders(root: Path) -> list[str]:
    """The workspace's folders (links not followed), but for what .git and the loop's state hold, and what a folder
    named .git holds at any depth: a repository of yours in the workspace (git lists it as one entry) writes a folder
    there as it commits."""
    found = entries(root, skip=_NOT_WALKED, shut=frozenset({".git"}))
    return sorted(rel for rel, entry in found if entry.is_dir(follow_symlinks=False))


def _skipper(exclude: frozenset[str], human: bool):
    return lambda path: path in exclude or is_loop_own(path) or (human and is_human(path))


def is_loop_own(path: str) -> bool:
    """Whether `path` is the loop's own output (LOOP_OWN), whatever the workspace's ignore rules say: `git status`
    reads those, and an agent that removes `.autoresearch/` from .gitignore must not make the loop quarantine
    its own ledger."""
    parts = path.rstrip("/").split("/")
    return any(parts[0] == p.strip("/") and (len(parts) == 1 or p.endswith("/")) for p in LOOP_OWN)


def is_human(path: str) -> bool:
    """program.md and prompts/<name>.md: the person's instructions to the agent."""
    head, _, name = path.partition("/")
    return path == PROGRAM or (head == PROMPTS and name.endswith(".md") and "/" not in name)


def guarded_git(git_dir: Path) -> tuple[str, ...]:
    """What is guarded under .git as files: every entry but UNGUARDED_GIT and lock files (put back on their own),
    with objects/info."""
    try:
        names = sorted(p.name for p in git_dir.iterdir())
    except OSError:
        names = []
    return ("objects/info", *(n for n in names if n not in UNGUARDED_GIT and not n.endswith(".lock")))


def _read_git_files(git_dir: Path, names: tuple[str, ...]) -> tuple[dict[str, list], dict[str, bytes], dict[str, Path]]:
    """The files under .git named by `names` (files or directories): relative path -> [content id, mode],
    their contents and paths."""
    listing, contents, sources = {}, {}, {}
    for name in names:
        top = git_dir / name
        # Walked one level at a time: `rglob` recursed, and a folder an agent nested 1,100 deep raised RecursionError
        # at this start and every later one (red team); and its folders are told by their entries, past PATH_MAX too.
        paths = [top] if top.is_symlink() or not top.is_dir() else sorted(top / rel for rel, e in entries(top) if not
                                                                          e.is_dir(follow_symlinks=False))  # fmt: skip
        for path in paths:
            try:
                read = read_file(path)
            except OSError:  # past PATH_MAX, which git cannot name either
                continue
            if read is None or read[0] == DIRECTORY:
                continue
            content_id, data, mode = read
            rel = path.relative_to(git_dir).as_posix()
            listing[rel] = [content_id, mode]
            if data is not None:
                contents[content_id], sources[content_id] = data, path
    return listing, contents, sources


def _status_contents(root: Path, status: dict[str, str], skip, snap: Snapshot) -> dict[str, str | None]:
    return {path: _remember(root / path, snap) for path in status if not skip(path.rstrip("/"))}


def _signatures(git: Git, skip) -> dict[str, list[int]]:
    found = {}
    for path in git.untracked(LOOP_OWN):
        if skip(path.rstrip("/")):
            continue
        with contextlib.suppress(FileNotFoundError):
            s = os.lstat(git.root / path)
            found[path] = [s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_mode]
    return found


def human_contents(root: Path, snap: Snapshot) -> dict[str, str | None]:
    """program.md and prompts/*.md -> content id, their bytes kept in `snap`."""
    found = {PROGRAM: _remember(root / PROGRAM, snap)}
    for path in sorted((root / PROMPTS).glob("*.md")):
        found[f"{PROMPTS}/{path.name}"] = _remember(path, snap)
    return found


def _remember(path: Path, snap: Snapshot) -> str | None:
    """The content id of `path` (None if absent), keeping its bytes in the snapshot."""
    read = read_file(path)
    if read is None:
        return None
    content_id, data, _ = read
    if data is not None:
        snap.contents[content_id], snap.sources[content_id] = data, path
    return content_id


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- putting it back ------------------------------------------------------------------------------


def put_back(
    before: Snapshot,
    git: Git,
    quarantine: Path,
    exclude: frozenset[str] = frozenset(),
    human: bool = True,
    expected: dict[str, bytes] | None = None,
    agent: bool = False,
) -> Findings:
    """Compare the workspace with `before`, put back what differs, and say what it was.

    `expected` maps excluded paths (train.py) to the exact bytes they must hold. What was changed is moved
    into `quarantine` first. With `agent`, what a coding agent's tools leave is listed as `litter` (see the
    module's docstring). Every object added since but the loop's own is taken away (objects.set_aside_new)."""
    found = Findings()
    held = found.litter if agent else found.changed  # git's own state: an agent's tools change it, a run may not
    git_quarantine = quarantine / ".git"
    if before.git_files and os.path.lexists(git.git_dir) and (git.git_dir.is_symlink() or not git.git_dir.is_dir()):
        # A folder before, now a link (to a folder the turn's private /tmp took along, say) or a file: made a folder
        # again, and filled from the snapshot below as if .git had been deleted.
        held.append(f".git left as {'a link' if git.git_dir.is_symlink() else 'a file'}")
        set_aside(git.root, ".git", quarantine / "replaced", tidy=False)
        git.git_dir.mkdir()
    for rel in _put_back_git_files(
        before.git_files, guarded_git(git.git_dir), before, git.git_dir, git_quarantine, found
    ):
        held.append(f".git/{rel}")  # before any git command runs
    _put_back_links(git.git_dir, git_quarantine, held)  # before a git command of the loop's writes through one
    _put_back_locks(git.git_dir, git_quarantine, held, before.locks)  # a git that was killed: the loop's would fail
    history: frozenset[str] | None = frozenset()
    if before.objects is not None:  # before a git command reads them
        roots = sorted(set(before.refs.values()))
        history = objects.put_back(
            before.objects, before.contents, git, git_quarantine, found.changed, held, found.not_restored, roots
        )
        if history is None:
            return found  # the history misses an object (after a kill): nothing more can be put back from it
    left_history, _, _ = _read_git_files(git.git_dir, HISTORY_GIT)  # before the loop's own commands write to it
    _put_back_refs(before, git, held)
    if _sha256(git.index_listing()) != before.index:
        held.append("the index (staged files)")
        git.reset_index()
    _put_back_files(before, git, quarantine, _skipper(exclude, human), found, agent)
    if human:
        _put_back_human(before, git, quarantine, found)
    _put_back_folders(before, git.root, quarantine, found.litter if agent else found.changed)
    for path in exclude - set(expected or {}):  # an agent's train.py is its proposal, read as a file only
        if (now := read_file(git.root / path)) is not None and not stat.S_ISREG(now[2]):
            found.litter.append(f"{path} left as {kind(now[2])}")
            set_aside(git.root, path, quarantine)
    for path, data in (expected or {}).items():
        now = read_file(git.root / path)
        if now is None or now[1] != data:
            found.changed.append(f"changed {path}" if now else f"deleted {path}")
            set_aside(git.root, path, quarantine)
            (git.root / path).write_bytes(data)
    if before.objects is not None:  # now that no ref or index entry of the step's names them
        own = {i: (signature, before.contents.get(i)) for i, signature in before.stored.items()}
        objects.set_aside_new(before.objects, git, git_quarantine, held, own, history)
    wrote = {rel for rel in {*left_history, *before.history} if left_history.get(rel) != before.history.get(rel)}
    history_quarantine = git_quarantine if wrote else None  # else only the loop's own commands above wrote there
    _put_back_git_files(before.history, HISTORY_GIT, before, git.git_dir, history_quarantine, found)
    held.extend(sorted({".git/logs" if rel.startswith("logs/") else f".git/{rel}" for rel in wrote}))
    return found


def _put_back_git_files(
    listing: dict[str, list], names: tuple[str, ...], before: Snapshot, git_dir: Path, quarantine: Path | None, found
) -> list[str]:
    """Put the files under .git named by `names` back as `listing` has them (what differed is moved into
    `quarantine`, or deleted if None); those that differed."""
    now, _, _ = _read_git_files(git_dir, names)
    differed = []
    for rel in sorted(set(listing) | set(now), reverse=True):  # files before their directories
        if listing.get(rel) == now.get(rel):
            continue
        differed.append(rel)
        if quarantine is not None:
            set_aside(git_dir, rel, quarantine)
        else:
            (git_dir / rel).unlink(missing_ok=True)  # a file or link: directories are not listed
    for rel in sorted(listing):
        if listing[rel] != now.get(rel):
            content_id, mode = listing[rel]
            if not restore(git_dir / rel, content_id, before.contents, None):
                found.not_restored.append(f".git/{rel}")
            elif not stat.S_ISLNK(mode):
                os.chmod(git_dir / rel, stat.S_IMODE(mode))
    return sorted(differed)


def _locks(git_dir: Path) -> dict[str, list]:
    """The lock files under .git (relative path -> [inode, ctime_ns])."""
    found = {}
    refs = [git_dir / "refs" / rel for rel, _ in entries(git_dir / "refs") if rel.endswith(".lock")]
    for path in sorted([*git_dir.glob("*.lock"), *refs]):
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            found[path.relative_to(git_dir).as_posix()] = [st.st_ino, st.st_ctime_ns]
    return found


def _put_back_links(git_dir: Path, quarantine: Path, held: list[str]) -> None:
    """Links where git writes (UNGUARDED_GIT: refs/, objects/, logs/, the index, packed-refs), which git makes none
    of: the loop's git wrote through them, wherever they led (`.git/refs/heads` a link to your home, read-only to the
    agent: the branch's ref went there; red team), or read them (the index a link to a file: the loop stopped). Each
    is moved into `quarantine`, a folder where one was made again, and refs/ where it is gone (git knows no
    repository without it: the loop stopped; its refs are put back after)."""
    for name in sorted(UNGUARDED_GIT):
        top = git_dir / name
        found = [top] if top.is_symlink() else []
        for rel, entry in entries(top) if not found else ():  # links not followed
            if entry.is_symlink():
                found.append(top / rel)
        for link in found:
            rel = link.relative_to(git_dir).as_posix()
            held.append(f".git/{rel} left as a link")
            was_folder = link.is_dir()
            set_aside(git_dir, rel, quarantine, tidy=False)
            if was_folder:
                link.mkdir()
    if not os.path.lexists(git_dir / "refs"):
        (git_dir / "refs").mkdir()


def _put_back_locks(git_dir: Path, quarantine: Path, held: list[str], before: dict[str, list]) -> None:
    """Lock files a git command leaves when it is killed: while they are there, git refuses to work. Those that were
    there before the step (`before`), as they were, are not held against it."""
    for rel, signature in _locks(git_dir).items():
        if before.get(rel) != signature:
            held.append(f".git/{rel}")
        set_aside(git_dir, rel, quarantine, tidy=False)  # an emptied refs/ directory must stay


def _put_back_refs(before: Snapshot, git: Git, held: list[str]) -> None:
    now = git.refs()
    for ref in sorted(set(before.refs) | set(now)):
        old, new = before.refs.get(ref), now.get(ref)
        if old == new:
            continue
        if old is None:
            held.append(f"created {ref}")
            git.delete_ref(ref)
        else:
            held.append(f"deleted {ref}" if new is None else f"moved {ref} from {old[:7]} to {new[:7]}")
            git.force_ref(ref, old)


def _put_back_files(before: Snapshot, git: Git, quarantine: Path, skip, found: Findings, agent: bool) -> None:
    status = git.status()
    now_files = _status_contents(git.root, status, skip, _scratch())
    now_untracked = _signatures(git, skip)
    differ = []
    for path in sorted(set(before.files) | set(now_files)):
        old, new = before.files.get(path, _CLEAN), now_files.get(path, _CLEAN)
        if old == new or (new is None and bytecode.is_cache(path)):
            continue
        differ.append(path)
        was_there = old is not None and not (old == _CLEAN and status.get(path) == "??")
        if agent and path == GITIGNORE and old == _CLEAN and _only_lines_added(git, path):
            found.litter.append(f"lines added to {GITIGNORE}")
        else:  # a new file is litter, and a byte-code cache (Python writes it again where it is missing)
            held = found.litter if agent and (not was_there or bytecode.is_cache(path)) else found.changed
            held.append(_what(path, was_there, new is not None))
    seen = set(before.files) | set(now_files)
    for path in sorted((set(before.untracked) | set(now_untracked)) - seen):
        old, new = before.untracked.get(path), now_untracked.get(path)
        cache = bytecode.is_cache(path)
        if old == new or (new is None and cache):  # a cache deleted: Python's doing, or harmless
            continue
        held = found.litter if agent and (old is None or cache) else found.changed
        held.append(_what(path, old is not None, new is not None))
        if old is None or cache:
            differ.append(path)
        else:  # an ignored file that existed: its content was not kept
            found.not_restored.append(path)
    for path in sorted(differ, reverse=True):  # the deepest first, so a file replaced by a directory goes
        set_aside(git.root, path.rstrip("/"), quarantine)
    tracked = git.tracked() if differ else set()
    for path in differ:
        old = before.files.get(path, _CLEAN)
        if old == _CLEAN:
            if path in tracked:
                git.checkout_from_index(path)
        elif old is not None and not restore(git.root / path.rstrip("/"), old, before.contents, git):
            found.not_restored.append(path)


def _put_back_folders(before: Snapshot, root: Path, quarantine: Path, held: list[str]) -> None:
    """Set aside the folders made since `before` (each outermost one, with all it holds): git lists no empty folder
    (whose name could carry data), nothing under a folder named .git at any depth, nor what lies past PATH_MAX."""
    if before.folders is None:
        return
    kept, now = set(before.folders), set(_folders(root))
    new = {rel for rel in now - kept if rel != PROMPTS}  # prompts/: yours, as its files are
    for rel in sorted(rel for rel in new if os.path.dirname(rel) not in new):
        set_aside(root, rel, quarantine, tidy=False)  # not the folder it was made in, empty or not: that was there
        held.append(f"added {os.fsencode(rel).decode(errors='replace')}/")  # its name may be no UTF-8
    for rel in sorted(kept - now):  # one of yours that putting back a file left empty, and removed (or the step did)
        with contextlib.suppress(OSError):
            (root / rel).mkdir(parents=True, exist_ok=True)


def _put_back_human(before: Snapshot, git: Git, quarantine: Path, found: Findings) -> None:
    now = human_contents(git.root, _scratch())
    for path in sorted(set(before.human) | set(now)):
        old, new = before.human.get(path), now.get(path)
        if old == new:
            continue
        found.human.append(path)
        set_aside(git.root, path, quarantine)
        if old is not None and not restore(git.root / path, old, before.contents, git):
            found.not_restored.append(path)


def _only_lines_added(git: Git, path: str) -> bool:
    """Whether the working copy of tracked `path` differs from the index's only by lines added."""
    old = git("show", f":{path}", check=False).splitlines()
    try:
        new = (git.root / path).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    return all(op in ("equal", "insert") for op, *_ in difflib.SequenceMatcher(None, old, new).get_opcodes())


def _what(path: str, was_there: bool, is_there: bool) -> str:
    if not was_there:
        return f"added {path}"
    return f"changed {path}" if is_there else f"deleted {path}"


def _scratch() -> Snapshot:
    """An empty snapshot to read the current contents into."""
    return Snapshot(refs={}, index="", files={}, untracked={}, git_files={}, human={})
