"""`local:PATH`: a user's own directory (or one file) of .txt, .md, .jsonl (`text` field) or .parquet (`text` column).

The directory is checked when the source is made, before `prepare` writes anything (`check_corpus`): a
file that is not text (not UTF-8, or mostly control characters: random bytes named .txt) is refused, a
corpus smaller than the validation set alone is refused, and one whose training part is tiny next to
the validation set is warned about. `prepare` then reads and splits it (`LocalSource.check`), still before
writing anything: a corpus with too little distinct text is refused there.

Each .txt or .md file, .jsonl line and .parquet row is a document. A document longer than `CUT_OVER_PIECES`
validation pieces (a book, a whole corpus in one file) is cut at line breaks into chunks of at most a piece,
each a document from then on: one or two big files then split into train and validation by content hash like
many small ones, validation gets whole chunks from all over them, and the tokenizer sees all their text.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from autoresearch.data.sources.base import TextCorpus, path_tag, too_small_hint
from autoresearch.errors import DataError

log = logging.getLogger(__name__)

SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")
SAMPLE_BYTES = 64 * 1024  # read from the start of each checked file
SAMPLE_FILES = 256  # at most this many files are checked, spread evenly over the sorted list
MAX_BAD_FRACTION = 0.05  # of a sample's characters: undecodable bytes or control characters
TINY_FACTOR = 10  # training text under this many times the validation text is "tiny": a warning
PARQUET_TEXT_PER_BYTE = 3  # rough text bytes per byte of a compressed parquet file, for the warning only
_TEXT_CONTROLS = frozenset("\t\n\r\f\v")
CUT_OVER_PIECES = 16  # a document longer than this many validation pieces is cut into chunks of a piece
CUT_CHARS = 4096  # the chunk size where no validation piece is given


def corpus_files(root: Path) -> list[Path]:
    """The corpus's files: those under a directory, or the one file `root` names."""
    if root.is_file():
        if not root.name.endswith(SUFFIXES):
            raise DataError(f"{root} is not a {', '.join(SUFFIXES)} file")
        return [root]
    files = sorted(Path(d, f) for d, _, names in os.walk(root) for f in names if f.endswith(SUFFIXES))
    if not files:
        raise DataError(
            f"no {', '.join(SUFFIXES)} files under {root}",
            hint="a local dataset reads only files named so (a .jsonl with a 'text' field, a .parquet with a 'text' "
            "column); for a tree of .py files use --dataset python-source --root DIR",
        )
    # A FIFO (or a device, a socket) that is named so: reading it would wait for a writer for ever, at "reading"
    if odd := next((p for p in files if p.exists() and not p.is_file()), None):
        raise DataError(
            f"{odd} is not a regular file: a FIFO, a socket or a device",
            hint="a local dataset reads files of text: remove it from the directory",
        )
    return files


def bad_fraction(sample: bytes) -> float:
    """The fraction of characters in `sample` that are not text: bytes that do not decode as UTF-8, and
    control characters other than whitespace. A multi-byte character cut at the sample's end is forgiven."""
    text = sample.decode("utf-8", errors="replace")
    if text.endswith("\ufffd") and len(sample) == SAMPLE_BYTES:
        text = text.rstrip("\ufffd")
    if not text:
        return 0.0
    bad = sum(1 for ch in text if ch == "\ufffd" or (ord(ch) < 32 and ch not in _TEXT_CONTROLS) or 127 <= ord(ch) < 160)
    return bad / len(text)


def check_corpus(root: Path, val_bytes: int, smaller: Mapping[str, int] | None = None) -> None:
    """Refuse files that are not text and a corpus too small for the validation set; warn when it is tiny.
    DataError names the file or the sizes, and what to do (`smaller`: other presets' validation bytes, by name)."""
    files = corpus_files(root)
    if linked := [Path(d, n) for d, dirs, _ in os.walk(root) for n in dirs if os.path.islink(os.path.join(d, n))]:
        log.warning(  # not followed (a link to a folder above would be a loop): its text is not in the corpus
            "%d linked folder%s under %s %s not read (links to folders are not followed): %s",
            len(linked),
            "" if len(linked) == 1 else "s",
            root,
            "is" if len(linked) == 1 else "are",
            ", ".join(str(p.relative_to(root)) for p in linked[:5]) + (", ..." if len(linked) > 5 else ""),
        )
    step = max(1, len(files) / SAMPLE_FILES)
    for path in dict.fromkeys(files[int(i * step)] for i in range(min(len(files), SAMPLE_FILES))):
        if path.suffix == ".parquet":
            next(parquet_texts(path), None)  # the footer and first row group: a DataError if it is no parquet
            continue
        try:
            with path.open("rb") as f:
                sample = f.read(SAMPLE_BYTES)
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc}") from exc
        fraction = bad_fraction(sample)
        if fraction > MAX_BAD_FRACTION:
            raise DataError(
                f"{path} is not text: {fraction:.0%} of its first {len(sample):,} bytes are not UTF-8 or are "
                "control characters",
                hint="a local dataset takes UTF-8 text (.txt, .md, .jsonl with a 'text' field, .parquet with a "
                "'text' column): remove this file from the directory or convert it to UTF-8",
            )
    plain = sum(p.stat().st_size for p in files if p.suffix != ".parquet")
    packed = sum(p.stat().st_size for p in files if p.suffix == ".parquet")
    if not packed and plain <= val_bytes:  # parquet text can be many times its file size: no early refusal
        counted = f"{len(files)} file{'' if len(files) == 1 else 's'}"
        raise DataError(
            f"corpus too small: {plain:,} bytes in {counted} under {root}, where validation alone "
            f"takes {val_bytes:,} bytes and training needs more",
            hint=too_small_hint(plain, val_bytes, smaller),
        )
    train = plain + PARQUET_TEXT_PER_BYTE * packed - val_bytes
    if train < TINY_FACTOR * val_bytes:
        log.warning(
            "the corpus under %s is tiny: about %.1f MB of training text next to %.1f MB of validation text. "
            "An experiment will see the same text many times over, so val_bpb will mostly measure memorisation; "
            "use at least %.0f MB of text for results that carry over",
            root,
            max(train, 0) / 1e6,
            val_bytes / 1e6,
            (TINY_FACTOR + 1) * val_bytes / 1e6,
        )


def iter_local_documents(root: Path) -> Iterator[str]:
    for path in corpus_files(root):
        if path.suffix in (".txt", ".md"):
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                yield text
        elif path.suffix == ".jsonl":
            yield from _jsonl_texts(path)
        else:
            yield from parquet_texts(path)


def _jsonl_texts(path: Path) -> Iterator[str]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{lineno}: not a JSON object with a 'text' field ({exc})") from exc
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: 'text' is {type(text).__name__}, not a string")
            if text.strip():
                yield text


class NoTextColumn(DataError):
    """A readable parquet file without the column of text: not a damaged file, another kind of file."""


def parquet_texts(path: Path, column: str = "text") -> Iterator[str]:
    """The `text` column of a parquet file, a row group at a time; a damaged file is a DataError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        if column not in pf.schema_arrow.names:
            raise NoTextColumn(f"{path} has no {column!r} column (columns: {', '.join(pf.schema_arrow.names)})")
        for i in range(pf.num_row_groups):
            for text in pf.read_row_group(i, columns=[column]).column(0).to_pylist():
                if text and text.strip():
                    yield text
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path} is not a readable parquet file: {exc}") from exc


class LocalSource(TextCorpus):
    def __init__(
        self,
        path: Path,
        val_bytes: int,
        max_bytes: int | None,
        val_piece: int | None = None,
        *,
        smaller: Mapping[str, int] | None = None,
    ):
        chunk = val_piece or CUT_CHARS
        super().__init__(val_bytes, max_bytes, val_piece, cut=(chunk, CUT_OVER_PIECES * chunk), smaller=smaller)
        try:
            self.root = path.expanduser().resolve()
        except RuntimeError:  # `~name/...` where no user is so named: Path.expanduser's error, a traceback
            self.root = path
        if not self.root.exists():
            raise DataError(
                f"local dataset {path} does not exist", hint="use local:/path/to/dir (or local:/path/to/file.txt)"
            )
        self.name = f"local:{self.root}"
        self.slug = f"local-{path_tag(self.root)}"
        self.request = {"dataset": self.name, "val_bytes": val_bytes, "max_bytes": max_bytes, "val_piece": val_piece}
        check_corpus(self.root, val_bytes, smaller)

    def documents(self) -> Iterator[str]:
        return iter_local_documents(self.root)
