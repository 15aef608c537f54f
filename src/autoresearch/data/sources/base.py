"""What a data source gives `prepare`: documents, already divided into train and validation parts."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from autoresearch.errors import DataError

TRAIN, VAL = "train", "val"


@dataclass(frozen=True)
class Part:
    """A unit of work for `prepare`: one part becomes one token shard, written once, atomically."""

    name: str  # file stem of the shard, e.g. "train-00003" or "val"
    split: str  # TRAIN or VAL
    documents: Callable[[], Iterator[str]]
    identity: str  # changes whenever the documents change (a file hash, a content hash)


class Source(Protocol):
    name: str  # the dataset name the user gave
    slug: str  # a directory-safe name for the cache
    request: dict[str, Any]  # what the user asked for; prepared data is reused while it matches

    def check(self) -> None:
        """Refuse data that cannot be prepared (a DataError), before `prepare` writes anything. Safe to call
        again; `fetch` reuses what it read."""

    def fetch(self) -> None:
        """Make the raw data available locally (download, scan). Safe to call again."""

    def parts(self) -> list[Part]:
        """The train parts in order, then exactly one VAL part. Call after `fetch`."""

    def describe(self) -> dict[str, Any]:
        """What this data is, for the manifest (name, origin, sizes)."""


@dataclass(frozen=True)
class TextSplit:
    train: list[str]
    val: list[str]
    duplicates_dropped: int


def split_texts(
    texts: Iterable[str],
    val_bytes: int,
    max_bytes: int | None,
    val_piece: int | None = None,
    smaller: Mapping[str, int] | None = None,
) -> TextSplit:
    """Deterministic train/val split of a corpus of documents, independent of the order they came in.

    Exact duplicates are dropped first, so no validation document can also appear in train. Documents
    are then ordered by the hash of their content; validation takes them in that order until it holds
    `val_bytes`, train takes the rest (up to `max_bytes` if given). With `val_piece`, validation keeps
    only a piece of at most that many characters from the middle of each of its documents (the rest is
    dropped, not trained on): the same `val_bytes` then come from many more documents, so a seed that
    happens to suit a few of them moves val_bpb less (BENCHMARKS.md, "the validation set"). A corpus
    of too few documents for that gets larger pieces. A corpus too small for validation plus training
    is a DataError; its hint names the presets of `smaller` (name -> validation bytes) that it would fit.
    """
    keyed: dict[bytes, str] = {}
    seen = 0
    for text in texts:
        seen += 1
        keyed.setdefault(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest(), text)
    ordered = [keyed[k] for k in sorted(keyed)]
    val, taken = _validation(ordered, val_bytes, val_piece)
    while val_piece is not None and taken < val_bytes and val_piece < max(map(len, ordered), default=0):
        val_piece *= 2  # too few documents for pieces this small
        val, taken = _validation(ordered, val_bytes, val_piece)
    train = ordered[len(val) :]
    if max_bytes is not None:
        kept, total = [], 0
        for text in train:
            if total >= max_bytes:
                break
            kept.append(text)
            total += len(text.encode("utf-8", "surrogatepass"))
        train = kept
    if not train or taken < val_bytes:
        have = sum(len(text.encode("utf-8", "surrogatepass")) for text in ordered)
        dropped = f", {seen - len(keyed)} exact duplicates dropped" if seen > len(keyed) else ""
        raise DataError(
            f"corpus too small: {have:,} bytes of distinct text ({len(ordered)} documents{dropped}), where "
            f"validation alone takes {val_bytes:,} bytes and training needs more",
            hint=too_small_hint(have, val_bytes, smaller),
        )
    return TextSplit(train=train, val=val, duplicates_dropped=seen - len(keyed))


def too_small_hint(have: int, val_bytes: int, smaller: Mapping[str, int] | None) -> str:
    """What to do about a corpus of `have` bytes, too small for a validation set of `val_bytes`."""
    hint = f"point the dataset at more text: validation takes {val_bytes:,} bytes, and training wants many times that"
    other = smaller_preset_hint(have, smaller)
    return f"{hint}; or {other}" if other else hint


def smaller_preset_hint(have: int | None, smaller: Mapping[str, int] | None) -> str | None:
    """Advice to use the largest preset of `smaller` (name -> validation bytes) whose validation set a corpus of
    `have` bytes holds (any, where `have` is None); None where there is none."""
    fits = sorted(((need, name) for name, need in (smaller or {}).items() if have is None or need < have), reverse=True)
    if not fits:
        return None
    need, name = fits[0]
    return f"use a preset with a smaller evaluation set: --preset {name} (validation takes {need:,} bytes)"


def cut_long_documents(texts: Iterable[str], chars: int, longer_than: int) -> Iterator[str]:
    """Each text, except that one longer than `longer_than` characters comes as consecutive chunks of at most
    `chars` (`line_chunks`): one big file (a book) then splits into train and validation like many documents."""
    for text in texts:
        if len(text) <= longer_than:
            yield text
        else:
            yield from (chunk for chunk in line_chunks(text, chars) if chunk.strip())


def line_chunks(text: str, chars: int) -> Iterator[str]:
    """`text` as consecutive chunks of at most `chars` characters that join back to it exactly. Each chunk ends
    at the last line break of its second half, else at its last space there, else after `chars` characters."""
    start = 0
    while len(text) - start > chars:
        end = start + chars
        cut = text.rfind("\n", start + chars // 2, end) + 1 or text.rfind(" ", start + chars // 2, end) + 1 or end
        yield text[start:cut]
        start = cut
    if start < len(text):
        yield text[start:]


def _validation(ordered: list[str], val_bytes: int, piece: int | None) -> tuple[list[str], int]:
    """The validation texts (the first documents, or a middle piece of each) and their bytes; one is left to train."""
    val: list[str] = []
    taken = 0
    while taken < val_bytes and len(val) < len(ordered) - 1:
        val.append(middle_piece(ordered[len(val)], piece))
        taken += len(val[-1].encode("utf-8", "surrogatepass"))
    return val, taken


def middle_piece(text: str, chars: int | None) -> str:
    """At most `chars` characters from the middle of `text`, starting at a line's beginning."""
    if chars is None or len(text) <= chars:
        return text
    start = text.rfind("\n", 0, (len(text) - chars) // 2) + 1
    return text[start : start + chars]


def text_parts(split: TextSplit, identity: str, part_bytes: int = 32 * 2**20) -> list[Part]:
    """Cut an in-memory split into train parts of about `part_bytes` each, then the val part."""
    parts: list[Part] = []
    start, size = 0, 0
    for i, text in enumerate(split.train):
        size += len(text)
        if size >= part_bytes or i == len(split.train) - 1:
            docs = split.train[start : i + 1]
            parts.append(
                Part(f"train-{len(parts):05d}", TRAIN, lambda d=docs: iter(d), f"{identity}/train/{len(parts)}")
            )
            start, size = i + 1, 0
    parts.append(Part("val", VAL, lambda: iter(split.val), f"{identity}/val"))
    return parts


def corpus_digest(texts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for text in texts:
        h.update(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
    return h.hexdigest()[:16]


class TextCorpus:
    """A source small enough to hold in memory: its documents are read, deduplicated and split by content
    hash (`split_texts`), then cut into parts. Subclasses set name, slug and request, and give `documents`.

    With `cut`, (chars, longer_than), a document longer than `longer_than` characters is first cut into chunks
    of at most `chars` at line breaks (`cut_long_documents`), and each chunk is a document from then on.
    `smaller` (preset name -> validation bytes) is for the hint of a corpus too small (`too_small_hint`)."""

    name: str
    slug: str
    request: dict[str, Any]

    def __init__(
        self,
        val_bytes: int,
        max_bytes: int | None,
        val_piece: int | None = None,
        *,
        cut: tuple[int, int] | None = None,
        smaller: Mapping[str, int] | None = None,
    ):
        self._val_bytes, self._max_bytes, self._val_piece = val_bytes, max_bytes, val_piece
        self._cut, self._smaller = cut, smaller
        self._split: TextSplit | None = None
        self._documents_cut = 0

    def documents(self) -> Iterator[str]:
        raise NotImplementedError

    def check(self) -> None:
        """Read and split the corpus: one too small for validation and training is refused here."""
        self.fetch()

    def fetch(self) -> None:
        if self._split is None:
            texts: Iterable[str] = self.documents()
            if self._cut is not None:
                texts = cut_long_documents(self._counted(texts, self._cut[1]), *self._cut)
            self._split = split_texts(texts, self._val_bytes, self._max_bytes, self._val_piece, self._smaller)

    def _counted(self, texts: Iterable[str], longer_than: int) -> Iterator[str]:
        self._documents_cut = 0
        for text in texts:
            if len(text) > longer_than:
                self._documents_cut += 1
            yield text

    def parts(self) -> list[Part]:
        assert self._split is not None, "fetch() first"
        return text_parts(self._split, corpus_digest(self._split.val + self._split.train))

    def describe(self) -> dict[str, Any]:
        if self._split is None:
            return dict(self.request)
        cut = {} if self._cut is None else {"documents_cut": self._documents_cut, "cut_chars": self._cut[0]}
        return {**self.request, **split_stats(self._split), **cut}


def split_stats(split: TextSplit) -> dict[str, Any]:
    return {
        "train_documents": len(split.train),
        "val_documents": len(split.val),
        "train_chars": sum(map(len, split.train)),
        "val_chars": sum(map(len, split.val)),
        "duplicates_dropped": split.duplicates_dropped,
    }


def path_tag(path: Path) -> str:
    """A short directory-safe name for a dataset that lives at `path`."""
    return f"{path.name}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
