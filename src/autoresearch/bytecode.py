"""Whether a byte-code cache (`__pycache__/*.pyc`) is Python's own: its source compiled, and nothing else.

Python writes these as it imports: the loop's own processes do, in the folders runs read (a venv that uv installed
without them), at any time. Any other file there could carry data past a check that let caches be (weights trained
during an agent's turn, for a run to read), or run other code than its source in the loop's own processes. And a
cache that is its source's code can still carry data (red team): in its name (`train.<weights>.pyc` is train.py's to
importlib), in bytes code equality does not compare (the inline caches of 3.11's instructions, the order of a
frozenset's items, how marshal marked each object), in the path it names its source by (through a link elsewhere, named
with the data), in its header's kind, its times, its mode or its extended attributes. So a cache that is its source's
code under the name Python gives it is written again as this Python writes it on import, a new file (`vouch_for`).

What still carries a little: which caches there are (a bit for each source and optimisation level, about 6 KiB in a
venv of 17,000 sources), less than a train.py may hold itself (256 KiB).

Caches are judged in a process of their own (`vouched`), its memory and time bounded: marshal makes the tuple a cache
says it holds before it reads an item, and 21 bytes claimed 16 GiB (red team).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import marshal
import os
import resource
import struct
import subprocess
import sys
import tempfile
import types
from pathlib import Path

from autoresearch.files import read_regular

MAX_SOURCE_BYTES = 4 << 20  # a byte-code cache of a larger source is not compiled to be checked: it counts as a change
MAX_CACHE_BYTES = 8 * MAX_SOURCE_BYTES  # nor a larger cache
OPTIMIZATIONS = ("", "1", "2")  # the `.opt-N` of a cache's name that Python writes (-O, -OO)
JUDGE_MEMORY = 2 << 30  # the address space of the process that judges caches: a claim past it is a MemoryError there
JUDGE_TIMEOUT_S = 300  # the caches it has not judged by then are not vouched for
TEMPORARY = ".judged-"  # `_write`'s new file is named the cache's name, this, and a random part, until renamed over it


def vouched(paths: list[str]) -> set[str]:
    """Those of the byte-code caches `paths` that `vouch_for` vouches for (and so wrote again), judged in a process
    of its own, this Python with this package only, isolated from the environment (`-I -S`), its memory and time
    bounded; one it did not judge is not vouched for. An int literal past the usual 4,300 digits compiles there, as
    it does in a process that raised the limit."""
    if not paths:
        return set()
    # No `site` (-S): a .pth file a turn put in the venv would run there, as you, before the check said "added". The
    # package's folder last: where that is site-packages, a backport there (enum34) shadowed the standard library
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    start = f"import sys; sys.path.append({package!r}); from autoresearch.bytecode import _judge; _judge()"
    judge = [sys.executable, "-I", "-S", "-X", "int_max_str_digits=0", "-c", start]
    try:
        asked = b"\0".join(map(os.fsencode, paths))
        out = subprocess.run(judge, input=asked, capture_output=True, timeout=JUDGE_TIMEOUT_S).stdout
    except subprocess.TimeoutExpired as stopped:
        out = stopped.stdout or b""
        _sweep(paths)
    except OSError:
        return set()
    except BaseException:  # Ctrl-C: run() killed it
        _sweep(paths)
        raise
    return set(paths) & {os.fsdecode(path) for path in out.split(b"\0")}


def _sweep(paths: list[str]) -> None:
    """Remove what a judge killed mid-write left beside the caches `paths` (`_write`'s new files, not yet renamed):
    left, the next check of the folders runs read saw a file no one wrote and stopped the loop, blaming the agent."""
    by_folder: dict[str, set[str]] = {}
    for path in paths:
        by_folder.setdefault(os.path.dirname(path), set()).add(os.path.basename(path) + TEMPORARY)
    for folder, prefixes in by_folder.items():
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                if entry.name.startswith(tuple(prefixes)) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)


def is_cache(path: str) -> bool:
    return path.endswith(".pyc") and os.path.basename(os.path.dirname(path)) == "__pycache__"


def vouch_for(path: str) -> bool:
    """Whether the byte-code cache at `path` is what Python writes for its source: the name Python gives it, the
    magic number, a header that names the source (its mtime and size, or its hash) and its source's code object
    (compiled here to compare); if so, it is replaced by the file an import writes (`_write`)."""
    try:
        source = importlib.util.source_from_cache(path)
        levels = [o for o in OPTIMIZATIONS if importlib.util.cache_from_source(source, optimization=o) == path]
        # Neither followed if it is a link (its target could change unseen) nor waited on if it is a FIFO.
        data = read_regular(Path(path), MAX_CACHE_BYTES)
        if not levels or data[:4] != importlib.util.MAGIC_NUMBER:
            return False
        text = read_regular(Path(source), MAX_SOURCE_BYTES, follow=True)  # a venv's, uv's say, can be a link
        headers = _headers(Path(source), text)
        if data[4:16] not in headers:
            return False
        stream = io.BytesIO(data[16:])
        code = marshal.load(stream)
        if stream.tell() != len(data) - 16 or not isinstance(code, types.CodeType):  # something after the code
            return False
        compiled = compile(text, source, "exec", dont_inherit=True, optimize=int(levels[0] or 0))
        if not _same_code(code, compiled):
            return False
        return _write(Path(path), Path(source), importlib.util.MAGIC_NUMBER + headers[0] + marshal.dumps(compiled))
    # Anything a cache can make marshal, compile or the file system raise (SystemError for a negative count in a code
    # object, RecursionError compiling `x.y.y...` 100,000 deep) is one Python did not write.
    except Exception:
        return False


def _headers(source: Path, text: bytes) -> tuple[bytes, ...]:
    """The headers Python writes (or reads) for `source`: its mtime and size (what an import writes), or its hash,
    checked or not (py_compile's, compileall's)."""
    stat = source.stat()
    digest = importlib.util.source_hash(text)
    timestamp = struct.pack("<III", 0, int(stat.st_mtime) & 0xFFFFFFFF, stat.st_size & 0xFFFFFFFF)
    return timestamp, struct.pack("<I", 1) + digest, struct.pack("<I", 3) + digest


def _same_code(cached: types.CodeType, compiled: types.CodeType) -> bool:
    """Whether `cached` runs as `compiled` does: `==` between code objects, and the stack size, which it does not
    compare (too small a one overruns the frame's stack), with the names a traceback shows, in each nested one. But
    for the tables of lines and columns: a process run with `-X no_debug_ranges` compiles them without the columns
    (the file is written again from `compiled` anyway)."""
    if not isinstance(cached, types.CodeType) or _lines_of(compiled, cached) != compiled:
        return False
    names = ("co_qualname", "co_stacksize", "co_varnames", "co_cellvars", "co_freevars")  # 3.10 has no co_qualname
    if any(getattr(cached, name, None) != getattr(compiled, name, None) for name in names):
        return False
    pairs = zip(cached.co_consts, compiled.co_consts, strict=True)  # as many: `==` compared them
    nested = [(a, b) for a, b in pairs if isinstance(b, types.CodeType)]
    return all(_same_code(a, b) for a, b in nested)


def _lines_of(compiled: types.CodeType, code: types.CodeType) -> types.CodeType:
    """`code` with the line tables of `compiled`, in each nested code object the two have in the same place."""
    consts = (
        tuple(
            _lines_of(b, a) if isinstance(a, types.CodeType) and isinstance(b, types.CodeType) else a
            for a, b in zip(code.co_consts, compiled.co_consts, strict=False)
        )
        + code.co_consts[len(compiled.co_consts) :]
    )
    return code.replace(co_linetable=compiled.co_linetable, co_consts=consts)


def _write(path: Path, source: Path, data: bytes) -> bool:
    """Replace the file at `path` by a new one that holds `data`, with the mode an import gives a cache (its source's,
    writable by you), beside it and renamed over it as an import does; whether it could."""
    mode = (os.stat(source).st_mode | 0o200) & 0o666
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + TEMPORARY)
    try:
        with open(fd, "wb") as file:
            file.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            return False
        raise
    return True


def _judge() -> None:
    """`vouched`'s process: the paths on standard input, NUL between them; those vouched for on standard output, each
    as soon as it is."""
    with contextlib.suppress(ValueError, OSError):  # not on every system (macOS)
        resource.setrlimit(resource.RLIMIT_AS, (JUDGE_MEMORY, JUDGE_MEMORY))
    for path in map(os.fsdecode, sys.stdin.buffer.read().split(b"\0")):
        if vouch_for(path):
            sys.stdout.buffer.write(os.fsencode(path) + b"\0")
            sys.stdout.flush()


if __name__ == "__main__":
    _judge()
