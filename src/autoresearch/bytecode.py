"""Whether a byte-code cache (`__pycache__/*.pyc`) is Python's own: its source compiled, and nothing else.

Python writes these as it imports: the loop's own processes do, in the folders runs read (a venv that uv installed
without them), at any time. Any other file there could carry data past a check that let caches be (weights trained
during an agent's turn, for a run to read): another name (`train.<weights>.pyc` is train.py's to importlib), more
bytes after the code, or the same code in other bytes. Code objects compare equal whatever the inline caches of
3.11's instructions hold (room for every byte of them), the order of a frozenset's items, and how marshal marked each
object; so a cache Python could have written is written again as this Python writes it (`vouch_for`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import marshal
import os
import struct
import tempfile
import types
from pathlib import Path

from autoresearch.files import read_regular

MAX_SOURCE_BYTES = 4 << 20  # a byte-code cache of a larger source is not compiled to be checked: it counts as a change
MAX_CACHE_BYTES = 8 * MAX_SOURCE_BYTES  # nor a larger cache
OPTIMIZATIONS = ("", "1", "2")  # the `.opt-N` of a cache's name that Python writes (-O, -OO)


def innocent(path: str, gone: bool) -> bool:
    """Whether a change to the file at `path` is Python's doing: a byte-code cache deleted (`gone`), or its own
    (`vouch_for`, which leaves its bytes exactly this Python's)."""
    return is_cache(path) and (gone or vouch_for(path))


def is_cache(path: str) -> bool:
    return path.endswith(".pyc") and os.path.basename(os.path.dirname(path)) == "__pycache__"


def vouch_for(path: str) -> bool:
    """Whether the byte-code cache at `path` is what Python writes for its source: the name Python gives it, the
    magic number, a header that names the source (its mtime and size, or its hash), and its source's code object
    (compiled here to compare); if so, its bytes are made this Python's own for that code (written again where they
    differ: Python's own can differ in how marshal marked an object, and anything else could carry data)."""
    try:
        source = importlib.util.source_from_cache(path)
        levels = [o for o in OPTIMIZATIONS if importlib.util.cache_from_source(source, optimization=o) == path]
        # Neither followed if it is a link (its target could change unseen) nor waited on if it is a FIFO.
        data = read_regular(Path(path), MAX_CACHE_BYTES)
        if not levels or data[:4] != importlib.util.MAGIC_NUMBER:
            return False
        text = read_regular(Path(source), MAX_SOURCE_BYTES, follow=True)  # a venv's, uv's say, can be a link
        if data[4:16] not in _headers(Path(source), text):
            return False
        stream = io.BytesIO(data[16:])
        code = marshal.load(stream)
        if stream.tell() != len(data) - 16 or not isinstance(code, types.CodeType):  # something after the code
            return False
        # As Python compiles it, under the name it was imported by (checked: `_same_code`)
        compiled = compile(text, code.co_filename, "exec", dont_inherit=True, optimize=int(levels[0] or 0))
        if not _same_code(code, compiled, Path(source)):
            return False
        own = marshal.dumps(compiled)
        return own == data[16:] or _write(Path(path), data[:16] + own)
    # RecursionError and MemoryError: compiling `x.y.y...` or `not not ...`, 100,000 deep (the parser's stack)
    except (OSError, ValueError, EOFError, TypeError, SyntaxError, IndexError, RecursionError, MemoryError):
        return False


def _write(path: Path, data: bytes) -> bool:
    """Replace the file at `path` by one that holds `data`, with its mode (as Python writes a cache: beside it, then
    renamed over it); whether it could."""
    mode = os.stat(path, follow_symlinks=False).st_mode & 0o777
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.")
    try:
        with open(fd, "wb") as file:
            file.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    return True


def _headers(source: Path, text: bytes) -> tuple[bytes, ...]:
    """The headers Python writes (or reads) for `source`: its mtime and size (what an import writes), or its hash,
    checked or not (py_compile's, compileall's). Any other 12 bytes could carry data."""
    stat = source.stat()
    digest = importlib.util.source_hash(text)
    timestamp = struct.pack("<III", 0, int(stat.st_mtime) & 0xFFFFFFFF, stat.st_size & 0xFFFFFFFF)
    return timestamp, struct.pack("<I", 1) + digest, struct.pack("<I", 3) + digest


def _same_code(cached: types.CodeType, compiled: types.CodeType, source: Path) -> bool:
    """`==` between code objects, and what it does not compare: the file and qualified names and the stack size
    (strings of any length, an int: room for weights, read from the cache file by a run), in each nested one."""
    if cached != compiled or not isinstance(cached, types.CodeType):
        return False
    names = ("co_qualname", "co_stacksize", "co_varnames", "co_cellvars", "co_freevars")  # 3.10 has no co_qualname
    if any(getattr(cached, name, None) != getattr(compiled, name, None) for name in names):
        return False
    # Python writes the path it imported the source from: this one, or another way to it (a venv that is a link)
    filename = cached.co_filename
    if os.path.normpath(filename) != filename or not os.path.samefile(filename, source):
        return False
    nested = [
        (a, b) for a, b in zip(cached.co_consts, compiled.co_consts, strict=True) if isinstance(b, types.CodeType)
    ]
    return all(_same_code(a, b, source) for a, b in nested)
