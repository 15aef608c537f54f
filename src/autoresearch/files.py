"""Small file helpers with one home: an atomic text or JSON write, a file's SHA-256, a set of source files' SHA-256."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON so that a reader sees the old file or the new one, never half of one."""
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def write_text_atomic(path: Path, text: str, tmp: Path | None = None, durable: bool = False) -> None:
    """Write `text` so that a reader, a kill or a full disk leaves the old file or the new one, never half of
    one. It is written first to `tmp` (default: beside it; on the same filesystem), removed if that fails.
    `durable`: a power cut too (the file and its folder are synced to the disk)."""
    tmp = tmp or path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        if durable:
            _sync(tmp)
        os.replace(tmp, path)
        if durable:
            _sync(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def sources_sha256(paths: list[Path], root: Path) -> str:
    """SHA-256 over files' names (relative to `root`) and contents, in the order given."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()
