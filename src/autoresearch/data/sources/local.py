"""`local:PATH`: a user's own directory of .txt, .md, .jsonl (`text` field) or .parquet (`text` column)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from autoresearch.data.sources.base import TextCorpus, path_tag
from autoresearch.errors import DataError

SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")


def iter_local_documents(root: Path) -> Iterator[str]:
    files = sorted(Path(d, f) for d, _, names in os.walk(root) for f in names if f.endswith(SUFFIXES))
    if not files:
        raise DataError(f"no {', '.join(SUFFIXES)} files under {root}")
    for path in files:
        if path.suffix in (".txt", ".md"):
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                yield text
        elif path.suffix == ".jsonl":
            yield from _jsonl_texts(path)
        else:
            yield from parquet_texts(path)


def _jsonl_texts(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
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


def parquet_texts(path: Path, column: str = "text") -> Iterator[str]:
    """The `text` column of a parquet file, a row group at a time; a damaged file is a DataError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        if column not in pf.schema_arrow.names:
            raise DataError(f"{path} has no {column!r} column (columns: {', '.join(pf.schema_arrow.names)})")
        for i in range(pf.num_row_groups):
            for text in pf.read_row_group(i, columns=[column]).column(0).to_pylist():
                if text and text.strip():
                    yield text
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path} is not a readable parquet file: {exc}") from exc


class LocalSource(TextCorpus):
    def __init__(self, path: Path, val_bytes: int, max_bytes: int | None):
        super().__init__(val_bytes, max_bytes)
        self.root = path.expanduser().resolve()
        if not self.root.is_dir():
            raise DataError(f"local dataset {path} is not a directory", hint="use local:/path/to/dir")
        self.name = f"local:{self.root}"
        self.slug = f"local-{path_tag(self.root)}"
        self.request = {"dataset": self.name, "val_bytes": val_bytes, "max_bytes": max_bytes}

    def documents(self) -> Iterator[str]:
        return iter_local_documents(self.root)
