"""`autoresearch prepare`: raw text -> BPE tokenizer -> packed token shards, resumable and idempotent.

Each source part becomes one shard, written atomically, so an interrupted run resumes at the first
unfinished part. `manifest.json` is written last: once it exists and matches the request, running
prepare again does nothing.

Data that cannot be prepared is refused before anything is written where the source can tell
(`Source.check`: a local corpus is read and split first); a build that fails on the data later (a
vocabulary the text cannot fill) removes what it wrote, unless it was resuming earlier work.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autoresearch.config.paths import prepared_dir
from autoresearch.config.presets import Preset
from autoresearch.data.packing import PackStats, pack_documents
from autoresearch.data.shards import (
    MANIFEST_FORMAT,
    Manifest,
    ShardInfo,
    read_shard_record,
    shard_intact,
    write_shard,
)
from autoresearch.data.sources import TRAIN, VAL, VAL_BYTES_PER_TOKEN, Part, Source, make_source, smaller_presets
from autoresearch.data.sources.base import smaller_preset_hint
from autoresearch.data.sources.hub import note_cache
from autoresearch.data.tokenizer import Tokenizer, capped_texts
from autoresearch.errors import DataError
from autoresearch.evaluator.cores import usable_cores
from autoresearch.workspace.disk import DiskFullError, is_disk_full

ENCODE_BATCH_DOCS = 1024
# Once space is freed: the shards already written are kept, and are not made again
PREPARE_AGAIN = "run the same command again: it resumes at the first shard not written yet"
# What a cache we may not write raises: a read-only mount, no permission, a file or /proc on the path.
_UNWRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.ENOENT, errno.EEXIST}


def prepare(
    dataset: str,
    preset: Preset,
    cache: Path,
    *,
    root: Path | None = None,
    shards: int | None = None,
    force: bool = False,
    console: Console | None = None,
) -> Path:
    """Prepare `dataset` for `preset` under `cache`; returns the prepared directory."""
    console = console or Console(stderr=True, emoji=False)
    source = make_source(dataset, preset, root=root, shards=shards)
    out = prepared_dir(cache, source.slug, preset.name)
    if force or not _current(out, source, preset):
        with console.status(f"reading {source.name}"):
            source.check()  # before anything is written: a local corpus too small is refused here
    created = _first_missing(out)
    try:
        with _exclusive(out, console):
            fresh = all(p.name == ".lock" for p in out.iterdir())
            try:
                _prepare_locked(dataset, source, preset, out, force, console)
            except DataError:
                if fresh:  # nothing was there to resume: leave nothing behind
                    _remove(out, created)
                raise
    except OSError as exc:
        if is_disk_full(exc):  # a shard's write names no file: the disk is full wherever it was writing
            raise DiskFullError(f"preparing the data in {out}", PREPARE_AGAIN) from exc
        if exc.errno in _UNWRITABLE and _on_path(exc.filename, out):
            raise DataError(
                f"cannot write the prepared data in {out}: {exc.strerror}",
                hint="give --cache-dir (or $AUTORESEARCH_CACHE) a directory you can write; "
                "a read-only one works once the data in it is prepared",
            ) from exc
        raise
    return out


def _prepare_locked(dataset: str, source: Source, preset: Preset, out: Path, force: bool, console: Console) -> None:
    manifest_path = out / "manifest.json"
    if not force and manifest_path.exists():
        manifest = _readable_manifest(manifest_path)
        if manifest and _matches(manifest, source, preset):
            damaged = [s.name for s in manifest.shards if not shard_intact(out, s)]
            if not _tokenizer_matches(out / "tokenizer.json", manifest.tokenizer_sha256):
                damaged.append("tokenizer.json")
            if not damaged:
                console.print(f"[green]already prepared[/] {escape(dataset)} / {preset.name} in {escape(str(out))}")
                return
            console.print(f"[yellow]damaged shards {', '.join(damaged)}: rebuilding them[/]")
        elif manifest is None or manifest.preset != preset.as_dict():
            # A shard's identity names its source part, not the row length or the train/val split
            # (local corpora are split by the preset's eval_tokens): none of it may be reused.
            console.print(
                f"[yellow]{escape(str(manifest_path))} is unreadable or for other preset settings: rebuilding all[/]"
            )
            force = True
        else:  # made for another request (fewer shards of a hub dataset): the workspaces made on it measure on that
            was = ", ".join(
                f"--shards {value}" if key == "shards" else f"{key} {value}"
                for key, value in manifest.dataset.get("request", {}).items()
                if source.request.get(key) != value
            )
            console.print(
                f"[yellow]{escape(str(out))} holds the data prepared with {escape(was)}: this replaces it, and the "
                'workspaces made on it stop ("the apparatus changed") until it is prepared with those again[/]'
            )
    if force:
        source.fetch()  # first: data that cannot be fetched now (offline, the network down) leaves the old in place
        for stale in out.glob("*.json"):
            stale.unlink()
    _build(source, preset, out, console)


def _build(source: Source, preset: Preset, out: Path, console: Console) -> None:
    started = time.monotonic()
    console.print(f"preparing [bold]{escape(source.name)}[/] for preset [bold]{preset.name}[/] in {escape(str(out))}")
    source.fetch()
    if (hub_cache := getattr(source, "cache_dir", None)) is not None:  # a hub dataset: its files stay readable there
        xet = getattr(source, "xet_dir", None) or hub_cache  # and in hf_xet's chunks of them
        note_cache(out, hub_cache, xet)  # the referee hides them from train.py, whatever the variables when it runs
    parts = source.parts()
    tokenizer = _tokenizer(source, parts, preset, out, console)
    row_len = preset.seq_len + 1
    infos: list[ShardInfo] = []
    # One bar over the shards (a source part each): the one at work by name, how many are done, and the tokens so
    # far, counted as each batch of documents is encoded (a hub shard takes minutes). Done, it says what it made.
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("shards, {task.fields[tokens]:.1f}M tokens"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("tokenizing", total=len(parts), tokens=0.0)
        done_tokens = 0
        for part in parts:
            progress.update(task, description=f"tokenizing shard {part.name}")
            info = read_shard_record(out, part.name)
            if info is None or info.identity != part.identity or info.tokenizer_sha256 != tokenizer.digest():
                seen = _Counter(lambda n, at=done_tokens: progress.update(task, tokens=(at + n) / 1e6))
                arrays = list(_token_arrays(tokenizer, part, seen))
                rows, stats = pack_documents(arrays, row_len, tokenizer.bos_id)
                info = ShardInfo(
                    part.name, part.split, len(rows), row_len, "", part.identity, tokenizer.digest(), asdict(stats)
                )
                info = write_shard(out, info, rows)
            done_tokens += info.stats.get("tokens_in", info.rows * info.row_len)
            progress.update(task, advance=1, tokens=done_tokens / 1e6)
            infos.append(info)
        splits = [sum(i.split == split for i in infos) for split in (TRAIN, VAL)]
        progress.update(task, description=f"tokenized {len(infos)} shards ({splits[0]} train, {splits[1]} val)")

    val_rows = sum(i.rows for i in infos if i.split == VAL)
    if val_rows < preset.eval_rows:
        # Validation takes a set number of bytes whatever the corpus's size: it fell short in tokens because
        # the text compresses to more bytes a token than VAL_BYTES_PER_TOKEN allows for.
        val_tokens = sum(i.stats.get("tokens_in", 0) for i in infos if i.split == VAL)
        other = smaller_preset_hint(None, smaller_presets(preset))
        raise DataError(
            f"validation split has {val_rows} rows of {preset.seq_len} tokens; preset {preset.name} "
            f"evaluates on {preset.eval_rows}",
            hint=f"its text came to {val_tokens:,} tokens, over {VAL_BYTES_PER_TOKEN} bytes a token: text this "
            "repetitive is too little to evaluate on; use more varied text" + (f", or {other}" if other else ""),
        )
    if not any(i.split == TRAIN and i.rows for i in infos):
        raise DataError("no training rows came out of the corpus", hint="use a larger corpus")
    manifest = Manifest(
        format=MANIFEST_FORMAT,
        dataset={**source.describe(), "request": source.request},
        preset=preset.as_dict(),
        tokenizer_sha256=tokenizer.digest(),
        row_len=row_len,
        shards=infos,
    )
    _remove_unlisted(out, {i.name for i in infos})
    manifest.save(out / "manifest.json")
    _report(manifest, time.monotonic() - started, console)


def _current(out: Path, source: Source, preset: Preset) -> bool:
    """Whether `out` holds a manifest for this request and preset (its shards are checked under the lock)."""
    try:
        manifest = Manifest.load(out / "manifest.json")
    except (FileNotFoundError, DataError):
        return False
    return _matches(manifest, source, preset)


def _matches(manifest: Manifest, source: Source, preset: Preset) -> bool:
    """Whether `manifest` was made for this request and preset."""
    return manifest.dataset.get("request") == source.request and manifest.preset == preset.as_dict()


def _on_path(filename: str | None, out: Path) -> bool:
    """Whether `filename` is `out`, in it or a directory above it (not a file of the source being read)."""
    if filename is None:
        return False
    path = Path(filename)
    return path == out or out in path.parents or path in out.parents


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of `path` that does not exist yet (`path` itself, or one above it), or None."""
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def _remove(out: Path, created: Path | None) -> None:
    """Remove `out` and what it holds, then the directories above it up to `created` that are left empty."""
    shutil.rmtree(out, ignore_errors=True)
    if created is None or (created != out and created not in out.parents):
        return
    for directory in [out.parent, *out.parent.parents]:
        if directory == created.parent:
            break
        with contextlib.suppress(OSError):  # not empty: another prepare uses it
            directory.rmdir()


def _readable_manifest(path: Path) -> Manifest | None:
    try:
        return Manifest.load(path)
    except DataError:
        return None


def _tokenizer_matches(path: Path, sha256: str) -> bool:
    try:
        return Tokenizer.load(path).digest() == sha256
    except DataError:
        return False


def _tokenizer(source: Source, parts: list[Part], preset: Preset, out: Path, console: Console) -> Tokenizer:
    path = out / "tokenizer.json"
    with contextlib.suppress(DataError):  # a damaged file is learned again below
        tokenizer = Tokenizer.load(path)
        if tokenizer.vocab_size == preset.vocab_size:
            return tokenizer
    started = time.monotonic()
    with console.status(f"training a {preset.vocab_size}-token BPE on up to {preset.tokenizer_train_chars:,} chars"):
        train_texts = (text for part in parts if part.split == TRAIN for text in part.documents())
        tokenizer = Tokenizer.train(capped_texts(train_texts, preset.tokenizer_train_chars), preset.vocab_size)
    if tokenizer.vocab_size != preset.vocab_size:
        raise DataError(
            f"the corpus is too small to learn {preset.vocab_size} tokens (got {tokenizer.vocab_size})",
            hint="use a larger corpus",
        )
    tokenizer.save(path)
    console.print(f"tokenizer trained in {time.monotonic() - started:.1f}s")
    return tokenizer


class _Counter:
    """Adds up tokens and tells `report` the sum so far."""

    def __init__(self, report: Callable[[int], object]):
        self.total, self.report = 0, report

    def __call__(self, tokens: int) -> None:
        self.total += tokens
        self.report(self.total)


def _token_arrays(tokenizer: Tokenizer, part: Part, seen: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
    """Each document of `part` as a uint16 array that starts with BOS; `seen(n)` after each batch of n tokens."""
    batch: list[str] = []
    threads = usable_cores()

    def flush() -> Iterator[np.ndarray]:
        arrays = [
            np.array([tokenizer.bos_id, *ids], dtype=np.uint16)
            for ids in tokenizer.encode_batch(batch, num_threads=threads)
        ]
        batch.clear()
        if seen is not None:
            seen(sum(len(a) for a in arrays))
        yield from arrays

    for text in part.documents():
        batch.append(text)
        if len(batch) == ENCODE_BATCH_DOCS:
            yield from flush()
    yield from flush()


def _remove_unlisted(out: Path, names: set[str]) -> None:
    for path in [*out.glob("*.bin"), *out.glob("*.json")]:
        if path.stem not in names and path.name not in ("tokenizer.json", "manifest.json"):
            path.unlink()


def _report(manifest: Manifest, seconds: float, console: Console) -> None:
    totals = PackStats()
    for info in manifest.shards:
        totals.merge(PackStats(**info.stats))
    train = sum(i.rows for i in manifest.split(TRAIN)) * manifest.row_len
    val = sum(i.rows for i in manifest.split(VAL)) * manifest.row_len
    console.print(
        f"[green]prepared[/] in {seconds:.1f}s: {train / 1e6:.1f}M train tokens, {val / 1e6:.2f}M val tokens, "
        f"{totals.documents:,} documents; {totals.splits:,} split pieces (+1 BOS each), "
        f"{totals.tokens_dropped:,} tokens dropped in incomplete last rows"
    )


@contextlib.contextmanager
def _exclusive(out: Path, console: Console | None = None) -> Iterator[None]:
    """Make `out` and hold an exclusive lock on its `.lock`, so two prepares of the same data never interleave
    (POSIX only; a wait is told on `console`). A prepare that failed may have removed `out` while another waited:
    that one makes it again."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock, as before
        out.mkdir(parents=True, exist_ok=True)
        yield
        return
    lock_path = out / ".lock"
    while True:
        out.mkdir(parents=True, exist_ok=True)
        try:
            f = lock_path.open("w")
        except FileNotFoundError:  # removed between mkdir and open
            continue
        except OSError:  # a read-only cache: the lock made when it was prepared is held open for reading
            if not lock_path.is_file():
                if (out / "manifest.json").is_file():  # prepared, copied there without its lock: no one writes it
                    yield
                    return
                raise
            f = lock_path.open("r")
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a download and tokenizing may take hours: say why nothing happens
                if console is not None:
                    console.print(f"waiting for another prepare of {escape(str(out))} to finish (it holds its .lock)")
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                if _same_file(f.fileno(), lock_path):
                    yield
                    return
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (st.st_dev, st.st_ino)
