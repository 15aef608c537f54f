"""Git's object store, guarded around an untrusted step (workspace/integrity.py).

Git does not check an object against its name as it reads it: an object file rewritten, or a pack planted beside
them holding other bytes under an object's name (git reads packs before loose objects), changes what the history
says was measured. So every object file is recorded by its signature (inode, size, mtime, ctime, mode), with its
bytes, read once and kept while the signature holds; afterwards a changed or deleted one is written back, and a
new one that could shadow an object of the history is taken away.

The loop writes no object while a step is watched (workers never touch git; the driver waits for a coding agent's
turn), but for the blobs of the turn's own snapshot. So every other object a step adds is the step's: an agent's
commits, what it staged, what it wrote with `git hash-object`. None stays (`set_aside_new`): each would be read
into the loop's memory at every later step of the night (`record`), whatever it holds. After a kill in a step, the
next start does the same from the listing the step's snapshot saved, without the bytes (`_check_unread`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import zlib
from pathlib import Path

from autoresearch.files import entries, read_regular
from autoresearch.workspace.contents import KEPT_BYTES, blob_id, quarantine, read, restore
from autoresearch.workspace.git import Git, GitError

OBJECTS = "objects"  # under .git; its info/ is guarded with the other git files

# The bytes of the object files last read under each .git/objects: (path, inode, size, mtime_ns, ctime_ns) -> (content
# id, bytes). A file whose signature is unchanged holds the same bytes (a write or rename changes its ctime, which no
# process can set back), so each object is read once, not at every step of the night.
_object_bytes: dict[Path, dict[tuple, tuple[str, bytes]]] = {}


def record(git_dir: Path, contents: dict[str, bytes]) -> dict[str, list]:
    """Every regular file under .git/objects but info/ -> [content id, inode, size, mtime_ns, ctime_ns, mode], their
    bytes kept in `contents` (content id -> bytes)."""
    top = git_dir / OBJECTS
    known, seen, listing = _object_bytes.get(top, {}), {}, {}
    for rel, st in _files(top).items():
        if not stat.S_ISREG(st.st_mode):
            continue
        key = (str(top / rel), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if (entry := known.get(key)) is None:
            try:  # whole, however large: the loop's own packs are (no object a step added stays: set_aside_new)
                data = (top / rel).read_bytes()
            except OSError:
                continue
            entry = (blob_id(data), data)
        seen[key] = entry
        listing[rel] = [entry[0], *key[1:], st.st_mode]
        contents[entry[0]] = entry[1]
    _object_bytes[top] = seen  # only what is there now: the cache holds no more than the object store
    return listing


def put_back(
    listing: dict[str, list],
    contents: dict[str, bytes],
    git: Git,
    folder: Path,
    changed: list[str],
    held: list[str],
    not_restored: list[str],
    roots: list[str],
) -> frozenset[str] | None:
    """Write back every object file that changed or went since `listing` (`record`), and take away (into `folder`)
    the new ones that could shadow an object of the history. A rewritten object is `changed` (the history would say
    something else was measured); a deleted one is `held` (`git gc` packs loose objects away). A new loose object
    that is not what its name says is `changed`; the others are left for `set_aside_new` (git's commands until then
    may read them: a ref the step made names them). A new pack goes (one of `git gc`'s, whose objects are whole, is
    `held`, and what only it holds is written back loose; one that is not, `changed`), and so does anything else new
    there. The objects of the history (what the commits `roots` reach) where a file whose bytes are not known changed
    (after a kill: `_check_unread`), none otherwise; None where it misses one."""
    top = git.git_dir / OBJECTS
    verified, whole_packs = set(), []  # the new packs' indexes verify-pack passed; those packs, taken away
    unread: list[str] = []  # changed or gone, their bytes not known (`_check_unread`)
    for rel, st in sorted(_files(top).items()):
        if rel in listing:
            continue
        if loose_object(rel) and stat.S_ISREG(st.st_mode):
            if _whole(top / rel, rel.replace("/", "")) is not False:  # None: over KEPT_BYTES, taken away unknown
                continue
            forged = True
        else:  # a pack's index is checked while its pack is still there: sorted, "x.idx" comes before "x.pack"
            forged = loose_object(rel) or (rel.endswith(".idx") and not _pack_whole(git, top / rel))
            if rel.endswith(".idx") and not forged:
                verified.add(rel.removesuffix(".idx"))
        if forged:
            changed.append(f"added .git/objects/{rel}, whose objects are not what their names say")
        else:
            held.append(f"added .git/objects/{rel}")
        moved = quarantine(top, rel, folder / OBJECTS, tidy=False)
        if rel.removesuffix(".pack") in verified and moved is not None:
            whole_packs.append(moved)
    for rel, (content_id, *signature) in sorted(listing.items()):
        path = top / rel
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)
            if [*_signature(st), st.st_mode] == signature:
                continue
        now = read(path)
        if now is not None and now[0].startswith("large:") and os.lstat(path).st_size == signature[1]:
            now = (blob_id(path.read_bytes()), None, now[2])  # one of the loop's packs, as large as it was: read
        if now is not None and now[0] == content_id:
            continue  # touched, not changed
        if content_id not in contents:  # a snapshot read back after a kill: the bytes died with the loop
            unread.append(rel)
            continue
        if now is None:
            held.append(f"deleted .git/objects/{rel}")
        else:
            changed.append(f"changed .git/objects/{rel}")
            quarantine(top, rel, folder / OBJECTS, tidy=False)
        if not restore(path, content_id, contents, None):
            not_restored.append(f".git/objects/{rel}")
            continue
        os.chmod(path, stat.S_IMODE(signature[-1]))
    for pack in whole_packs:  # what only they hold: objects the loop wrote while the step was watched, or those a
        # `git gc` packed and deleted. Written loose, each under the name its bytes have (git hashes them), so none can
        # shadow an object of the history.
        if not git.unpack(pack):
            not_restored.append(f"the objects of .git/objects/{pack.name} (kept in the quarantine)")
    return _check_unread(unread, git, folder, changed, not_restored, roots)


def _check_unread(
    unread: list[str], git: Git, folder: Path, changed: list[str], not_restored: list[str], roots: list[str]
) -> frozenset[str] | None:
    """The object files that changed or went while the loop was killed, whose bytes are not known to write back: one
    that cannot be shown to hold what its name says (too large to tell included) is taken away, and every object that
    the commits `roots` reach must be there still (those `git gc` packed away were written back from its pack: a
    pack rewritten whole without one of them passes every other check). Those objects, which stay (loose now, where
    their pack went); None where one is missing."""
    top = git.git_dir / OBJECTS
    for rel in unread:
        path = top / rel
        if os.path.lexists(path) and not _still_whole(git, path, rel):
            changed.append(f"changed .git/objects/{rel}")
            quarantine(top, rel, folder / OBJECTS, tidy=False)
    if not unread or not roots:
        return frozenset()
    try:  # a missing object stops the walk, a blob too
        out = git("rev-list", "--objects", "--stdin", stdin="".join(f"{root}\n" for root in roots))
    except GitError as exc:
        not_restored.append(f".git/objects: objects the history names are gone ({str(exc)[-300:]})")
        return None
    return frozenset(line.split(" ", 1)[0] for line in out.splitlines() if line)


def _still_whole(git: Git, path: Path, rel: str) -> bool:
    """Whether the loose object or pack (its index) at `path` holds what its names say."""
    if path.is_symlink() or not path.is_file():
        return False
    if loose_object(rel):
        return _whole(path, rel.replace("/", ""), compact=True) is True
    index = path.with_suffix(".idx")
    return index.is_file() and not index.is_symlink() and _pack_whole(git, index)


def set_aside_new(
    listing: dict[str, list],
    git: Git,
    folder: Path,
    held: list[str],
    own: dict[str, tuple[list[int], bytes | None]],
    history: frozenset[str],
) -> None:
    """Take away (into `folder`) every loose object added since `listing` (`record`) but the `history`'s (`put_back`)
    and the loop's `own` (blob id -> the signature of the file it wrote, and its bytes): one of those whose file is
    not the one git or the loop wrote (a copy padded to 60 MB that inflates to the same object: red team) is written
    again. Once the refs are put back, which may have named them."""
    top = git.git_dir / OBJECTS
    taken = []
    for rel, st in sorted(_files(top).items()):
        oid = rel.replace("/", "")
        if rel in listing or not loose_object(rel):
            continue
        if oid in history:  # its file as git would write it: a padded copy would stay in memory (red team)
            if _whole(top / rel, oid, compact=True) is False and _whole(top / rel, oid):
                kind, data = git.read_object(oid)
                (top / rel).unlink()
                git.write_object(data, kind)
            continue
        if oid in own:
            signature, data = own[oid]
            if _signature(st) == signature:
                continue
            if data is not None:
                (top / rel).unlink()
                git.write_object(data)
                continue
        if quarantine(top, rel, folder / OBJECTS, tidy=False) is not None:
            taken.append(st.st_size)
    if taken:
        held.append(f"added {len(taken)} objects to .git/objects ({sum(taken) / 1e6:.1f} MB): none stays")


def signatures(git_dir: Path, ids: list[str]) -> dict[str, list[int]]:
    """The loose files of the objects `ids` (those that are loose) -> [inode, size, mtime_ns, ctime_ns]."""
    found = {}
    for oid in ids:
        with contextlib.suppress(OSError):
            found[oid] = _signature(os.lstat(git_dir / OBJECTS / oid[:2] / oid[2:]))
    return found


def _signature(st: os.stat_result) -> list[int]:
    """A file's inode, size, mtime_ns and ctime_ns: the same bytes while they hold (a write changes the ctime, which
    no process can set back)."""
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _files(top: Path) -> dict[str, os.stat_result]:
    """Everything but folders under .git/objects, but info/: relative path -> its lstat."""
    found = {}
    for rel, entry in entries(top, skip=frozenset({"info"})):
        with contextlib.suppress(OSError):
            if not entry.is_dir(follow_symlinks=False):
                found[rel] = entry.stat(follow_symlinks=False)
    return found


def loose_object(rel: str) -> bool:
    """Whether `rel` (under .git/objects) is named as a loose object is: two hex digits, a folder, the rest."""
    prefix, _, name = rel.partition("/")
    return len(prefix) == 2 and len(prefix + name) in (40, 64) and all(c in "0123456789abcdef" for c in prefix + name)


def _whole(path: Path, oid: str, compact: bool = False) -> bool | None:
    """Whether the loose object file `path` holds what its id `oid` names (and, `compact`, in no more bytes than zlib
    could take for it: a stream padded with empty blocks inflates to the same object, red team); None where it, or
    what it holds, is over KEPT_BYTES (what it holds is not made whole in memory: 600 MB of zeros compress to 600 KB,
    red team)."""
    try:
        data = read_regular(path, KEPT_BYTES)
        size = len(data)
    except ValueError:
        return None
    except OSError:
        return False
    digest, held, unpacked = hashlib.new("sha1" if len(oid) == 40 else "sha256"), 0, zlib.decompressobj()
    try:
        while data and held <= KEPT_BYTES:
            part = unpacked.decompress(data, 1 << 20)
            digest.update(part)
            held, data = held + len(part), unpacked.unconsumed_tail
        if held <= KEPT_BYTES:  # what the last of the input still holds
            part = unpacked.flush()
            digest.update(part)
            held += len(part)
    except zlib.error:
        return False
    if held > KEPT_BYTES:
        return None
    if compact and size > held + held // 64 + 64:  # zlib's worst case: 5 bytes a stored block of 16 KiB, and a header
        return False
    return unpacked.eof and not unpacked.unused_data and digest.hexdigest() == oid  # nothing after it: fsck fails


def _pack_whole(git: Git, idx: Path) -> bool:
    """Whether every object of the pack indexed by `idx` is what its name says (`git verify-pack` hashes each)."""
    try:
        git("verify-pack", str(idx))
    except GitError:
        return False
    return True
