"""`python-source`: the text files of the running interpreter's standard library and site-packages.

The corpus that needs no network: every Python installation has one, and it is real text (code,
docstrings, documentation). `--root DIR` reads another directory tree instead.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterator, Mapping
from pathlib import Path

from autoresearch.data.sources.base import TextCorpus, path_tag
from autoresearch.errors import DataError

SUFFIXES = frozenset({".py", ".md", ".rst", ".txt"})
MAX_FILE_BYTES = 1_000_000  # larger files are mostly generated tables, not prose or code


def default_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    roots = {Path(paths[key]).resolve() for key in ("stdlib", "purelib", "platlib") if key in paths}
    # Site-packages sits inside the stdlib directory on many installs: keep only outermost roots.
    return sorted(r for r in roots if r.is_dir() and not any(o != r and o in r.parents for o in roots))


def read_text_files(roots: list[Path], suffixes: frozenset[str] = SUFFIXES) -> Iterator[str]:
    """Every UTF-8 text file under `roots` with a wanted suffix, in a stable order."""
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath, name)
                if path.suffix not in suffixes or path.is_symlink():
                    continue
                try:
                    if path.stat().st_size > MAX_FILE_BYTES:
                        continue
                    text = path.read_bytes().decode("utf-8")
                except (OSError, UnicodeDecodeError):
                    continue  # unreadable or not UTF-8: not text we can learn from
                if text.strip():
                    yield text


def roots_tag(roots: list[Path]) -> str:
    """A short directory-safe name for the default corpus read from `roots` (an interpreter's directories)."""
    return hashlib.sha256("\n".join(map(str, roots)).encode()).hexdigest()[:8]


class PythonSource(TextCorpus):
    def __init__(
        self,
        val_bytes: int,
        max_bytes: int | None,
        val_piece: int | None,
        root: Path | None = None,
        *,
        smaller: Mapping[str, int] | None = None,
    ):
        super().__init__(val_bytes, max_bytes, val_piece, smaller=smaller)
        if root is not None and not root.is_dir():
            raise DataError(f"--root {root} is not a directory")
        self.name = "python-source"
        self.roots = [root.resolve()] if root else default_roots()
        # The default corpus is this interpreter's: another Python (a second venv) reads other files, and must not
        # rebuild the data, in the same directory, that workspaces made with the first one are measured on.
        self.slug = f"python-source-{path_tag(self.roots[0])}" if root else f"python-source-{roots_tag(self.roots)}"
        self.request = {
            "dataset": self.name,
            "roots": [str(r) for r in self.roots],
            "val_bytes": val_bytes,
            "max_bytes": max_bytes,
            "val_piece": val_piece,
        }

    def documents(self) -> Iterator[str]:
        return read_text_files(self.roots)
