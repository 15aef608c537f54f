"""`autoresearch prepare`: raw text -> BPE tokenizer -> packed token shards, resumable and idempotent.

Each source part becomes one shard, written atomically, so an interrupted run resumes at the first
unfinished part. `manifest.json` is written last: once it exists and matches the request, running
prepare again does nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console
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
from autoresearch.data.sources import TRAIN, VAL, Part, Source, make_source
from autoresearch.data.tokenizer import Tokenizer, capped_texts
from autoresearch.errors import DataError
from autoresearch.evaluator.cores import usable_cores

ENCODE_BATCH_DOCS = 1024


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
    console = console or Console(stderr=True)
    source = make_source(dataset, preset, root=root, shards=shards)
    out = prepared_dir(cache, source.slug, preset.name)
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out / ".lock"):
        manifest_path = out / "manifest.json"
        if not force and manifest_path.exists():
            manifest = _readable_manifest(manifest_path)
            if manifest and manifest.dataset.get("request") == source.request and manifest.preset == preset.as_dict():
                damaged = [s.name for s in manifest.shards if not shard_intact(out, s)]
                if not _tokenizer_matches(out / "tokenizer.json", manifest.tokenizer_sha256):
                    damaged.append("tokenizer.json")
                if not damaged:
                    console.print(f"[green]already prepared[/] {dataset} / {preset.name} in {out}")
                    return out
                console.print(f"[yellow]damaged shards {', '.join(damaged)}: rebuilding them[/]")
            elif manifest is None or manifest.preset != preset.as_dict():
                # A shard's identity names its source part, not the row length or the train/val split
                # (local corpora are split by the preset's eval_tokens): none of it may be reused.
                console.print(f"[yellow]{manifest_path} is unreadable or for other preset settings: rebuilding all[/]")
                force = True
        if force:
            for stale in out.glob("*.json"):
                stale.unlink()
        _build(source, preset, out, console)
    return out


def _build(source: Source, preset: Preset, out: Path, console: Console) -> None:
    started = time.monotonic()
    console.print(f"preparing [bold]{source.name}[/] for preset [bold]{preset.name}[/] in {out}")
    source.fetch()
    parts = source.parts()
    tokenizer = _tokenizer(source, parts, preset, out, console)
    row_len = preset.seq_len + 1
    infos: list[ShardInfo] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tokens]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("tokenizing", total=len(parts), tokens="")
        total_tokens = 0
        for part in parts:
            progress.update(task, description=f"tokenizing {part.name}")
            info = read_shard_record(out, part.name)
            if info is None or info.identity != part.identity or info.tokenizer_sha256 != tokenizer.digest():
                rows, stats = pack_documents(list(_token_arrays(tokenizer, part)), row_len, tokenizer.bos_id)
                info = ShardInfo(
                    part.name, part.split, len(rows), row_len, "", part.identity, tokenizer.digest(), asdict(stats)
                )
                info = write_shard(out, info, rows)
            total_tokens += info.rows * info.row_len
            progress.update(task, advance=1, tokens=f"{total_tokens / 1e6:.1f}M tokens")
            infos.append(info)

    val_rows = sum(i.rows for i in infos if i.split == VAL)
    if val_rows < preset.eval_rows:
        raise DataError(
            f"validation split has {val_rows} rows of {preset.seq_len} tokens; preset {preset.name} "
            f"evaluates on {preset.eval_rows}",
            hint="use a larger corpus or a preset with a smaller evaluation set",
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


def _token_arrays(tokenizer: Tokenizer, part: Part) -> Iterator[np.ndarray]:
    """Each document of `part` as a uint16 array that starts with BOS."""
    batch: list[str] = []
    threads = usable_cores()

    def flush() -> Iterator[np.ndarray]:
        for ids in tokenizer.encode_batch(batch, num_threads=threads):
            yield np.array([tokenizer.bos_id, *ids], dtype=np.uint16)
        batch.clear()

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
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock so two prepares of the same data never interleave (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock, as before
        yield
        return
    with lock_path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
