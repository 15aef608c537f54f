"""The Python environment the runs read, and the folders of PATH, checked unchanged around every agent turn.

A confined run is shown only what it needs (evaluator/shown.py), but that includes its Python: the directories
on sys.path, the interpreter's installation, LD_LIBRARY_PATH. Where an agent can write those (a venv in your
home, run as you), it could train a model during its turn, off the budget, and leave the weights there, or in
a package's file, for train.py to load (red team, 2026-12-02). `pip install` by an agent is the same change.
So the loop records every file's signature (size, mtime_ns, ctime_ns, inode) and every folder's (`Signature`) there
before an agent's turn and compares after it; a difference stops the loop, naming what changed.

What one check costs: a stat of every file. This project's venv (torch; 55,000 files with the interpreter's
standard library) takes 0.3-0.45 s on a 2-core machine, idle or shared, so each turn walks it once: a
turn starts from the signature the previous turn ended with (nothing but an agent or you changes it meanwhile:
a run cannot write it, and a change between turns is caught at the next turn's end). Byte-code caches
(`__pycache__/*.pyc`) that Python writes as it imports (the loop's own processes, or an agent that tries
train.py, in a venv installed without them, as uv does) are allowed where they hold exactly their source,
compiled, and are then written again as an import writes them (bytecode.py says why). The shared compile cache,
which every run reads too, is checked the same way, walked at both ends of a turn: the loop adds a kept run's
compiled files to it between turns.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from autoresearch import bytecode
from autoresearch.evaluator import compile_cache, shown
from autoresearch.files import absolute_entries, holds, program_path

# path -> (size, mtime_ns, ctime_ns, inode) of a file, a link or anything else; (FOLDER, mode, a digest of its extended
# attributes, ctime_ns) of a folder, whose times change as Python writes a cache in it, but whose name, mode and
# attributes carried data where they were not recorded (an empty folder named with it: red team), and its times too (a
# folder whose ctime moved has them set to now: `Environment.changes`); (UNREADABLE, errno, 0, 0) of what could not be
# listed or read (past PATH_MAX: what lay below was never seen, red team)
Signature = dict[str, tuple[int, int, int, int]]
FOLDER, UNREADABLE = -1, -2
CACHE_FOLDER = "__pycache__"  # made by Python as it writes its first cache there
ACLS = "system.posix_acl_"  # a folder's access lists, kept as extended attributes


def signature(roots: Iterable[Path], skip: Iterable[Path] = ()) -> Signature:
    """Every file, link and folder under `roots` (folders of their own too), but for the folders `skip` and what they
    hold, with its stat (links are not followed)."""
    skipped = set(map(str, skip))
    found: Signature = {}
    stack = []
    for root in map(str, roots):
        if os.path.isdir(root):
            stack.append(root)
        elif os.path.lexists(root):  # a file shown on its own: a venv's pyvenv.cfg
            found[root] = _stat(root, os.lstat(root))
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.path in skipped:
                        continue
                    try:
                        found[entry.path] = _stat(entry.path, entry.stat(follow_symlinks=False))
                    except FileNotFoundError:  # gone meanwhile
                        continue
                    except OSError as error:
                        found[entry.path] = (UNREADABLE, error.errno or 0, 0, 0)
                    if found[entry.path][0] == FOLDER:
                        stack.append(entry.path)
        except FileNotFoundError:
            pass
        # Unreadable (to a run as well: where a loop runs as you, a folder of yours you cannot read); or it fails as it
        # is listed (/proc/<a zombie>/net: red team), or its name is past PATH_MAX
        except OSError as error:
            found[folder] = (UNREADABLE, error.errno or 0, 0, 0)
    return found


def _stat(path: str, st: os.stat_result) -> tuple[int, int, int, int]:
    if stat.S_ISDIR(st.st_mode):
        return FOLDER, st.st_mode, _attributes(path), st.st_ctime_ns
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _attributes(path: str) -> int:
    """A digest of the folder's extended attributes (0 where it has none, or the system keeps none), but for its
    security label (SELinux gives every new folder one, by its policy)."""
    try:
        names = sorted(_attribute_names(path))
        if not names:
            return 0
        pairs = [(name, os.getxattr(path, name, follow_symlinks=False)) for name in names]
    except (OSError, AttributeError):  # none here, or no such call (macOS)
        return 0
    return int.from_bytes(hashlib.sha256(repr(pairs).encode()).digest()[:8], "big") or 1


def _attribute_names(path: str) -> list[str]:
    return [name for name in os.listxattr(path, follow_symlinks=False) if not name.startswith("security.")]


def _inherited(path: str) -> bool:
    """Whether the attributes of the folder Python made (`__pycache__`) are none, or only the access lists it inherits
    from a default one of its folder's (a venv a group shares: `setfacl -d`), which `_made_plain` removes."""
    with contextlib.suppress(OSError, AttributeError):
        return all(name.startswith(ACLS) for name in _attribute_names(path))
    return False


def differences(before: Signature, after: Signature) -> list[str]:
    """What changed from `before` to `after`, one phrase per file or folder ("added PATH", "changed PATH", "deleted
    PATH"), but for byte-code caches Python wrote (written again as it writes them: `bytecode.vouched`) or deleted,
    cache folders made (plain ones, not in another) or deleted, and a folder's times."""
    return _judged(before, after)[0]


def _judged(before: Signature, after: Signature) -> tuple[list[str], set[str], list[str]]:
    """`differences`; the caches vouched for (written again); the folders whose times are to be set to now (those
    whose ctime moved, cache folders made)."""
    if before == after:  # the common case, at C speed: a sorted walk through 100,000 paths takes 0.1 s
        return [], set(), []
    changed = [path for path in sorted(before.keys() | after.keys()) if before.get(path) != after.get(path)]
    vouched = bytecode.vouched([path for path in changed if path in after and bytecode.is_cache(path)])
    found, touched = [], []
    for path in changed:
        old, new = before.get(path), after.get(path)
        if path in vouched or (new is None and (bytecode.is_cache(path) or _cache_folder(path, old))):
            continue
        if old is not None and new is not None and old[0] == new[0] == FOLDER and old[:3] == new[:3]:
            touched.append(path)  # its times only (a cache written in it, or data: made now either way)
            continue
        if old is None and _cache_folder(path, new) and new is not None and (new[2] == 0 or _inherited(path)):
            touched.append(path)
            continue
        found.append(f"{'added' if old is None else 'deleted' if new is None else 'changed'} {path}")
    return found, vouched, touched


def _cache_folder(path: str, sign: tuple[int, int, int, int] | None) -> bool:
    """Whether `path` is a folder Python makes for caches: never within another (a chain of them, past PATH_MAX, hid
    what lay below from the walk: red team)."""
    folder, name = os.path.split(path)
    return sign is not None and sign[0] == FOLDER and name == CACHE_FOLDER and os.path.basename(folder) != CACHE_FOLDER


def _made_plain(path: str, made: bool) -> None:
    """Set the folder's times to now (its mtime and atime carried 14 bytes: red team); one made, its mode to its
    parent's permissions (an import makes it with the process's umask; a turn, with any 12 bits), without access
    lists."""
    with contextlib.suppress(OSError):
        if made:
            os.chmod(path, stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) & 0o2777)  # setgid: as the kernel
            for name in ("system.posix_acl_access", "system.posix_acl_default"):  # entries could carry data
                with contextlib.suppress(OSError, AttributeError):
                    os.removexattr(path, name, follow_symlinks=False)
        os.utime(path)


def would_be_paths() -> list[Path]:
    """Where a Python started later (an evaluator, the fork server, the loop's next start) would look for code
    that is not there now, outside the system's directories: the user's site-packages, where Python reads it
    (`site.ENABLE_USER_SITE`: outside a venv, or in one that includes the system's packages), and the entries of
    sys.path that do not exist (a PYTHONPATH folder, the standard library's zip). Made by an agent, a .pth file or
    usercustomize.py there runs in every one of them, trusted ones too: watched as they are, nothing at first."""
    import site

    paths = [Path(p) for p in sys.path[1:] if p and not os.path.exists(p)]
    if site.ENABLE_USER_SITE:
        paths.append(Path(site.getusersitepackages()))
    return [p.absolute() for p in paths if not shown.is_system(p.absolute())]


LOOP_PROGRAMS = ("git", "unshare", "bwrap")  # what the loop and its evaluators run by name, outside any namespace


def program_folders(env: Mapping[str, str], workspace: Path) -> list[Path]:
    """The folders of PATH outside the system's directories (absolute, resolved) and outside the workspace (which
    workspace/integrity.py checks), those missing too, and the folders the loop's programs really are in (a link's
    target: Homebrew's git): the loop and its evaluators run git, unshare and bubblewrap by name, as you, outside
    any namespace, so a program an agent put or changed there (your ~/.local/bin, which Debian's ~/.profile puts
    first) would run instead. A folder that holds the workspace (PATH naming your home) is left out: not walked. A
    folder reached through a link is there twice: where it leads, and as PATH names it (the link swapped is seen)."""
    inside = workspace.resolve()
    path = env.get("PATH", "")  # its absolute folders only, where the loop looks (a relative one is no folder here)
    given = [Path(os.path.normpath(d)) for d in absolute_entries(path)]
    folders = [d.resolve() for d in given]
    folders += [Path(found).resolve().parent for name in LOOP_PROGRAMS if (found := program_path(name, path))]
    # and as PATH names them where a link leads there (`~/bin` -> `~/dotfiles/bin`): read-only is where it leads, but
    # the link lies in a folder the agent writes, and `rm ~/bin && mkdir ~/bin` put its `git` first (red team)
    folders += [d for d in given if d != d.resolve()]
    outside = (p for p in dict.fromkeys(folders) if not holds(p, inside) and not holds(inside, p))
    return [p for p in outside if not shown.is_system(p)]


class Environment:
    """The files a run reads that an agent may write, outside the workspace (which workspace/integrity.py checks).
    `start()` before an agent's turn, `changes(start)` after it."""

    def __init__(self, roots: Iterable[Path], fresh: Iterable[Path] = (), skip: Iterable[Path] = ()):
        """`roots` change only by an agent's or your hand; `fresh` also by the loop's, between turns (the shared
        compile cache, which a kept run adds to): walked at both ends of a turn. `skip`: directories in them that
        runs do not see."""
        self.roots = shown.outermost(Path(root) for root in roots)
        self.fresh = shown.outermost(Path(root) for root in fresh)
        self.skip = list(skip)
        self._last: Signature | None = None
        self._lock = threading.Lock()

    @classmethod
    def of_runs(cls, env: Mapping[str, str], workspace: Path) -> Environment:
        """What this Python's runs are shown (evaluator/shown.py) that an agent may write, the shared compile
        cache, which every run reads (evaluator/compile_cache.py), and the folders of PATH (`program_folders`)."""
        roots, skip = shown.writable_by_agents(env, exclude=[workspace]), shown.unused_site_packages()
        roots += [*would_be_paths(), *program_folders(env, workspace)]
        return cls(roots, fresh=compile_cache.shown_dirs(), skip=skip)

    def start(self) -> Signature:
        """The signature a turn starts from: the one the last turn ended with (taken now, the first time)."""
        with self._lock:
            if self._last is None:
                self._last = signature(self.roots, self.skip)
            return {**self._last, **signature(self.fresh)}

    def changes(self, start: Signature) -> list[str]:
        """What changed since `start` (see `differences`); what there is now is where the next turn starts."""
        now = signature(self.roots, self.skip)
        found, vouched, touched = _judged(start, {**now, **signature(self.fresh)})
        for path in touched:
            _made_plain(path, made=path not in start)
        # Written again (caches: bytecode.vouch_for) or made plain (folders): the next turn starts from them as they are
        for path in (vouched | set(touched)) & now.keys():
            with contextlib.suppress(OSError):
                now[path] = _stat(path, os.lstat(path))
        with self._lock:
            self._last = now
        return found
