"""Files that travel through Ray's object store, for nodes that do not share the loop's filesystem.

A file travels as pieces of at most CHUNK_BYTES, each its own object (or, when small, carried along in
the task's argument or answer): neither side ever holds a whole shard in memory (an h100 shard is
hundreds of MB, a dataset GBs). The driver puts the prepared data in once per loop (`ship_data`); a node
fetches it once into a directory of its own named by the manifest's digest (`node_copy`), verifies every
file against the manifest, and uses that copy for every later run of the same data. A run's products
(result, log, compiled files) travel back to the driver the same way (`pack`, `unpack`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from autoresearch.data.shards import REPAIR_HINT, Manifest, shard_intact
from autoresearch.data.tokenizer import Tokenizer
from autoresearch.errors import AutoresearchError, DataError
from autoresearch.files import clear

CHUNK_BYTES = 64 << 20  # a piece of a file: 64 MiB bounds what either side holds at once
INLINE_BYTES = 1 << 20  # a product piece up to this size rides in the task's answer, not the object store
MANIFEST, TOKENIZER = "manifest.json", "tokenizer.json"
VERIFIED = "verified.json"  # in a node's copy: each file's size and mtime when it was verified


class DataRefused(DataError):
    """The data a node received does not match its manifest: the node trains nothing with it."""


@dataclass(frozen=True)
class Parcel:
    """Files by path relative to a directory, each a list of pieces: bytes, or references to bytes in Ray's
    object store (fetched with `get` when unpacked)."""

    files: dict[str, list[Any]]


def pack(root: Path, names: Iterable[str], keep: Callable[[bytes], Any]) -> Parcel:
    """Read the files `names` under `root` piece by piece; `keep` turns each piece into what travels
    (ray.put for the object store, or the bytes themselves)."""
    files = {}
    for name in names:
        pieces = []
        with (root / name).open("rb") as f:
            while piece := f.read(CHUNK_BYTES):
                pieces.append(keep(piece))
        files[name] = pieces
    return Parcel(files)


def unpack(parcel: Parcel, root: Path, get: Callable[[Any], bytes]) -> None:
    """Write the parcel's files under `root`, fetching each referenced piece with `get` as it is written."""
    for name, pieces in parcel.files.items():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise AutoresearchError(f"a file sent through Ray names a path outside its directory: {name!r}")
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as f:
            for piece in pieces:
                f.write(piece if isinstance(piece, bytes) else get(piece))


def ship_data(data_dir: Path, manifest: Manifest, put: Callable[[bytes], Any]) -> Parcel:
    """Put the prepared data in `data_dir` (the tokenizer and the shards `manifest` lists) into the object store
    with `put`, piece by piece. The manifest itself travels as text, with each run's request."""
    names = [TOKENIZER, *(f"{shard.name}.bin" for shard in manifest.shards)]
    try:
        return pack(data_dir, names, put)
    except OSError as exc:
        raise DataError(
            f"cannot send the prepared data in {data_dir} to the Ray nodes: {exc}", hint=REPAIR_HINT
        ) from exc


def node_copy(manifest: str, files: Parcel, root: Path, get: Callable[[Any], bytes], scratch: Path) -> Path:
    """This node's verified copy of the data of `manifest` (its text) whose files are `files`: `root/<digest>`,
    fetched and verified the first time, then reused while its files are as they were verified (fetched
    again if one changed). DataRefused if what arrives does not match the manifest. It is fetched into `scratch`,
    the worker's own folder (loop/ray_work.py), so that a worker killed meanwhile leaves its part of a copy where
    the node's next run deletes it, and moved to `root` whole."""
    digest = Manifest.parse(manifest, "the loop's manifest").digest()
    final = root / digest
    if _unchanged(final):
        return final
    shutil.rmtree(final, ignore_errors=True)  # changed since it was verified (or half made): fetch it again
    root.mkdir(parents=True, exist_ok=True)
    if os.stat(scratch).st_dev != os.stat(root).st_dev:  # no move in one step from another file system
        scratch = root
    fresh = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}-", dir=scratch))
    try:
        (fresh / MANIFEST).write_text(manifest)
        unpack(files, fresh, get)
        if (problem := verify(fresh, digest)) is not None:
            raise DataRefused(f"the data it received for manifest {digest[:16]} {problem}", hint=REPAIR_HINT)
        _stamp(fresh)
        with contextlib.suppress(OSError):  # fails if another worker of this node was first: its copy is as good
            fresh.rename(final)
        return final
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def verify(directory: Path, digest: str) -> str | None:
    """Why the prepared data in `directory` is not the data of manifest `digest`, or None if it is: the
    manifest's digest, the tokenizer's and every shard's size and SHA-256."""
    try:
        manifest = Manifest.load(directory / MANIFEST)
        if manifest.digest() != digest:
            return "has another manifest"
        if Tokenizer.load(directory / TOKENIZER).digest() != manifest.tokenizer_sha256:
            return "has a tokenizer that differs from its manifest"
    except (OSError, DataError) as exc:
        return f"cannot be read: {exc}"
    for shard in manifest.shards:
        if not shard_intact(directory, shard):
            return f"has a shard {shard.name} that differs from its manifest (size or SHA-256)"
    return None


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name != VERIFIED)


def _stamp(directory: Path) -> None:
    stats = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in _files(directory)}
    (directory / VERIFIED).write_text(json.dumps(stats))


def _unchanged(directory: Path) -> bool:
    """The copy was verified, and no file of it has changed size or mtime since (a cheap look before each run;
    the evaluator hashes the shards it reads anyway)."""
    try:
        stamped = json.loads((directory / VERIFIED).read_text())
        now = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in _files(directory)}
    except (OSError, ValueError):
        return False
    return stamped == now


def remove_tree(path: Path) -> None:
    """Delete `path` if it is there: a file or a link, or a folder with all it holds however a run left it
    (files.clear: nested past Python's recursion limit, where shutil.rmtree raised RecursionError, or made
    read-only); what of a folder cannot go stays."""
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            clear(path)
    else:
        clear(path)
