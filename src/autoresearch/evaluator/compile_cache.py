"""The experiments' compile caches: every run reads them; only runs of a train.py that is the best add to them.

Inductor and Triton keep what they compile in a cache directory, so a run whose model (or part of it) was
compiled before loads it instead of compiling again: on an H200, 40-50 s per run. A cache every run could
write would be a way from one run to the next: a train.py could leave compiled code, or trained weights
dressed up as it, for a later train.py to load, whose result would then not come from its own code.

So a run never writes the shared cache (it is outside the box, and the sandbox's filesystem is read-only).
It gets a layer of its own in its box (`layer`, `fill`): the shared cache's directories, made anew, with a
link to each of its files; Inductor and Triton read through the links and write what they compile beside
them. The sandbox shows the layer at the same path in every run, since Inductor writes absolute paths into
its entries.
After the run the evaluator moves the files the run wrote next to its result (`harvest`). The loop adds
them to the shared cache when the run's train.py is kept, or is the baseline, and deletes them otherwise
(`settle`); an entry already in the shared cache is never replaced. What is left open (README, threat
model): a kept train.py could leave files there for a later one. `AUTORESEARCH_COMPILE_CACHE=run` closes
that too: a run then sees no shared cache at all and compiles everything itself.

The evaluator compiles the handed-over graph too (on CUDA), never with these caches (what an experiment compiled
reaches them), but with caches of its own (`evaluator_caches`), kept from run to run and out of a coding agent's
reach: Inductor does not rewrite a generated module it finds already written and imports it, and unpickles its graph
cache's entries, so a module an agent edited there would run in the next evaluator that compiled the same graph: a
score forged (red team, 2026-12-02). In the agent's namespace the folder is an empty tmpfs
(agents/namespace.py); where no namespace can be made, or for an agent that drives `try` from your shell, it is
in reach as the validation data is (README, "What is not covered").

Both grow with every new model shape, night after night. Every evaluator marks them in use while it lives
(`in_use`); one that finds no other evaluator on this machine doing so (a loop's first, a `try`) first deletes their
oldest entries down to $AUTORESEARCH_COMPILE_CACHE_GB (`trim`). Not while another runs: its run's layer links to the
shared files, and a compiler that found half an entry could fail the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from pathlib import Path

from autoresearch import switches
from autoresearch.config.paths import cache_root
from autoresearch.config.sizes import gigabytes
from autoresearch.errors import AutoresearchError
from autoresearch.files import BLOCK, remove_tree
from autoresearch.workspace.disk import is_disk_full

MODE_ENV = switches.COMPILE_CACHE
CACHES = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}  # variable -> subdirectory
LAYER = ".compile"  # in the box
STAGED = "compile"  # in the run's directory, beside its result
INSIDE = Path("/tmp/autoresearch-compile")  # where a confined run sees its layer (its /tmp is its own)
# A compiler's lock files coordinate its processes; they are not compiled code. Linked, a lock cannot be
# taken (filelock opens it without following links: ELOOP, and Inductor on the CPU failed the run).
LOCK = ".lock"
MAX_STAGED_BYTES = 2**30  # what one run may add; more is not kept (a run could fill the disk this way)
# And in files and folders: a kept model shape is ~2,250 files in ~400 folders (the h100 preset on an H100:
# BENCHMARKS.md); empty files cost no bytes, and a kept run that left 100,000 had every later run link and unlink them
# all (tens of seconds a run, red team).
MAX_STAGED_FILES = 20_000
# How deep a compiler's files lie (inductor: fxgraph/xx/key/entry); deeper ones are not taken: a run could nest folders
# past Python's recursion limit, which every later run's walk of the shared cache would then fail on.
MAX_DEPTH = 8
EVALUATOR = "evaluator-compile"  # under the cache root: the evaluators' own caches
LIMIT_ENV = "AUTORESEARCH_COMPILE_CACHE_GB"  # what the compile caches may hold together, in GB (10^9 bytes)
DEFAULT_LIMIT_GB = 20.0  # ~300 kept model shapes of the h100 preset on an H200 (~60 MB each)
IN_USE = ".in-use"  # in the evaluators' folder: every evaluator holds it shared; a trim holds it alone
# The evaluator's compilers and the CUDA driver, and where each keeps what it compiled (in that folder): the
# driver's JIT cache (~/.nv/ComputeCache) and torch's of the kernels it builds at run time (~/.cache/torch/kernels)
# are loaded as they are found, like Inductor's and Triton's.
EVALUATOR_CACHES = {
    "TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton", "CUDA_CACHE_PATH": "nv",
    "PYTORCH_KERNEL_CACHE_PATH": "torch-kernels",
}  # fmt: skip


def shared_root() -> Path:
    """The folder of the shared caches (`shared_dirs`), and of what `settle` copies on its way there: the loop's
    alone to write (read-only in a coding agent's namespace: agents/namespace.py)."""
    return cache_root() / "compile"


def shared_dirs() -> dict[str, Path]:
    """The shared cache of each compiler, under the cache root. (Not the variables' values where they are set:
    importing Inductor sets its own to a default, which a process that forks runs has always done.)"""
    return {name: shared_root() / sub for name, sub in CACHES.items()}


def shown_dirs() -> list[Path]:
    """The shared caches a confined run is shown, read-only, made first where missing: the run's layer links
    to their files, which must resolve inside the sandbox also where the cache lies under /tmp (the sandbox's own
    there), and also for a run whose processes were made before the first files were added (a fresh cache)."""
    if _per_run():
        return []
    dirs = list(shared_dirs().values())
    for path in dirs:
        path.mkdir(parents=True, exist_ok=True)
    return dirs


def layer(env: Mapping[str, str], box: Path, confined: bool) -> tuple[dict[str, str], list[tuple[Path, Path]]]:
    """The run's environment with its caches pointed at its own layer, made here in `box`, and where the
    sandbox shows that layer: one path for every run (INSIDE), because Inductor writes absolute paths into what
    it caches. Unconfined, a run can write anything this user can anyway: it gets the shared caches as they are
    (or, per run, a cache in its box)."""
    own = dict(env)
    for name, shared in shared_dirs().items():
        top = box / LAYER / CACHES[name]
        if not confined and not _per_run():
            shared.mkdir(parents=True, exist_ok=True)
            own[name] = str(shared)
            continue
        top.mkdir(parents=True, exist_ok=True)
        own[name] = str(INSIDE / CACHES[name] if confined else top)
    return own, [(box / LAYER, INSIDE)] if confined else []


def fill(box: Path) -> None:
    """Link the shared caches' files into the layer in `box` (if it has one), as they are now: before the run
    starts, since its processes (and its layer) are made while the run before it trains."""
    if _per_run():
        return
    for name, shared in shared_dirs().items():
        if (top := box / LAYER / CACHES[name]).is_dir():
            _link_tree(shared, top)


def harvest(box: Path, staged: Path) -> str:
    """Move what the run compiled (the files of its layer that are not links to the shared cache) to `staged`; its
    `digest`, which the evaluator seals into the run's result."""
    with contextlib.suppress(OSError):  # left by an earlier attempt of the same run
        remove_tree(staged)
    # The run may have replaced its layer, or a compiler's directory in it, by a link: followed, it would lead to
    # files of the user's (a key, the validation shard), moved here and on into the shared cache.
    if _per_run() or (box / LAYER).is_symlink():
        return ""
    found = _staged_files(box / LAYER)
    if found is None:
        return ""
    size = sum(max((box / LAYER / sub / rel).stat().st_size, BLOCK) for sub, rel in found)
    if size > MAX_STAGED_BYTES:
        return ""
    for sub, rel in found:
        target = staged / sub / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(box / LAYER / sub / rel, target)
    return digest(staged)


def digest(staged: Path) -> str:
    """What a run compiled, as one SHA-256 over the path and content of every file staged; "" where none is."""
    files = [(sub, rel) for sub in CACHES.values() for rel in sorted(_own_files(staged / sub))]
    if not files:
        return ""
    whole = hashlib.sha256()
    for sub, rel in files:
        whole.update(f"{sub}/{rel}\0".encode())
        with open(staged / sub / rel, "rb") as f:
            whole.update(hashlib.file_digest(f, "sha256").digest())
    return whole.hexdigest()


# What a run's sealed result says it compiled, by its staged folder, in this process: the files wait there, in the
# workspace's state, until the verdict, where a coding agent whose turn falls meanwhile (several workers, a re-run)
# could add its own, for the shared cache and every later run. Only files still as the result sealed them join it.
_vouched: dict[str, str] = {}
_vouched_lock = threading.Lock()  # workers report their runs from their threads


def vouch(staged: Path, compiled: str | None) -> None:
    """Record the digest (`Result.compiled`) the run's sealed result gave for what it staged in `staged`."""
    with _vouched_lock:
        _vouched[str(staged.absolute())] = compiled or ""


def settle(staged: Iterable[Path], keep: bool, warn: Callable[[str], None] | None = None) -> int:
    """Add the runs' compiled files to the shared caches (`keep`) where they are still what the run's result
    vouched for (`vouch`; after a restart nothing is), or not; either way delete them. Returns how many files were
    added. A file the shared cache has already stays as it is. The cache is an optimisation: where its disk is full,
    what is left to add is not added (`warn` is told, once), and the run's result is recorded all the same."""
    added = 0
    for run in staged:
        with _vouched_lock:
            vouched = _vouched.pop(str(run.absolute()), "")
        if keep and vouched:
            try:
                added += _add(run, vouched)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                if warn is not None:
                    warn(
                        f"the disk of the shared compile cache ({shared_root()}) is full: what this run compiled "
                        "is not added to it (later runs compile it again)"
                    )
                    warn = None
        with contextlib.suppress(OSError):
            remove_tree(run)
    return added


def _add(run: Path, vouched: str) -> int:
    """Add `run`'s files to the shared caches if they are what `vouched` says. The staged folder is in the
    workspace's state, where an agent whose turn overlaps the verdict can write at any moment: a file checked there
    and then moved could be another by then (or reached through a link made meanwhile). So they are copied first into
    a folder of the loop's own, beside the shared caches (out of an agent's reach: agents/namespace.py), and it is
    the copies that are checked and moved. Only a whole file is ever moved in (os.replace), so a disk that fills
    (ENOSPC, raised to the caller) leaves half a copy in that private folder alone, which goes with it."""
    root = shared_root()
    root.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=".settling-", dir=root))
    try:
        if not _copy_own(run, private) or digest(private) != vouched:
            return 0
        added = 0
        for name, top in shared_dirs().items():
            sub = CACHES[name]
            for rel in _own_files(private / sub):
                target = top / rel
                if target.exists() or target.is_symlink():
                    continue
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(private / sub / rel, target)
                except FileNotFoundError:  # its folder just removed by another loop's trim, left empty: not added
                    continue
                added += 1
        return added
    finally:
        with contextlib.suppress(OSError):
            remove_tree(private)


def _copy_own(run: Path, private: Path) -> bool:
    """Copy the regular files of `run`'s compilers' folders into `private`, neither following a link at the end of
    a path nor waiting on a FIFO, and no more than MAX_STAGED_BYTES in all; False where that was exceeded or a file
    could not be read (it changed meanwhile: nothing is taken)."""
    budget = MAX_STAGED_BYTES
    if (found := _staged_files(run)) is None:
        return False
    for sub, rel in found:
        target = private / sub / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(run / sub / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return False
        with open(fd, "rb") as source, open(target, "xb") as copy:
            if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                return False
            while chunk := source.read(min(budget + 1, 1 << 20)):
                budget -= len(chunk)
                if budget < 0:
                    return False
                copy.write(chunk)
    return True


def evaluator_dir() -> Path:
    """Where the evaluators' caches lie (a coding agent's turn does not see it: agents/namespace.py)."""
    return cache_root() / EVALUATOR


def evaluator_caches(env: MutableMapping[str, str]) -> Path:
    """The caches of this process's compilers, set in `env` (os.environ: read as they compile): one folder kept from
    run to run (warm, it saves ~4 s of every evaluation on an H200: BENCHMARKS.md), which neither a run nor a coding
    agent's turn can write (agents/namespace.py hides it)."""
    folder = evaluator_dir()
    for name, sub in EVALUATOR_CACHES.items():
        (folder / sub).mkdir(parents=True, exist_ok=True)
        env[name] = str(folder / sub)
    return folder


def limit_bytes() -> int:
    """What the compile caches may hold together ($AUTORESEARCH_COMPILE_CACHE_GB); ConfigError for a value that is
    not a size."""
    return gigabytes(LIMIT_ENV, DEFAULT_LIMIT_GB, "the compile caches keep", 50)


_held: int | None = None  # this process's descriptor of IN_USE, once `in_use` took it


def in_use() -> int:
    """Mark the compile caches in use by this process (an evaluator) until it ends; where no other process on this
    machine marks them, `trim` them first. The bytes trimmed."""
    global _held
    if _held is not None:
        return 0
    folder = evaluator_dir()
    folder.mkdir(parents=True, exist_ok=True)
    limit = limit_bytes()
    try:  # (a link there, where an agent could make one, is not followed)
        _held = os.open(folder / IN_USE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        why = f"cannot open {folder / IN_USE}: {exc.strerror}"
        raise AutoresearchError(why, hint="remove it; it is made again") from exc
    trimmed = 0
    try:
        fcntl.flock(_held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another evaluator is running: trimming waits for a moment when none is
        pass
    else:
        trimmed = trim(limit)
    fcntl.flock(_held, fcntl.LOCK_SH)  # (waits while another evaluator trims)
    return trimmed


def trim(limit: int) -> int:
    """Delete the oldest entries of Inductor's and Triton's caches, the shared ones and the evaluators', until they
    hold no more than `limit` bytes together (a file counted as a BLOCK at least), and the folders left empty; the
    bytes deleted. An entry is a folder's files (a folder of Triton's is one kernel), its age that of its newest
    file. Only while no evaluator runs (`in_use`). Through folder descriptors (`os.fwalk`): a folder made a link
    meanwhile (where an agent can write the caches) leads nowhere."""
    tops = [str(p) for p in [*shared_dirs().values(), *(evaluator_dir() / sub for sub in CACHES.values())]]
    tops = [top for top in tops if os.path.lexists(top)]  # (os.fwalk raises for a missing one)
    entries: list[tuple[float, int, str, str, list[str]]] = []  # age, bytes, top, folder under it, its files
    for top in tops:
        for directory, _, files, folder in os.fwalk(top):
            newest, size, names = 0.0, 0, []
            for name in files:
                try:
                    st = os.stat(name, dir_fd=folder, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode) and not name.endswith(LOCK):
                    newest, size = max(newest, st.st_mtime), size + max(st.st_size, BLOCK)
                    names.append(name)
            if names:
                entries.append((newest, size, top, os.path.relpath(directory, top), names))
    excess = sum(entry[1] for entry in entries) - limit
    doomed: dict[tuple[str, str], list[str]] = {}
    freed = 0
    for _, size, top, under, names in sorted(entries):
        if freed >= excess:
            break
        doomed[top, under] = names
        freed += size
    for top in tops if doomed else []:
        for directory, subdirs, _, folder in os.fwalk(top, topdown=False):
            for name in doomed.get((top, os.path.relpath(directory, top)), []):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=folder)
            for name in subdirs:  # emptied now (walked bottom up), or before: else it stays
                with contextlib.suppress(OSError):
                    os.rmdir(name, dir_fd=folder)
    return freed


def _per_run() -> bool:
    return switches.switched(MODE_ENV)


def _link_tree(shared: Path, top: Path) -> None:
    """Make `shared`'s directories under `top`, each file a link to the shared one."""
    for directory, subdirs, files in os.walk(shared):
        here = top / os.path.relpath(directory, shared)
        here.mkdir(exist_ok=True)
        for name in files:
            if not name.endswith(LOCK) and not os.path.lexists(here / name):
                os.symlink(os.path.join(directory, name), here / name)
        subdirs[:] = [d for d in subdirs if not os.path.islink(os.path.join(directory, d))]


def _staged_files(layer: Path) -> list[tuple[str, str]] | None:
    """(compiler's folder, path under it) of the regular files `_own_files` finds in each compiler's folder of
    `layer`; None where they and the folders that hold them come to more than MAX_STAGED_FILES together. Only the
    folders that hold them: a run's layer holds a copy of every folder of the shared cache (`fill`), which a few
    nights of honest runs bring past the cap (red team)."""
    found = [(sub, rel) for sub in CACHES.values() for rel in _own_files(layer / sub, MAX_STAGED_FILES)]
    folders = {(sub, str(parent)) for sub, rel in found for parent in Path(rel).parents if parent != Path(".")}
    return None if len(found) + len(folders) > MAX_STAGED_FILES else found


def _own_files(top: Path, most: int | None = None) -> list[str]:
    """The regular files under `top`, at most MAX_DEPTH folders down (links, lock files and anything else are not
    followed or taken), relative to it; none if `top` itself is a link. With `most`: no more than one past it."""
    found: list[str] = []
    if os.path.islink(top):
        return found
    for directory, subdirs, files in os.walk(top):
        for name in files:
            path = os.path.join(directory, name)
            if not name.endswith(LOCK) and not os.path.islink(path) and os.path.isfile(path):
                found.append(os.path.relpath(path, top))
                if most is not None and len(found) > most:
                    return found
        rel = os.path.relpath(directory, top)
        deep = rel != "." and rel.count(os.sep) + 1 >= MAX_DEPTH
        subdirs[:] = [] if deep else [d for d in subdirs if not os.path.islink(os.path.join(directory, d))]
    return found
