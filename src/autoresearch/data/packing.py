"""Best-fit packing of documents into fixed-length, BOS-aligned rows.

Each document is a token array that starts with BOS. A row holds `row_len` tokens (sequence length
plus one, for the shifted targets), starts with BOS and is filled completely, without padding:
- a document longer than a row is cut into row-sized pieces, each continuation prefixed with BOS;
- each row takes the longest waiting piece that still fits, best-fit;
- when no piece fits the space left, the shortest piece is split: its head closes the row and its
  tail (behind a new BOS) goes back to wait.
So no token is dropped except those of the last, incomplete row of a part; the only cost is one
extra BOS per split. `PackStats` counts both.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass
class PackStats:
    documents: int = 0
    tokens_in: int = 0  # document tokens, each document's own BOS included
    rows: int = 0
    splits: int = 0  # pieces cut at a row end or at row length; each adds one BOS
    tokens_dropped: int = 0  # tokens of the final, incomplete row

    def merge(self, other: PackStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class _Pool:
    """Pieces waiting for a row, bucketed by length, with the sorted list of lengths on hand."""

    def __init__(self) -> None:
        self.buckets: dict[int, list[np.ndarray]] = defaultdict(list)
        self.lengths: list[int] = []

    def add(self, piece: np.ndarray) -> None:
        n = len(piece)
        if not self.buckets[n]:
            bisect.insort(self.lengths, n)
        self.buckets[n].append(piece)

    def take(self, length: int) -> np.ndarray:
        bucket = self.buckets[length]
        piece = bucket.pop()
        if not bucket:
            self.lengths.pop(bisect.bisect_left(self.lengths, length))
        return piece

    def longest_fitting(self, space: int) -> int | None:
        i = bisect.bisect_right(self.lengths, space)
        return self.lengths[i - 1] if i else None


def pack_documents(docs: list[np.ndarray], row_len: int, bos_id: int) -> tuple[np.ndarray, PackStats]:
    """Pack BOS-prefixed token arrays into a (rows, row_len) uint16 array."""
    stats = PackStats(documents=len(docs), tokens_in=sum(len(d) for d in docs))
    bos = np.array([bos_id], dtype=np.uint16)
    pool = _Pool()
    for doc in docs:
        assert len(doc) >= 1 and doc[0] == bos_id, "each document starts with BOS"
        pool.add(doc[:row_len])
        for start in range(row_len, len(doc), row_len - 1):
            pool.add(np.concatenate([bos, doc[start : start + row_len - 1]]))
            stats.splits += 1

    rows: list[np.ndarray] = []
    row = np.empty(row_len, dtype=np.uint16)
    filled = 0
    while pool.lengths:
        length = pool.longest_fitting(row_len - filled)
        if length is not None:
            piece = pool.take(length)
        else:
            whole = pool.take(pool.lengths[0])
            piece = whole[: row_len - filled]
            pool.add(np.concatenate([bos, whole[len(piece) :]]))
            stats.splits += 1
        row[filled : filled + len(piece)] = piece
        filled += len(piece)
        if filled == row_len:
            rows.append(row.copy())
            filled = 0
    stats.tokens_dropped = filled
    stats.rows = len(rows)
    packed = np.stack(rows) if rows else np.empty((0, row_len), dtype=np.uint16)
    return packed, stats
