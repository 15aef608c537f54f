"""Token shards on disk: raw little-endian uint16 rows, a JSON record per shard, a manifest per dataset.

A shard `NAME.bin` holds `rows x row_len` tokens; `NAME.json` records its row count, SHA-256 and the
identity of the source part it came from. `manifest.json` is written last and lists every shard, so a
prepared dataset is complete exactly when its manifest exists. Nothing here is a pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoresearch.errors import DataError
from autoresearch.files import file_sha256, write_json_atomic

MANIFEST_FORMAT = "autoresearch-shards-1"
REPAIR_HINT = "run `autoresearch prepare` with the same --dataset and --preset: it rebuilds damaged shards"


@dataclass(frozen=True)
class ShardInfo:
    name: str
    split: str
    rows: int
    row_len: int
    sha256: str
    identity: str  # the source part it was made from
    tokenizer_sha256: str
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_len * 2


@dataclass(frozen=True)
class Manifest:
    format: str
    dataset: dict[str, Any]
    preset: dict[str, Any]
    tokenizer_sha256: str
    row_len: int
    shards: list[ShardInfo]

    def split(self, name: str) -> list[ShardInfo]:
        return [s for s in self.shards if s.split == name]

    def digest(self) -> str:
        """Changes when the data, the tokenizer or the preset change."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc}", hint=REPAIR_HINT) from exc
        return cls.parse(text, path)

    @classmethod
    def parse(cls, text: str, source: str | Path) -> Manifest:
        """The manifest in `text` (read from `source`, which errors name)."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, found {type(data).__name__}")
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
            data["shards"] = [ShardInfo(**s) for s in data["shards"]]
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise DataError(f"cannot read {source}: {exc}", hint=REPAIR_HINT) from exc


def write_shard(directory: Path, info: ShardInfo, rows: np.ndarray) -> ShardInfo:
    """Write `rows` as `<name>.bin` plus its `<name>.json` record, each atomically; returns the record."""
    assert rows.dtype == np.uint16 and rows.ndim == 2 and rows.shape == (info.rows, info.row_len)
    data = np.ascontiguousarray(rows).astype("<u2", copy=False).tobytes()
    info = ShardInfo(**{**asdict(info), "sha256": hashlib.sha256(data).hexdigest()})
    tmp = directory / f"{info.name}.bin.tmp"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, directory / f"{info.name}.bin")
    except BaseException:  # a full disk, a Ctrl-C: half a shard (as large as the disk had room for) is no use
        tmp.unlink(missing_ok=True)
        raise
    write_json_atomic(directory / f"{info.name}.json", asdict(info))
    return info


def read_shard_record(directory: Path, name: str) -> ShardInfo | None:
    """The record of a finished shard whose file is intact (full size, matching hash), else None."""
    try:
        info = ShardInfo(**json.loads((directory / f"{name}.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return info if shard_intact(directory, info) else None


def shard_intact(directory: Path, info: ShardInfo) -> bool:
    path = directory / f"{info.name}.bin"
    try:
        return path.stat().st_size == info.nbytes and file_sha256(path) == info.sha256
    except OSError:
        return False


def evaluation_rows(val_rows: np.ndarray, count: int) -> np.ndarray:
    """The `count` rows the evaluator scores: spread evenly over the whole validation shard. Its first rows are
    the pieces of its longest documents (packing fills rows longest first), so they may all be one file."""
    if count >= len(val_rows):
        return np.asarray(val_rows)
    return np.asarray(val_rows[(np.arange(count) * len(val_rows)) // count])


def open_shard(directory: Path, info: ShardInfo, verify: bool) -> np.ndarray:
    """Memory-map a shard as (rows, row_len) uint16, checking its size (and its hash if `verify`)."""
    path = directory / f"{info.name}.bin"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"shard {path} is missing", hint=REPAIR_HINT) from None
    if size != info.nbytes:
        raise DataError(f"shard {path} is truncated or damaged: {size} bytes, expected {info.nbytes}", hint=REPAIR_HINT)
    if verify and file_sha256(path) != info.sha256:
        raise DataError(f"shard {path} is corrupt: its SHA-256 differs from the manifest", hint=REPAIR_HINT)
    if info.rows == 0:
        return np.empty((0, info.row_len), dtype=np.uint16)
    # Copy-on-write: writable for torch.from_numpy, but nothing is ever written back to the file.
    return np.memmap(path, dtype="<u2", mode="c", shape=(info.rows, info.row_len))
