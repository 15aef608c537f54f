"""A turn's snapshot on disk (`.autoresearch/turn.json`), for the next start after a kill during the turn.

The file lies within an agent's reach while the turn runs, and what it names is written back at that start: `load`
reads it as untrusted, and refuses one that names a path outside the workspace or its `.git`, or the loop's own.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import fields
from pathlib import Path

from autoresearch.files import read_regular, write_text_atomic
from autoresearch.workspace import objects
from autoresearch.workspace.git import Git
from autoresearch.workspace.integrity import Snapshot, is_loop_own

SNAPSHOT_LIMIT = 4 << 30  # a saved turn (`save`) larger than this is no snapshot of ours: read no further


def save(snap: Snapshot, git: Git, path: Path, store_blobs: bool = True) -> None:
    """Keep `snap` where the next start finds it: the working files' contents go into git's object store (unless
    `store_blobs` is off: they were, by an earlier save of it), the git files' (small, and needed before git can be
    trusted) into the file itself."""
    git_ids = {content_id for content_id, _ in (*snap.git_files.values(), *snap.history.values())}
    if store_blobs:
        stored = [i for i in {*snap.files.values(), *snap.human.values()} if i in snap.sources and i not in git_ids]
        git.store_blobs([snap.sources[i] for i in stored])
        snap.stored.update(objects.signatures(git.git_dir, stored))
    # Not asdict(snap), which deep-copies every field first, the objects' bytes too: at 15,000 loose objects that alone
    # cost a second per agent turn. The fields saved hold plain dicts of str, list and None.
    unsaved = ("contents", "sources", "stored")
    data = {f.name: getattr(snap, f.name) for f in fields(snap) if f.name not in unsaved}
    data["git_contents"] = {i: base64.b64encode(snap.contents[i]).decode() for i in git_ids if i in snap.contents}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data), durable=True)  # a power cut leaves it whole, or the old one


def load(path: Path) -> Snapshot | None:
    """The snapshot `save` kept in `path`; None if it cannot be read, or names a path that no snapshot of a workspace
    holds: the file lies within an agent's reach, and what it names is written back."""
    try:
        data = json.loads(read_regular(path, SNAPSHOT_LIMIT))  # not a FIFO left in its place, which would wedge
        contents = {i: base64.b64decode(b) for i, b in data.pop("git_contents").items()}
        snap = Snapshot(**data, contents=contents)
        work = [*snap.files, *snap.untracked, *snap.human]
        listed = isinstance(snap.objects, dict) and all(map(_object_entry, snap.objects.values()))
        snap.objects = {rel: entry for rel, entry in snap.objects.items() if _object_file(rel)}  # others: as new
        folders = [] if snap.folders is None else snap.folders  # a list, else unreadable (a str is iterable too)
        sound = listed and isinstance(folders, list)
        sound = sound and all(map(_inside, [*work, *snap.git_files, *snap.history, *snap.locks, *folders]))
        if sound and not any(map(is_loop_own, [*work, *folders])):
            return snap
    except Exception:  # missing, cut short, not JSON, not a snapshot's fields: unreadable all the same
        pass
    return None


def _object_entry(entry: object) -> bool:
    """Whether `entry` is what `objects.record` lists for an object file: its content id, then five numbers."""
    return (
        isinstance(entry, list)
        and len(entry) == 6
        and isinstance(entry[0], str)
        and all(isinstance(n, int) and not isinstance(n, bool) for n in entry[1:])
    )


def _object_file(rel: object) -> bool:
    """Whether `rel` names a loose object or a file of pack/ under .git/objects (a listing's other names, a folder's
    among them, are not put back: red team)."""
    if not isinstance(rel, str) or "\0" in rel:
        return False
    folder, _, name = rel.partition("/")
    return objects.loose_object(rel) or (folder == "pack" and name not in ("", ".", "..") and "/" not in name)


def _inside(rel: object) -> bool:
    """Whether `rel` is a relative path that stays inside the folder it is taken from."""
    return isinstance(rel, str) and bool(rel) and not os.path.isabs(rel) and ".." not in rel.split("/")
