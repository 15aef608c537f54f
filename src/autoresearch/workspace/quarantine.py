"""The quarantine: where what a run or an agent's turn changed, and the loop put back, is kept for a person to see
(.autoresearch/quarantine/, a folder per step, named by the time it was made), and how much it may hold.

A turn can leave gigabytes at every step, which would pile up there all night until the disk was full. So after each
step the folders together are held to $AUTORESEARCH_QUARANTINE_GB (`prune`): the oldest go first, never the one just
filled. A folder that holds a person's edit (program.md or a prompt edited during a run, put back: the loop said it
kept the edit there) is named so (`YOURS`), and of it the person's text stays (and a train.py a start found
changed after a kill: loop/recovery.py). One that holds what changed in the
workspace beside a confined run, which cannot reach it (a person's train.py, a file of theirs, their `git stash`: the
loop said it kept it there), is all theirs (`ALL_YOURS`): it stays whole, outside the bound. Neither a run nor a
turn can name a folder there.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from autoresearch.config.sizes import gigabytes
from autoresearch.files import BLOCK, clear, disk_use, remove_tree
from autoresearch.workspace.integrity import PROMPTS, is_human
from autoresearch.workspace.workspace import MAX_PROGRAM_BYTES, MAX_TRAIN_PY_BYTES, TRAIN_PY

FOLDER = "quarantine"  # in the workspace's private state
LIMIT_ENV = "AUTORESEARCH_QUARANTINE_GB"  # what the quarantine may hold, in GB (10^9 bytes)
DEFAULT_LIMIT_GB = 2.0
YOURS = "-yours"  # ends the name of a folder that holds a person's edit
ALL_YOURS = "-all" + YOURS  # ends the name of a folder all of whose files are a person's (loop/watch.py: persons)
# What the quarantine holds past which a full disk's error names it: what an agent's litter set aside can be the
# very thing that filled the disk (up to $AUTORESEARCH_QUARANTINE_GB), and nothing else says where it went
SIZEABLE_BYTES = 100 * 10**6
SIZEABLE_SHARE = 0.10  # of the file system's size


def limit_bytes() -> int:
    """What the quarantine may hold ($AUTORESEARCH_QUARANTINE_GB); ConfigError for a value that is not a size."""
    return gigabytes(LIMIT_ENV, DEFAULT_LIMIT_GB, "the quarantine keeps", 10)


def full_disk_note(state: Path) -> str | None:
    """For the hint of a full disk: the quarantine, its size and that it may go, where it holds a sizeable share of
    the disk (`SIZEABLE_BYTES`, `SIZEABLE_SHARE`); None where it does not."""
    parent = state / FOLDER
    if parent.is_symlink() or not parent.is_dir():
        return None
    used = disk_use(parent)
    try:
        st = os.statvfs(parent)
        size = st.f_blocks * st.f_frsize
    except OSError:
        size = 0
    if used <= SIZEABLE_BYTES and used <= SIZEABLE_SHARE * size:
        return None
    amount = f"{used / 1e9:.1f} GB" if used >= 1e9 else f"{used / 1e6:.0f} MB"
    return (
        f"{parent} holds {amount} of what steps set aside (an agent's litter, say): look at it, then delete it "
        f"(`rm -r {parent}`), keeping any edit of yours from a folder named *{YOURS}"
    )


def fresh_folder(parent: Path, prefix: str) -> Path:
    """A new, empty folder in `parent` for what a step left: never one the step made (with a link in it to send
    what is put aside into .git, say). `parent` itself is made a folder again if the step made it a link."""
    if parent.is_symlink() or (os.path.lexists(parent) and not parent.is_dir()):  # a FIFO or a file, say
        clear(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=parent))


def prune(parent: Path, newest: Path, limit: int) -> list[str]:
    """Empty the oldest step folders in `parent` but `newest` until all of them use at most `limit` bytes of disk,
    keeping a person's text (`_empty`); the names of the folders emptied. One all a person's (ALL_YOURS) is not
    counted, as their files in the workspace are not: it stays whole, and counted, a person's gigabytes made while a
    confined run trained (a venv, a checkpoint) had every later step empty every other folder at once, and walked
    all their files again (red team, helper 151)."""
    sizes = {p: _used(p) for p in sorted(_folders(parent)) if not p.name.endswith(ALL_YOURS)}
    used = sum(sizes.values())
    emptied = []
    for folder, before in sizes.items():
        if used <= limit:
            break
        if folder == newest:
            continue
        try:
            _empty(folder)
        except OSError:  # not the loop's to remove (another user's): left as it is
            continue
        if (after := _used(folder)) < before:  # 0 where it is gone; a person's text where it stays
            used -= before - after
            emptied.append(folder.name)
    return emptied


def _folders(parent: Path) -> list[Path]:
    try:
        with os.scandir(parent) as listing:
            return [Path(e.path) for e in listing if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _used(folder: Path) -> int:
    """The disk `folder` uses, each file or folder in it counted as a BLOCK at least. Sized afresh each time: a file
    set aside can be a hard link that the turn goes on writing through another name (red team)."""
    return disk_use(folder, least=BLOCK)


def _empty(folder: Path) -> None:
    """Remove `folder` and all it holds, but for a person's text in one named YOURS: program.md and prompts/*.md, as
    regular files no larger than a program.md may be. One named ALL_YOURS is the person's whole, and stays."""
    if folder.name.endswith(ALL_YOURS):
        return
    if folder.name.endswith(YOURS):
        _empty_but_persons(folder)
    else:
        remove_tree(folder)


def _empty_but_persons(folder: Path, prefix: str = "") -> bool:
    """Remove all `folder` holds but a person's text, and the folder itself where nothing is left; whether anything
    was kept."""
    kept = False
    for entry in _listing(folder):
        rel = prefix + entry.name
        if rel == PROMPTS and entry.is_dir(follow_symlinks=False):
            kept = _empty_but_persons(Path(entry.path), f"{PROMPTS}/") or kept
        elif is_human(rel) and entry.is_file(follow_symlinks=False) and entry.stat().st_size <= MAX_PROGRAM_BYTES:
            kept = True
        elif rel == TRAIN_PY and entry.is_file(follow_symlinks=False) and entry.stat().st_size <= MAX_TRAIN_PY_BYTES:
            kept = True  # a train.py found changed after a kill: the agent's unfinished edit, or yours since
        else:
            clear(Path(entry.path))
    if not kept:
        remove_tree(folder)
    return kept


def _listing(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as listing:
        return list(listing)
