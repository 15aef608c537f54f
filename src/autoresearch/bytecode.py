"""Whether a byte-code cache (`__pycache__/*.pyc`) holds its source compiled and nothing else.

Python writes these as it imports: the loop's own processes do, and so does an agent that tries train.py. One
that holds exactly its source, compiled, carries nothing a person or a run did not already have; any other file
there could carry data (weights, notes from an earlier turn) past a check that let caches be, so it is no cache.
"""

from __future__ import annotations

import importlib.util
import io
import marshal
import os
import struct
import types
from pathlib import Path

from autoresearch.files import read_regular

MAX_SOURCE_BYTES = 4 << 20  # a byte-code cache of a larger source is not compiled to be checked: it counts as a change
MAX_CACHE_BYTES = 8 * MAX_SOURCE_BYTES  # nor a larger cache


def innocent(path: str, gone: bool) -> bool:
    """Whether a change to the file at `path` is Python's doing: a byte-code cache deleted (`gone`) or faithful."""
    return is_cache(path) and (gone or faithful(path))


def is_cache(path: str) -> bool:
    return path.endswith(".pyc") and os.path.basename(os.path.dirname(path)) == "__pycache__"


def faithful(path: str) -> bool:
    """Whether the byte-code cache at `path` is what Python would write for its source: the magic number, the
    header that names the source (its mtime and size, or its hash), and nothing but its source's code object
    (compiled here to compare). Anything else could carry data."""
    try:
        source = Path(importlib.util.source_from_cache(path))
        # Neither followed if it is a link (its target could change unseen) nor waited on if it is a FIFO.
        data = read_regular(Path(path), MAX_CACHE_BYTES)
        if data[:4] != importlib.util.MAGIC_NUMBER:
            return False
        text = read_regular(source, MAX_SOURCE_BYTES, follow=True)  # a venv's, uv's say, can be a link
        if data[4:16] not in _headers(source, text):
            return False
        optimize = int(path.rsplit(".opt-", 1)[1].split(".")[0]) if ".opt-" in os.path.basename(path) else 0
        stream = io.BytesIO(data[16:])
        code = marshal.load(stream)
        if stream.tell() != len(data) - 16:  # something after the code object
            return False
        return _same_code(code, compile(text, str(source), "exec", dont_inherit=True, optimize=optimize), source)
    # RecursionError and MemoryError: compiling `x.y.y...` or `not not ...`, 100,000 deep (the parser's stack)
    except (OSError, ValueError, EOFError, TypeError, SyntaxError, IndexError, RecursionError, MemoryError):
        return False


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
